"""`JobTracker`: every job of this host, by id and owner; starts, stops, reports and
streams them. Knows nothing of RPC.

What lives where (the job's life is spread over small modules of one concern):

- here: the registry (jobs by id, running jobs per owner), the quotas, the
  retention's wiring and the public API;
- `lifecycle`: the phases and their one table of moves, the outcome rules, the
  restart reconcile table; `job`: a job's record, lifecycle, log and handles;
- `supervisor`: a running job's life to its terminal record, stops, time limits;
- `restore`: taking over an earlier jwsd's jobs at start-up;
- `policy`: the limits a job gets; `datadir`: the data dir's set-up; `uids`: the
  host uid each owner's jobs run as;
- `jobworker.sandbox`: everything about a job's processes on the host.

Structured concurrency: the tracker is an async context manager that owns one
nursery, which holds each job's supervisor task, every stop, the output watcher
and the retention's task. Leaving the tracker stops every job (SIGTERM, a grace
period, SIGKILL) and leaves no process or cgroup behind; after `leave_running` it
leaves every running job running instead, for the next jwsd to take over.

Durability (docs/architecture.md, "State on disk"): every job has a record in the
store, written before `start` returns, and its end before anyone learns of it; its
output is a file its copier writes; its exit code is in bubblewrap's status file.

Owners: every public method takes the caller's name and an `admin` flag; a caller
that is not the owner (nor an admin) gets AccessDeniedError, an unknown id
JobNotFoundError.

Quotas and retention (bounded memory and disk whatever users do): an owner runs at
most `max_running_per_user` jobs (QuotaExceededError); a job keeps at most its
output limit (its copier dies there, and the job's next write gets EPIPE), and an
owner's jobs' output at most `max_disk_per_user` (`disk.DiskQuota`: charged as it
is written, the copier's limit moved a window at a time within what its owner has
left, from the output watcher's callback); its work dir is a tmpfs charged to
its memory cgroup; finished jobs are forgotten by the
retention policy (age, count per owner) or by `remove`: record, output, job dir.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import functools
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

import attrs
import trio

from jobworker import faults, logs
from jobworker.echo import quoted
from jobworker.errors import (
    AccessDeniedError,
    BadStateError,
    InvalidRequestError,
    JobNotFoundError,
    NameInUseError,
    ShuttingDownError,
    sole_error,
)
from jobworker.jobs import datadir, disk, policy, record_quota, uids
from jobworker.jobs.config import TrackerConfig
from jobworker.jobs.events import Cursor, EventKind, EventLog, JobEvent
from jobworker.jobs.finished import FinishedJobs
from jobworker.jobs.job import Job
from jobworker.jobs.job_index import JobIndex, ListKey, Scanned
from jobworker.jobs.lifecycle import Event, Phase, StopCause
from jobworker.jobs.output_log import FileLog
from jobworker.jobs.record import JobRecord
from jobworker.jobs.record_quota import RecordQuota
from jobworker.jobs.restore import restore
from jobworker.jobs.selection import Selection
from jobworker.jobs.store import JobStore
from jobworker.jobs.supervisor import FINISH_TIMEOUT, Supervisor
from jobworker.jobs.tracker_views import count_end, events_for, live_metrics
from jobworker.jobs.watcher import OutputWatcher
from jobworker.metrics import Metrics
from jobworker.model import (
    MAX_PAGE_SIZE,
    STOPPED_BY_SHUTDOWN,
    JobSpec,
    JobStatus,
    Outcome,
)
from jobworker.naming import is_name
from jobworker.sandbox import (
    OUTPUT_NAME,
    CgroupDriver,
    HostSetup,
    JobRequest,
    RunningJob,
    Sandbox,
    StartingJob,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The longest grace period a stop may ask for (an hour).
MAX_GRACE = 3600.0
#: The job records' file in the data dir.
STORE_NAME = "jobs.db"


@attrs.define(eq=False)
class JobTracker:
    """Runs jobs under cgroup limits and bubblewrap isolation; use as `async with`.

    config: the settings (`TrackerConfig`: data dir, job user, limits, quotas,
        retention), each with the default jwsd shows.
    cgroups: a ready cgroup driver (tests); `None` detects the host's.
    metrics: where the tracker counts its events (ends, take-overs, store writes) and
        computes its levels at each scrape (`jobworker.metrics`); a fresh one if not given.
    """

    config: TrackerConfig = attrs.Factory(TrackerConfig)
    cgroups: CgroupDriver | None = None
    metrics: Metrics = attrs.Factory(Metrics)

    _jobs: JobIndex[Job] = attrs.field(init=False, factory=JobIndex)
    # Jobs not yet ended, per owner (the running quota).
    _running: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    # The bytes of records each owner holds (the record-bytes quota).
    _record_bytes: RecordQuota = attrs.field(init=False)
    # Finished jobs whose output is on disk, and the retention that forgets them.
    _finished: FinishedJobs = attrs.field(init=False)
    _background: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _stack: contextlib.AsyncExitStack | None = attrs.field(init=False, default=None)
    _closing: bool = attrs.field(init=False, default=False)
    _host: HostSetup | None = attrs.field(init=False, default=None)
    _sandbox: Sandbox | None = attrs.field(init=False, default=None)
    _store: JobStore | None = attrs.field(init=False, default=None)
    _data_lock: datadir.DataDirLock | None = attrs.field(init=False, default=None)
    _disk: disk.DiskQuota = attrs.field(init=False, factory=lambda: disk.DiskQuota(None))
    _reserve: disk.SpaceReserve | None = attrs.field(init=False, default=None)
    _watcher: OutputWatcher | None = attrs.field(init=False, default=None)
    _supervisor: Supervisor | None = attrs.field(init=False, default=None)
    _restored: builtins.list[Job] = attrs.field(init=False, factory=list)
    _uids: uids.HostUids | None = attrs.field(init=False, default=None)
    #: Every change of a job the API shows, for watchers (`watch`).
    events: EventLog = attrs.field(init=False, factory=EventLog)
    # Output bytes of the jobs forgotten so far: with the jobs' own, the bytes jobs wrote.
    _forgotten_output: int = attrs.field(init=False, default=0)

    @_record_bytes.default
    def _record_bytes_default(self) -> RecordQuota:
        return RecordQuota(self.config.max_record_bytes_per_user)

    @_finished.default
    def _finished_default(self) -> FinishedJobs:
        return FinishedJobs(self.config.retention, self._forget_by_id)

    # ---- life cycle -------------------------------------------------------

    async def __aenter__(self) -> JobTracker:
        self._setup()
        assert self._store is not None and self._watcher is not None
        async with contextlib.AsyncExitStack() as stack:
            self._nursery = nursery = await stack.enter_async_context(trio.open_nursery())
            stack.push_async_callback(self._shielded_shutdown)
            self._supervisor = Supervisor(
                self._store, self._watcher, nursery, self.config.stop_grace, self._job_ended
            )
            nursery.start_soon(self._run_in_background)
            # Before the jobs taken over are supervised: their ends must be seen whole.
            assert self.cgroups is not None
            await self.cgroups.connect()
            for job in self._restored:
                if job.running is not None:  # taken over from an earlier run
                    self._supervisor.start(job)
            self._restored = []
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        finally:
            self._teardown()

    def _setup(self) -> None:
        """Check the host can run jobs, open the store, take over the jobs its records
        name; raise SetupError saying what is missing."""
        config = self.config
        uids.check_host_free(config.job_uids)
        self._host = HostSetup.check(
            config.job_user,
            data_dir=config.data_dir,
            binds=config.job_binds,
            # The last id is the last one an owner gets (they go lowest first).
            host_uid=config.job_uids.last,
        )
        self._data_lock = datadir.DataDirLock.acquire(config.data_dir)  # before it is touched
        try:
            datadir.prepare(config.data_dir, self._host)
            self._store = store = JobStore.open(config.data_dir / STORE_NAME)
            self._reserve = disk.SpaceReserve.make(config.data_dir)
            store.on_full = self._reserve.release
            self._disk = disk.DiskQuota(disk.resolve(config.max_disk_per_user, config.data_dir))
            store.on_write = self.metrics.store_write_seconds.observe
            self._watcher = OutputWatcher()
            records = store.load()
            self._uids = uids.HostUids.load(
                config.data_dir,
                config.job_uids,
                {r.owner: r.host_uid for r in records if r.host_uid is not None},
            )
            self._sandbox = Sandbox.open(
                self._host,
                config.data_dir,
                cgroups=self.cgroups,
                cgroup_driver=config.cgroup_driver,
                cgroup_name=config.cgroup_name,
                cgroup_parent=config.cgroup_parent,
                workdir_size=config.workdir_size,
                tmpfs_size=config.tmpfs_size,
                setup_timeout=config.sandbox_timeout,
                network_deny=config.network_deny,
            )
            policy.say_network_limits(self.config, self._sandbox.network_tools)
            self.cgroups = self._sandbox.cgroups
            restored = restore(
                records,
                sandbox=self._sandbox,
                follow=self._follow,
                jobs_dir=datadir.jobs_dir(config.data_dir),
            )
            for record in restored.ended:
                store.put_blocking(record)
                lost = record.outcome is Outcome.LOST
                self.metrics.takeover_jobs.labels(result="lost" if lost else "ended").inc()
        except BaseException:
            if self._store is not None:
                self._store.close()
            if self._watcher is not None:
                self._watcher.close()
            self._data_lock.release()
            raise
        if self._disk.limit is not None and config.workdir_size is None:
            log.warning(
                "work dirs are plain directories on the data dir (--workdir-size 0): "
                "the disk quota per user does not bound them"
            )
        for job in restored.jobs:
            job.on_phase = self._phase_changed
            self._jobs[job.job_id] = job
            self._record_bytes.restore(job.owner, job.job_id, record_quota.record_size(job.record))
            if job.running is not None and not job.phase.ended:
                self._adopt_grant(job, job.running)
            else:  # an ended job holds what its output file holds
                self._disk.charge(job.owner, job.job_id, job.log.disk_size)
            if job.phase.ended:
                assert job.ended_clock is not None
                self._finished.restored(job.job_id, job.owner, job.ended_clock)
            else:
                self._running[job.owner] += 1
                self.metrics.takeover_jobs.labels(result="reattached").inc()
        self._restored = restored.jobs
        self.metrics.add_live(lambda: live_metrics(self._jobs.values(), self._forgotten_output))

    def leave_running(self) -> None:
        """On exit, leave every running job running (and recorded), for the next jwsd
        on this data dir to take over, instead of stopping them; see `shutdown`."""
        assert self._supervisor is not None
        self._supervisor.leaving = True

    def _teardown(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
        # Records and output stay for the next start; work dirs are left only when a
        # clean-up timed out.
        for job in self._jobs.values():
            if job.running is not None:
                job.running.close()  # left open only when a clean-up timed out
            if job.phase.ended:
                shutil.rmtree(job.workdir, ignore_errors=True)
        if self._watcher is not None:
            self._watcher.close()
        if self._store is not None:
            if self._supervisor is not None:
                self._supervisor.write_stale(self._jobs.values())
            self._store.close()
        if self._data_lock is not None:
            self._data_lock.release()  # last: nothing of the data dir is touched after it

    async def _run_in_background(self) -> None:
        """Run the output watcher and the retention until shutdown cancels them."""
        assert self._watcher is not None
        with self._background:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._finished.run)
                nursery.start_soon(self._watcher.run)

    async def _shielded_shutdown(self) -> None:
        with trio.CancelScope(shield=True):
            await self.shutdown(self.config.stop_grace)

    async def shutdown(self, grace: float | None = None) -> None:
        """Accept no new jobs, stop every running one (SIGTERM, `grace` seconds, SIGKILL)
        and wait until all have ended. Bounded: grace plus FINISH_TIMEOUT."""
        self._closing = True
        assert self._nursery is not None and self._supervisor is not None
        if self._supervisor.leaving:
            # Every supervisor lets go of its job; the jobs run on.
            self._nursery.cancel_scope.cancel()
            await trio.lowlevel.checkpoint()
            return
        grace = self.config.stop_grace if grace is None else grace
        with trio.move_on_after(grace + FINISH_TIMEOUT) as scope:
            async with trio.open_nursery() as nursery:
                for job in list(self._jobs.values()):
                    nursery.start_soon(
                        self._supervisor.stop, job, grace, StopCause.USER, STOPPED_BY_SHUTDOWN
                    )
        if scope.cancelled_caught:
            log.error("shutdown: some jobs did not finish within %.1f s", grace + FINISH_TIMEOUT)
        self._background.cancel()

    # ---- the public operations -------------------------------------------

    async def start(self, owner: str, spec: JobSpec) -> JobStatus:
        """Start `spec` for `owner`; return its status once the command runs (an
        outbound job's: once its network is set up, which the supervisor does
        after this returns).

        Raises InvalidRequestError (limits over the maxima, IO limits without a
        block device), NotAllowedError (a network mode the server does not allow),
        QuotaExceededError (the owner already runs max_running_per_user jobs, or
        their jobs hold all of their disk quota or record bytes), StartFailedError
        (program missing or not executable, sandbox refused, a network mode this
        host cannot give), ShuttingDownError. A failed or
        cancelled start leaves nothing behind: no process, cgroup, dir or entry.
        """
        if self._closing or self._nursery is None:
            raise ShuttingDownError()
        sandbox, supervisor, host_uids = self._sandbox, self._supervisor, self._uids
        assert sandbox is not None and supervisor is not None and self._watcher is not None
        assert host_uids is not None
        limits = policy.effective_limits(self.config, spec.limits)
        sandbox.check_limits(limits)
        network = policy.network_of(self.config, spec)
        sandbox.check_network(network)
        host_uid = host_uids.known(owner)
        if host_uid is None:  # the owner's first start: once per owner, ever
            host_uid = await host_uids.allocate(owner)
            if self._closing:  # the shutdown began meanwhile, and stops only the jobs it saw
                raise ShuttingDownError()
        # After the only await of the checks: no other start of this owner's can pass
        # it before this one is counted (below, with nothing awaited in between).
        policy.check_running_quota(self.config, self._running[owner])
        if spec.name is not None and self._jobs.named(owner, spec.name) is not None:
            raise NameInUseError(
                f"you already have a job named {quoted(spec.name)}; choose another name, "
                "or remove that job first (jws rm)"
            )
        user = sandbox.user_on_host(host_uid)
        job_id = str(uuid.uuid4())
        logs.add_field("job", job_id)  # the call's lines from here on are about this job
        directory = datadir.jobs_dir(self.config.data_dir) / job_id
        spec = attrs.evolve(spec, limits=limits, network=network)
        job = Job(
            JobRecord.new(job_id, owner, spec, created_at=time.time(), host_uid=user.host_uid),
            directory,
            FileLog(directory / OUTPUT_NAME, limits.output),
        )
        cwd = spec.workdir or str(job.workdir)
        # The request's variables add to the default environment (as `docker run -e`).
        env = {**sandbox.default_env(job.workdir), **(spec.env or {})}
        sandbox.check_command(spec.argv, env, cwd=cwd, workdir=job.workdir, user=user)
        # The disk quota's first window (charged here): where the copier stops until
        # the job's writes move it on (`_output_grew`).
        grant = self._disk.grant(owner, job_id, limits.output)
        try:
            self._record_bytes.charge(owner, job_id, record_quota.spec_record_bytes(spec))
        except BaseException:
            self._disk.release(job_id)
            raise
        job.on_phase = self._phase_changed
        self._jobs[job_id] = job
        self._event(job, EventKind.CREATED)
        self._running[owner] += 1
        starting = None
        try:
            starting = sandbox.prepare(
                JobRequest(
                    job_id=job_id,
                    owner=owner,
                    directory=directory,
                    user=user,
                    argv=spec.argv,
                    env=env,
                    cwd=cwd,
                    limits=limits,
                    network=network,
                    output_grant=None if grant is None else grant.limit,
                )
            )
            job.update(cgroups=tuple(map(str, starting.cgroup_dirs)))
            faults.reach("start.cgroup-made")
            job.log = FileLog.open(directory / OUTPUT_NAME, limits.output)
            self._show_grant(job, grant)
            self._follow(job)
            # The record is on disk before the caller learns the job's id; its write (a
            # worker thread) overlaps the sandbox's build, so it costs the start nothing.
            # A crash before it lands leaves a cgroup and a dir no record claims, which
            # the next start removes: nobody was told of that job.
            with sole_error(ignore=trio.Cancelled):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(supervisor.save, job.record, "start the job")
                    job.running = await starting.launch()
            faults.reach("start.launched")
            started_at = time.time()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard_failed_start(job, starting)
            raise
        job.update(started_at=started_at)
        job.handle(Event.LAUNCHED)
        supervisor.start(job)
        return job.snapshot()

    async def stop(
        self, owner: str, job_id: str, grace: float | None = None, *, admin: bool = False
    ) -> JobStatus:
        """Stop the job: SIGTERM to its process group, then after `grace` seconds
        (None: the tracker's stop_grace) SIGKILL to everything in its cgroup.
        Returns once it has ended; stopping an ended job is not an error.
        If the caller is cancelled, the stop still completes (the tracker owns it)."""
        job = self._get(owner, job_id, admin)
        if grace is not None and not 0 <= grace <= MAX_GRACE:
            raise InvalidRequestError(
                f"grace period must be between 0 and {MAX_GRACE:.0f} seconds, not {grace}"
            )
        if not job.phase.ended:
            assert self._nursery is not None and self._supervisor is not None
            grace = self.config.stop_grace if grace is None else grace
            self._nursery.start_soon(self._supervisor.stop, job, grace, StopCause.USER)
            await job.until_ended()
        return job.snapshot()

    async def wait(self, owner: str, job_id: str, *, admin: bool = False) -> JobStatus:
        """Wait until the job has ended and its output is on disk (or known lost); its
        final status. Raises as `status`."""
        job = self._get(owner, job_id, admin)
        await job.until_ended()
        return job.snapshot()

    async def remove(self, owner: str, job_id: str, *, admin: bool = False) -> None:
        """Forget an ended job: its record, output and job dir; asking for it afterwards
        gets JobNotFoundError. Raises BadStateError while it runs."""
        job = self._get(owner, job_id, admin)
        if not job.phase.ended:
            raise BadStateError(
                "this job is still running; stop it first (jws stop), then remove it"
            )
        await self._forget(job)

    def owner_of(self, owner: str, job_id: str, *, admin: bool = False) -> str:
        """Whose the job is (for the caller `owner`: it must be theirs unless `admin`).
        Raises as `status`."""
        return self._get(owner, job_id, admin).owner

    def status(self, owner: str, job_id: str, *, admin: bool = False) -> JobStatus:
        """A snapshot of the job (usage read live while it runs)."""
        return self._get(owner, job_id, admin).snapshot()

    def list(
        self,
        owner: str,
        *,
        admin: bool = False,
        after: ListKey | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> builtins.list[JobStatus]:
        """Snapshots of at most `limit` of the caller's jobs (every job for an admin),
        oldest first by (created_at, job_id), starting after the key `after` (None:
        from the first), each argv cut as a listing shows it: one page, in
        O(log n + limit) (`jobworker.jobs.job_index`), whatever the argvs hold."""
        jobs = self._jobs.page(None if admin else owner, after, limit)
        return [job.snapshot(listed=True) for job in jobs]

    def select(
        self,
        owner: str,
        selection: Selection,
        encode: Callable[[JobStatus], T],
        *,
        admin: bool = False,
        after: ListKey | None = None,
        limit: int = MAX_PAGE_SIZE,
        budget: int = MAX_PAGE_SIZE,
    ) -> Scanned[T]:
        """As `list`, only the jobs `selection` selects, looking at no more than
        `budget` jobs: O(log n + budget) (`JobIndex.scan`, whose answer this is), each
        job as `encode` makes it of its listed snapshot, kept by each Terminated job
        (`Job.listed_entry`): the server's pre-encoded page entries. `encode` must be
        one function for the tracker's life (the kept form is `encode`'s). Raises
        AccessDeniedError when a user who is not an admin selects another's jobs."""
        if selection.owner is not None and not admin and selection.owner != owner:
            raise AccessDeniedError()
        walked = selection.owner if selection.owner is not None else None if admin else owner
        if selection.created_after is not None:
            # (t, "") sorts before every (t, id): the jobs created at that very time are in.
            floor = (selection.created_after, "")
            after = floor if after is None else max(after, floor)
        scanned = self._jobs.scan(
            walked, after, limit, lambda job: selection.matches(job.record), budget
        )
        return Scanned(
            [job.listed_entry(encode) for job in scanned.found], scanned.stopped, scanned.looked
        )

    async def watch(
        self,
        owner: str,
        selection: Selection,
        *,
        admin: bool = False,
        job_ids: Sequence[str] = (),
        since: Cursor | None = None,
    ) -> AsyncGenerator[JobEvent, None]:
        """The events of the caller's jobs (every job's for an admin) that `selection`
        and `job_ids` (ids or the caller's names; empty: any job) select, after
        `since` (None: from now), read from the event log by the caller's own task
        (no channel, no nursery; close it with `contextlib.aclosing`). The first
        event is WATCHING (no job), at the cursor the events that follow come after,
        unless `since` is stale: a stale
        `since` (`EventLog.is_stale`), or a watcher that falls behind the log's
        retention, gets a STALE event, a CURRENT one per selected job, then the
        live events. Never ends by itself. Raises InvalidRequestError for a cursor
        past the log, JobNotFoundError / AccessDeniedError for a job id as
        `status` does, AccessDeniedError when a user selects another's jobs."""
        if selection.owner is not None and not admin and selection.owner != owner:
            raise AccessDeniedError()
        ids = frozenset(self._get(owner, job_id, admin).job_id for job_id in job_ids)

        def wanted(status: JobStatus | None) -> bool:
            return (
                status is not None
                and (admin or status.owner == owner)
                and (selection.owner is None or status.owner == selection.owner)
                and (not ids or status.job_id in ids)
                and selection.selected(status.name, status.state, status.spec.labels)
            )

        def current() -> Iterable[JobStatus | None]:
            for job in builtins.list(self._jobs.values()):
                status = job.recorded_snapshot()
                yield status if self._jobs.get(job.job_id) is job else None

        async with contextlib.aclosing(events_for(self.events, current, wanted, since)) as events:
            async for event in events:
                yield event

    def running_count(self) -> int:
        """How many jobs have not yet ended, of every owner."""
        return sum(self._running.values())

    @contextlib.asynccontextmanager
    async def subscribe(
        self, owner: str, job_id: str, offset: int = 0, *, admin: bool = False
    ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        """The job's output from byte `offset` on, as a channel of its own that ends
        after the last byte of an ended job. Leaving the block stops the feed."""
        job = self._get(owner, job_id, admin)
        _check_offset(offset)
        async with job.log.subscribe(offset) as channel:
            yield channel

    async def follow(
        self,
        owner: str,
        job_id: str,
        offset: int = 0,
        *,
        admin: bool = False,
        chunk_size: int = 1 << 20,
    ) -> AsyncGenerator[bytes, None]:
        """The job's output from byte `offset` on, read straight from its log by the
        caller's own task (no channel, no nursery: safe to iterate inside another
        async generator). Ends after the last byte of an ended job; close it with
        `contextlib.aclosing`."""
        job = self._get(owner, job_id, admin)
        _check_offset(offset)
        read = job.log.read
        while chunk := await read(offset, chunk_size):
            yield chunk
            offset += len(chunk)

    # ---- internals ---------------------------------------------------------

    def _event(self, job: Job, kind: EventKind) -> None:
        self.events.append(kind, job.recorded_snapshot(), time.time())

    def _phase_changed(self, job: Job) -> None:
        """A job moved (`Job.on_phase`): the move the API can see becomes an event."""
        kind = _PHASE_EVENTS.get(job.phase)
        if kind is not None:
            self._event(job, kind)

    def _follow(self, job: Job) -> None:
        """Watch the output file of a job that runs: each batch of writes refreshes its
        log (waking its followers) and moves its disk quota window."""
        assert self._watcher is not None
        job.watch = self._watcher.watch(job.log.path, functools.partial(self._output_grew, job))

    def _output_grew(self, job: Job) -> None:
        """The job's output file was written (inotify): take its size, and give its
        copier the next window of its owner's disk quota once it is near the end of
        the last (`disk.DiskQuota.extend`; a prlimit per half window written)."""
        job.log.refresh()
        grant = self._disk.extend(job.job_id, job.log.size)
        if grant is not None and job.running is not None and not job.phase.ended:
            job.running.grant_output(grant.limit)
        if grant is not None:
            self._show_grant(job, grant)

    def _show_grant(self, job: Job, grant: disk.Grant | None) -> None:
        """Let the job's log say where its copier stops now, and why."""
        if grant is not None and self._disk.limit is not None:
            job.log.max_size = grant.limit
            job.log.cap_note = disk.grant_note(grant, self._disk.limit)

    def _adopt_grant(self, job: Job, running: RunningJob) -> None:
        """Charge a job taken over at start-up what its copier may write, as the last
        jwsd left it (or, left with no limit, a first window past what it wrote)."""
        limit = running.copier_limit()
        grant = self._disk.adopt(
            job.owner, job.job_id, job.record.limits.output, limit, job.log.size
        )
        if grant is not None and limit is None:
            running.grant_output(grant.limit)
        self._show_grant(job, grant)

    def _get(self, owner: str, job_id: str, admin: bool) -> Job:
        """The job of this id, or the caller's own job of this name (an admin's too:
        a name never finds another user's job)."""
        job = self._jobs.get(job_id)
        if job is None and is_name(job_id):
            job = self._jobs.named(owner, job_id)
            if job is None:
                raise JobNotFoundError(job_id, by_name=True)
        if job is None:
            raise JobNotFoundError(job_id)
        if not admin and job.owner != owner:
            raise AccessDeniedError()
        return job

    async def _discard_failed_start(self, job: Job, starting: StartingJob | None) -> None:
        """Undo a start that failed or was cancelled half-way (called shielded):
        `starting` is what the sandbox made of it (a `StartingJob`), if anything."""
        if starting is not None:
            await starting.discard()
        if job.watch is not None and self._watcher is not None:
            self._watcher.unwatch(job.watch)
        job.log.discard()
        assert self._store is not None
        try:
            await self._store.delete(job.job_id)
        except sqlite3.Error as exc:  # the next start finds it Pending: lost, and says so
            log.error("job %s: cannot delete the record of a failed start: %s", job.job_id, exc)
        job.handle(Event.START_FAILED)
        self._running[job.owner] -= 1
        self._disk.release(job.job_id)
        del self._jobs[job.job_id]
        self._record_bytes.release(job.job_id)

    async def _job_ended(self, job: Job) -> None:
        """A running job has ended and said so: free its owner's running quota, and
        count it finished (which may forget its owner's oldest finished jobs); its disk
        charge becomes what its output holds."""
        self._running[job.owner] -= 1
        if self._jobs.get(job.job_id) is job:
            self._disk.ended(job.job_id, job.log.disk_size)
        count_end(self.metrics, job.record)
        if self._jobs.get(job.job_id) is job and job.ended_clock is not None:
            await self._finished.finished(job.job_id, job.owner, job.ended_clock)

    async def _forget_by_id(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            await self._forget(job)

    async def _forget(self, job: Job) -> None:
        """Drop an ended job: its entry first (from then on it is not found), then its
        record, then its output and its job dir."""
        if self._jobs.get(job.job_id) is not job:
            await trio.lowlevel.checkpoint()
            return
        del self._jobs[job.job_id]
        self._event(job, EventKind.REMOVED)
        self._forgotten_output += job.log.size
        self._record_bytes.release(job.job_id)
        self._finished.discard(job.job_id, job.owner)
        assert self._store is not None
        with trio.CancelScope(shield=True):
            # The record before the files: a crash in between leaves a record whose
            # output is gone (a clear status), never files that no record claims.
            try:
                await self._store.delete(job.job_id)
            except sqlite3.Error as exc:
                log.error("job %s: cannot delete its record: %s", job.job_id, exc)
            faults.reach("forget.unrecorded")
            await job.log.aclose()
            await trio.to_thread.run_sync(shutil.rmtree, job.directory, True)
            self._disk.release(job.job_id)
            if self._reserve is not None and not self._reserve.held:
                await trio.to_thread.run_sync(self._reserve.refill)


#: The phases whose start is an event (FINISHING is still Active to the API; a
#: DISCARDED job, whose start failed, is gone).
_PHASE_EVENTS = {
    Phase.ACTIVE: EventKind.ACTIVE,
    Phase.STOPPING: EventKind.STOP_REQUESTED,
    Phase.TERMINATED: EventKind.TERMINATED,
    Phase.DISCARDED: EventKind.REMOVED,
}


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise InvalidRequestError(f"output offset must be zero or more, not {offset}")


__all__ = ["MAX_GRACE", "STORE_NAME", "JobTracker"]

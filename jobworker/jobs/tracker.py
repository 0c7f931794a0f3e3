"""`JobTracker`: every job of this host, by id and owner; starts, stops, reports
and streams them. Knows nothing of RPC.

Structured concurrency: the tracker is an async context manager that owns one
nursery. Each job gets a supervisor task in it, which waits for the job's
bubblewrap (a pidfd) and, whatever happens, finishes the job in a shielded,
time-bounded scope: kill what is left in its cgroup, read its usage, wait for its
output copier, remove the cgroup and the work dir, write its terminal record,
close its output log, mark it Terminated. Leaving the tracker stops every job
(SIGTERM, a grace period, SIGKILL) and leaves no process, cgroup or work dir
behind; after `leave_running` it leaves every running job running instead.

Durability (docs/architecture.md, "State on disk"): every job has a record in
`jobworker.jobs.store` (written before `start` returns, and its end before anyone
learns of it); its output is a file its copier writes (`jobworker.jobs.output_log`); its
exit code is in bubblewrap's status file. Nothing of a running job depends on
the tracker: a new tracker on the same data dir takes running jobs over and
reconciles the rest (`_restore`).

Owners: every public method takes the caller's name and an `admin` flag; a
caller that is not the owner (nor an admin) gets AccessDeniedError, an unknown
id JobNotFoundError.

Quotas and retention (bounded memory and disk whatever users do):
* an owner runs at most `max_running_per_user` jobs at once (QuotaExceededError);
* a job keeps at most its output limit of output (`max_output`, or less if it
  asks): its copier (`cat` under RLIMIT_FSIZE) dies there, so the job's next write fails
  with EPIPE (SIGPIPE), as under `cmd | head -c N`; status says the output was
  truncated, and why;
* its work dir is a tmpfs of `workdir_size` bytes charged to its memory cgroup
  (`jobworker.sandbox.workdir`);
* output lives on disk only (the daemon keeps no output in memory), and
  finished jobs are forgotten by `retention` (age, and count per owner; a task
  wakes when the oldest expires) or by `remove`: record, output and job dir go.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import functools
import logging
import os
import shutil
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from types import TracebackType

import attrs
import trio

from jobworker import faults, states
from jobworker import limits as limits_table
from jobworker.errors import (
    AccessDeniedError,
    BadStateError,
    InvalidRequestError,
    JobNotFoundError,
    QuotaExceededError,
    SetupError,
    ShuttingDownError,
    StartFailedError,
    sole_exception,
)
from jobworker.jobs.config import TrackerConfig
from jobworker.jobs.finished import FinishedJobs
from jobworker.jobs.output_log import FileLog
from jobworker.jobs.record import JobRecord
from jobworker.jobs.store import JobStore
from jobworker.jobs.watcher import OutputWatcher
from jobworker.model import JobSpec, JobState, JobStatus, Limits, Outcome, Usage
from jobworker.sandbox import (
    OUTPUT_NAME,
    WORK_NAME,
    CgroupDriver,
    HostSetup,
    JobRequest,
    Processes,
    RunningJob,
    Sandbox,
    StartingJob,
    exit_status,
)

log = logging.getLogger(__name__)

#: How long a job's final clean-up may take after its processes were killed.
FINISH_TIMEOUT = 10.0
#: The longest grace period a stop may ask for (an hour).
MAX_GRACE = 3600.0
#: The job records' file in the data dir.
STORE_NAME = "jobs.db"


@attrs.define(eq=False)
class _Job:
    """A job's mutable record. Only the tracker changes it, always in one step
    between awaits, so a reader never sees it half-updated."""

    job_id: str
    owner: str
    spec: JobSpec
    directory: Path
    log: FileLog
    created_at: float
    state: JobState = JobState.PENDING
    started_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    outcome_reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    stop_requested: bool = False
    timed_out: bool = False  # the stop was its time limit's (outcome timed-out)
    ended_clock: float | None = None  # trio.current_time() when it ended: retention's clock
    record_stale: bool = False  # its terminal record could not be written (disk full)
    ending: bool = False  # its terminal record is being written: no other write after it
    watch: int | None = None  # its output file's inotify watch
    workdir_bytes: int = 0  # the last reading, once the work dir is gone
    usage: Usage = attrs.Factory(Usage)
    cgroup_dirs: tuple[Path, ...] = ()  # its cgroup's directory in each hierarchy
    running: RunningJob | None = None  # its processes, while it runs
    started: trio.Event = attrs.Factory(trio.Event)  # set on Active, or when the start failed
    terminated: trio.Event = attrs.Factory(trio.Event)
    released: trio.Event = attrs.Factory(trio.Event)  # set once its output is on disk only

    @property
    def workdir(self) -> Path:
        return self.directory / WORK_NAME

    def move_to(self, state: JobState) -> None:
        self.state = states.transition(self.state, state)

    def snapshot(self) -> JobStatus:
        if self.state is JobState.ACTIVE:
            self.log.refresh()  # an fstat: exact, whatever inotify has said so far
        usage = self.usage
        workdir_bytes = self.workdir_bytes
        if self.state is JobState.ACTIVE and self.running is not None:
            with contextlib.suppress(Exception):  # a live read is best effort; the final one is not
                usage = self.running.usage()
            live = self.running.workdir_bytes()
            workdir_bytes = workdir_bytes if live is None else live
        return JobStatus(
            job_id=self.job_id,
            owner=self.owner,
            spec=self.spec,
            state=self.state,
            created_at=self.created_at,
            started_at=self.started_at,
            ended_at=self.ended_at,
            outcome=self.outcome,
            exit_code=self.exit_code,
            signal=self.signal,
            usage=usage,
            output_size=self.log.size,
            output_disk_bytes=self.log.disk_size,
            output_truncated=self.log.truncated,
            workdir_bytes=workdir_bytes,
            outcome_reason=self.outcome_reason,
        )

    def record(self) -> JobRecord:
        """The job as the store keeps it (no environment values: names only)."""
        spec, usage = self.spec, self.usage
        processes = self.running.processes if self.running else Processes()
        return JobRecord(
            job_id=self.job_id,
            owner=self.owner,
            argv=spec.argv,
            state=self.state.value,
            created_at=self.created_at,
            env_keys=tuple(spec.env or ()),
            workdir=spec.workdir,
            host_network=spec.host_network,
            limits=attrs.asdict(spec.limits),
            started_at=self.started_at,
            ended_at=self.ended_at,
            outcome=self.outcome.value if self.outcome else None,
            outcome_reason=self.outcome_reason,
            exit_code=self.exit_code,
            signal=self.signal,
            stop_requested=self.stop_requested,
            timed_out=self.timed_out,
            cpu_ns=usage.cpu_ns,
            peak_memory=usage.peak_memory,
            oom_kills=usage.oom_kills,
            output_size=self.log.size,
            output_truncated=self.log.truncated,
            workdir_bytes=self.workdir_bytes,
            supervisor_pid=processes.supervisor_pid,
            supervisor_start=processes.supervisor_start,
            command_pid=processes.command_pid,
            copier_pid=processes.copier_pid,
            copier_start=processes.copier_start,
            cgroups=tuple(map(str, self.cgroup_dirs)),
        )


@attrs.define(eq=False)
class JobTracker:
    """Runs jobs under cgroup limits and bubblewrap isolation; use as `async with`.

    config: the settings (`TrackerConfig`: data dir, job user, limits, quotas,
        retention), each with the default jwsd shows.
    cgroups: a ready cgroup driver (tests); `None` detects the host's.
    """

    config: TrackerConfig = attrs.Factory(TrackerConfig)
    cgroups: CgroupDriver | None = None

    _jobs: dict[str, _Job] = attrs.field(init=False, factory=dict)
    # Jobs not yet Terminated, per owner (the running quota).
    _running: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    # Finished jobs whose output is on disk, and the retention that forgets them.
    _finished: FinishedJobs = attrs.field(init=False)
    _collector: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _watching: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _stack: contextlib.AsyncExitStack | None = attrs.field(init=False, default=None)
    _closing: bool = attrs.field(init=False, default=False)
    _host: HostSetup | None = attrs.field(init=False, default=None)
    _sandbox: Sandbox | None = attrs.field(init=False, default=None)
    _store: JobStore | None = attrs.field(init=False, default=None)
    _watcher: OutputWatcher | None = attrs.field(init=False, default=None)
    # Set when the tracker leaves its jobs running as it exits (`leave_running`).
    _detaching: bool = attrs.field(init=False, default=False)

    @_finished.default
    def _finished_default(self) -> FinishedJobs:
        return FinishedJobs(self.config.retention, self._forget_by_id)

    # ---- life cycle -------------------------------------------------------

    async def __aenter__(self) -> JobTracker:
        await self._setup()
        async with contextlib.AsyncExitStack() as stack:
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            stack.push_async_callback(self._shielded_shutdown)
            self._nursery.start_soon(self._collect_expired)
            self._nursery.start_soon(self._watch_output)
            for job in self._jobs.values():
                if job.state is JobState.ACTIVE:  # taken over from an earlier run
                    self._nursery.start_soon(self._supervise, job)
                    if job.stop_requested:
                        # The earlier run recorded a stop and died before it landed:
                        # the stop was asked for, so it is carried out.
                        self._nursery.start_soon(
                            functools.partial(
                                self._stop_and_wait,
                                job,
                                self.config.stop_grace,
                                timing_out=job.timed_out,
                            )
                        )
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

    async def _setup(self) -> None:
        """Check the host can run jobs; raise SetupError saying what is missing."""
        self._host = HostSetup.check(
            self.config.job_user, data_dir=self.config.data_dir, binds=self.config.job_binds
        )
        self._prepare_data_dir()
        self._store = JobStore.open(self.config.data_dir / STORE_NAME)
        try:
            self._watcher = OutputWatcher()
            records = self._store.load()
            config = self.config
            self._sandbox = Sandbox.open(
                self._host,
                config.data_dir,
                cgroups=self.cgroups,
                cgroup_name=config.cgroup_name,
                cgroup_parent=config.cgroup_parent,
                workdir_size=config.workdir_size,
                tmpfs_size=config.tmpfs_size,
                setup_timeout=config.sandbox_timeout,
            )
            self.cgroups = self._sandbox.cgroups
            self._restore(records)
        except BaseException:
            self._store.close()
            if self._watcher is not None:
                self._watcher.close()
            raise

    def _prepare_data_dir(self) -> None:
        jobs = self.config.data_dir / "jobs"
        try:
            jobs.mkdir(parents=True, exist_ok=True)
            for directory in (self.config.data_dir, jobs):
                os.chmod(directory, 0o711)
            probe = jobs / f".probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise SetupError(
                f"data dir {self.config.data_dir} is not writable ({exc.strerror}); pick another with --data-dir"
            ) from exc
        assert self._host is not None
        self._host.check_reachable(self.config.data_dir)

    def _clean_leftovers(self, recorded: set[str], running: set[str]) -> None:
        """Delete what an earlier run left that no record claims: a job dir without a
        record (a start that never returned), and the work dir of every job that is
        not `running` any more."""
        jobs = self.config.data_dir / "jobs"
        for leftover in jobs.iterdir():
            if leftover.name in running:
                continue
            if leftover.name in recorded:
                shutil.rmtree(leftover / "work", ignore_errors=True)
            else:
                shutil.rmtree(leftover, ignore_errors=True)

    def _restore(self, records: builtins.list[JobRecord]) -> None:
        """Take over the jobs of the records an earlier run left; the reconcile table
        of docs/architecture.md ("State on disk"):

        * Terminated: shown as it was, its output read from its file;
        * its supervisor (bubblewrap, same pid and start time) still runs: re-attached,
          Active, as if jwsd had never left (`_reattach`);
        * it ended while no daemon ran: its exit code from its status file, OOM kills
          from its cgroup, Terminated as it would have been;
        * gone without an exit code: Terminated, outcome LOST, with the reason.

        Then every cgroup no running job claims is killed and removed, and every job
        dir no record claims deleted: a job is never run twice, and nothing runs
        that no record names."""
        assert self._store is not None and self._sandbox is not None
        now, clock = time.time(), trio.current_time()
        running: set[str] = set()
        for record in records:
            job = _job_from_record(record, self.config.data_dir / "jobs" / record.job_id)
            if job.state is not JobState.TERMINATED:
                if self._reattach(job, record):
                    running.add(job.job_id)
                    self._jobs[job.job_id] = job
                    self._running[job.owner] += 1
                    continue
                self._ended_while_away(job, record)
                self._store.put_blocking(job.record())
            assert job.ended_at is not None
            job.ended_clock = clock - max(0.0, now - job.ended_at)
            job.started.set()
            job.terminated.set()
            job.released.set()
            self._jobs[job.job_id] = job
            self._finished.restored(job.job_id, job.owner, job.ended_clock)
        self._clean_leftovers({record.job_id for record in records}, running)
        stale = self._sandbox.cleanup_stale(keep=running)
        if stale:
            log.warning("removed %d job cgroups that no running job claims", len(stale))
        if records:
            log.info(
                "restored %d job records; took over %d running jobs", len(records), len(running)
            )

    def _reattach(self, job: _Job, record: JobRecord) -> bool:
        """Take over the running job of `record` if its supervisor still runs; False
        when it does not (it ended, or never started)."""
        assert self._sandbox is not None and self._watcher is not None
        recorded = Processes(
            supervisor_pid=record.supervisor_pid,
            supervisor_start=record.supervisor_start,
            command_pid=record.command_pid,
            copier_pid=record.copier_pid,
            copier_start=record.copier_start,
        )
        running = self._sandbox.attach(job.job_id, job.owner, job.directory, recorded)
        if running is None:
            return False
        job.running, job.cgroup_dirs = running, running.cgroup_dirs
        job.log = FileLog.open(job.directory / OUTPUT_NAME, job.spec.limits.output)
        job.watch = self._watcher.watch(job.log.path, job.log.refresh)
        if job.started_at is None:
            # jwsd died before the record that names its start time: bubblewrap wrote the
            # status file (the sandbox init's pid) as the job started. Its time limit
            # counts from then.
            job.started_at = running.status_written_at()
        job.state = JobState.ACTIVE
        job.started.set()
        log.info(
            "job %s: taken over (supervisor pid %s)", job.job_id, running.processes.supervisor_pid
        )
        return True

    def _ended_while_away(self, job: _Job, record: JobRecord) -> None:
        """Terminate `job`, which ended (or never started) while no daemon ran: exactly
        as it would have been from its status file and cgroup, else LOST."""
        assert self._sandbox is not None
        path = job.directory / OUTPUT_NAME
        job.log = FileLog.restored(path, _file_size(path), truncated=record.output_truncated)
        remains = self._sandbox.inspect(job.job_id, job.owner, job.directory)
        reported = remains.exit_code
        if remains.usage is not None:
            job.usage = remains.usage
        job.state = JobState.TERMINATED
        if reported is None and (record.stop_requested or job.usage.oom_kills):
            # A stop (or the OOM killer) SIGKILLs bubblewrap with the rest of the cgroup,
            # before it can write an exit code: that is how the job ended.
            reported = -signal.SIGKILL
        if reported is None:
            job.outcome = Outcome.LOST
            job.ended_at = time.time()
            job.outcome_reason = (
                "jwsd stopped while the job was starting"
                if record.state == JobState.PENDING.value and not remains.sandbox_started
                else "the job's supervisor (bubblewrap) was gone, without an exit status, "
                "when jwsd started again"
            ) + "; its output until then is kept"
            return
        exit_code, signum = exit_status(-signal.SIGKILL, reported)
        job.exit_code, job.signal = exit_code, signum
        job.outcome = _outcome(
            job.usage, exit_code, signum, record.stop_requested, record.timed_out
        )
        # When bubblewrap wrote the exit code (its start, if it was SIGKILLed).
        job.ended_at = remains.status_written_at or time.time()
        job.outcome_reason = None

    def leave_running(self) -> None:
        """On exit, leave every running job running (and recorded), for the next jwsd
        on this data dir to take over, instead of stopping them; see `shutdown`."""
        self._detaching = True

    def _teardown(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
        # Records and output stay for the next start; work dirs are left only when a
        # clean-up timed out.
        for job in self._jobs.values():
            if job.running is not None:
                job.running.close()  # left open only when a clean-up timed out
            if job.state is JobState.TERMINATED:
                shutil.rmtree(job.workdir, ignore_errors=True)
        if self._watcher is not None:
            self._watcher.close()
        if self._store is not None:
            for job in self._jobs.values():
                if job.record_stale:
                    try:
                        self._store.put_blocking(attrs.evolve(job.record(), outcome_reason=None))
                    except sqlite3.Error as exc:
                        log.error("job %s: its record is still not written: %s", job.job_id, exc)
            self._store.close()

    async def _watch_output(self) -> None:
        """Dispatch inotify events to the running jobs' logs until shutdown."""
        assert self._watcher is not None
        with self._watching:
            await self._watcher.run()

    async def _shielded_shutdown(self) -> None:
        with trio.CancelScope(shield=True):
            await self.shutdown(self.config.stop_grace)

    async def shutdown(self, grace: float | None = None) -> None:
        """Accept no new jobs, stop every running one (SIGTERM, `grace` seconds, SIGKILL)
        and wait until all are Terminated. Bounded: grace plus FINISH_TIMEOUT."""
        self._closing = True
        self._collector.cancel()
        if self._detaching:
            # Every supervisor lets go of its job (`_let_go`); the jobs run on.
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
            await trio.lowlevel.checkpoint()
            return
        grace = self.config.stop_grace if grace is None else grace
        with trio.move_on_after(grace + FINISH_TIMEOUT) as scope:
            async with trio.open_nursery() as nursery:
                for job in list(self._jobs.values()):
                    nursery.start_soon(self._stop_and_wait, job, grace)
        if scope.cancelled_caught:
            log.error("shutdown: some jobs did not finish within %.1f s", grace + FINISH_TIMEOUT)
        self._watching.cancel()

    # ---- the public operations -------------------------------------------

    async def start(self, owner: str, spec: JobSpec) -> JobStatus:
        """Start `spec` for `owner`; return its status once the command runs.

        Raises InvalidRequestError (limits over the maxima, IO limits without a
        block device, host network not allowed), QuotaExceededError (the owner
        already runs max_running_per_user jobs), StartFailedError (program missing
        or not executable, sandbox refused), ShuttingDownError. A failed or
        cancelled start leaves nothing behind: no process, cgroup, dir or entry.
        """
        if self._closing or self._nursery is None:
            raise ShuttingDownError()
        assert self._sandbox is not None
        if (
            self.config.max_running_per_user is not None
            and self._running[owner] >= self.config.max_running_per_user
        ):
            raise QuotaExceededError(
                f"you already run {self._running[owner]} jobs, this server's limit per user; "
                "start more once some have ended (or stop some)"
            )
        limits = self._effective_limits(spec.limits)
        self._sandbox.check_limits(limits)
        if spec.host_network and not self.config.allow_host_network:
            raise InvalidRequestError(
                "this server does not allow jobs on the host network (jwsd --allow-host-network)"
            )
        job_id = str(uuid.uuid4())
        directory = self.config.data_dir / "jobs" / job_id
        job = _Job(
            job_id=job_id,
            owner=owner,
            spec=attrs.evolve(spec, limits=limits),
            directory=directory,
            log=FileLog(directory / OUTPUT_NAME, limits.output),
            created_at=time.time(),
        )
        cwd = spec.workdir or str(job.workdir)
        env = dict(spec.env) if spec.env else self._sandbox.default_env(job.workdir)
        self._sandbox.check_command(spec.argv, env, cwd=cwd, workdir=job.workdir)
        self._jobs[job_id] = job
        self._running[owner] += 1
        starting = None
        try:
            starting = self._sandbox.prepare(
                JobRequest(
                    job_id=job_id,
                    owner=owner,
                    directory=directory,
                    argv=spec.argv,
                    env=env,
                    cwd=cwd,
                    limits=limits,
                    host_network=spec.host_network,
                )
            )
            job.cgroup_dirs = starting.cgroup_dirs
            faults.reach("start.cgroup-made")
            self._follow_output(job)
            # The record is on disk before the caller learns the job's id; its write (a
            # worker thread) overlaps the sandbox's build, so it costs the start nothing.
            # A crash before it lands leaves a cgroup and a dir no record claims, which
            # the next start removes: nobody was told of that job.
            async with _first_error(), trio.open_nursery() as nursery:
                nursery.start_soon(self._save, job.record(), "start the job")
                job.running = await starting.launch()
            faults.reach("start.launched")
            started_at = time.time()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard_failed_start(job, starting)
            raise
        job.move_to(JobState.ACTIVE)
        job.started_at = started_at
        job.started.set()
        self._nursery.start_soon(self._supervise, job)
        return job.snapshot()

    async def stop(
        self, owner: str, job_id: str, grace: float | None = None, *, admin: bool = False
    ) -> JobStatus:
        """Stop the job: SIGTERM to its process group, then after `grace` seconds
        (None: the tracker's stop_grace) SIGKILL to everything in its cgroup.
        Returns once it is Terminated; stopping a terminated job is not an error.
        If the caller is cancelled, the stop still completes (the tracker owns it)."""
        job = self._get(owner, job_id, admin)
        if grace is not None and not 0 <= grace <= MAX_GRACE:
            raise InvalidRequestError(
                f"grace period must be between 0 and {MAX_GRACE:.0f} seconds, not {grace}"
            )
        if job.terminated.is_set():
            return job.snapshot()
        assert self._nursery is not None
        self._nursery.start_soon(
            self._stop_and_wait, job, self.config.stop_grace if grace is None else grace
        )
        await job.terminated.wait()
        return job.snapshot()

    async def wait(self, owner: str, job_id: str, *, admin: bool = False) -> JobStatus:
        """Wait until the job has ended and its output is on disk (or known lost); its
        final status. Raises as `status`."""
        job = self._get(owner, job_id, admin)
        await job.released.wait()
        return job.snapshot()

    async def remove(self, owner: str, job_id: str, *, admin: bool = False) -> None:
        """Forget a terminated job: its record, output and job dir; asking for it
        afterwards gets JobNotFoundError. Raises BadStateError while it runs."""
        job = self._get(owner, job_id, admin)
        if not job.terminated.is_set():
            raise BadStateError(
                "this job is still running; stop it first (jws stop), then remove it"
            )
        await job.released.wait()
        await self._forget(job)

    def status(self, owner: str, job_id: str, *, admin: bool = False) -> JobStatus:
        """A snapshot of the job (usage read live while it runs)."""
        return self._get(owner, job_id, admin).snapshot()

    def list(self, owner: str, *, admin: bool = False) -> list[JobStatus]:
        """Snapshots of the caller's jobs (every job for an admin), oldest first."""
        return [
            job.snapshot()
            for job in sorted(self._jobs.values(), key=lambda j: j.created_at)
            if admin or job.owner == owner
        ]

    @contextlib.asynccontextmanager
    async def subscribe(
        self, owner: str, job_id: str, offset: int = 0, *, admin: bool = False
    ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        """The job's output from byte `offset` on, as a channel of its own that ends
        after the last byte of a terminated job. Leaving the block stops the feed."""
        job = self._get(owner, job_id, admin)
        if offset < 0:
            raise InvalidRequestError(f"output offset must be zero or more, not {offset}")
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
        async generator). Ends after the last byte of a terminated job; close it with
        `contextlib.aclosing`."""
        job = self._get(owner, job_id, admin)
        if offset < 0:
            raise InvalidRequestError(f"output offset must be zero or more, not {offset}")
        read = job.log.read
        while chunk := await read(offset, chunk_size):
            yield chunk
            offset += len(chunk)

    # ---- internals ---------------------------------------------------------

    def _get(self, owner: str, job_id: str, admin: bool) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        if not admin and job.owner != owner:
            raise AccessDeniedError()
        return job

    def _effective_limits(self, asked: Limits) -> Limits:
        ceilings = self.config.max_limits
        if ceilings.output is None and self.config.max_output is not None:
            ceilings = attrs.evolve(ceilings, output=self.config.max_output)
        # A default above the maximum gives way to it: only what a request asks
        # for itself can be refused as too much.
        defaults = Limits.of(
            {
                kind: _smaller(self.config.default_limits.value(kind), ceilings.value(kind))
                for kind in limits_table.KINDS
            }
        )
        limits = asked.merged_over(defaults)
        for kind in limits_table.KINDS:
            value, ceiling = limits.value(kind), ceilings.value(kind)
            if ceiling is not None and (value is None or value > ceiling):
                if value is None:
                    limits = limits.replace(kind, ceiling)
                else:
                    raise InvalidRequestError(
                        f"{kind.label} limit {kind.unit.show(value)} is above this server's "
                        f"maximum of {kind.unit.show(ceiling)}"
                    )
        limits_table.check_host(limits)
        return limits

    def _follow_output(self, job: _Job) -> None:
        """Open the job's output log on the file its copier appends to, and watch it."""
        assert self._watcher is not None
        job.log = FileLog.open(job.directory / OUTPUT_NAME, job.spec.limits.output)
        job.watch = self._watcher.watch(job.log.path, job.log.refresh)

    async def _save(self, record: JobRecord, doing: str) -> None:
        """Write `record`; raise StartFailedError saying why when the store cannot
        (`doing`: what then cannot be done, e.g. "start the job")."""
        assert self._store is not None
        try:
            await self._store.put(record)
        except sqlite3.Error as exc:
            log.error("job %s: cannot write its record: %s", record.job_id, exc)
            raise StartFailedError(
                f"cannot {doing}: its record cannot be written ({exc}); "
                "free space in the server's data dir and try again"
            ) from exc

    async def _save_quietly(self, job: _Job) -> None:
        """Write the job's record as it is now; a failure is logged, and the record
        marked stale (written again when the tracker exits). Nothing once its
        terminal record is being written: this one would land after it."""
        assert self._store is not None
        if job.ending:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._store.put(job.record())
        except sqlite3.Error as exc:
            log.error("job %s: cannot write its record: %s", job.job_id, exc)
            job.record_stale = True

    async def _discard_failed_start(self, job: _Job, starting: StartingJob | None) -> None:
        """Undo a start that failed or was cancelled half-way (called shielded):
        `starting` is what the sandbox made of it, if anything."""
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
        job.move_to(JobState.TERMINATED)
        self._running[job.owner] -= 1
        job.started.set()
        job.terminated.set()
        job.released.set()
        del self._jobs[job.job_id]

    async def _supervise(self, job: _Job) -> None:
        """Own a running job until it is Terminated: wait for its end, then finish it
        (shielded and bounded), whatever cancels us; unless the tracker is leaving
        its jobs running (`leave_running`): then only stop watching."""
        running = job.running
        assert running is not None
        try:
            # What re-attaching needs (the supervisor's pid and start time), off the
            # start's critical path: a start that returned is on disk already.
            await self._save_quietly(job)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._enforce_timeout, job)
                await running.wait()
                nursery.cancel_scope.cancel()
            faults.reach("job.exited")
        finally:
            if self._detaching:
                self._let_go(job)
            else:
                await self._wind_up(job)

    async def _wind_up(self, job: _Job) -> None:
        """Finish a job whose supervisor has exited (or who is being stopped): shielded
        and bounded by FINISH_TIMEOUT."""
        running = job.running
        assert running is not None
        with trio.CancelScope(shield=True), trio.move_on_after(FINISH_TIMEOUT) as scope:
            await self._finish(job, running)
        if scope.cancelled_caught:
            log.error("job %s: clean-up did not finish within %.0f s", job.job_id, FINISH_TIMEOUT)
            # What the clean-up read before it gave up (the last readings, once taken).
            with contextlib.suppress(Exception):
                job.usage = running.usage()
            live = running.workdir_bytes()
            job.workdir_bytes = job.workdir_bytes if live is None else live
        with trio.CancelScope(shield=True):
            await self._mark_terminated(job, running.exit_status())  # unless `_finish` did
            job.released.set()
            await self._retire(job)

    async def _enforce_timeout(self, job: _Job) -> None:
        """Stop the job once it has run for its time limit, counted from its start
        (wall clock, so that a job taken over after a restart keeps its deadline; one
        whose deadline passed while no jwsd ran is stopped at once)."""
        timeout, started_at = job.spec.limits.timeout, job.started_at
        if timeout is None or started_at is None:
            return
        await trio.sleep(max(0.0, started_at + timeout - time.time()))
        assert self._nursery is not None
        # The stop belongs to the tracker (as a `jws stop`'s does), not to this timer,
        # which the job's end cancels.
        self._nursery.start_soon(
            functools.partial(self._stop_and_wait, job, self.config.stop_grace, timing_out=True)
        )

    def _let_go(self, job: _Job) -> None:
        """Stop watching a running job, leaving it (and its record) for the next jwsd."""
        if job.watch is not None and self._watcher is not None:
            self._watcher.unwatch(job.watch)
            job.watch = None
        if job.running is not None:
            job.running.let_go()
        job.log.detach()

    async def _finish(self, job: _Job, running: RunningJob) -> None:
        ending = await running.finish()
        if ending.usage is not None:
            job.usage = ending.usage
        if job.watch is not None and self._watcher is not None:
            self._watcher.unwatch(job.watch)
            job.watch = None
        job.log.refresh()
        if ending.copier_failure is not None:
            job.log.lost(ending.copier_failure)
        if ending.workdir_bytes is not None:
            job.workdir_bytes = ending.workdir_bytes
        await trio.to_thread.run_sync(shutil.rmtree, job.workdir, True)
        faults.reach("finish.cleaned")
        await self._mark_terminated(job, (ending.exit_code, ending.signal))

    async def _mark_terminated(self, job: _Job, status: tuple[int, int | None]) -> None:
        """Record how the job ended (`status`: its exit code and signal), then tell
        everyone: its record is on disk before its state, status and followers say it
        has ended."""
        if job.state is JobState.TERMINATED:
            await trio.lowlevel.checkpoint()
            return
        exit_code, signum = status
        outcome = _outcome(job.usage, exit_code, signum, job.stop_requested, job.timed_out)
        ended_at = time.time()
        job.ending = True  # no other write of this job's record may follow this one
        record = attrs.evolve(
            job.record(),
            state=JobState.TERMINATED.value,
            outcome=outcome.value,
            exit_code=exit_code,
            signal=signum,
            ended_at=ended_at,
        )
        assert self._store is not None
        try:
            await self._store.put(record)
        except sqlite3.Error as exc:
            # The job has ended all the same. The write is tried again when the tracker
            # exits; if it fails then too, the next start finds the job gone and
            # reports it lost.
            log.error("job %s: cannot write how it ended: %s", job.job_id, exc)
            job.record_stale = True
            job.outcome_reason = (
                f"how it ended could not be written to disk ({exc}); "
                "if jwsd restarts before space is freed, this job will be reported lost"
            )
        faults.reach("finish.recorded")
        job.exit_code, job.signal, job.outcome = exit_code, signum, outcome
        job.ended_at = ended_at
        job.ended_clock = trio.current_time()
        job.log.close()
        job.move_to(JobState.TERMINATED)
        self._running[job.owner] -= 1
        job.terminated.set()

    # ---- retention ---------------------------------------------------------------

    async def _retire(self, job: _Job) -> None:
        """A job's output is on disk: count it as finished (which may forget its
        owner's oldest finished jobs beyond the count the retention policy keeps)."""
        if self._jobs.get(job.job_id) is not job or job.ended_clock is None:
            return  # removed meanwhile
        await self._finished.finished(job.job_id, job.owner, job.ended_clock)

    async def _collect_expired(self) -> None:
        """Forget finished jobs as the retention policy says, until shutdown."""
        with self._collector:
            await self._finished.run()

    async def _forget_by_id(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            await self._forget(job)

    async def _forget(self, job: _Job) -> None:
        """Drop a finished job: its entry first (from then on it is not found), then
        its output and its job dir."""
        if self._jobs.get(job.job_id) is not job:
            await trio.lowlevel.checkpoint()
            return
        del self._jobs[job.job_id]
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

    async def _stop_and_wait(self, job: _Job, grace: float, *, timing_out: bool = False) -> None:
        """SIGTERM the job's process group, give it `grace` seconds, then SIGKILL
        everything in its cgroup; return once it is Terminated. `timing_out`: the
        job's time limit is stopping it (unless a stop came first)."""
        await job.started.wait()
        if job.terminated.is_set():
            return
        if not job.stop_requested:
            job.stop_requested = True
            job.timed_out = timing_out
            # On disk before the signal: a job that dies of it while no jwsd runs is
            # reconciled as stopped, not as killed by a signal.
            await self._save_quietly(job)
            faults.reach("stop.recorded")
            if job.terminated.is_set():
                return
        assert job.running is not None  # it has started, and has not ended
        job.running.signal(signal.SIGTERM)
        with trio.move_on_after(grace):
            await job.terminated.wait()
        if not job.terminated.is_set():
            log.info("job %s: still running %.1f s after SIGTERM; killing it", job.job_id, grace)
            job.running.kill()
        await job.terminated.wait()


@contextlib.asynccontextmanager
async def _first_error() -> AsyncIterator[None]:
    """Unwrap the exception group of a nursery inside the block when it stands for one
    error (others were cancelled because of it), so that callers see that error."""
    try:
        yield
    except BaseExceptionGroup as group:
        single = sole_exception(group, ignore=trio.Cancelled)
        if single is None:
            raise
        raise single from None


def _outcome(
    usage: Usage, exit_code: int, signum: int | None, stop_requested: bool, timed_out: bool
) -> Outcome:
    if usage.oom_kills and exit_code != 0:
        return Outcome.OOM_KILLED
    if stop_requested:
        return Outcome.TIMED_OUT if timed_out else Outcome.STOPPED
    if signum is not None:
        return Outcome.SIGNALED
    return Outcome.EXITED


def _job_from_record(record: JobRecord, directory: Path) -> _Job:
    """The job a record describes, with its output log restored from `directory`.
    A missing job dir makes a status that says the output is gone."""
    spec = JobSpec(
        argv=record.argv,
        workdir=record.workdir,
        limits=record.limits,
        host_network=record.host_network,
    )
    output = directory / OUTPUT_NAME
    truncated = record.output_truncated
    if not directory.exists():
        truncated = "its job dir was gone when jwsd started: the output is lost"
    return _Job(
        job_id=record.job_id,
        owner=record.owner,
        spec=spec,
        directory=directory,
        log=FileLog.restored(output, record.output_size, truncated=truncated),
        created_at=record.created_at,
        state=JobState(record.state),
        started_at=record.started_at,
        ended_at=record.ended_at,
        outcome=Outcome(record.outcome) if record.outcome else None,
        outcome_reason=record.outcome_reason,
        exit_code=record.exit_code,
        signal=record.signal,
        stop_requested=record.stop_requested,
        timed_out=record.timed_out,
        workdir_bytes=record.workdir_bytes,
        usage=Usage(record.cpu_ns, record.peak_memory, record.oom_kills),
    )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _smaller(default: float | None, ceiling: float | None) -> float | None:
    """The default, lowered to the ceiling when both are set."""
    if default is None or ceiling is None:
        return default
    return min(default, ceiling)


__all__ = ["JobTracker"]

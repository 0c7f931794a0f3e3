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
from functools import partial
from pathlib import Path, PurePosixPath
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
from jobworker.jobs import record_quota
from jobworker.jobs.config import TrackerConfig
from jobworker.jobs.finished import FinishedJobs
from jobworker.jobs.job_index import JobIndex, ListKey
from jobworker.jobs.output_log import FileLog
from jobworker.jobs.record import JobRecord
from jobworker.jobs.record_quota import RecordQuota
from jobworker.jobs.store import JobStore
from jobworker.jobs.watcher import OutputWatcher
from jobworker.model import MAX_PAGE_SIZE, JobSpec, JobState, JobStatus, Limits, Outcome, Usage
from jobworker.sandbox import bwrap, host, hostview, seccomp, spawn, workdir
from jobworker.sandbox.cgroups import CgroupDriver, JobCgroup, block_device_of, detect

log = logging.getLogger(__name__)

#: How long a job's final clean-up may take after its processes were killed.
FINISH_TIMEOUT = 10.0
#: The longest grace period a stop may ask for (an hour).
MAX_GRACE = 3600.0
#: The job records' file in the data dir, and each job's output file in its job dir.
STORE_NAME = "jobs.db"
OUTPUT_NAME = "output.log"
STATUS_NAME = "status.json"


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
    # The work dir's tmpfs, opened in the sandbox before the command ran (see
    # `sandbox.workdir`); closed once the last reading is taken.
    workdir_fd: int | None = None
    record_stale: bool = False  # its terminal record could not be written (disk full)
    ending: bool = False  # its terminal record is being written: no other write after it
    watch: int | None = None  # its output file's inotify watch
    copier_errors: int | None = None  # a memfd: the output copier's stderr
    workdir_bytes: int = 0  # the last reading, once the work dir is gone
    usage: Usage = attrs.Factory(Usage)
    cgroup: JobCgroup | None = None
    launched: spawn.Launched | None = None
    started: trio.Event = attrs.Factory(trio.Event)  # set on Active, or when the start failed
    terminated: trio.Event = attrs.Factory(trio.Event)
    released: trio.Event = attrs.Factory(trio.Event)  # set once its output is on disk only

    @property
    def workdir(self) -> Path:
        return self.directory / "work"

    def move_to(self, state: JobState) -> None:
        self.state = states.transition(self.state, state)

    def snapshot(self) -> JobStatus:
        if self.state is JobState.ACTIVE:
            self.log.refresh()  # an fstat: exact, whatever inotify has said so far
        usage = self.usage
        if self.state is JobState.ACTIVE and self.cgroup is not None:
            with contextlib.suppress(Exception):  # a live read is best effort; the final one is not
                usage = self.cgroup.usage()
        workdir_bytes = self.workdir_bytes
        if self.workdir_fd is not None and self.state is JobState.ACTIVE:
            workdir_bytes = workdir.used_bytes(self.workdir_fd)
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
        launched, cgroup = self.launched, self.cgroup
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
            supervisor_pid=launched.process.pid if launched else None,
            supervisor_start=launched.process_start if launched else None,
            command_pid=launched.command_pid if launched else None,
            copier_pid=launched.copier.pid if launched and launched.copier else None,
            copier_start=launched.copier_start if launched else None,
            cgroups=tuple(map(str, cgroup.directories())) if cgroup else (),
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

    _jobs: JobIndex[_Job] = attrs.field(init=False, factory=JobIndex)
    # Jobs not yet Terminated, per owner (the running quota).
    _running: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    # The bytes of records each owner holds (the record-bytes quota).
    _record_bytes: RecordQuota = attrs.field(init=False)
    # Finished jobs whose output is on disk, and the retention that forgets them.
    _finished: FinishedJobs = attrs.field(init=False)
    _collector: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _watching: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _stack: contextlib.AsyncExitStack | None = attrs.field(init=False, default=None)
    _closing: bool = attrs.field(init=False, default=False)
    _user: bwrap.JobUser | None = attrs.field(init=False, default=None)
    _tools: bwrap.SandboxTools | None = attrs.field(init=False, default=None)
    _seccomp: bytes | None = attrs.field(init=False, default=None)
    _view: hostview.HostView | None = attrs.field(init=False, default=None)
    _io_device: tuple[int, int] | None = attrs.field(init=False, default=None)
    _io_device_error: str | None = attrs.field(init=False, default=None)
    _store: JobStore | None = attrs.field(init=False, default=None)
    _watcher: OutputWatcher | None = attrs.field(init=False, default=None)
    # Set when the tracker leaves its jobs running as it exits (`leave_running`).
    _detaching: bool = attrs.field(init=False, default=False)

    @_record_bytes.default
    def _record_bytes_default(self) -> RecordQuota:
        return RecordQuota(self.config.max_record_bytes_per_user)

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
        host.check_root()
        self._tools = host.find_tools()
        self._user = bwrap.JobUser.lookup(self.config.job_user)
        self._seccomp = seccomp.program()
        self._view = hostview.HostView.build(
            can_read=hostview.readable_by(self._user),
            data_dir=self.config.data_dir,
            binds=self.config.job_binds,
        )
        host.check_sandbox(self._tools, self._user, self._seccomp, self._view.options)
        self._prepare_data_dir()
        self._store = JobStore.open(self.config.data_dir / STORE_NAME)
        try:
            self._watcher = OutputWatcher()
            records = self._store.load()
            if self.cgroups is None:
                self.cgroups = detect(
                    name=self.config.cgroup_name, subtree=self.config.cgroup_parent
                )
            self._restore(records)
        except BaseException:
            self._store.close()
            if self._watcher is not None:
                self._watcher.close()
            raise
        try:
            self._io_device = block_device_of(self.config.data_dir)
        except InvalidRequestError as exc:
            self._io_device_error = str(exc)

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
        assert self._user is not None
        host.check_reachable(self.config.data_dir, self._user)

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
        assert self._store is not None and self.cgroups is not None
        now, clock = time.time(), trio.current_time()
        running: set[str] = set()
        for record in records:
            job = _job_from_record(record, self.config.data_dir / "jobs" / record.job_id)
            self._record_bytes.restore(job.owner, job.job_id, record_quota.record_size(record))
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
        stale = self.cgroups.cleanup_stale(keep=running)
        if stale:
            log.warning("removed %d job cgroups that no running job claims", len(stale))
        if records:
            log.info(
                "restored %d job records; took over %d running jobs", len(records), len(running)
            )

    def _reattach(self, job: _Job, record: JobRecord) -> bool:
        """Take over the running job of `record` if its supervisor still runs; False
        when it does not (it ended, or never started)."""
        assert self.cgroups is not None and self._watcher is not None
        supervisor_pid, supervisor_start = record.supervisor_pid, record.supervisor_start
        command_pid = record.command_pid
        status = job.directory / STATUS_NAME
        if supervisor_pid is None:
            # Pending: jwsd died between the start's response and the record that names
            # the supervisor. Bubblewrap's status file names the sandbox's init; its
            # parent is bubblewrap, if it is still in the job's cgroup.
            command_pid = _child_pid(status)
            supervisor_pid = _parent_of(command_pid) if command_pid else None
            supervisor_start = spawn.start_time(supervisor_pid) if supervisor_pid else None
        if supervisor_pid is None or command_pid is None:
            return False
        process = spawn.AttachedProcess.attach(supervisor_pid, supervisor_start)
        if process is None:
            return False
        cgroup = self.cgroups.attach(job.job_id, job.owner)
        if cgroup is None or supervisor_pid not in cgroup.pids():
            process.close()
            return False
        copier = None
        if record.copier_pid is not None:
            copier = spawn.AttachedProcess.attach(record.copier_pid, record.copier_start)
            if copier is not None:
                with contextlib.suppress(OSError):  # its stderr, a memfd only it holds now
                    job.copier_errors = os.open(
                        f"/proc/{record.copier_pid}/fd/2", os.O_RDONLY | os.O_CLOEXEC
                    )
        job.cgroup = cgroup
        job.launched = spawn.Launched(
            process=process,
            copier=copier,
            command_pid=command_pid,
            process_start=supervisor_start,
            copier_start=record.copier_start if copier else None,
        )
        job.log = FileLog.open(job.directory / OUTPUT_NAME, job.spec.limits.output)
        job.watch = self._watcher.watch(job.log.path, job.log.refresh)
        if self.config.workdir_size is not None:
            with contextlib.suppress(OSError, StartFailedError):
                _open_workdir(job, command_pid)
        if job.started_at is None:
            # jwsd died before the record that names its start time: bubblewrap wrote the
            # status file (the sandbox init's pid) as the job started. Its time limit
            # counts from then.
            with contextlib.suppress(OSError):
                job.started_at = status.stat().st_mtime
        job.state = JobState.ACTIVE
        job.started.set()
        log.info("job %s: taken over (supervisor pid %d)", job.job_id, supervisor_pid)
        return True

    def _ended_while_away(self, job: _Job, record: JobRecord) -> None:
        """Terminate `job`, which ended (or never started) while no daemon ran: exactly
        as it would have been from its status file and cgroup, else LOST."""
        status = job.directory / STATUS_NAME
        path = job.directory / OUTPUT_NAME
        job.log = FileLog.restored(path, _file_size(path), truncated=record.output_truncated)
        reported = None
        with contextlib.suppress(OSError):
            fd = os.open(status, os.O_RDONLY | os.O_CLOEXEC)
            try:
                reported = spawn.read_exit_code(fd)
            finally:
                os.close(fd)
        cgroup = self.cgroups.attach(job.job_id, job.owner) if self.cgroups is not None else None
        if cgroup is not None:
            with contextlib.suppress(Exception):
                job.usage = cgroup.usage()
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
                if record.state == JobState.PENDING.value and not _child_pid(status)
                else "the job's supervisor (bubblewrap) was gone, without an exit status, "
                "when jwsd started again"
            ) + "; its output until then is kept"
            return
        exit_code, signum = spawn.exit_status(-signal.SIGKILL, reported)
        job.exit_code, job.signal = exit_code, signum
        job.outcome = _outcome(
            job.usage, exit_code, signum, record.stop_requested, record.timed_out
        )
        job.ended_at = status.stat().st_mtime  # when bubblewrap wrote the exit code
        job.outcome_reason = None

    def leave_running(self) -> None:
        """On exit, leave every running job running (and recorded), for the next jwsd
        on this data dir to take over, instead of stopping them; see `shutdown`."""
        self._detaching = True

    def _teardown(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()
        # Records and output stay for the next start; work dirs are left only when a
        # clean-up timed out.
        for job in self._jobs.values():
            self._close_workdir(job)  # left open only when a clean-up timed out
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
        assert self._user is not None and self._tools is not None and self.cgroups is not None
        assert self._view is not None
        if (
            self.config.max_running_per_user is not None
            and self._running[owner] >= self.config.max_running_per_user
        ):
            raise QuotaExceededError(
                f"you already run {self._running[owner]} jobs, this server's limit per user; "
                "start more once some have ended (or stop some)"
            )
        limits = self._effective_limits(spec.limits)
        if limits.has_io and self._io_device is None:
            raise InvalidRequestError(self._io_device_error or "io limits are not available")
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
        env = dict(spec.env) if spec.env else self._default_env(job.workdir)
        # What bubblewrap finally execs, with the PWD the shell adds (the slack covers it).
        spawn.check_exec_size(bwrap.exec_argv(self._tools, spec.argv), env)
        spawn.resolve_program(
            spec.argv[0],
            path=env.get("PATH"),
            cwd=cwd,
            user=self._user,
            hidden=(*self._view.hidden, PurePosixPath(self.config.data_dir)),
            visible=(*self._view.visible, PurePosixPath(job.workdir)),
        )
        self._record_bytes.charge(owner, job_id, record_quota.spec_record_bytes(spec))
        self._jobs[job_id] = job
        self._running[owner] += 1
        try:
            self._prepare_job(job)
            faults.reach("start.cgroup-made")
            cgroup = job.cgroup
            assert cgroup is not None
            tools, user = self._tools, self._user
            tmpfs_size = _tmpfs_size(self.config.tmpfs_size, limits.memory)
            build_cmd = functools.partial(
                bwrap.spawn_argv,
                tools,
                user,
                procs_files=cgroup.procs_files,
                data_dir=self.config.data_dir,
                workdir=job.workdir,
                cwd=cwd,
                argv=spec.argv,
                host_network=spec.host_network,
                tmpfs_size=tmpfs_size,
                workdir_size=self.config.workdir_size,
                view=self._view.options,
            )
            # The record is on disk before the caller learns the job's id; its write (a
            # worker thread) overlaps the sandbox's build, so it costs the start nothing.
            # A crash before it lands leaves a cgroup and a dir no record claims, which
            # the next start removes: nobody was told of that job.
            output_fd, status_fd = self._open_job_files(job)
            try:
                async with _first_error(), trio.open_nursery() as nursery:
                    nursery.start_soon(self._save, job.record(), "start the job")
                    job.launched = await spawn.launch(
                        lambda status_fd, args_fd: build_cmd(status_fd=status_fd, args_fd=args_fd),
                        # The job's environment goes to bubblewrap through a file
                        # descriptor, for the sandbox only: the root helpers never see it.
                        sandbox_args=bwrap.env_options(env),
                        output_file=output_fd,
                        status_file=status_fd,
                        output_limit=limits.output,
                        copier_errors=job.copier_errors,
                        pipe_owner=(user.uid, user.gid),
                        on_ready=None
                        if self.config.workdir_size is None
                        else partial(_open_workdir, job),
                        seccomp=self._seccomp,
                        kill_sandbox=cgroup.kill_all,
                        setup_timeout=self.config.sandbox_timeout,
                    )
            finally:
                os.close(output_fd)
                os.close(status_fd)
            faults.reach("start.launched")
            started_at = time.time()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard_failed_start(job)
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
        from the first): one page, in O(log n + limit) (`jobworker.jobs.job_index`)."""
        return [job.snapshot() for job in self._jobs.page(None if admin else owner, after, limit)]

    def running_count(self) -> int:
        """How many jobs have not yet Terminated, of every owner."""
        return sum(self._running.values())

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

    def _default_env(self, workdir: Path) -> dict[str, str]:
        assert self._user is not None
        return {
            "PATH": spawn.DEFAULT_PATH,
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "USER": self._user.name,
            "LOGNAME": self._user.name,
        }

    def _prepare_job(self, job: _Job) -> None:
        """Make the job's dir, its work dir (unless it is a tmpfs in the sandbox only)
        and its cgroup. Raises InvalidRequestError or SetupError (see `start`)."""
        assert self._user is not None and self.cgroups is not None
        # The job user reaches its work dir by exact path only (0711 above it:
        # traverse, never list); everything else in the data dir stays root's.
        job.directory.mkdir(mode=0o711)
        if self.config.workdir_size is None:  # else a tmpfs in the sandbox only
            job.workdir.mkdir(mode=0o700)
            os.chown(job.workdir, self._user.uid, self._user.gid)
        job.cgroup = self.cgroups.create(
            job.job_id, _with_helpers(job.spec.limits), self._io_device, owner=job.owner
        )

    def _open_job_files(self, job: _Job) -> tuple[int, int]:
        """Create the job's output and status files (root's, 0600) and open them for
        appending, for the copier and bubblewrap; follow the output. Returns the two
        fds, which the caller closes once they are handed on."""
        assert self._watcher is not None
        # Read-write: the start reads them back (the sandbox init's pid, an error message).
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        output_fd = os.open(job.directory / OUTPUT_NAME, flags, 0o600)
        try:
            status_fd = os.open(job.directory / STATUS_NAME, flags, 0o600)
        except BaseException:
            os.close(output_fd)
            raise
        try:
            job.copier_errors = os.memfd_create("jobworker-copier-errors", os.MFD_CLOEXEC)
            job.log = FileLog.open(job.directory / OUTPUT_NAME, job.spec.limits.output)
            job.watch = self._watcher.watch(job.log.path, job.log.refresh)
        except BaseException:
            os.close(output_fd)
            os.close(status_fd)
            raise
        return output_fd, status_fd

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

    async def _discard_failed_start(self, job: _Job) -> None:
        """Undo a start that failed or was cancelled half-way (called shielded)."""
        if job.cgroup is not None:
            job.cgroup.kill_all()
            if job.launched is not None:  # it started, but its record could not be written
                launched = job.launched
                await launched.process.wait()
                if launched.copier is not None:
                    await launched.copier.wait()
            try:
                await job.cgroup.remove()
            except SetupError:
                log.exception("job %s: cannot remove the cgroup of a failed start", job.job_id)
        self._close_workdir(job)
        if job.watch is not None and self._watcher is not None:
            self._watcher.unwatch(job.watch)
        if job.copier_errors is not None:
            os.close(job.copier_errors)
            job.copier_errors = None
        job.log.discard()
        await trio.to_thread.run_sync(shutil.rmtree, job.directory, True)
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
        self._record_bytes.release(job.job_id)

    async def _supervise(self, job: _Job) -> None:
        """Own a running job until it is Terminated: wait for its end, then finish it
        (shielded and bounded), whatever cancels us; unless the tracker is leaving
        its jobs running (`leave_running`): then only stop watching."""
        launched = job.launched
        assert launched is not None
        try:
            # What re-attaching needs (the supervisor's pid and start time), off the
            # start's critical path: a start that returned is on disk already.
            await self._save_quietly(job)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._enforce_timeout, job)
                await launched.process.wait()
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
        with trio.CancelScope(shield=True), trio.move_on_after(FINISH_TIMEOUT) as scope:
            await self._finish(job)
        if scope.cancelled_caught:
            log.error("job %s: clean-up did not finish within %.0f s", job.job_id, FINISH_TIMEOUT)
        with trio.CancelScope(shield=True):
            await self._mark_terminated(job, self._reported(job))  # unless `_finish` did
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
        launched = job.launched
        if launched is not None:
            for process in (launched.process, launched.copier):
                if isinstance(process, spawn.AttachedProcess):
                    process.close()
                elif process is not None:
                    # Not ours to wait for any more: the next jwsd watches it (and init
                    # reaps it once this process has exited).
                    process.popen.returncode = 0
                    process._close_pidfd()
        job.log.detach()
        self._close_workdir(job)
        if job.copier_errors is not None:
            os.close(job.copier_errors)
            job.copier_errors = None

    def _reported(self, job: _Job) -> int | None:
        """The exit code bubblewrap wrote to the job's status file, if it did."""
        try:
            fd = os.open(job.directory / STATUS_NAME, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return spawn.read_exit_code(fd)
        finally:
            os.close(fd)

    async def _finish(self, job: _Job) -> None:
        launched = job.launched
        cgroup = job.cgroup
        assert launched is not None and cgroup is not None
        if not _exited(launched.process):
            cgroup.kill_all()
            await launched.process.wait()
        with contextlib.suppress(Exception):
            job.usage = cgroup.usage()
        # The pid namespace dies with its init, but a process could still be leaving.
        cgroup.kill_all()
        # The copier ends once the last writer of the pipe has gone: the file is complete.
        if launched.copier is not None:
            with trio.move_on_after(FINISH_TIMEOUT / 2):
                await launched.copier.wait()
            launched.copier.kill()
        if job.watch is not None and self._watcher is not None:
            self._watcher.unwatch(job.watch)
            job.watch = None
        job.log.refresh()
        failure = self._copier_failure(job)
        if failure is not None:
            job.log.lost(failure)
        if job.workdir_fd is not None:
            job.workdir_bytes = workdir.used_bytes(job.workdir_fd)
        # Before the cgroup goes: closing frees the work dir's pages charged to it.
        self._close_workdir(job)
        try:
            await cgroup.remove()
        except SetupError:
            log.exception("job %s: cannot remove its cgroup", job.job_id)
        await trio.to_thread.run_sync(shutil.rmtree, job.workdir, True)
        faults.reach("finish.cleaned")
        await self._mark_terminated(job, self._reported(job))

    def _copier_failure(self, job: _Job) -> str | None:
        """Why the copier could not write all of the output (its error message), or
        None when it wrote everything (or the cap stopped it: that is no loss)."""
        launched = job.launched
        copier = launched.copier if launched else None
        text = ""
        if job.copier_errors is not None:
            text = os.pread(job.copier_errors, 4096, 0).decode(errors="replace").strip()
            os.close(job.copier_errors)
            job.copier_errors = None
        # SIGXFSZ: the copier reached the output cap (`spawn.limit_copier`), no loss.
        failed = isinstance(copier, spawn.ChildProcess) and copier.returncode not in (
            0,
            None,
            -signal.SIGXFSZ,
        )
        if not text and not failed:
            return None
        return text.splitlines()[-1] if text else "the output copier failed"

    async def _mark_terminated(self, job: _Job, reported: int | None) -> None:
        """Record how the job ended, then tell everyone: its record is on disk before
        its state, status and followers say it has ended."""
        if job.state is JobState.TERMINATED:
            await trio.lowlevel.checkpoint()
            return
        returncode = job.launched.process.returncode if job.launched else None
        if returncode is None:
            # Only when the bounded clean-up gave up waiting: by then `_finish` has
            # SIGKILLed everything in the job's cgroup, so that is how it ended.
            returncode = -signal.SIGKILL
        exit_code, signum = spawn.exit_status(returncode, reported)
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

    @staticmethod
    def _close_workdir(job: _Job) -> None:
        if job.workdir_fd is not None:
            os.close(job.workdir_fd)
            job.workdir_fd = None

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
        self._signal_group(job, signal.SIGTERM)
        with trio.move_on_after(grace):
            await job.terminated.wait()
        if not job.terminated.is_set() and job.cgroup is not None:
            log.info("job %s: still running %.1f s after SIGTERM; killing it", job.job_id, grace)
            job.cgroup.kill_all()
        await job.terminated.wait()

    def _signal_group(self, job: _Job, signum: signal.Signals) -> None:
        launched, cgroup = job.launched, job.cgroup
        if launched is None or cgroup is None:
            return
        # Signal the group only while its leader is still in the job's cgroup: a pid
        # that has exited could have been reused by an unrelated process.
        if launched.command_pid in cgroup.pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launched.command_pid, signum)


def _open_workdir(job: _Job, init_pid: int) -> None:
    """Open the job's work dir tmpfs in its sandbox, before its command runs."""
    try:
        job.workdir_fd = workdir.open_in_sandbox(init_pid, job.workdir)
    except OSError as exc:
        raise StartFailedError(f"cannot open the job's work dir: {exc.strerror}") from exc


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


def _child_pid(status: Path) -> int | None:
    """The sandbox init's pid from bubblewrap's status file (None: none yet)."""
    try:
        fd = os.open(status, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return spawn.read_child_pid(fd)
    finally:
        os.close(fd)


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return int(stat_file.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _exited(process: spawn.Supervisor) -> bool:
    if isinstance(process, spawn.AttachedProcess):
        return process.exited
    return process.returncode is not None


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


def _tmpfs_size(configured: int | None, memory: int | None) -> int | None:
    """The size of each of a job's writable tmpfs: the configured size, at most the
    job's memory limit (the smaller of those that are set)."""
    sizes = [size for size in (configured, memory) if size is not None]
    return min(sizes) if sizes else None


def _with_helpers(limits: Limits) -> Limits:
    """The pids limit as the cgroup must see it: the user's count plus bubblewrap's helpers."""
    if limits.pids is None:
        return limits
    return attrs.evolve(limits, pids=limits.pids + bwrap.HELPER_PROCESSES)


__all__ = ["JobTracker"]

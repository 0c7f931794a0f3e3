"""`JobTracker`: every job of this host, by id and owner; starts, stops, reports
and streams them. Knows nothing of RPC.

Structured concurrency: the tracker is an async context manager that owns one
nursery. Each job gets a supervisor task in it, which owns a nursery of its own
(the output pump and the exit-status reader) and, whatever happens, finishes the
job in a shielded, time-bounded scope: kill what is left in its cgroup, read its
usage, remove the cgroup and the work dir, close its output log, mark it
Terminated. Leaving the tracker stops every job (SIGTERM, a grace period,
SIGKILL) and leaves no process, cgroup or directory behind.

Owners: every public method takes the caller's name and an `admin` flag; a
caller that is not the owner (nor an admin) gets AccessDeniedError, an unknown
id JobNotFoundError.

Quotas and retention (bounded memory and disk whatever users do):
* an owner runs at most `max_running_per_user` jobs at once (QuotaExceededError);
* a job keeps at most its output limit of output (`max_output`, or less if it
  asks): past it the log keeps nothing more and the tracker closes its end of the
  job's output pipe, so the job's next write fails with EPIPE (SIGPIPE), as under
  `cmd | head -c N`; status says the output was truncated, and why;
* its work dir is a tmpfs of `workdir_size` bytes charged to its memory cgroup
  (`jobworker.sandbox.workdir`);
* once a job has ended its output lives on disk only (`OutputLog.release`), and
  finished jobs are forgotten by `retention` (age, and count per owner; a task
  wakes when the oldest expires) or by `remove`: record, output and job dir go.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from functools import partial
from pathlib import Path, PurePosixPath
from types import TracebackType

import attrs
import trio

from jobworker import limits as limits_table
from jobworker import states
from jobworker.errors import (
    AccessDeniedError,
    BadStateError,
    InvalidRequestError,
    JobNotFoundError,
    QuotaExceededError,
    SetupError,
    ShuttingDownError,
    StartFailedError,
)
from jobworker.model import OUTPUT_CHUNK, JobSpec, JobState, JobStatus, Limits, Outcome, Usage
from jobworker.output import OutputLog
from jobworker.retention import Finished, RetentionPolicy
from jobworker.sandbox import bwrap, host, seccomp, spawn, workdir
from jobworker.sandbox.cgroups import CgroupDriver, JobCgroup, block_device_of, detect

log = logging.getLogger(__name__)

#: How long a job's final clean-up may take after its processes were killed.
FINISH_TIMEOUT = 10.0
#: The longest grace period a stop may ask for (an hour).
MAX_GRACE = 3600.0
#: The defaults of the quotas (jwsd's flags show them).
DEFAULT_MAX_RUNNING = 32
DEFAULT_MAX_OUTPUT = 1 << 30
DEFAULT_WORKDIR_SIZE = 1 << 30


@attrs.define(eq=False)
class _Job:
    """A job's mutable record. Only the tracker changes it, always in one step
    between awaits, so a reader never sees it half-updated."""

    job_id: str
    owner: str
    spec: JobSpec
    directory: Path
    log: OutputLog
    created_at: float
    state: JobState = JobState.PENDING
    started_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    exit_code: int | None = None
    signal: int | None = None
    stop_requested: bool = False
    ended_clock: float | None = None  # trio.current_time() when it ended: retention's clock
    # The work dir's tmpfs, opened in the sandbox before the command ran (see
    # `sandbox.workdir`); closed once the last reading is taken.
    workdir_fd: int | None = None
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
        )


@attrs.define(eq=False)
class JobTracker:
    """Runs jobs under cgroup limits and bubblewrap isolation; use as `async with`.

    data_dir: where job work dirs and spilled output live (created if missing;
        must be writable). Its block device is the one IO limits apply to.
    job_user: the host account jobs run as; "root" is an explicit opt-in.
    default_limits: limits applied where a request sets none.
    max_limits: the most a request may ask for; `None` fields are unbounded.
    allow_host_network: whether a job may share the host's network namespace.
    stop_grace: seconds between SIGTERM and SIGKILL when a stop gives none.
    output_memory_limit: bytes of each job's output kept in memory before it spills.
    tmpfs_size: bytes each of a job's writable tmpfs (/tmp, /dev/shm) may hold, at
        most the job's memory limit (its pages are charged to the job's memory
        cgroup); `None`: only the memory limit bounds them.
    cgroup_name: the name of the parent cgroup of all jobs (in the daemon's subtree).
    cgroup_parent: the cgroup subtree jobs go in (a cgroup path); `None`: the
        daemon's own cgroup (see `sandbox.cgroups.detect`).
    cgroups: a ready driver (tests); `None` detects the host's.
    max_running_per_user: the most jobs an owner may have not yet Terminated
        (`None`: no limit).
    max_output: the most output a job keeps; a request may ask for less (its
        `Limits.output`), never more (`None`: no cap).
    workdir_size: the size of each job's tmpfs work dir (`None`: a plain
        directory on the data dir's file system, unbounded).
    sandbox_timeout: how long a job's sandbox may take to build before its start
        fails (StartFailedError).
    retention: when finished jobs are forgotten (`jobworker.retention`).
    """

    data_dir: Path
    job_user: str = "nobody"
    default_limits: Limits = attrs.Factory(Limits)
    max_limits: Limits = attrs.Factory(Limits)
    allow_host_network: bool = False
    stop_grace: float = 5.0
    output_memory_limit: int = 8 << 20
    tmpfs_size: int | None = None
    cgroup_name: str = "jobworker"
    cgroup_parent: str | None = None
    cgroups: CgroupDriver | None = None
    max_running_per_user: int | None = DEFAULT_MAX_RUNNING
    max_output: int | None = DEFAULT_MAX_OUTPUT
    workdir_size: int | None = DEFAULT_WORKDIR_SIZE
    sandbox_timeout: float = spawn.SANDBOX_SETUP_TIMEOUT
    retention: RetentionPolicy = attrs.Factory(RetentionPolicy)

    _jobs: dict[str, _Job] = attrs.field(init=False, factory=dict)
    # Jobs not yet Terminated, per owner (the running quota).
    _running: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    # Finished jobs whose output is on disk, per owner, in the order they were released.
    _finished: dict[str, dict[str, _Job]] = attrs.field(init=False, factory=dict)
    _finished_changed: trio.Event = attrs.field(init=False, factory=trio.Event)
    _collector: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _stack: contextlib.AsyncExitStack | None = attrs.field(init=False, default=None)
    _closing: bool = attrs.field(init=False, default=False)
    _user: bwrap.JobUser | None = attrs.field(init=False, default=None)
    _tools: bwrap.SandboxTools | None = attrs.field(init=False, default=None)
    _seccomp: bytes | None = attrs.field(init=False, default=None)
    _io_device: tuple[int, int] | None = attrs.field(init=False, default=None)
    _io_device_error: str | None = attrs.field(init=False, default=None)

    # ---- life cycle -------------------------------------------------------

    async def __aenter__(self) -> JobTracker:
        await self._setup()
        async with contextlib.AsyncExitStack() as stack:
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            stack.push_async_callback(self._shielded_shutdown)
            self._nursery.start_soon(self._collect_expired)
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
        self._user = bwrap.JobUser.lookup(self.job_user)
        self._seccomp = seccomp.program()
        host.check_sandbox(self._tools, self._user, self._seccomp)
        self._prepare_data_dir()
        if self.cgroups is None:
            self.cgroups = detect(name=self.cgroup_name, subtree=self.cgroup_parent)
        stale = self.cgroups.cleanup_stale()
        if stale:
            log.warning("removed %d job cgroups left by an earlier run", len(stale))
        try:
            self._io_device = block_device_of(self.data_dir)
        except InvalidRequestError as exc:
            self._io_device_error = str(exc)

    def _prepare_data_dir(self) -> None:
        jobs = self.data_dir / "jobs"
        try:
            jobs.mkdir(parents=True, exist_ok=True)
            for directory in (self.data_dir, jobs):
                os.chmod(directory, 0o711)
            probe = jobs / f".probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise SetupError(
                f"data dir {self.data_dir} is not writable ({exc.strerror}); pick another with --data-dir"
            ) from exc
        assert self._user is not None
        host.check_reachable(self.data_dir, self._user)
        # Left by a crash: runs are not persistent, so their files are garbage now.
        for leftover in jobs.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    def _teardown(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()
        for job in self._jobs.values():
            job.log.discard()
            self._close_workdir(job)  # left open only when a clean-up timed out
            shutil.rmtree(job.directory, ignore_errors=True)

    async def _shielded_shutdown(self) -> None:
        with trio.CancelScope(shield=True):
            await self.shutdown(self.stop_grace)

    async def shutdown(self, grace: float | None = None) -> None:
        """Accept no new jobs, stop every running one (SIGTERM, `grace` seconds, SIGKILL)
        and wait until all are Terminated. Bounded: grace plus FINISH_TIMEOUT."""
        self._closing = True
        self._collector.cancel()
        grace = self.stop_grace if grace is None else grace
        with trio.move_on_after(grace + FINISH_TIMEOUT) as scope:
            async with trio.open_nursery() as nursery:
                for job in list(self._jobs.values()):
                    nursery.start_soon(self._stop_and_wait, job, grace)
        if scope.cancelled_caught:
            log.error("shutdown: some jobs did not finish within %.1f s", grace + FINISH_TIMEOUT)

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
        if (
            self.max_running_per_user is not None
            and self._running[owner] >= self.max_running_per_user
        ):
            raise QuotaExceededError(
                f"you already run {self._running[owner]} jobs, this server's limit per user; "
                "start more once some have ended (or stop some)"
            )
        limits = self._effective_limits(spec.limits)
        if limits.has_io and self._io_device is None:
            raise InvalidRequestError(self._io_device_error or "io limits are not available")
        if spec.host_network and not self.allow_host_network:
            raise InvalidRequestError(
                "this server does not allow jobs on the host network (jwsd --allow-host-network)"
            )
        job_id = str(uuid.uuid4())
        directory = self.data_dir / "jobs" / job_id
        job = _Job(
            job_id=job_id,
            owner=owner,
            spec=attrs.evolve(spec, limits=limits),
            directory=directory,
            log=OutputLog(
                directory / "output.log",
                memory_limit=self.output_memory_limit,
                max_size=limits.output,
            ),
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
            hidden=(PurePosixPath("/tmp"), PurePosixPath(self.data_dir)),
            visible=(PurePosixPath(job.workdir),),
        )
        self._jobs[job_id] = job
        self._running[owner] += 1
        try:
            # The job user reaches its work dir by exact path only (0711 above it:
            # traverse, never list); everything else in the data dir stays root's.
            job.directory.mkdir(mode=0o711)
            if self.workdir_size is None:  # else a tmpfs in the sandbox only
                job.workdir.mkdir(mode=0o700)
                os.chown(job.workdir, self._user.uid, self._user.gid)
            job.cgroup = self.cgroups.create(
                job_id, _with_helpers(limits), self._io_device, owner=owner
            )
            cgroup = job.cgroup
            tools, user = self._tools, self._user
            tmpfs_size = _tmpfs_size(self.tmpfs_size, limits.memory)
            job.launched = await spawn.launch(
                lambda status_fd, args_fd: bwrap.spawn_argv(
                    tools,
                    user,
                    procs_files=cgroup.procs_files,
                    data_dir=self.data_dir,
                    workdir=job.workdir,
                    cwd=cwd,
                    argv=spec.argv,
                    status_fd=status_fd,
                    args_fd=args_fd,
                    host_network=spec.host_network,
                    tmpfs_size=tmpfs_size,
                    workdir_size=self.workdir_size,
                ),
                # The job's environment goes to bubblewrap through a file descriptor,
                # for the sandbox only: the root helpers never see it.
                sandbox_args=bwrap.env_options(env),
                pipe_owner=(user.uid, user.gid),
                on_ready=None if self.workdir_size is None else partial(_open_workdir, job),
                seccomp=self._seccomp,
                setup_timeout=self.sandbox_timeout,
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard_failed_start(job)
            raise
        job.move_to(JobState.ACTIVE)
        job.started_at = time.time()
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
            self._stop_and_wait, job, self.stop_grace if grace is None else grace
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
        ceilings = self.max_limits
        if ceilings.output is None and self.max_output is not None:
            ceilings = attrs.evolve(ceilings, output=self.max_output)
        # A default above the maximum gives way to it: only what a request asks
        # for itself can be refused as too much.
        defaults = Limits.of(
            {
                kind: _smaller(self.default_limits.value(kind), ceilings.value(kind))
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
                        f"{kind.label} limit {value} is above this server's maximum of {ceiling}"
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

    async def _discard_failed_start(self, job: _Job) -> None:
        """Undo a start that failed or was cancelled half-way (called shielded)."""
        if job.cgroup is not None:
            job.cgroup.kill_all()
            try:
                await job.cgroup.remove()
            except SetupError:
                log.exception("job %s: cannot remove the cgroup of a failed start", job.job_id)
        self._close_workdir(job)
        await trio.to_thread.run_sync(shutil.rmtree, job.directory, True)
        job.log.discard()
        job.move_to(JobState.TERMINATED)
        self._running[job.owner] -= 1
        job.started.set()
        job.terminated.set()
        job.released.set()
        del self._jobs[job.job_id]

    async def _supervise(self, job: _Job) -> None:
        """Own a running job until it is Terminated: pump its output, wait for its end,
        then finish it (shielded and bounded), whatever cancels us."""
        launched = job.launched
        assert launched is not None
        reported: builtins.list[int | None] = [None]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, job, launched.output)
                nursery.start_soon(self._read_status, launched.status, reported)
                await launched.process.wait()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(FINISH_TIMEOUT) as scope:
                await self._finish(job, reported[0])
            if scope.cancelled_caught:
                log.error(
                    "job %s: clean-up did not finish within %.0f s", job.job_id, FINISH_TIMEOUT
                )
                self._mark_terminated(job, reported[0])
            with trio.CancelScope(shield=True):
                await job.log.release()  # done by `_finish`, unless it timed out
                job.released.set()
                await self._retire(job)

    async def _pump(self, job: _Job, output: trio.lowlevel.FdStream) -> None:
        """Move the job's output into its log until every writer has closed the pipe,
        or until the log is full: closing our end then makes the job's next write
        fail with EPIPE (see the module docstring). Never waits on a subscriber:
        appends are synchronous."""
        joblog = job.log
        append = joblog.append
        async with output:
            while data := await output.receive_some(OUTPUT_CHUNK):
                append(data)
                if joblog.full:
                    log.info("job %s: output limit reached; closing its output", job.job_id)
                    return

    async def _read_status(
        self, status: trio.lowlevel.FdStream, reported: builtins.list[int | None]
    ) -> None:
        async with status:
            reported[0] = await spawn.read_exit_code(status)

    async def _finish(self, job: _Job, reported: int | None) -> None:
        launched = job.launched
        cgroup = job.cgroup
        assert launched is not None and cgroup is not None
        if launched.process.returncode is None:
            cgroup.kill_all()
            await launched.process.wait()
        with contextlib.suppress(Exception):
            job.usage = cgroup.usage()
        # The pid namespace dies with its init, but a process could still be leaving.
        cgroup.kill_all()
        await launched.output.aclose()
        await launched.status.aclose()
        # The pump has ended (no more appends): the output goes to disk before anyone
        # learns that the job has ended.
        await job.log.release()
        if job.workdir_fd is not None:
            job.workdir_bytes = workdir.used_bytes(job.workdir_fd)
        # Before the cgroup goes: closing frees the work dir's pages charged to it.
        self._close_workdir(job)
        try:
            await cgroup.remove()
        except SetupError:
            log.exception("job %s: cannot remove its cgroup", job.job_id)
        await trio.to_thread.run_sync(shutil.rmtree, job.workdir, True)
        self._mark_terminated(job, reported)

    def _mark_terminated(self, job: _Job, reported: int | None) -> None:
        if job.state is JobState.TERMINATED:
            return
        returncode = job.launched.process.returncode if job.launched else None
        if returncode is None:
            # Only when the bounded clean-up gave up waiting: by then `_finish` has
            # SIGKILLed everything in the job's cgroup, so that is how it ended.
            returncode = -signal.SIGKILL
        exit_code, signum = spawn.exit_status(returncode, reported)
        job.exit_code, job.signal = exit_code, signum
        if job.usage.oom_kills and exit_code != 0:
            job.outcome = Outcome.OOM_KILLED
        elif job.stop_requested:
            job.outcome = Outcome.STOPPED
        elif signum is not None:
            job.outcome = Outcome.SIGNALED
        else:
            job.outcome = Outcome.EXITED
        job.ended_at = time.time()
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
        """A job's output is on disk: count it as finished, and forget its owner's
        oldest finished jobs beyond the count the retention policy keeps."""
        if self._jobs.get(job.job_id) is not job:
            return  # removed meanwhile
        owned = self._finished.setdefault(job.owner, {})
        owned[job.job_id] = job
        self._finished_changed.set()
        for job_id in self.retention.to_forget(_as_finished(owned.values()), trio.current_time()):
            victim = owned.get(job_id)  # a remove may have taken it while we awaited
            if victim is not None:
                await self._forget(victim)

    async def _collect_expired(self) -> None:
        """Forget finished jobs once they are older than the retention's max age:
        sleep until the oldest one expires, or until a job finishes."""
        with self._collector:
            while True:
                self._finished_changed = trio.Event()
                finished = [
                    job for owned in self._finished.values() for job in _as_finished(owned.values())
                ]
                with trio.move_on_at(self.retention.next_expiry(finished)):
                    await self._finished_changed.wait()
                    continue
                by_id = {job.job_id: job.owner for job in finished}
                for job_id in self.retention.to_forget(finished, trio.current_time()):
                    victim = self._finished.get(by_id[job_id], {}).get(job_id)
                    if victim is not None:
                        await self._forget(victim)

    async def _forget(self, job: _Job) -> None:
        """Drop a finished job: its entry first (from then on it is not found), then
        its output and its job dir."""
        if self._jobs.get(job.job_id) is not job:
            await trio.lowlevel.checkpoint()
            return
        del self._jobs[job.job_id]
        owned = self._finished.get(job.owner, {})
        owned.pop(job.job_id, None)
        if not owned:
            self._finished.pop(job.owner, None)
        await job.log.aclose()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, job.directory, True)

    async def _stop_and_wait(self, job: _Job, grace: float) -> None:
        """SIGTERM the job's process group, give it `grace` seconds, then SIGKILL
        everything in its cgroup; return once it is Terminated."""
        await job.started.wait()
        if job.terminated.is_set():
            return
        job.stop_requested = True
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


def _as_finished(jobs: Iterable[_Job]) -> builtins.list[Finished]:
    return [
        Finished(job.job_id, job.owner, job.ended_clock)
        for job in jobs
        if job.ended_clock is not None
    ]


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

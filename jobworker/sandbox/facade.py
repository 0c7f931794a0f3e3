"""`Sandbox`: how jwsd runs a job's processes, made once at start-up.

It holds what the host checks found (`HostSetup`: the tools, the job user, the
seccomp program), the data dir, the cgroup driver and the IO device, and the
settings every sandbox gets (work dir and tmpfs sizes, the build's timeout).
Through it a job is

* checked before anything of it exists (`check_limits`, `check_command`);
* started in two steps, `prepare` (its dir, work dir, cgroup and files) and
  `StartingJob.launch` (the sandbox and the command), so that the caller can
  record the job, with its cgroup dirs, while the sandbox is being built; a start
  that fails or is cancelled is undone by `StartingJob.discard`;
* found again after a restart (`attach`), or seen as it was left when it ended
  while no daemon ran (`inspect`, plain data: the caller decides what it means).

A job's dir (`DATA/jobs/ID`) holds its output file (`OUTPUT_NAME`, the copier's),
bubblewrap's status file (`STATUS_NAME`) and, with `workdir_size=None`, its work
dir (`WORK_NAME`, else a tmpfs inside the sandbox only, see `workdir`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import shutil
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path, PurePosixPath

import attrs
import trio

from jobworker.errors import InvalidRequestError, SetupError, StartFailedError
from jobworker.model import Limits, Usage
from jobworker.sandbox import bwrap, hostview, seccomp, workdir
from jobworker.sandbox import host as host_checks
from jobworker.sandbox.bwrap import JobUser, SandboxTools
from jobworker.sandbox.cgroups import CgroupDriver, JobCgroup, block_device_of, detect
from jobworker.sandbox.launch import SANDBOX_SETUP_TIMEOUT, Launched, launch
from jobworker.sandbox.process import AttachedProcess, parent_of, start_time
from jobworker.sandbox.program import DEFAULT_PATH, check_exec_size, resolve_program
from jobworker.sandbox.running import Processes, RunningJob
from jobworker.sandbox.status import child_pid_in, exit_code_in, written_at

log = logging.getLogger(__name__)

#: The names in a job's dir.
OUTPUT_NAME = "output.log"
STATUS_NAME = "status.json"
WORK_NAME = "work"


@attrs.frozen
class HostSetup:
    """What the start-up checks of the host found (`check`): the programs, the job
    user, the seccomp program (None: none for this architecture), and what jobs see
    of the host (`hostview.HostView`)."""

    tools: SandboxTools
    user: JobUser
    seccomp: bytes | None
    view: hostview.HostView

    @classmethod
    def check(
        cls,
        job_user: str,
        *,
        data_dir: Path,
        binds: Sequence[hostview.JobBind] = (),
        host_uid: int | None = None,
    ) -> HostSetup:
        """Check the host can run jobs as `job_user` (root, the programs, the view of
        the host with the operator's `binds`, a trial sandbox); raise SetupError
        saying what is missing (docs/hosts.md). data_dir: the jobs' data dir, which
        no bind may show. host_uid: a host uid jobs run as (one of `--job-uids`, all
        alike to the host: none owns a file outside the data dir), which the checks
        are made for; None: the job user's own."""
        host_checks.check_root()
        tools = host_checks.find_tools()
        user = JobUser.lookup(job_user)
        if host_uid is not None:
            user = user.on_host(host_uid)
        program = seccomp.program()
        view = hostview.HostView.build(
            can_read=hostview.readable_by(user), data_dir=data_dir, binds=binds
        )
        host_checks.check_sandbox(tools, user, program, view.options)
        return cls(tools=tools, user=user, seccomp=program, view=view)

    def check_reachable(self, data_dir: Path) -> None:
        """Raise SetupError unless the job user can pass every directory above the
        data dir (bubblewrap mounts over it by path, as that user)."""
        host_checks.check_reachable(data_dir, self.user)


@attrs.frozen
class JobRequest:
    """A job to start, checked (`Sandbox.check_limits`, `Sandbox.check_command`).

    directory: the job's dir, made by `prepare` (its parent exists).
    user: who the job runs as (`Sandbox.user_on_host`: its owner's host uid).
    argv / env / cwd: the command, its whole environment, its working directory.
    limits: the job's effective limits (the pids limit as the user counts it).
    output_grant: where the output copier stops at first, below `limits.output`
        (the disk quota's first window, `jobworker.jobs.disk`), which
        `RunningJob.grant_output` raises later, up to `limits.output`; None: the
        copier stops at `limits.output` for good.
    """

    job_id: str
    owner: str
    directory: Path
    user: JobUser
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    limits: Limits
    host_network: bool = False
    output_grant: int | None = None

    @property
    def workdir(self) -> Path:
        return self.directory / WORK_NAME


@attrs.frozen
class Remains:
    """What the host shows of a job that is not running (`Sandbox.inspect`).

    exit_code: the exit code bubblewrap wrote to the status file; None when it wrote
        none (it was killed, or never ran).
    usage: the usage of the job's cgroup, when one was left; else None.
    sandbox_started: whether bubblewrap reported the sandbox's init (the sandbox
        was being built, or was).
    status_written_at: when bubblewrap last wrote the status file (at the end,
        when it wrote an exit code); None without one.
    """

    exit_code: int | None
    usage: Usage | None
    sandbox_started: bool
    status_written_at: float | None


@attrs.define(eq=False)
class Sandbox:
    """Runs jobs' processes under cgroup limits in bubblewrap sandboxes (see the
    module's docstring). Made by `open`; `close()` releases the cgroup driver.

    workdir_size: the size of each job's tmpfs work dir (None: a plain directory in
        the job's dir). tmpfs_size: the size of each of a job's writable tmpfs
        (/tmp, /dev/shm), at most its memory limit (None: only that limit).
    setup_timeout: how long a sandbox may take to build before its start fails.
    io_device / io_device_error: the data dir's disk, which IO limits apply to, or
        why there is none.
    """

    host: HostSetup
    data_dir: Path
    cgroups: CgroupDriver
    workdir_size: int | None = None
    tmpfs_size: int | None = None
    setup_timeout: float = SANDBOX_SETUP_TIMEOUT
    io_device: tuple[int, int] | None = None
    io_device_error: str | None = None

    @classmethod
    def open(
        cls,
        host: HostSetup,
        data_dir: Path,
        *,
        cgroups: CgroupDriver | None = None,
        cgroup_name: str = "jobworker",
        cgroup_parent: str | None = None,
        workdir_size: int | None = None,
        tmpfs_size: int | None = None,
        setup_timeout: float = SANDBOX_SETUP_TIMEOUT,
    ) -> Sandbox:
        """The sandbox for jobs in `data_dir`, with the cgroup driver `cgroups` (None:
        the host's, `cgroups.detect(name=cgroup_name, subtree=cgroup_parent)`).
        Raises SetupError when the host's cgroups cannot be used."""
        if cgroups is None:
            cgroups = detect(name=cgroup_name, subtree=cgroup_parent)
        io_device, io_device_error = None, None
        try:
            io_device = block_device_of(data_dir)
        except InvalidRequestError as exc:
            io_device_error = str(exc)
        return cls(
            host=host,
            data_dir=data_dir,
            cgroups=cgroups,
            workdir_size=workdir_size,
            tmpfs_size=tmpfs_size,
            setup_timeout=setup_timeout,
            io_device=io_device,
            io_device_error=io_device_error,
        )

    def close(self) -> None:
        """Release the cgroup driver (its parent's lock); idempotent."""
        self.cgroups.close()

    # ---- before a job exists -----------------------------------------------------

    def default_env(self, home: Path) -> dict[str, str]:
        """The environment of a job that asks for none."""
        user = self.host.user
        return {
            "PATH": DEFAULT_PATH,
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "USER": user.name,
            "LOGNAME": user.name,
        }

    def user_on_host(self, host_uid: int) -> JobUser:
        """The job user running as `host_uid` on the host (an owner's id)."""
        return self.host.user.on_host(host_uid)

    def check_limits(self, limits: Limits) -> None:
        """Raise InvalidRequestError when `limits` cannot be applied here (IO limits
        without a block device under the data dir)."""
        if limits.has_io and self.io_device is None:
            raise InvalidRequestError(self.io_device_error or "io limits are not available")

    def check_command(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: str,
        workdir: Path,
        user: JobUser,
    ) -> None:
        """Raise InvalidRequestError when the kernel would refuse to exec the command
        line (E2BIG), StartFailedError when its program cannot be run in the sandbox
        by `user` (`program.resolve_program`: what the view of the host hides, and the data
        dir, are missing there, but for the job's `workdir`)."""
        # What bubblewrap finally execs, with the PWD the shell adds (the slack covers it).
        check_exec_size(bwrap.exec_argv(self.host.tools, argv), env)
        resolve_program(
            argv[0],
            path=env.get("PATH"),
            cwd=cwd,
            user=user,
            hidden=(*self.host.view.hidden, PurePosixPath(self.data_dir)),
            visible=(*self.host.view.visible, PurePosixPath(workdir)),
        )

    # ---- a start ---------------------------------------------------------------------

    def prepare(self, request: JobRequest) -> StartingJob:
        """Make the job's dir (0711: the job user reaches its work dir by exact path
        only), its work dir (unless a tmpfs in the sandbox only), its cgroup with its
        limits, its output and status files (root's, 0600) and the copier's error
        memfd. Raises InvalidRequestError or SetupError (from the cgroup driver), or
        OSError; then nothing of it is left."""
        user = request.user
        request.directory.mkdir(mode=0o711)
        starting = None
        try:
            if self.workdir_size is None:  # else a tmpfs in the sandbox only
                request.workdir.mkdir(mode=0o700)
                os.chown(request.workdir, user.host_uid, user.host_gid)
            cgroup = self.cgroups.create(
                request.job_id, _with_helpers(request.limits), self.io_device, owner=request.owner
            )
            starting = StartingJob(self, request, cgroup)
            # Read-write: the start reads them back (the sandbox init's pid, an error message).
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
            starting.output_fd = os.open(request.directory / OUTPUT_NAME, flags, 0o600)
            starting.status_fd = os.open(request.directory / STATUS_NAME, flags, 0o600)
            starting.copier_errors = os.memfd_create("jobworker-copier-errors", os.MFD_CLOEXEC)
        except BaseException:
            if starting is not None:
                starting.close()
                # Nothing runs in it yet: it goes at once.
                with contextlib.suppress(SetupError):
                    starting.cgroup.remove_blocking()
            shutil.rmtree(request.directory, ignore_errors=True)
            raise
        return starting

    # ---- after a restart ---------------------------------------------------------------

    def attach(
        self, job_id: str, owner: str, directory: Path, recorded: Processes
    ) -> RunningJob | None:
        """Take over the running job an earlier daemon started, from what its record
        says (`recorded`); None when its supervisor is gone (it ended, or never
        started), or is not in the job's cgroup."""
        supervisor_pid, supervisor_start = recorded.supervisor_pid, recorded.supervisor_start
        command_pid = recorded.command_pid
        status = directory / STATUS_NAME
        if supervisor_pid is None:
            # Pending: jwsd died between the start's response and the record that names
            # the supervisor. Bubblewrap's status file names the sandbox's init; its
            # parent is bubblewrap, if it is still in the job's cgroup.
            command_pid = child_pid_in(status)
            supervisor_pid = parent_of(command_pid) if command_pid else None
            supervisor_start = start_time(supervisor_pid) if supervisor_pid else None
        if supervisor_pid is None or command_pid is None:
            return None
        process = AttachedProcess.attach(supervisor_pid, supervisor_start)
        if process is None:
            return None
        cgroup = self.cgroups.attach(job_id, owner)
        if cgroup is None or supervisor_pid not in cgroup.pids():
            process.let_go()
            return None
        copier, copier_errors = None, None
        if recorded.copier_pid is not None:
            copier = AttachedProcess.attach(recorded.copier_pid, recorded.copier_start)
            if copier is not None:
                with contextlib.suppress(OSError):  # its stderr, a memfd only it holds now
                    copier_errors = os.open(
                        f"/proc/{recorded.copier_pid}/fd/2", os.O_RDONLY | os.O_CLOEXEC
                    )
        workdir_fd = None
        if self.workdir_size is not None:
            with contextlib.suppress(OSError):
                workdir_fd = workdir.open_in_sandbox(command_pid, directory / WORK_NAME)
        return RunningJob(
            job_id,
            Launched(
                process=process,
                copier=copier,
                command_pid=command_pid,
                process_start=supervisor_start,
                copier_start=recorded.copier_start if copier else None,
            ),
            cgroup,
            status,
            workdir_fd,
            copier_errors,
        )

    def inspect(self, job_id: str, owner: str, directory: Path) -> Remains:
        """What the host shows of a job that is not running: its status file and the
        cgroup it left (read, never changed)."""
        status = directory / STATUS_NAME
        usage = None
        cgroup = self.cgroups.attach(job_id, owner)
        if cgroup is not None:
            with contextlib.suppress(Exception):
                usage = cgroup.usage()
        return Remains(
            exit_code=exit_code_in(status),
            usage=usage,
            sandbox_started=child_pid_in(status) is not None,
            status_written_at=written_at(status),
        )

    def cleanup_stale(self, keep: Collection[str] = ()) -> list[str]:
        """Kill and remove every job cgroup but those of the jobs in `keep` (taken
        over): what an earlier run left. Returns the job ids removed; blocks for a
        few seconds at most (start-up only). Raises SetupError as the driver's."""
        return self.cgroups.cleanup_stale(keep=keep)


@attrs.define(eq=False)
class StartingJob:
    """A job whose dir, cgroup and files exist, and whose sandbox is not built yet
    (`Sandbox.prepare`). `launch()` once. Unless the job then runs on under its
    caller, `discard()` (shielded) undoes the start, whatever happened to it."""

    sandbox: Sandbox
    request: JobRequest
    cgroup: JobCgroup
    output_fd: int | None = None
    status_fd: int | None = None
    copier_errors: int | None = None
    _workdir_fd: int | None = None
    _running: RunningJob | None = None

    @property
    def cgroup_dirs(self) -> tuple[Path, ...]:
        """The job's cgroup directory in each hierarchy."""
        return self.cgroup.directories()

    async def launch(self) -> RunningJob:
        """Build the job's sandbox and start its command; return once the command
        runs (`launch.launch`). Raises StartFailedError (the sandbox could not be
        built, or not in time), InvalidRequestError (E2BIG); then, or when cancelled,
        nothing of it runs."""
        sandbox, request = self.sandbox, self.request
        assert self.output_fd is not None and self.status_fd is not None
        tools, user = sandbox.host.tools, request.user
        build_cmd = functools.partial(
            bwrap.spawn_argv,
            tools,
            user,
            procs_files=self.cgroup.procs_files,
            data_dir=sandbox.data_dir,
            workdir=request.workdir,
            cwd=request.cwd,
            argv=request.argv,
            host_network=request.host_network,
            tmpfs_size=_tmpfs_size(sandbox.tmpfs_size, request.limits.memory),
            workdir_size=sandbox.workdir_size,
            view=sandbox.host.view.options,
        )
        first, ceiling = request.limits.output, None
        if request.output_grant is not None:  # later windows go up to the job's own cap
            first = request.output_grant
            ceiling = (
                resource.RLIM_INFINITY if request.limits.output is None else request.limits.output
            )
        try:
            launched = await launch(
                lambda status_fd, args_fd: build_cmd(status_fd=status_fd, args_fd=args_fd),
                # The job's environment goes to bubblewrap through a file
                # descriptor, for the sandbox only: the root helpers never see it.
                sandbox_args=bwrap.env_options(request.env),
                output_file=self.output_fd,
                status_file=self.status_fd,
                output_limit=first,
                output_ceiling=ceiling,
                copier_errors=self.copier_errors,
                pipe_owner=(user.host_uid, user.host_gid),
                on_ready=None if sandbox.workdir_size is None else self._open_workdir,
                seccomp=sandbox.host.seccomp,
                kill_sandbox=self.cgroup.kill_all,
                setup_timeout=sandbox.setup_timeout,
            )
        finally:
            self._close_files()
        self._running = RunningJob(
            request.job_id,
            launched,
            self.cgroup,
            request.directory / STATUS_NAME,
            self._workdir_fd,
            self.copier_errors,
        )
        self._workdir_fd = self.copier_errors = None  # the running job's now
        return self._running

    def _open_workdir(self, init_pid: int) -> None:
        """Open the job's work dir tmpfs in its sandbox, before its command runs."""
        try:
            self._workdir_fd = workdir.open_in_sandbox(init_pid, self.request.workdir)
        except OSError as exc:
            raise StartFailedError(f"cannot open the job's work dir: {exc.strerror}") from exc

    async def discard(self) -> None:
        """Undo the start (call shielded): kill everything in the job's cgroup (once
        launched: `RunningJob.finish`), remove the cgroup (a failure is logged), close
        what is open, delete the job's dir."""
        if self._running is not None:  # it started, but the caller could not keep it
            await self._running.finish()
        else:
            self.cgroup.kill_all()
            try:
                await self.cgroup.remove()
            except SetupError:
                log.exception(
                    "job %s: cannot remove the cgroup of a failed start", self.request.job_id
                )
        self.close()
        await trio.to_thread.run_sync(shutil.rmtree, self.request.directory, True)

    def close(self) -> None:
        """Close the descriptors still held; idempotent."""
        self._close_files()
        for fd in (self._workdir_fd, self.copier_errors):
            if fd is not None:
                os.close(fd)
        self._workdir_fd = self.copier_errors = None

    def _close_files(self) -> None:
        for fd in (self.output_fd, self.status_fd):
            if fd is not None:
                os.close(fd)
        self.output_fd = self.status_fd = None


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


__all__ = [
    "OUTPUT_NAME",
    "STATUS_NAME",
    "WORK_NAME",
    "HostSetup",
    "JobRequest",
    "Remains",
    "Sandbox",
    "StartingJob",
]

"""`RunningJob`: the handle of a job whose sandbox is built, started by this daemon
(`Sandbox.prepare` then `StartingJob.launch`) or taken over from an earlier one
(`Sandbox.attach`).

It owns what the job has on the host while it runs: its supervisor (the outer
bubblewrap), its output copier, its cgroup, the descriptor of its work dir's
tmpfs and the copier's error memfd. One task owns it (the tracker's supervisor of
the job) and ends it in one of two ways:

* `finish()`: the bounded clean-up once the supervisor has exited (or to end the
  job), which leaves nothing of it on the host but its files, and returns how it
  ended as plain data (`Ending`);
* `let_go()`: stop watching and leave the job running, for the next daemon
  (whose `Sandbox.attach` finds it again from `processes`).

What it reports is plain data: the tracker decides what a job's end means.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal as signals
from pathlib import Path

import attrs
import trio

from jobworker.errors import SetupError
from jobworker.model import Usage
from jobworker.sandbox import workdir
from jobworker.sandbox.cgroups import JobCgroup
from jobworker.sandbox.launch import Launched, raise_copier_limit
from jobworker.sandbox.process import ChildProcess
from jobworker.sandbox.status import exit_code_in, exit_status, written_at

log = logging.getLogger(__name__)

#: How long `finish` waits for the copier to write the last of the output after the
#: job's processes were killed (the copier ends at the pipe's EOF).
COPIER_WAIT = 5.0

#: How much of the copier's error output is read for its failure.
MAX_COPIER_ERRORS = 4096


@attrs.frozen
class Processes:
    """The processes of a job as its record keeps them, to find them again after a
    restart (`Sandbox.attach`). None: not known (a record written before the start
    returned, or a job without an output copier).

    supervisor_pid / supervisor_start: the outer bubblewrap, and its start time
        (`process.start_time`, which tells it from a later process reusing its pid).
    command_pid: the host pid of the sandbox's init, leader of the command's session
        and process group.
    copier_pid / copier_start: the output copier, and its start time.
    """

    supervisor_pid: int | None = None
    supervisor_start: int | None = None
    command_pid: int | None = None
    copier_pid: int | None = None
    copier_start: int | None = None


@attrs.frozen
class Ending:
    """How a job ended, as `RunningJob.finish` found it.

    exit_code / signal: in shell terms (`status.exit_status`): bubblewrap's reported
        code, else the supervisor's own status (SIGKILL when it was never reaped).
    usage: the cgroup's last reading; None when it could not be read.
    copier_failure: why the copier could not write all of the output (its last error
        line), None when it wrote everything (or stopped at the output cap: no loss).
    workdir_bytes: the work dir tmpfs's last usage; None without one (a plain dir).
    """

    exit_code: int
    signal: int | None
    usage: Usage | None
    copier_failure: str | None
    workdir_bytes: int | None


@attrs.define(eq=False)
class RunningJob:
    """A job whose sandbox is built (see the module's docstring).

    job_id: the job's id (log lines name it).
    status_path: bubblewrap's status file (`--json-status-fd`).
    workdir_fd: the work dir's tmpfs, opened in the sandbox (`workdir`); None for a
        plain directory. copier_errors: a memfd holding the copier's stderr, or None.
        Both are this handle's to close.
    """

    job_id: str
    _launched: Launched
    _cgroup: JobCgroup
    status_path: Path
    _workdir_fd: int | None = None
    _copier_errors: int | None = None
    # The final readings, once `finish` has taken them (the cgroup and the tmpfs go).
    _final_usage: Usage | None = attrs.field(init=False, default=None)
    _final_workdir_bytes: int | None = attrs.field(init=False, default=None)

    # ---- what the job's record keeps ----------------------------------------------

    @property
    def processes(self) -> Processes:
        launched = self._launched
        return Processes(
            supervisor_pid=launched.process.pid,
            supervisor_start=launched.process_start,
            command_pid=launched.command_pid,
            copier_pid=launched.copier.pid if launched.copier else None,
            copier_start=launched.copier_start,
        )

    @property
    def cgroup_dirs(self) -> tuple[Path, ...]:
        """The job's cgroup directory in each hierarchy."""
        return self._cgroup.directories()

    def status_written_at(self) -> float | None:
        """When bubblewrap last wrote the job's status file: as the sandbox was built,
        while the job runs (the start of a job taken over whose record lacks it).
        None when it cannot be read."""
        return written_at(self.status_path)

    # ---- while it runs --------------------------------------------------------------

    async def wait(self) -> None:
        """Wait until the supervisor has exited (the sandbox's init has gone). One
        task at a time."""
        await self._launched.process.wait()

    def signal(self, signum: int) -> None:
        """Send `signum` to the command's process group, only while its leader is
        still in the job's cgroup: a pid that has exited could have been reused by an
        unrelated process."""
        command_pid = self._launched.command_pid
        if command_pid in self._cgroup.pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(command_pid, signum)

    def kill(self) -> None:
        """SIGKILL everything in the job's cgroup (processes forked meanwhile too)."""
        self._cgroup.kill_all()

    def usage(self) -> Usage:
        """The cgroup's usage so far, or its last reading once `finish` took it.
        Raises SetupError when it cannot be read (the cgroup is gone)."""
        if self._final_usage is not None:
            return self._final_usage
        return self._cgroup.usage()

    def workdir_bytes(self) -> int | None:
        """Bytes in use on the work dir's tmpfs (its last reading once it is closed);
        None without one (a plain directory)."""
        if self._workdir_fd is not None:
            return workdir.used_bytes(self._workdir_fd)
        return self._final_workdir_bytes

    def exit_status(self) -> tuple[int, int | None]:
        """(exit_code, signal) in shell terms, from bubblewrap's status file and the
        supervisor's own status. A supervisor not reaped counts as SIGKILLed: only a
        clean-up that gave up waiting asks before it was, and by then everything in
        the cgroup has been SIGKILLed."""
        returncode = self._launched.process.returncode
        if returncode is None:
            returncode = -signals.SIGKILL
        return exit_status(returncode, exit_code_in(self.status_path))

    def copier_limit(self) -> int | None:
        """How many bytes the copier may write in all (its RLIMIT_FSIZE: what an earlier
        jwsd granted a job taken over); None when there is no copier any more, or no
        limit."""
        copier = self._launched.copier
        if copier is None or copier.exited:
            return None
        try:
            limit, _ceiling = resource.prlimit(copier.pid, resource.RLIMIT_FSIZE)
        except (ProcessLookupError, PermissionError):
            return None
        return None if limit == resource.RLIM_INFINITY else limit

    def grant_output(self, limit: int) -> None:
        """Let the copier write up to `limit` bytes in all (the disk quota's next
        window: only ever raised). Nothing once it is known to have exited: a reaped
        child's pid could name another process by now. (A taken-over copier that exited
        unseen could have its pid reused in principle: raising a stranger's file size
        limit is harmless.)"""
        copier = self._launched.copier
        if copier is not None and not copier.exited:
            try:
                raise_copier_limit(copier.pid, limit)
            except ProcessLookupError:
                pass  # it has gone: nothing more will be written
            except OSError as exc:  # the job is cut at its last window, and says so
                log.error("job %s: cannot raise its output copier's limit: %s", self.job_id, exc)

    # ---- its end ----------------------------------------------------------------------

    async def finish(self) -> Ending:
        """The clean-up of a job whose supervisor has exited, or that is to end now:
        SIGKILL what is left in its cgroup and reap the supervisor, take the last
        usage, wait (at most COPIER_WAIT) for the copier to write the last of the
        output, read the copier's failure, take the work dir's last reading and
        close it (before the cgroup goes: closing frees its pages charged there),
        remove the cgroup (a failure is logged). Leaves the job's files.

        Call once, shielded; the caller bounds it. Cut short, what was read by then
        stays readable (`usage`, `workdir_bytes`, `exit_status`) and `close` frees
        the descriptors."""
        process, copier, cgroup = self._launched.process, self._launched.copier, self._cgroup
        if not process.exited:
            cgroup.kill_all()
            await process.wait()
        with contextlib.suppress(Exception):
            self._final_usage = cgroup.usage()
        # The pid namespace dies with its init, but a process could still be leaving.
        cgroup.kill_all()
        # The copier ends once the last writer of the pipe has gone: the file is complete.
        if copier is not None:
            with trio.move_on_after(COPIER_WAIT):
                await copier.wait()
            copier.kill()
        failure = self._copier_failure()
        self._final_workdir_bytes = self.workdir_bytes()
        self.close()
        try:
            await cgroup.remove()
        except SetupError:
            log.exception("job %s: cannot remove its cgroup", self.job_id)
        exit_code, signum = self.exit_status()
        return Ending(
            exit_code=exit_code,
            signal=signum,
            usage=self._final_usage,
            copier_failure=failure,
            workdir_bytes=self._final_workdir_bytes,
        )

    def let_go(self) -> None:
        """Stop watching the job and leave it running, for the next daemon on this data
        dir (its processes are not this daemon's to wait for or reap any more)."""
        for process in (self._launched.process, self._launched.copier):
            if process is not None:
                process.let_go()
        self.close()

    def close(self) -> None:
        """Close the work dir's descriptor and the copier's error memfd: done by
        `finish` and `let_go`; else (a clean-up cut short) the caller's. Idempotent."""
        if self._workdir_fd is not None:
            os.close(self._workdir_fd)
            self._workdir_fd = None
        if self._copier_errors is not None:
            os.close(self._copier_errors)
            self._copier_errors = None

    def _copier_failure(self) -> str | None:
        """Why the copier could not write all of the output (its error message), or
        None when it wrote everything (or the cap stopped it: that is no loss)."""
        copier = self._launched.copier
        text = ""
        if self._copier_errors is not None:
            data = os.pread(self._copier_errors, MAX_COPIER_ERRORS, 0)
            text = data.decode(errors="replace").strip()
            os.close(self._copier_errors)
            self._copier_errors = None
        # SIGXFSZ: the copier reached the output cap (`launch.limit_copier`), no loss.
        failed = isinstance(copier, ChildProcess) and copier.returncode not in (
            0,
            None,
            -signals.SIGXFSZ,
        )
        if not text and not failed:
            return None
        return text.splitlines()[-1] if text else "the output copier failed"


__all__ = ["Ending", "Processes", "RunningJob"]

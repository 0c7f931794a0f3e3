"""The processes of a job the daemon watches (its outer bubblewrap, its output
copier), and what /proc says of any process.

A process is waited for through a pidfd, which names it and never a later
process that reuses its pid. One the daemon started is a `ChildProcess` (it
reaps it); one an earlier daemon started is an `AttachedProcess`, found again by
its pid and start time (`start_time`) after a restart. Either can be let go
(`let_go`): the daemon stops watching and leaves it running, for the next one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

import attrs
import trio


@attrs.define(eq=False)
class ChildProcess:
    """A child process started on the trio thread, waited for through a pidfd.

    Why not `trio.lowlevel.open_process`: it forks from a worker thread, and
    bubblewrap's `--die-with-parent` (PR_SET_PDEATHSIG) fired when the *thread*
    that forked it exited (trio retires idle worker threads after 10 s). Jobs no
    longer use that option (they outlive the daemon), but a fork on the trio
    thread stays simple and cheap: `vfork` + exec of `sh` blocks the event loop
    for about a millisecond.

    Only one task may wait for it at a time (the job's supervisor).
    """

    popen: subprocess.Popen[bytes]
    _pidfd: int

    @classmethod
    def start(cls, argv: Sequence[str], **options: Any) -> ChildProcess:
        popen = subprocess.Popen(list(argv), **options)
        try:
            pidfd = os.pidfd_open(popen.pid)
        except BaseException:
            popen.kill()
            popen.wait()
            raise
        return cls(popen, pidfd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal), else None."""
        return self.popen.returncode

    async def wait(self) -> int:
        """Wait until the process has exited, reap it, and return its exit status."""
        while self.popen.poll() is None:
            await trio.lowlevel.wait_readable(self._pidfd)
        self._close_pidfd()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the process, unless it has been reaped (its pid may be reused then)."""
        if self.popen.returncode is None and self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    @property
    def exited(self) -> bool:
        """Whether it has been reaped."""
        return self.popen.returncode is not None

    def let_go(self) -> None:
        """Stop watching it and leave it running (a daemon leaving its jobs for the
        next one): it is not ours to reap any more (init reaps it once this process
        has exited), so `popen` must not try to either."""
        if self.popen.returncode is None:
            self.popen.returncode = 0
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


class AttachedProcess:
    """A process this daemon did not start (a job's supervisor after a restart of
    jwsd), waited for through a pidfd: its parent (init, or a subreaper) reaps it,
    so its exit status is not ours to read (`returncode` stays None).

    Made by `attach`, which rules out a reused pid by its start time."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._exited = False

    @classmethod
    def attach(cls, pid: int, started: int | None) -> AttachedProcess | None:
        """The process `pid` if it still runs and started at `started` (`start_time`),
        else None (it has exited, or its pid now names another process)."""
        if started is None:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        # Checked after the pidfd is open: from now on the pid cannot be reused.
        if start_time(pid) != started:
            os.close(pidfd)
            return None
        return cls(pid, pidfd)

    @property
    def returncode(self) -> int | None:
        return None

    @property
    def exited(self) -> bool:
        return self._exited

    async def wait(self) -> None:
        """Wait until the process has exited."""
        if self._pidfd >= 0:
            await trio.lowlevel.wait_readable(self._pidfd)
            self._exited = True
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def kill(self) -> None:
        """SIGKILL the process unless it has exited (the pidfd names it, never a reused pid)."""
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def let_go(self) -> None:
        """Stop watching it, and leave it running (a daemon leaving its jobs running)."""
        if self._pidfd >= 0:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


#: The outer bubblewrap or the output copier: started here, or found again after a restart.
Supervisor = ChildProcess | AttachedProcess


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (field 22 of
    /proc/PID/stat); None when there is no such process. A pid and its start time
    name one process for the life of the host: a reused pid starts later."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def parent_of(pid: int) -> int | None:
    """The parent pid of process `pid` (field 4 of /proc/PID/stat); None when there
    is no such process."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (field 3 first), or None
    when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return data.rsplit(b")", 1)[1].split()


__all__ = ["AttachedProcess", "ChildProcess", "Supervisor", "parent_of", "start_time"]

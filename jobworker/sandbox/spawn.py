"""Start a job's command line and learn whether the command is running.

`resolve_program` finds the program the way `execvp` inside the sandbox will,
before anything is created, so that a missing or non-executable program is an
error of the start request rather than a job that exits 127 (bubblewrap's own
exec failure is indistinguishable from `exit 1` by its code).

The lookup runs as root but judges every step as the job user would meet it
(search permission on each directory on the way, symbolic links followed), so
its answer is the one `execvp` inside the sandbox would give, and it tells a
user nothing about files in directories the job user cannot enter: a file there
and a missing one are both "permission denied".

`check_exec_size` refuses, as an invalid request, a command line and environment
the kernel would refuse to exec (E2BIG), before anything is created.

`launch` starts the trampoline with stdout and stderr on one pipe (so the log
keeps the order a terminal would show), with the helpers' fixed environment
(`bwrap.HELPER_ENV`, never the request's), and returns once bubblewrap has
reported the command's host pid on its JSON status fd, or raises
StartFailedError with what bubblewrap said when the sandbox could not be built.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import attrs
import trio

from jobworker.echo import quoted
from jobworker.errors import InvalidRequestError, StartFailedError
from jobworker.sandbox.bwrap import HELPER_ENV, JobUser

#: The PATH a job gets when its environment has none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: A pipe this large lets the command write in big bursts while the copier is busy
#: writing; Linux's default is 64 KiB (F_SETPIPE_SZ is capped by
#: /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE = 1 << 20

#: How long bubblewrap may take to build a sandbox before the start is abandoned: a
#: bound for a start that hangs, far above the ~15 ms a build takes, so that a host
#: busy with many starts at once (or a slow, emulated CPU) does not fail them.
SANDBOX_SETUP_TIMEOUT = 30.0

#: How long a failed start waits for bubblewrap to exit and its error to be written.
FAILURE_WAIT = 5.0

#: How much of bubblewrap's error output a failed start reports.
MAX_ERROR_OUTPUT = 4096

#: The kernel's bound on one argument or environment string, its NUL included
#: (MAX_ARG_STRLEN: 32 pages).
MAX_ARG_STRLEN = 32 * 4096
#: The kernel's floor for the room all of exec's strings share (ARG_MAX: 32 pages),
#: and its ceiling (three quarters of _STK_LIM, 8 MiB), whatever the stack limit.
ARG_SPACE_MIN = 32 * 4096
ARG_SPACE_MAX = 6 << 20
#: Room kept free for what is added on the way in: the exec'd file's own path, the
#: PWD the shell exports, the auxiliary vector's strings.
ARG_SPACE_SLACK = 4096
#: How many symbolic links one lookup follows before it is a loop (the kernel's MAXSYMLINKS).
MAX_SYMLINKS = 40


def resolve_program(
    program: str,
    *,
    path: str | None,
    cwd: str,
    user: JobUser,
    hidden: Sequence[PurePosixPath] = (),
    visible: Sequence[PurePosixPath] = (),
) -> str:
    """The absolute path `execvp(program)` will run inside the sandbox.

    path: the job's PATH (`None`: DEFAULT_PATH). cwd: the job's working directory
    (the sandbox binds host paths at the same place, so a host lookup answers for
    the sandbox). hidden: what the sandbox does not show of the host ("/" for an
    allow-list, the data dir, covered mounts); visible: what it shows inside
    those (the allow-list's directories, the job's work dir). A hidden path is
    "no such file", exactly as a missing one: a start request learns nothing of
    what the job could not see itself.

    Raises StartFailedError naming the program and the reason.
    """
    if "/" in program:
        # Walked as given: "link/.." is the link target's parent, as for the kernel.
        candidate = os.path.join(cwd, program)
        reason = _unusable(candidate, user, hidden, visible)
        if reason:
            raise StartFailedError(f"cannot run {quoted(program)}: {reason}")
        return os.path.normpath(candidate)
    search = DEFAULT_PATH if path is None else path
    seen_reason = None
    for directory in search.split(":"):
        candidate = os.path.join(directory or cwd, program)
        reason = _unusable(candidate, user, hidden, visible)
        if reason is None:
            return candidate
        if reason != "no such file":
            seen_reason = f"{quoted(candidate)}: {reason}"
    if seen_reason:
        raise StartFailedError(f"cannot run {quoted(program)}: {seen_reason}")
    # The request chose the program and PATH: both are echoed short and escaped.
    raise StartFailedError(f"program {quoted(program)} not found in PATH ({quoted(search)[1:-1]})")


def _unusable(
    candidate: str, user: JobUser, hidden: Sequence[PurePosixPath], visible: Sequence[PurePosixPath]
) -> str | None:
    """Why `candidate` cannot be executed by `user` inside the sandbox, or None if it can."""
    if _hidden(os.path.normpath(candidate), hidden, visible):
        return "no such file"
    try:
        found = _lookup(candidate, user)
    except OSError as exc:  # a path changing while we walk it
        return exc.strerror.lower() if exc.strerror else "cannot look it up"
    if isinstance(found, str):
        return found
    resolved, st = found
    if _hidden(resolved, hidden, visible):
        return "no such file"
    if stat.S_ISDIR(st.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    executable = bool(st.st_mode & 0o111) if user.is_root else permits(st, user, 0o1)
    return None if executable else f"permission denied (not executable by the job user {user.name})"


def _hidden(path: str, hidden: Sequence[PurePosixPath], visible: Sequence[PurePosixPath]) -> bool:
    """Whether the sandbox hides `path`: the deepest of `hidden` and `visible` that
    contains it is a hidden one (a tie is visible: what shows it is mounted later,
    as an operator's bind is over the empty tmpfs that covers a host mount)."""
    pure = PurePosixPath(path)
    deepest_hidden = max((len(h.parts) for h in hidden if pure.is_relative_to(h)), default=-1)
    deepest_visible = max((len(v.parts) for v in visible if pure.is_relative_to(v)), default=-1)
    return deepest_hidden > deepest_visible


def _lookup(path: str, user: JobUser) -> tuple[str, os.stat_result] | str:
    """Resolve the absolute `path` as the kernel would for `user`: every directory
    passed through must let the user search it (its x bit for the user's uid or
    gid; the job has no supplementary groups), and symbolic links are followed.
    Returns (the resolved path, its stat), or why the lookup fails ("no such file",
    "permission denied (...)", ...). Root stats what it likes; only what the job
    user could learn is reported."""
    pending = path.split("/")[::-1]  # the next component last
    resolved, st = "/", os.stat("/")
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if not stat.S_ISDIR(st.st_mode):
            return "not a directory"
        if not user.is_root and not permits(st, user, 0o1):
            return f"permission denied (the job user {user.name} cannot search {resolved})"
        if part == "..":
            resolved = os.path.dirname(resolved)
            st = os.stat(resolved)
            continue
        candidate = os.path.join(resolved, part)
        try:
            entry = os.lstat(candidate)
        except FileNotFoundError:
            return "no such file"
        except OSError as exc:
            return exc.strerror.lower() if exc.strerror else "cannot stat it"
        if stat.S_ISLNK(entry.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                return "too many levels of symbolic links"
            target = os.readlink(candidate)
            pending.extend(target.split("/")[::-1])
            if target.startswith("/"):
                resolved, st = "/", os.stat("/")
            continue
        resolved, st = candidate, entry
    return resolved, st


def permits(st: os.stat_result, user: JobUser, bit: int) -> bool:
    """Whether the mode bits grant `user` permission `bit` (0o4 read, 0o2 write,
    0o1 execute/search) on the file: its owner's bits, else its group's, else others'."""
    if st.st_uid == user.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid == user.gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def exec_space() -> int:
    """The bytes exec's strings and their pointers may take in all, as the kernel
    computes it for this process's children: a quarter of the stack limit, within
    ARG_SPACE_MIN..ARG_SPACE_MAX (2 MiB with the usual 8 MiB stack)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    space = ARG_SPACE_MAX if soft == resource.RLIM_INFINITY else min(ARG_SPACE_MAX, soft // 4)
    return max(space, ARG_SPACE_MIN)


def check_exec_size(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Raise InvalidRequestError when the kernel would refuse to exec `argv` with
    `env` (E2BIG): one string over MAX_ARG_STRLEN, or all of them with their
    pointers over `exec_space()` less ARG_SPACE_SLACK."""
    strings = [os.fsencode(arg) for arg in argv]
    strings += [os.fsencode(f"{key}={value}") for key, value in env.items()]
    for i, string in enumerate(strings):
        if len(string) + 1 > MAX_ARG_STRLEN:
            what = "an argument" if i < len(argv) else "an environment variable"
            shown = string[:40].decode(errors="replace")
            raise InvalidRequestError(
                f"{what} ({shown!r}...) is {len(string)} bytes; "
                f"the kernel passes at most {MAX_ARG_STRLEN - 1} bytes in one: pass large data in a file"
            )
    total = sum(len(string) + 1 for string in strings) + 8 * len(strings)
    space = exec_space() - ARG_SPACE_SLACK
    if total > space:
        raise InvalidRequestError(
            f"the command line and environment take {total} bytes; "
            f"this server's jobs can take at most {space}: pass large data in a file"
        )


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

    def close(self) -> None:
        """Stop watching (a daemon leaving its jobs running)."""
        if self._pidfd >= 0:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


#: The outer bubblewrap or the output copier: started here, or found again after a restart.
Supervisor = ChildProcess | AttachedProcess


@attrs.define(eq=False)
class Launched:
    """A started job: two processes that do not depend on the daemon.

    process: the trampoline (then setpriv, then the outer bubblewrap: one pid, exec'd
        in turn). Bubblewrap waits for the sandbox's init and writes its exit code to
        the job's status file (`--json-status-fd`).
    copier: copies the job's output pipe into its output file (`copier_argv`),
        and exits once every writer of the pipe has gone: then the file is complete.
    command_pid: the host pid of the sandbox's init, leader of the command's session
        and process group.
    process_start / copier_start: their start times (`start_time`), which tell them
        apart from later processes that reuse their pids.
    """

    process: Supervisor
    copier: Supervisor | None
    command_pid: int
    process_start: int | None = None
    copier_start: int | None = None


def copier_argv() -> list[str]:
    """The command that copies a job's output pipe (its stdin) to its output file (its
    stdout): `cat`, which writes what each read returned at once (`head -c` would
    buffer, GNU dd's byte count stops at its first short read from a pipe). The
    output cap is the copier's RLIMIT_FSIZE (`limit_copier`)."""
    return [_tool("cat")]


def limit_copier(pid: int, limit: int) -> None:
    """Cap the copier's output at `limit` bytes: RLIMIT_FSIZE, so that its write past
    the limit is cut there, and the next one kills it (SIGXFSZ); the job's next
    write then fails with EPIPE (SIGPIPE), as under `cmd | head -c N`. Set before
    the job exists: nothing can have been written yet."""
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))


@functools.cache
def _tool(name: str) -> str:
    found = shutil.which(name, path=HELPER_ENV["PATH"])
    if found is None:
        raise StartFailedError(f"{name} is not installed on this host (coreutils); install it")
    return found


async def launch(
    build_cmd: Callable[[int, int], Sequence[str]],
    *,
    sandbox_args: bytes,
    output_file: int,
    status_file: int,
    output_limit: int | None = None,
    copier_errors: int | None = None,
    pipe_owner: tuple[int, int] | None = None,
    on_ready: Callable[[int], None] | None = None,
    seccomp: bytes | None = None,
    setup_timeout: float = SANDBOX_SETUP_TIMEOUT,
    kill_sandbox: Callable[[], None] | None = None,
) -> Launched:
    """Start the command line `build_cmd(status_fd, args_fd)` returns (see
    `bwrap.spawn_argv`), with the environment `bwrap.HELPER_ENV` and nothing else.

    status_fd: the fd number, inherited by the child, for bubblewrap's JSON status:
        `status_file`, a file the caller opened for appending.
    args_fd: the fd number, inherited by the child, of a sealed memfd holding
        `sandbox_args` (NUL-separated options for bubblewrap's `--args`, such as
        `bwrap.env_options`): what the job needs but the helpers must not see
        in their environment, nor `ps` in their command line.
    seccomp: a filter program (`seccomp.program()`) bubblewrap installs; it goes
        in its own sealed memfd, named by a `--seccomp FD` added to the args.
    setup_timeout: how long the sandbox may take to be ready; past it the start
        fails with StartFailedError (a host too busy to build it in time).
    output_file: a file the caller opened for appending: the copier (`copier_argv`,
        capped at `output_limit` bytes by `limit_copier`) appends the job's stdout and stderr to it (its own
        errors, such as ENOSPC, to `copier_errors` when given). The job
        writes to a pipe, not to the file: a program that reopens /dev/stdout by name
        (with O_TRUNC, as `> /dev/stdout` does) would otherwise rewrite the file.

    The child's stdin is one end of a "ready" socket pair: `bwrap.READY_HELPER`
    writes a line to it inside the finished sandbox, and execs the command once
    it reads the daemon's answer. In between, `on_ready(command_pid)` runs (before
    the command exists); the answer follows, and launch returns. pipe_owner: (uid,
    gid) to own the output pipe, so that a job running as that user can reopen
    /dev/stdout and /dev/stderr. Neither process depends on the daemon once started
    (no pipe to it, no parent-death signal). On failure nothing is left running and
    StartFailedError says what bubblewrap reported; InvalidRequestError if the
    kernel refuses the command line as too long (E2BIG). Cancellation kills both.
    kill_sandbox: kills whatever bubblewrap started (the job's cgroup), called when
    the start fails after the fork: nothing else would (no parent-death signal).
    """
    fds: list[int] = []
    copier: ChildProcess | None = None
    try:
        inherited = []
        if seccomp is not None:
            # Each sandbox reads its own copy: a shared one's file offset would be shared too.
            seccomp_fd = _sealed_memfd("jobworker-seccomp", seccomp)
            fds.append(seccomp_fd)
            inherited.append(seccomp_fd)
            sandbox_args += b"--seccomp\0%d\0" % seccomp_fd
        args_fd = _sealed_memfd("jobworker-sandbox-args", sandbox_args)
        fds.append(args_fd)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        fds += (out_r, out_w)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # close-on-exec
        ready_ours, ready_theirs = ours.detach(), theirs.detach()
        fds += (ready_ours, ready_theirs)
        with contextlib.suppress(OSError):  # a lower pipe-max-size only costs throughput
            fcntl.fcntl(out_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        if pipe_owner is not None:
            os.fchown(out_w, *pipe_owner)
        cmd = build_cmd(status_file, args_fd)
        check_exec_size(cmd, HELPER_ENV)
        try:
            process = ChildProcess.start(
                cmd,
                stdin=ready_theirs,
                stdout=out_w,
                stderr=out_w,
                pass_fds=(status_file, args_fd, *inherited),
                env=dict(HELPER_ENV),
                cwd="/",
                start_new_session=True,  # a Ctrl-C at the daemon's terminal must not hit the jobs
            )
        except OSError as exc:
            if exc.errno != errno.E2BIG:
                raise
            raise InvalidRequestError(
                "the command line is too long for the kernel to start: pass large data in a file"
            ) from None
        # The copier is forked while bubblewrap builds the sandbox, so its fork and
        # exec are off the start's critical path (they were 2-4 ms of it). Its cap is
        # still set before the command exists: the command runs only once this
        # function answers the ready line, and until then only bubblewrap's own error
        # (a failed start, whose files go) can be in the pipe. RLIMIT_FSIZE caps the
        # file's size, whatever was written before it was set.
        try:
            copier = ChildProcess.start(
                copier_argv(),
                stdin=out_r,
                stdout=output_file,
                stderr=subprocess.DEVNULL if copier_errors is None else copier_errors,
                env=dict(HELPER_ENV),
                cwd="/",
                start_new_session=True,
            )
            if output_limit is not None:
                limit_copier(copier.pid, output_limit)
        except BaseException:
            process.kill()
            if kill_sandbox is not None:
                kill_sandbox()
            with trio.CancelScope(shield=True):
                await process.wait()
            raise
    except BaseException:
        for fd in fds:
            os.close(fd)
        if copier is not None:  # it ends at EOF, now that no one holds the pipe
            with trio.CancelScope(shield=True):
                await copier.wait()
        raise
    for fd in (out_r, out_w, ready_theirs, args_fd, *inherited):
        os.close(fd)
    ready = trio.lowlevel.FdStream(ready_ours)
    try:
        with trio.move_on_after(setup_timeout) as waiting:
            started = await ready.receive_some(1) != b""
        if waiting.cancelled_caught:
            raise StartFailedError(
                f"the sandbox was not ready within {setup_timeout:g} s (is the host overloaded?); "
                "try again"
            )
        command_pid = read_child_pid(status_file) if started else None
        if command_pid is None:
            raise StartFailedError(await _failure_message(process, copier, output_file))
        if on_ready is not None:
            on_ready(command_pid)
        try:
            await ready.send_all(b"\n")
        except trio.BrokenResourceError:  # the sandbox went before its command ran
            raise StartFailedError(await _failure_message(process, copier, output_file)) from None
    except BaseException:
        with trio.CancelScope(shield=True):
            await _kill(process, copier, kill_sandbox)
        raise
    finally:
        # Closed without a checkpoint: a cancellation delivered here, after the
        # sandbox reported ready, would leave a running process that no one kills
        # or reaps (the caller never learns of it).
        ready.close()
    return Launched(
        process=process,
        copier=copier,
        command_pid=command_pid,
        process_start=start_time(process.pid),
        copier_start=start_time(copier.pid),
    )


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (field 22 of
    /proc/PID/stat); None when there is no such process. A pid and its start time
    name one process for the life of the host: a reused pid starts later."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return int(data.rsplit(b")", 1)[1].split()[19])


def _sealed_memfd(name: str, data: bytes) -> int:
    """A memfd holding `data`, positioned at its start and sealed against any change
    (close-on-exec: only `pass_fds` hands it on). The caller closes it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _status_lines(status_file: int) -> list[object]:
    """Every whole JSON line of bubblewrap's status file (read with pread: the fd's
    offset is bubblewrap's too)."""
    data = b""
    while chunk := os.pread(status_file, 65536, len(data)):
        data += chunk
    lines: list[object] = []
    for line in data.split(b"\n")[:-1]:  # the last one is not whole yet (or empty)
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def read_child_pid(status_file: int) -> int | None:
    """The sandbox init's host pid from bubblewrap's first status line,
    {"child-pid": N, ...}: written before the sandbox is set up, so it is there once
    the ready line came. None when it is not (bubblewrap failed)."""
    for record in _status_lines(status_file):
        if isinstance(record, dict) and "child-pid" in record:
            return int(record["child-pid"])
    return None


def read_exit_code(status_file: int) -> int | None:
    """The {"exit-code": N} of bubblewrap's status file, or None when bubblewrap
    died before writing it (killed)."""
    for record in _status_lines(status_file):
        if isinstance(record, dict) and "exit-code" in record:
            return int(record["exit-code"])
    return None


async def _failure_message(process: ChildProcess, copier: ChildProcess, output_file: int) -> str:
    """What bubblewrap said (its stderr went to the output file) once it has exited
    and the copier has written all of it."""
    with trio.move_on_after(FAILURE_WAIT):
        await process.wait()
        await copier.wait()
    data = os.pread(output_file, MAX_ERROR_OUTPUT, 0)
    text = data.decode(errors="replace").strip()
    return f"the sandbox could not start the command: {text or 'no reason given'}"


async def _kill(
    process: ChildProcess, copier: ChildProcess, kill_sandbox: Callable[[], None] | None
) -> None:
    """SIGKILL bubblewrap and what it started (`kill_sandbox`), reap it, and reap the
    copier, which ends once the last writer of the output pipe has gone."""
    process.kill()
    if kill_sandbox is not None:
        kill_sandbox()
    with trio.move_on_after(5):
        await process.wait()
    with trio.move_on_after(5):
        await copier.wait()
    if copier.returncode is None:
        copier.kill()
        await copier.wait()


def exit_status(returncode: int, reported: int | None) -> tuple[int, int | None]:
    """(exit_code, signal) in shell terms from the outer process's return code and
    bubblewrap's reported exit code. A negative return code means the outer process
    itself was killed by that signal; a code above 128 means signal code-128."""
    code = reported if reported is not None else returncode
    if code < 0:
        return 128 - code, -code
    if 128 < code <= 128 + 64:
        return code, code - 128
    return code, None


__all__ = [
    "AttachedProcess",
    "ChildProcess",
    "Supervisor",
    "copier_argv",
    "limit_copier",
    "read_child_pid",
    "Launched",
    "check_exec_size",
    "exec_space",
    "exit_status",
    "launch",
    "read_exit_code",
    "resolve_program",
    "start_time",
]

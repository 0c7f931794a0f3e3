"""Start a job's command line and learn whether the command is running.

`launch` starts the trampoline with stdout and stderr on one pipe (so the log
keeps the order a terminal would show), with the helpers' fixed environment
(`bwrap.HELPER_ENV`, never the request's), and its output copier, and returns
once bubblewrap has reported the command's host pid on its JSON status fd, or
raises StartFailedError with what bubblewrap said when the sandbox could not be
built.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import resource
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence

import attrs
import trio

from jobworker.errors import InvalidRequestError, StartFailedError
from jobworker.sandbox.bwrap import HELPER_ENV
from jobworker.sandbox.process import ChildProcess, Supervisor, start_time
from jobworker.sandbox.program import check_exec_size
from jobworker.sandbox.status import read_child_pid

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


def limit_copier(pid: int, limit: int, ceiling: int | None = None) -> None:
    """Cap the copier's output at `limit` bytes: RLIMIT_FSIZE, so that its write past
    the limit is cut there, and the next one kills it (SIGXFSZ); the job's next
    write then fails with EPIPE (SIGPIPE), as under `cmd | head -c N`. Set before
    the job exists: nothing can have been written yet.

    ceiling: how far `raise_copier_limit` may move the cap later (the hard limit;
    None: nowhere, the hard limit is `limit`): a process may raise its soft limit up
    to its hard one without CAP_SYS_RESOURCE, which jwsd may lack (a container)."""
    hard = limit if ceiling is None else ceiling
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


def raise_copier_limit(pid: int, limit: int) -> None:
    """Let the copier write up to `limit` bytes in all (its soft RLIMIT_FSIZE, at most
    the ceiling `limit_copier` gave it). Raises ProcessLookupError once it has gone."""
    _soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


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
    output_ceiling: int | None = None,
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
        capped at `output_limit` bytes by `limit_copier`, which `raise_copier_limit` may
        raise to `output_ceiling` later, when given: `resource.RLIM_INFINITY` for no end) appends
        the job's stdout and stderr to it (its own
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
                limit_copier(copier.pid, output_limit, output_ceiling)
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


__all__ = [
    "SANDBOX_SETUP_TIMEOUT",
    "Launched",
    "copier_argv",
    "launch",
    "limit_copier",
    "raise_copier_limit",
]

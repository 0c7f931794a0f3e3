"""Writing a job's output to `jws`'s stdout without stopping its event loop: a pipe
or a socket as a trio stream, a terminal or a file from a worker thread, followed
across restarts of jwsd (`copy_output`, which `jws output` and `jws run` use)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time: `jws --help` stays quick
    from jobworker.client import JobWorkerClient, Reconnector


#: How much output a pipe on stdout holds while its reader catches up: jws keeps
#: receiving (and jwsd sending) while the reader works through it (Linux's default is
#: 64 KiB, a quarter of one output message).
STDOUT_PIPE_SIZE = 1 << 20


def _widen_pipe(fd: int) -> None:
    """Give a pipe on stdout room for several output messages (best effort: a pipe
    bigger than /proc/sys/fs/pipe-max-size, or not a pipe at all, stays as it is)."""
    with contextlib.suppress(OSError, ValueError):
        if (
            stat.S_ISFIFO(os.fstat(fd).st_mode)
            and fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < STDOUT_PIPE_SIZE
        ):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, STDOUT_PIPE_SIZE)


@contextlib.asynccontextmanager
async def _async_writer(fd: int) -> AsyncIterator[Callable[[bytes], Awaitable[None]]]:
    """A function that writes all of a chunk to `fd` (a dup of it: the caller keeps
    `fd`) and, while `fd` cannot take more, waits without stopping the event loop.

    A pipe or a socket becomes a trio stream: writes go straight from the event loop,
    in non-blocking mode (restored on exit). Anything else (a terminal, a file,
    /dev/null) is written in a worker thread: a terminal shares its open file with
    the shell, whose reads must never find it non-blocking, not even after a crash.
    """
    import trio

    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        _widen_pipe(fd)
        async with trio.lowlevel.FdStream(os.dup(fd)) as stream:
            yield stream.send_all
        return
    async with trio.wrap_file(os.fdopen(os.dup(fd), "wb", buffering=0)) as file:

        async def write(chunk: bytes) -> None:
            view = memoryview(chunk)
            while view:
                view = view[await file.write(view) :]

        yield write


async def copy_output(
    client: JobWorkerClient,
    job_id: str,
    offset: int,
    fd: int,
    reconnector: Reconnector | None = None,
) -> int:
    """Write the job's output from `offset` to `fd` until the job has ended; with a
    `reconnector`, across restarts of jwsd (`client` is the connection used first).
    Returns the offset reached. Raises BrokenPipeError when the reader of `fd` has gone."""
    import trio

    from jobworker.client import Backoff, Reconnector, follow_output

    if reconnector is None:  # one that never reconnects: a loss fails at once
        reconnector = Reconnector(
            lambda _: contextlib.nullcontext(client), Backoff(total=0), lambda _: None
        )
    try:
        async with _async_writer(fd) as write:
            return await follow_output(reconnector, job_id, offset, write, client)
    except trio.BrokenResourceError as exc:  # the stream's word for EPIPE
        raise BrokenPipeError(str(exc.__cause__ or exc)) from exc


__all__ = ["STDOUT_PIPE_SIZE", "copy_output"]

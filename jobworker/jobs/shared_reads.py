"""Reads of job output files, shared by every follower in one trio run.

Followers of one job read its output file from their own cursors, and a job with
1,000 followers would cost 1,000 reads and 1,000 copies of every byte. So reads
are cut to blocks aligned to `BLOCK`: followers that start at different offsets
are on block boundaries after their first read, and then ask for the same keys
(a log's serial, the offset, the length). `SharedReads.read` lets the first one
to ask read a block; the others wait for that read and get the very same bytes
object, as does anyone who asks while it is among the last `RECENT_BYTES` read.

`pread` reads one block: inline while the page cache holds it (`preadv2` with
`RWF_NOWAIT`: output read back soon after the copier wrote it nearly always is,
and a thread hop per block would cost more than the copy, docs/performance.md),
else in one of the shared reads' own worker threads.
"""

from __future__ import annotations

import collections
import errno
import os
from collections.abc import Awaitable, Callable

import trio

#: Reads of an output file are aligned to blocks of this size, so that followers that
#: are at different offsets soon ask for the same blocks and can share them.
BLOCK = 256 << 10
#: Bytes of recent reads kept for other followers to share (every log together).
RECENT_BYTES = 32 << 20

#: A read's key: (the log's serial, offset, length).
ReadKey = tuple[int, int, int]


class SharedReads:
    """Reads shared by every follower of every log in one trio run (`shared_reads()`).

    If the read of a key fails or is cancelled, each follower waiting for it reads
    for itself (and so sees the error itself): failures are never shared.
    """

    def __init__(self) -> None:
        # Their own threads, fewer than the cores: a hundred followers copying from
        # the disk at once would otherwise take every core from the event loop and
        # fill trio's default limiter, which the rest of the service needs for its
        # own blocking calls.
        self.threads = trio.CapacityLimiter(max(1, (os.cpu_count() or 2) // 2))
        self._recent: collections.OrderedDict[ReadKey, bytes] = collections.OrderedDict()
        self._recent_bytes = 0
        self._reading: dict[ReadKey, trio.Event] = {}

    async def read(self, key: ReadKey, read: Callable[[], Awaitable[bytes]]) -> bytes:
        """The bytes for `key`: recent ones, those of a read in flight, or `read()`'s.
        Raises what `read()` raises."""
        while True:
            data = self._recent.get(key)
            if data is not None:
                self._recent.move_to_end(key)
                return data
            in_flight = self._reading.get(key)
            if in_flight is None:
                break
            await in_flight.wait()
        done = self._reading[key] = trio.Event()
        try:
            data = await read()
            self._remember(key, data)
            return data
        finally:
            del self._reading[key]
            done.set()

    def forget(self, serial: int) -> None:
        """Drop what was kept of the log numbered `serial` (it was discarded)."""
        for key in [key for key in self._recent if key[0] == serial]:
            self._recent_bytes -= len(self._recent.pop(key))

    def _remember(self, key: ReadKey, data: bytes) -> None:
        self._recent[key] = data
        self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_BYTES:
            _, oldest = self._recent.popitem(last=False)
            self._recent_bytes -= len(oldest)


_SHARED_READS: trio.lowlevel.RunVar[SharedReads] = trio.lowlevel.RunVar("jobworker_shared_reads")


def shared_reads() -> SharedReads:
    """The shared reads of this trio run (RuntimeError outside one)."""
    try:
        return _SHARED_READS.get()
    except LookupError:
        shared = SharedReads()
        _SHARED_READS.set(shared)
        return shared


async def pread(fd: int, count: int, offset: int) -> bytes:
    """Up to `count` bytes of `fd` at `offset` (b"" past its end): inline when the
    page cache has them, else in one of `shared_reads().threads`. Raises OSError.

    The inline path does not yield to the event loop: its callers checkpoint once
    per read of their own (`FileLog.read`), and a second one per block would cost
    the fast path for nothing."""
    data = pread_if_cached(fd, count, offset)
    if data is not None:
        return data
    return await trio.to_thread.run_sync(
        os.pread, fd, count, offset, limiter=shared_reads().threads
    )


def pread_if_cached(fd: int, count: int, offset: int) -> bytes | None:
    """Up to `count` bytes at `offset`, read right here if the page cache has them
    (preadv2 with RWF_NOWAIT), or None if that would wait for the disk (or the file
    has nothing there). Raises OSError."""
    buffer = bytearray(count)
    try:
        got = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without NOWAIT
            return None
        raise
    if got == count:
        return bytes(buffer)
    return bytes(memoryview(buffer)[:got]) if got else None


__all__ = [
    "BLOCK",
    "RECENT_BYTES",
    "ReadKey",
    "SharedReads",
    "pread",
    "pread_if_cached",
    "shared_reads",
]

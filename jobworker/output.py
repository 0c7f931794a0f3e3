"""`OutputLog`: every byte of one job's output, in order, for any number of readers.

Design
------
One writer (the job's pump) appends; any number of readers follow, each from its
own cursor. The log is the single source of truth, so a reader that joins late,
or falls far behind, still gets every byte from byte 0 (or the offset it asks
for), exactly once and in order, and a slow reader only delays itself:

* `append` is synchronous and never waits for anybody. It stores the chunk,
  and wakes every reader parked on the log with one `ParkingLot.unpark_all`.
  Readers park until an append or `close` unparks them: there is no polling.
* Each subscriber gets a memory channel of its own, fed by a task of its own
  (a cloned receive channel would split the bytes between its holders, and a
  shared send channel would let the slowest subscriber block the writer).
* Memory is bounded. Chunks are kept in memory until the log holds more than
  `memory_limit` bytes; then everything so far is written to the spill file and,
  from then on, each appended chunk is written there too as it arrives, while
  the oldest chunks leave memory so that at most `memory_limit` bytes (plus the
  newest chunk, which always stays) remain. Readers behind that window read the
  file: inline when the page cache holds the bytes (preadv2 with RWF_NOWAIT,
  cheaper than a thread hop), else with `os.pread` in worker threads of their own
  (a `CapacityLimiter` with half the cores, so that many lagging readers cannot
  starve the event loop); in blocks aligned to `SPILL_BLOCK` that readers at the same place share: one
  pread and one bytes object serve every reader that asks for that block while it
  is recent (`SPILL_CACHE_BYTES` across all logs), so 1,000 lagging followers of
  one job cost one read and one copy per block, not 1,000. The
  writes happen inline in `append`: a `pwrite` into the page cache is a copy that
  does not wait for the disk until the kernel's dirty limits are reached, so a
  thread hop would cost more than it saves (figures in docs/performance.md).
* The hot paths do no per-byte work: `append` is a couple of list appends (and
  one `pwrite` once spilled); a read of an in-memory chunk is one `bisect` over
  the chunks' start offsets and returns the stored `bytes` object itself when
  the reader is at its start (no copy), else one slice.
* Small appends (a process that flushes every line) are merged into the
  previous chunk while both are small, so memory is not spent on one Python
  object per line. The copy this costs is bounded by `MERGE_BELOW` per append.

If the spill file cannot be written (disk full, I/O error) the log keeps every
byte it already holds, drops what comes after, logs the error once, and readers
that reach the end of what was kept get a `BadStateError` that says so, rather
than a stream that silently stops: the writer still never blocks or fails, so
the job is not disturbed by its log. `truncated` then says why output is missing.

A finished log lives on disk: once its writer is done, `release` writes what
only memory holds to the spill file (in a worker thread), drops it from memory
and closes the file (readers open it per read), so a daemon that keeps many
finished jobs holds neither their output nor an fd each.

`max_size` caps the output: the log keeps exactly that many bytes, `full` turns
true, the rest is dropped and `truncated` says so; readers get the kept bytes and
a normal end (the cap is a policy, not a loss).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import trio

from jobworker.errors import BadStateError, InvalidRequestError, sole_exception

log = logging.getLogger(__name__)

#: Numbers each log, for the keys of its shared spill reads.
_serials = itertools.count()

#: Appends shorter than this are merged into the previous chunk when it is shorter too.
MERGE_BELOW = 4096
#: Reads of a spill file are aligned to blocks of this size, so that readers that fell
#: behind at different offsets soon ask for the same blocks and can share them.
SPILL_BLOCK = 256 << 10
#: Bytes of recent spill-file reads kept for other readers to share (all logs together).
SPILL_CACHE_BYTES = 32 << 20
#: Releasing at least this many bytes of output hands the freed heap back to the
#: system (malloc_trim): without it, 40 finished jobs of 8 MB left jwsd ~55 MiB larger.
TRIM_AFTER = 1 << 20
#: Evicted slots at the front of the chunk lists are dropped in one go once there are this many
#: (and they are at least half of the lists), so eviction stays amortised O(1).
COMPACT_AFTER = 256


@attrs.define(eq=False)
class OutputLog:
    """The output of one job: appended by one writer, read by any number of readers.

    spill_path: the file the log spills to once it holds more than `memory_limit`
        bytes. It is created only then (its directory must exist), truncated if it
        already exists, and deleted by `discard`/`aclose`.
    memory_limit: the most bytes of output kept in memory (the newest chunk is
        always kept, so the bound is `memory_limit` plus one chunk). 0 spills at
        the first byte.
    max_size: the most bytes of output kept at all (`None`: no cap); see the
        module docstring.

    Who closes what: the job's owner calls `close` when the job's output has ended
    (readers then finish), and `discard` or `aclose` when the log is no longer
    wanted (memory and spill file released; readers still waiting get
    `BadStateError`). Raises `InvalidRequestError` for a negative `memory_limit`
    or `max_size`.
    """

    spill_path: Path
    memory_limit: int = attrs.field(default=8 << 20, kw_only=True)
    max_size: int | None = attrs.field(default=None, kw_only=True)

    _size: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _discarded: bool = attrs.field(default=False, init=False)
    # In-memory chunks from index _head on, and the offset of each one's first byte.
    # Slots before _head were evicted (set to b"") and are compacted away in batches.
    _chunks: list[bytes] = attrs.field(factory=list, init=False)
    _starts: list[int] = attrs.field(factory=list, init=False)
    _head: int = attrs.field(default=0, init=False)
    _memory: int = attrs.field(default=0, init=False)
    # The spill file once created; bytes [0, _written) of the output are in it.
    _fd: int | None = attrs.field(default=None, init=False)
    # True once the spill file exists (its fd is closed again by `release`).
    _on_disk: bool = attrs.field(default=False, init=False)
    _written: int = attrs.field(default=0, init=False)
    # preads in flight in worker threads: the fd is closed only once none is left,
    # so that its number cannot be reused by another file under a running pread.
    _preads: int = attrs.field(default=0, init=False)
    _orphan_fd: int | None = attrs.field(default=None, init=False)
    # Set when the spill file could not be written; appends after that are dropped.
    _failure: str | None = attrs.field(default=None, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    # Set once max_size was reached: what came after was dropped by policy.
    _full: bool = attrs.field(default=False, init=False)
    # Set by `release`: the writer is done, appends are refused.
    _sealed: bool = attrs.field(default=False, init=False)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    # This log's part of the key of its shared spill reads.
    _serial: int = attrs.field(factory=lambda: next(_serials), init=False)

    def __attrs_post_init__(self) -> None:
        if self.memory_limit < 0:
            raise InvalidRequestError(
                f"output memory limit must be zero or more bytes, not {self.memory_limit}"
            )
        if self.max_size is not None and self.max_size < 0:
            raise InvalidRequestError(
                f"output limit must be zero or more bytes, not {self.max_size}"
            )

    # ---- state -------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes appended so far (and kept: see the module's note on spill failures)."""
        return self._size

    @property
    def closed(self) -> bool:
        """True once `close`, `discard` or `aclose` was called: no more appends."""
        return self._closed

    @property
    def memory_size(self) -> int:
        """Bytes of output held in memory now: at most `memory_limit` plus one chunk."""
        return self._memory

    @property
    def spilled(self) -> bool:
        """True once the log has written its output to `spill_path`."""
        return self._on_disk

    @property
    def disk_size(self) -> int:
        """Bytes of output written to the spill file so far."""
        return self._written

    @property
    def full(self) -> bool:
        """True once the log holds `max_size` bytes: later appends are dropped."""
        return self._full

    @property
    def truncated(self) -> str | None:
        """Why output is missing from the log (`None`: nothing is): the cap was
        reached, or the spill file could not be written and bytes were lost."""
        if self._dropped:
            return f"{self._dropped} bytes after byte {self._size} were lost: {self._failure}"
        if self._full:
            return (
                f"the output limit of {self.max_size} bytes was reached; later output was not kept"
            )
        return None

    # ---- the writer ----------------------------------------------------------

    def append(self, data: bytes) -> None:
        """Add `data` at the end of the log and wake every waiting reader.

        Synchronous and never waits for a reader; once the log has spilled it also
        writes `data` to the spill file (inline: see the module docstring). Empty
        `data` changes nothing. Raises `BadStateError` after `close`/`discard`.
        """
        if self._closed or self._sealed:
            raise BadStateError(
                "cannot append to a closed output log; the job's output has already ended"
            )
        size = len(data)
        if not size or self._full:
            return
        if self.max_size is not None and self._size + size > self.max_size:
            self._full = True
            size = self.max_size - self._size
            data = data[:size]
            if not size:
                return
        if self._failure is not None:
            self._dropped += size
            if self._lot:
                self._lot.unpark_all()  # readers at the end must learn that bytes were lost
            return
        if type(data) is not bytes:
            data = bytes(data)  # a bytearray could change under the readers
        chunks = self._chunks
        if size < MERGE_BELOW and len(chunks) > self._head and len(chunks[-1]) < MERGE_BELOW:
            chunks[-1] += data  # a new object: a reader holding the old one is unaffected
        else:
            chunks.append(data)
            self._starts.append(self._size)
        self._size += size
        self._memory += size
        if self._fd is not None:
            self._write_through()
        elif self._size > self.memory_limit:
            self._spill()
        if self._lot:
            self._lot.unpark_all()

    def close(self) -> None:
        """Mark the output as complete: no more appends; readers finish once they have
        read everything. Idempotent."""
        self._closed = True
        self._lot.unpark_all()

    async def release(self) -> None:
        """The writer is done: move the output to disk. Writes what only memory holds
        to the spill file (in a worker thread), then drops every chunk from memory;
        readers read the file from then on. Appends are refused from now on (readers
        still wait for `close` to learn the output is complete). Does nothing more
        after `discard`, or once the spill file has failed. If the file cannot be
        written now, the bytes stay in memory (at most `memory_limit` plus one
        chunk) and readable, and the failure is logged: nothing is lost. Shielded:
        it finishes even when the caller is cancelled, so the fd is never closed
        under the write."""
        self._sealed = True
        if self._discarded or self._failure is not None or not self._memory:
            await trio.lowlevel.checkpoint()
            return
        if self._fd is None:
            try:
                self._fd = os.open(
                    self.spill_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
                )
            except OSError as exc:
                self._fail(exc)
                await trio.lowlevel.checkpoint()
                return
            self._on_disk = True
        fd, start = self._fd, self._written
        missing = [
            memoryview(chunk)[max(0, start - first) :]
            for chunk, first in zip(
                self._chunks[self._head :], self._starts[self._head :], strict=True
            )
            if first + len(chunk) > start
        ]
        self._preads += 1  # the fd stays open until the write is done (see _forget)
        try:
            with trio.CancelScope(shield=True):
                written = await trio.to_thread.run_sync(_write_all, fd, missing, start)
        except OSError as exc:
            self._fail(exc)
            return
        finally:
            self._preads -= 1
            if not self._preads and self._orphan_fd is not None:
                _release_file(self._orphan_fd, None)
                self._orphan_fd = None
        if self._discarded:
            return
        self._written = start + written
        released = self._memory
        self._chunks, self._starts, self._head, self._memory = [], [], 0, 0
        # No fd stays open for a finished job (thousands are kept): readers open the
        # file for each read from now on (see `_pread`).
        fd, self._fd = self._fd, None
        if self._preads:
            self._orphan_fd = fd
        else:
            os.close(fd)
        if released >= TRIM_AFTER:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_trim_heap)

    # ---- readers -------------------------------------------------------------

    async def read(self, offset: int, max_bytes: int) -> bytes:
        """The output from byte `offset` on: at least one byte and at most `max_bytes`.

        It may return fewer than are available (the rest of one stored chunk, or of
        the part that is only in the spill file), so that no bytes are copied to join
        chunks. Waits, without polling, until there is a byte at `offset` or the log is
        closed; returns b"" only when the log is closed and `offset >= size`.

        Raises `InvalidRequestError` for a negative `offset` or a `max_bytes` below 1,
        and `BadStateError` once the log was discarded (also to readers that were
        waiting then), when the spill file cannot be read, or when the output past
        this point was lost because the spill file could not be written.
        """
        if offset < 0:
            raise InvalidRequestError(f"output offset must be zero or more, not {offset}")
        if max_bytes < 1:
            raise InvalidRequestError(f"a read must ask for at least one byte, not {max_bytes}")
        if offset < self._size:
            await trio.lowlevel.checkpoint()  # a schedule point, as every trio call has
        else:
            # park() is the schedule point here: no second yield once woken, so that a
            # follower in step with the writer costs one task switch per chunk.
            while offset >= self._size:
                self._check_readable()
                if self._dropped:
                    raise BadStateError(self._lost_message())
                if self._closed:
                    await trio.lowlevel.checkpoint()
                    return b""
                await self._lot.park()
        self._check_readable()
        chunks, starts, head = self._chunks, self._starts, self._head
        if len(chunks) > head and offset >= starts[head]:
            index = bisect.bisect_right(starts, offset, head) - 1
            chunk = chunks[index]
            start = offset - starts[index]
            if start == 0 and len(chunk) <= max_bytes:
                return chunk
            return chunk[start : start + max_bytes]
        # Behind the memory window: the bytes before the first in-memory chunk are in the
        # file. Read up to the next block boundary at most, so reads line up and are shared.
        end = starts[head] if len(chunks) > head else self._size
        count = min(max_bytes, end - offset, SPILL_BLOCK - offset % SPILL_BLOCK)
        return await _spill_reads().read(
            (self._serial, offset, count), lambda: self._pread(offset, count)
        )

    @contextlib.asynccontextmanager
    async def subscribe(
        self, offset: int = 0, *, chunk_size: int = 1 << 20
    ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        """The output from byte `offset` on, as a memory channel of the caller's own.

        A task of its own (in a nursery this context manager owns) reads the log from
        its own cursor and sends chunks of at most `chunk_size` bytes into the channel;
        the channel ends (`EndOfChannel`) after the last byte once the log is closed.
        The channel is unbuffered: the feeder holds at most one chunk, and a
        subscriber that does not read only stops its own feeder.

        Leaving the block (normally, by an exception or by cancellation) cancels the
        feeder at once: no task is left behind. An exception raised in the block
        comes out as itself, not wrapped in an exception group. Raises
        `InvalidRequestError` for a negative `offset` or a `chunk_size` below 1 (before
        anything starts), and `BadStateError` if the log is discarded while the
        subscription runs (see `read`).
        """
        if offset < 0:
            raise InvalidRequestError(f"output offset must be zero or more, not {offset}")
        if chunk_size < 1:
            raise InvalidRequestError(f"chunk size must be at least one byte, not {chunk_size}")
        send, receive = trio.open_memory_channel[bytes](0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed, send, offset, chunk_size)
                with receive:
                    try:
                        yield receive
                    finally:
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            _raise_single(group)

    async def _feed(
        self, send: trio.MemorySendChannel[bytes], offset: int, chunk_size: int
    ) -> None:
        read = self.read
        with send:
            while chunk := await read(offset, chunk_size):
                try:
                    await send.send(chunk)
                except trio.BrokenResourceError:
                    return  # the subscriber closed its channel: nobody to feed
                offset += len(chunk)

    # ---- releasing -----------------------------------------------------------

    def discard(self) -> None:
        """Close the log, free its memory, and close and delete the spill file inline
        (an unlink and a close: cheap enough for the event loop, but see `aclose`).

        Readers waiting in `read` (and so subscribers' feeders) get `BadStateError`,
        not b"": the output was not complete, it was thrown away. Idempotent; errors
        deleting the file are logged, not raised.
        """
        fd, path = self._forget()
        _release_file(fd, path)

    async def aclose(self) -> None:
        """`discard`, with the file's close and unlink done in a worker thread
        (deleting a large file can take milliseconds). Shielded: it finishes even when
        the caller is cancelled."""
        fd, path = self._forget()
        if fd is not None or path is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_release_file, fd, path)
        else:
            await trio.lowlevel.checkpoint()

    def _forget(self) -> tuple[int | None, Path | None]:
        """Drop everything in memory; return the fd to close now (None: none, or
        a pread still uses it and will close it) and the file to delete (or None)."""
        if self._discarded:
            return None, None
        self._discarded = self._closed = True
        self._chunks, self._starts, self._head, self._memory = [], [], 0, 0
        with contextlib.suppress(RuntimeError):  # outside trio: nothing was read
            _spill_reads().forget(self._serial)
        self._lot.unpark_all()
        fd, self._fd = self._fd, None
        path = self.spill_path if self._on_disk else None
        if fd is not None and self._preads:
            self._orphan_fd, fd = fd, None
        return fd, path

    # ---- internals -----------------------------------------------------------

    def _check_readable(self) -> None:
        if self._discarded:
            raise BadStateError(
                "this output was discarded (its job record was dropped or the service is "
                "shutting down); it cannot be read any more"
            )

    def _lost_message(self) -> str:
        return (
            f"output after byte {self._size} was lost ({self._dropped} bytes): "
            f"{self._failure}; free space in the data dir and run the job again"
        )

    def _spill(self) -> None:
        """Start spilling: create the file, write everything held so far, evict."""
        try:
            self._fd = os.open(
                self.spill_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            self._fail(exc)
            return
        self._on_disk = True
        self._write_through()

    def _write_through(self) -> None:
        """Write the in-memory chunks the file lacks, then evict the oldest ones."""
        fd = self._fd
        assert fd is not None
        chunks, starts = self._chunks, self._starts
        index = len(chunks) - 1
        # Normally only the newest chunk is missing (or it grew by a merge); on the
        # first spill, all of them.
        while index > self._head and starts[index] > self._written:
            index -= 1
        try:
            for chunk, start in zip(chunks[index:], starts[index:], strict=True):
                view = memoryview(chunk)[self._written - start :]
                while view:
                    count = os.pwrite(fd, view, self._written)
                    self._written += count
                    view = view[count:]
        except OSError as exc:
            self._fail(exc)
            return
        self._evict()

    def _evict(self) -> None:
        chunks, head = self._chunks, self._head
        last = len(chunks) - 1
        while self._memory > self.memory_limit and head < last:
            self._memory -= len(chunks[head])
            chunks[head] = b""
            head += 1
        if head >= COMPACT_AFTER and head * 2 >= len(chunks):
            del chunks[:head]
            del self._starts[:head]
            head = 0
        self._head = head

    def _fail(self, exc: OSError) -> None:
        self._failure = f"cannot write the spill file {self.spill_path}: {exc.strerror or exc}"
        log.error("output log: %s; dropping the rest of this output", self._failure)

    async def _pread(self, offset: int, count: int) -> bytes:
        # Re-checked here, where the fd is used: a reader that waited for another's
        # shared read may get here after a discard released the file (fd now None).
        self._check_readable()
        fd = self._fd
        if fd is None:  # released: bytes behind the memory window are in the file
            return await self._pread_released(offset, count)
        try:
            cached = _pread_if_cached(fd, count, offset)
        except OSError as exc:
            raise BadStateError(
                f"cannot read the spilled output from {self.spill_path}: {exc.strerror or exc}"
            ) from exc
        if cached:
            return cached
        self._preads += 1
        try:
            data = await trio.to_thread.run_sync(
                os.pread, fd, count, offset, limiter=_spill_reads().threads
            )
        except OSError as exc:
            raise BadStateError(
                f"cannot read the spilled output from {self.spill_path}: {exc.strerror or exc}"
            ) from exc
        finally:
            self._preads -= 1
            if not self._preads and self._orphan_fd is not None:
                _release_file(self._orphan_fd, None)
                self._orphan_fd = None
        self._check_readable()
        if not data:
            raise BadStateError(
                f"the spill file {self.spill_path} ends before byte {offset}; "
                "something else truncated it"
            )
        return data

    async def _pread_released(self, offset: int, count: int) -> bytes:
        """`_pread` for a released log, which keeps no fd: open the file for this read."""
        try:
            fd = os.open(self.spill_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise BadStateError(
                f"cannot read the spilled output from {self.spill_path}: {exc.strerror or exc}"
            ) from exc
        try:
            data = _pread_if_cached(fd, count, offset)
            if not data:
                data = await trio.to_thread.run_sync(
                    os.pread, fd, count, offset, limiter=_spill_reads().threads
                )
        except OSError as exc:
            raise BadStateError(
                f"cannot read the spilled output from {self.spill_path}: {exc.strerror or exc}"
            ) from exc
        finally:
            os.close(fd)
        self._check_readable()
        if not data:
            raise BadStateError(
                f"the spill file {self.spill_path} ends before byte {offset}; "
                "something else truncated it"
            )
        return data


#: A spill read's key: (the log's serial, offset, length).
_ReadKey = tuple[int, int, int]


class _SharedSpillReads:
    """Spill-file reads shared by every reader of every log in one trio run.

    Followers that lag behind a job's memory window ask for the same blocks: the
    first one to ask reads a block; the others wait for that read and get the same
    bytes object, as does anyone who asks while it is among the last
    `SPILL_CACHE_BYTES` read. If the read fails or is cancelled, each waiter reads
    for itself (and sees the error itself).
    """

    def __init__(self) -> None:
        # Their own threads, fewer than the cores: a hundred lagging readers copying
        # from the page cache at once would otherwise take every core from the event
        # loop (and the writer with it) and fill trio's default limiter, which the
        # rest of the service needs for its own blocking calls.
        self.threads = trio.CapacityLimiter(max(1, (os.cpu_count() or 2) // 2))
        self._recent: collections.OrderedDict[_ReadKey, bytes] = collections.OrderedDict()
        self._recent_bytes = 0
        self._reading: dict[_ReadKey, trio.Event] = {}

    async def read(self, key: _ReadKey, read: Callable[[], Awaitable[bytes]]) -> bytes:
        """The bytes for `key`: recent ones, those of a read in flight, or `read()`'s."""
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

    def _remember(self, key: _ReadKey, data: bytes) -> None:
        self._recent[key] = data
        self._recent_bytes += len(data)
        while self._recent_bytes > SPILL_CACHE_BYTES:
            _, oldest = self._recent.popitem(last=False)
            self._recent_bytes -= len(oldest)


_SPILL_READS: trio.lowlevel.RunVar[_SharedSpillReads] = trio.lowlevel.RunVar(
    "jobworker_spill_reads"
)


def _spill_reads() -> _SharedSpillReads:
    """The shared spill reads of this trio run (RuntimeError outside one)."""
    try:
        return _SPILL_READS.get()
    except LookupError:
        shared = _SharedSpillReads()
        _SPILL_READS.set(shared)
        return shared


def _pread_if_cached(fd: int, count: int, offset: int) -> bytes | None:
    """Up to `count` bytes at `offset`, read right here if the page cache has them
    (preadv2 with RWF_NOWAIT), or None if that would wait for the disk.

    Output read back soon after it was written is nearly always still cached: a
    thread hop per chunk would cost more than the copy (docs/performance.md). Only
    reads that would block go to the spill threads.
    """
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


def _trim_heap() -> None:
    """Return the free memory at the top and inside glibc's heap to the system.

    Output chunks of 256 KiB come from the heap once glibc's mmap threshold has
    grown past them, and a heap with live objects above the freed chunks is not
    trimmed by `free`: the daemon's resident size would keep the peak of every
    burst. A no-op where the C library has no malloc_trim (musl)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"))


def _write_all(fd: int, views: list[memoryview], offset: int) -> int:
    """pwrite every byte of `views` to `fd` from `offset` on; the count written."""
    total = 0
    for view in views:
        while view:
            count = os.pwrite(fd, view, offset + total)
            total += count
            view = view[count:]
    return total


def _release_file(fd: int | None, path: Path | None) -> None:
    """Close `fd` and delete `path` (either may be None), logging what fails."""
    if fd is not None:
        os.close(fd)
    if path is not None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot delete the spill file %s: %s", path, exc.strerror or exc)


def _raise_single(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the one exception in `group` (ignoring `Cancelled` ones next to it), so
    that an error in a subscriber's block comes out as itself; a group with several
    real errors is re-raised as it is."""
    single = sole_exception(group, ignore=trio.Cancelled)
    if single is None:
        raise group
    context = single.__context__
    try:
        raise single
    finally:
        # `raise` inside the except block would chain the group as context: undo that.
        single.__context__ = context
        del single, context

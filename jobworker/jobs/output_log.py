"""`FileLog`: a job's output as the file its copier writes, for any number of readers.

A job's stdout and stderr go into a pipe, and a small process of its own (the
copier, `spawn.copier_argv`) appends what it reads to `DATA/jobs/ID/output.log`.
Neither depends on jwsd, so output keeps landing in the file while no daemon
runs, and byte N of the output is byte N of the file for ever: offsets are stable
across restarts, and a finished job's output is read the same before and after one.

The daemon holds no output in memory: it learns that the file grew from inotify
(`OutputWatcher`, one inotify fd for every job, no polling) and then `refresh`es
the log's size, waking the readers parked on it. Readers read the file from
their own cursors through the shared, block-aligned reads of `jobworker.output`
(inline while the page cache has the bytes, else in worker threads), so 1,000
followers of one job cost one read per block, a slow follower only delays
itself, and the job never waits for anyone: the copier writes to the page cache.

Limits and losses:
* the output cap is the copier's (its RLIMIT_FSIZE stops it at N bytes, and the job's
  next write fails with EPIPE); the log turns `full` at N and says so in
  `truncated`;
* when the copier cannot write (a full disk), it exits and the job's next write
  fails with EPIPE too; the tracker calls `lost` with the copier's error, readers
  that reach the end then get `BadStateError` saying why, never a silent end;
* a file shorter than the size already seen (something truncated it) is said in
  `truncated`; reads past its end get `BadStateError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import trio

from jobworker.errors import BadStateError, InvalidRequestError, SetupError
from jobworker.output import SPILL_BLOCK, _pread_if_cached, _raise_single, _spill_reads

log = logging.getLogger(__name__)

#: File logs are numbered after the in-memory logs' serials, for the shared read keys.
_serials = itertools.count(1 << 40)


@attrs.define(eq=False)
class FileLog:
    """The output of one job, in `path`; see the module docstring.

    max_size: the job's output cap (`None`: none); only reported here (`full`,
    `truncated`), the copier enforces it. Open a running job's log with `open`, a
    finished job's with `restored`.
    """

    path: Path
    max_size: int | None = None

    _size: int = attrs.field(default=0, init=False)
    _fd: int | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _discarded: bool = attrs.field(default=False, init=False)
    _on_disk: bool = attrs.field(default=True, init=False)
    _note: str | None = attrs.field(default=None, init=False)
    _lost: str | None = attrs.field(default=None, init=False)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _serial: int = attrs.field(factory=lambda: next(_serials), init=False)

    @classmethod
    def open(cls, path: Path, max_size: int | None = None) -> FileLog:
        """The log of a running job whose copier appends to `path` (which exists).
        Raises OSError when it cannot be opened."""
        opened = cls(path, max_size)
        opened._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        opened.refresh()
        return opened

    @classmethod
    def restored(cls, path: Path, size: int, *, truncated: str | None = None) -> FileLog:
        """The complete log of a job that has ended: `size` bytes in `path`.
        truncated: why output is missing (as `truncated` says it). A missing file
        counts no bytes on disk, and readers get `BadStateError` saying it is gone."""
        restored = cls(path)
        restored._size = size
        restored._closed = True
        restored._on_disk = path.exists()
        restored._note = truncated
        return restored

    # ---- state -------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes of output in the file (as of the last `refresh`)."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def memory_size(self) -> int:
        """Bytes of output the daemon holds in memory: none, ever."""
        return 0

    @property
    def disk_size(self) -> int:
        return self._size if self._on_disk else 0

    @property
    def full(self) -> bool:
        """True once the output reached `max_size`: the copier stopped there."""
        return self.max_size is not None and self._size >= self.max_size

    @property
    def truncated(self) -> str | None:
        """Why output is missing (`None`: nothing is)."""
        if self._lost is not None:
            return f"output after byte {self._size} was lost: {self._lost}"
        if self.full:
            return (
                f"the output limit of {self.max_size} bytes was reached; the job's output "
                "was closed there (its next write got EPIPE)"
            )
        return self._note

    # ---- the daemon's side -------------------------------------------------------

    def refresh(self) -> None:
        """Read the file's size again and wake the readers when it grew."""
        if self._fd is None:
            return
        size = os.fstat(self._fd).st_size
        if size < self._size and self._note is None:
            self._note = f"the output file was cut to {size} bytes after {self._size} were read"
        if size > self._size:
            self._size = size
            if self._lot:
                self._lot.unpark_all()

    def lost(self, reason: str) -> None:
        """The copier could not write all of the output (`reason`: its error)."""
        self._lost = reason
        self._lot.unpark_all()

    def close(self) -> None:
        """The output is complete (the copier has exited): readers finish at its end.
        Takes the file's last size; keeps no fd. Idempotent."""
        self.refresh()
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._lot.unpark_all()

    async def release(self) -> None:
        """Nothing to move to disk: the output is there (kept for the tracker's sake)."""
        await trio.lowlevel.checkpoint()

    def detach(self) -> None:
        """Stop following the file without ending it (the daemon leaves the job running)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._discarded = True
        self._lot.unpark_all()

    def discard(self) -> None:
        """Close the log and delete the file; readers still waiting get BadStateError."""
        self._discarded = self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(RuntimeError):  # outside trio: nothing was read
            _spill_reads().forget(self._serial)
        self._lot.unpark_all()
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot delete the output file %s: %s", self.path, exc.strerror or exc)

    async def aclose(self) -> None:
        """`discard`, the unlink in a worker thread (a large file takes a while)."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.discard)

    # ---- readers ---------------------------------------------------------------------

    async def read(self, offset: int, max_bytes: int) -> bytes:
        """The output from byte `offset` on: at least one byte and at most `max_bytes`.
        Waits, without polling, until there is a byte at `offset` or the log is
        closed; returns b"" only when the log is closed and `offset >= size`.

        Raises InvalidRequestError for a negative `offset` or a `max_bytes` below 1, and
        BadStateError when the file cannot be read, when the log was discarded, or
        when output past this point was lost."""
        if offset < 0:
            raise InvalidRequestError(f"output offset must be zero or more, not {offset}")
        if max_bytes < 1:
            raise InvalidRequestError(f"a read must ask for at least one byte, not {max_bytes}")
        if offset < self._size:
            await trio.lowlevel.checkpoint()
        else:
            while offset >= self._size:
                self._check_readable()
                if self._lost is not None and self._closed:
                    raise BadStateError(
                        f"output after byte {self._size} was lost ({self._lost}); "
                        "free space in the data dir and run the job again"
                    )
                if self._closed:
                    await trio.lowlevel.checkpoint()
                    return b""
                await self._lot.park()
        self._check_readable()
        count = min(max_bytes, self._size - offset, SPILL_BLOCK - offset % SPILL_BLOCK)
        return await _spill_reads().read(
            (self._serial, offset, count), lambda: self._pread(offset, count)
        )

    @contextlib.asynccontextmanager
    async def subscribe(
        self, offset: int = 0, *, chunk_size: int = 1 << 20
    ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        """The output from byte `offset` on, as a memory channel of the caller's own
        (as `OutputLog.subscribe`)."""
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
        with send:
            while chunk := await self.read(offset, chunk_size):
                try:
                    await send.send(chunk)
                except trio.BrokenResourceError:
                    return
                offset += len(chunk)

    # ---- internals -------------------------------------------------------------------

    def _check_readable(self) -> None:
        if self._discarded:
            raise BadStateError(
                "this output is no longer followed (its job was removed, or the service is "
                "shutting down); ask again"
            )

    async def _pread(self, offset: int, count: int) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise BadStateError(
                "this job's output file is gone (something deleted it from the data dir); "
                "its output cannot be read any more"
            ) from exc
        except OSError as exc:
            raise BadStateError(
                f"cannot read the job's output file: {exc.strerror or exc}"
            ) from exc
        try:
            data = _pread_if_cached(fd, count, offset)
            if not data:
                data = await trio.to_thread.run_sync(
                    os.pread, fd, count, offset, limiter=_spill_reads().threads
                )
        except OSError as exc:
            raise BadStateError(
                f"cannot read the job's output file: {exc.strerror or exc}"
            ) from exc
        finally:
            os.close(fd)
        self._check_readable()
        if not data:
            raise BadStateError(
                f"the output file ends before byte {offset}; something truncated it"
            )
        return data


# ---- inotify ---------------------------------------------------------------------------------

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class OutputWatcher:
    """One inotify instance for the daemon: calls a job's callback when its output
    file is written (IN_MODIFY; the kernel merges repeated events a reader has not
    taken yet, so a busy job costs one wake-up per batch, not one per write).

    Use `run()` as a task; `watch(path, callback)` returns a handle for `unwatch`.
    Raises SetupError when inotify is not available.
    """

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise SetupError(
                f"cannot watch job output (inotify_init1: {os.strerror(ctypes.get_errno())}); "
                "raise fs.inotify.max_user_instances"
            )
        self._fd = fd
        self._callbacks: dict[int, Callable[[], None]] = {}

    def watch(self, path: Path, callback: Callable[[], None]) -> int:
        """Call `callback` whenever `path` is written. Raises OSError."""
        wd = self._add(self._fd, os.fsencode(path), _IN_MODIFY)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
        self._callbacks[wd] = callback
        return int(wd)

    def unwatch(self, wd: int) -> None:
        if self._callbacks.pop(wd, None) is not None:
            self._rm(self._fd, wd)  # fails harmlessly for a deleted file's watch

    async def run(self) -> None:
        """Dispatch events until cancelled."""
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            woken: set[int] = set()
            position = 0
            while position + _EVENT.size <= len(data):
                wd, _mask, _cookie, length = _EVENT.unpack_from(data, position)
                position += _EVENT.size + length
                woken.add(wd)
            for wd in woken:
                callback = self._callbacks.get(wd)
                if callback is not None:
                    callback()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(RuntimeError):  # outside trio: nobody waits on it
                trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1


__all__ = ["FileLog", "OutputWatcher"]

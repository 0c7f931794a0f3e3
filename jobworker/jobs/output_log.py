"""`FileLog`: a job's output as the file its copier writes, for any number of readers.

A job's stdout and stderr go into a pipe, and a small process of its own (the
copier, `sandbox.launch.copier_argv`) appends what it reads to `DATA/jobs/ID/output.log`.
Neither depends on jwsd, so output keeps landing in the file while no daemon
runs, and byte N of the output is byte N of the file for ever: offsets are stable
across restarts, and a finished job's output is read the same before and after one.

The daemon holds no output in memory: it learns that the file grew from inotify
(`jobworker.jobs.watcher.OutputWatcher`, one inotify fd for every job, no
polling) and then `refresh`es the log's size, waking the readers parked on it
(one `ParkingLot.unpark_all`). Readers read the file from their own cursors
through the block-aligned reads of `jobworker.jobs.shared_reads` (inline while the
page cache has the bytes, else in worker threads of their own), so 1,000
followers of one job at the same place cost one read per block, a slow follower
only delays itself, and the job never waits for anyone: the copier writes to the
page cache, whoever reads.

Limits and losses:
* the output cap is the copier's (its RLIMIT_FSIZE stops it at N bytes, and the job's
  next write fails with EPIPE); the log turns `full` at N and says so in
  `truncated`; under a disk quota N is the window granted so far
  (`jobworker.jobs.disk`), moved on as the job writes;
* when the copier cannot write (a full disk), it exits and the job's next write
  fails with EPIPE too; the tracker calls `lost` with the copier's error, readers
  that reach the end then get `BadStateError` saying why, never a silent end;
* a file shorter than the size already seen (something truncated it) is said in
  `truncated`; reads past its end get `BadStateError`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import trio

from jobworker.errors import BadStateError, InvalidRequestError, sole_error
from jobworker.jobs.shared_reads import BLOCK, pread, shared_reads

log = logging.getLogger(__name__)

#: Numbers each log, for the keys of its shared reads.
_serials = itertools.count()


@attrs.define(eq=False)
class FileLog:
    """The output of one job, in `path`; see the module docstring.

    max_size: where the copier stops (`None`: nowhere): the job's output cap, or
    the disk quota's window so far, which the tracker moves as the job writes; only
    reported here (`full`, `truncated`), the copier's RLIMIT_FSIZE enforces it.
    cap_note: what `truncated` says once the output reached it, when that is not the
    job's output limit (`disk.grant_note`). Open a running job's log with `open`, a
    finished job's with `restored`. Its owner (the tracker) ends it: `close` once
    the copier has exited, `detach` when it leaves the job running, `discard` or
    `aclose` when the job is forgotten; an open log holds one fd until then.
    """

    path: Path
    max_size: int | None = None
    cap_note: str | None = None

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
    def open(cls, path: Path, max_size: int | None = None, cap_note: str | None = None) -> FileLog:
        """The log of a running job whose copier appends to `path` (which exists).
        Raises OSError when it cannot be opened."""
        opened = cls(path, max_size, cap_note)
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
        """True once the output is complete (`close`, or a restored log) or discarded."""
        return self._closed

    @property
    def disk_size(self) -> int:
        """Bytes of output the file holds on disk (0 when a restored log's file is gone)."""
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
            if self.cap_note is not None:
                return self.cap_note
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

    def detach(self) -> None:
        """Stop following the file without ending it (the daemon leaves the job running)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._discarded = True
        self._lot.unpark_all()

    def discard(self) -> None:
        """Close the log and delete the file inline; readers still waiting get
        BadStateError. Idempotent; a file that cannot be deleted is logged."""
        self._forget()
        _delete(self.path)

    async def aclose(self) -> None:
        """`discard`, the unlink in a worker thread (a large file takes a while).
        Shielded: it finishes even when the caller is cancelled."""
        self._forget()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_delete, self.path)

    def _forget(self) -> None:
        """Everything of `discard` but the unlink. In the trio thread: it wakes the
        readers, and their shared reads are this run's."""
        self._discarded = self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(RuntimeError):  # outside trio: nothing was read
            shared_reads().forget(self._serial)
        self._lot.unpark_all()

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
        count = min(max_bytes, self._size - offset, BLOCK - offset % BLOCK)
        return await shared_reads().read(
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
        anything starts), and `BadStateError` as `read` does.
        """
        if offset < 0:
            raise InvalidRequestError(f"output offset must be zero or more, not {offset}")
        if chunk_size < 1:
            raise InvalidRequestError(f"chunk size must be at least one byte, not {chunk_size}")
        send, receive = trio.open_memory_channel[bytes](0)
        # An error in the subscriber's block comes out as itself, not in a group.
        with sole_error(ignore=trio.Cancelled):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed, send, offset, chunk_size)
                with receive:
                    try:
                        yield receive
                    finally:
                        nursery.cancel_scope.cancel()

    async def _feed(
        self, send: trio.MemorySendChannel[bytes], offset: int, chunk_size: int
    ) -> None:
        with send:
            while chunk := await self.read(offset, chunk_size):
                try:
                    await send.send(chunk)
                except trio.BrokenResourceError:
                    return  # the subscriber closed its channel: nobody to feed
                offset += len(chunk)

    # ---- internals -------------------------------------------------------------------

    def _check_readable(self) -> None:
        if self._discarded:
            raise BadStateError(
                "this output is no longer followed (its job was removed, or the service is "
                "shutting down); ask again"
            )

    async def _pread(self, offset: int, count: int) -> bytes:
        # Re-checked here: a reader that waited for another's shared read, which the
        # log's discard ended, reads for itself, after `discard` deleted the file.
        self._check_readable()
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
            data = await pread(fd, count, offset)
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


def _delete(path: Path) -> None:
    """Delete a log's file (gone already is fine), logging what fails."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("cannot delete the output file %s: %s", path, exc.strerror or exc)


__all__ = ["FileLog"]

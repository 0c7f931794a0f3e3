"""`OutputWatcher`: one inotify instance that tells jwsd when a job's output file grows.

Each running job's copier appends to its output file on its own; the daemon
learns that the file grew from here, without polling, and the job's `FileLog`
then takes the file's size (`FileLog.refresh`) and wakes its followers. One
instance watches every job's file: IN_MODIFY events the daemon has not read yet
are merged by the kernel, so a busy job costs one wake-up per batch of writes.
See inotify(7).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from jobworker.errors import SetupError

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class OutputWatcher:
    """One inotify instance for the daemon: calls a job's callback when its output
    file is written (IN_MODIFY; the kernel merges repeated events a reader has not
    taken yet, so a busy job costs one wake-up per batch, not one per write).

    Use `run()` as a task; `watch(path, callback)` returns a handle for `unwatch`.
    The creator closes it (`close`), after cancelling `run`'s task. Raises
    SetupError when inotify is not available.
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
        """Stop calling the callback of `wd` (a `watch` handle; unknown ones are ignored)."""
        if self._callbacks.pop(wd, None) is not None:
            self._rm(self._fd, wd)  # fails harmlessly for a deleted file's watch

    async def run(self) -> None:
        """Call the callbacks of the files written, once per batch of events, until
        cancelled. A callback runs in this task and must not block."""
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
        """Close the inotify fd (a task still in `run` gets ClosedResourceError). Idempotent."""
        if self._fd >= 0:
            with contextlib.suppress(RuntimeError):  # outside trio: nobody waits on it
                trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1


__all__ = ["OutputWatcher"]

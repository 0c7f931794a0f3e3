"""OutputWatcher: a write to a watched file calls its callback, once per batch, without polling."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from jobworker.jobs.watcher import OutputWatcher


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[OutputWatcher]:
    """A watcher whose `run` is a task until the block ends; closed afterwards."""
    watcher = OutputWatcher()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run)
            yield watcher
            nursery.cancel_scope.cancel()
    finally:
        watcher.close()


class Calls:
    """A callback that counts its calls and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._called = trio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._called.set()

    async def next(self) -> None:
        """Wait (at most 5 s) for a call after the last one waited for."""
        with trio.fail_after(5):
            await self._called.wait()
        self._called = trio.Event()


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


async def test_a_write_calls_the_files_callback_and_only_its_own(tmp_path: Path) -> None:
    """Each watched file's callback runs when that file is written, and no other's."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.touch()
    second.touch()
    on_first, on_second = Calls(), Calls()
    async with running() as watcher:
        watcher.watch(first, on_first)
        watcher.watch(second, on_second)
        append(first, b"a")
        await on_first.next()
        assert (on_first.count, on_second.count) == (1, 0)
        append(second, b"b")
        await on_second.next()
        assert (on_first.count, on_second.count) == (1, 1)


async def test_writes_not_yet_taken_cost_one_call(tmp_path: Path) -> None:
    """100 writes made while the watcher's task cannot run are one batch: one call,
    not one per write (the kernel merges the events; the task calls once per file)."""
    path = tmp_path / "out"
    path.touch()
    calls = Calls()
    async with running() as watcher:
        watcher.watch(path, calls)
        await trio.testing.wait_all_tasks_blocked()
        for index in range(100):
            append(path, b"%d\n" % index)  # no checkpoint in between: the task cannot read
        await calls.next()
        await trio.testing.wait_all_tasks_blocked()
        assert calls.count == 1


async def test_with_nothing_written_the_watcher_waits_without_calls(tmp_path: Path) -> None:
    """No write, no call: the task is parked on the inotify fd, not polling."""
    path = tmp_path / "out"
    path.touch()
    calls = Calls()
    async with running() as watcher:
        watcher.watch(path, calls)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.1)
        assert calls.count == 0


async def test_unwatched_files_call_nothing(tmp_path: Path) -> None:
    """After `unwatch` the file's writes call nothing; an unknown or repeated handle is
    ignored; the other files are still watched."""
    gone, kept = tmp_path / "gone", tmp_path / "kept"
    gone.touch()
    kept.touch()
    on_gone, on_kept = Calls(), Calls()
    async with running() as watcher:
        handle = watcher.watch(gone, on_gone)
        watcher.watch(kept, on_kept)
        watcher.unwatch(handle)
        watcher.unwatch(handle)
        watcher.unwatch(12345)
        append(gone, b"x")
        append(kept, b"y")
        await on_kept.next()
        await trio.testing.wait_all_tasks_blocked()
        assert on_gone.count == 0


async def test_a_deleted_files_watch_can_still_be_removed(tmp_path: Path) -> None:
    """A job's file deleted under its watch (the kernel drops the watch) unwatches
    without an error, and the watcher goes on serving the others."""
    gone, kept = tmp_path / "gone", tmp_path / "kept"
    gone.touch()
    kept.touch()
    calls = Calls()
    async with running() as watcher:
        handle = watcher.watch(gone, Calls())
        watcher.watch(kept, calls)
        gone.unlink()
        await trio.testing.wait_all_tasks_blocked()
        watcher.unwatch(handle)
        append(kept, b"z")
        await calls.next()


def test_watching_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    watcher = OutputWatcher()
    try:
        with pytest.raises(FileNotFoundError):
            watcher.watch(tmp_path / "missing", lambda: None)
    finally:
        watcher.close()


async def test_close_ends_a_running_task_and_is_idempotent(tmp_path: Path) -> None:
    """Closing the watcher under its running task ends that task (ClosedResourceError),
    not a hang; the fd is closed once."""
    watcher = OutputWatcher()
    fds = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(5), pytest.RaisesGroup(trio.ClosedResourceError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run)
            await trio.testing.wait_all_tasks_blocked()
            watcher.close()
    watcher.close()
    assert len(os.listdir("/proc/self/fd")) == fds - 1

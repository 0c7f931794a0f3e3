"""FileLog, the live output path: a writer appends to a real file, a real inotify
`OutputWatcher` tells the log, and every follower gets every byte exactly once, in
order, from its own cursor, while the writer never waits for any of them."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from jobworker.errors import BadStateError, InvalidRequestError
from jobworker.jobs import shared_reads
from jobworker.jobs.output_log import FileLog
from jobworker.jobs.shared_reads import BLOCK
from jobworker.jobs.watcher import OutputWatcher

MiB = 1 << 20
#: The longest any test waits for anything: the writer, a follower, the watcher.
PATIENCE = 20


def stream(size: int, seed: int = 0) -> bytes:
    """`size` bytes that hold every byte value (the first 256 are 0..255), the rest random."""
    head = bytes(range(256))
    return (head + random.Random(seed).randbytes(max(0, size - 256)))[:size]


def pieces(data: bytes, seed: int = 1, largest: int = 256 << 10) -> Iterator[bytes]:
    """`data` cut into pieces of random sizes between 1 byte and `largest`."""
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        size = rng.choice([1, 7, 4095, 65536, largest])
        yield data[position : position + size]
        position += size


def append_all(path: Path, chunks: list[bytes]) -> None:
    """What a job's copier does: append each chunk to the file (for a worker thread)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


async def write_in_a_thread(path: Path, data: bytes, largest: int = 256 << 10) -> None:
    """`data` appended to `path` by a writer thread, in pieces, as fast as it goes."""
    with trio.fail_after(PATIENCE):
        await trio.to_thread.run_sync(append_all, path, list(pieces(data, largest=largest)))


@contextlib.asynccontextmanager
async def live(path: Path, max_size: int | None = None) -> AsyncIterator[FileLog]:
    """The log of a running job writing to `path` (created empty), followed through a
    real inotify watcher as the tracker does it. The caller closes the log; the
    watcher is closed here."""
    path.touch()
    log = FileLog.open(path, max_size)
    watcher = OutputWatcher()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run)
            handle = watcher.watch(path, log.refresh)
            try:
                yield log
            finally:
                watcher.unwatch(handle)
                nursery.cancel_scope.cancel()
    finally:
        watcher.close()
        log.close()


async def drain(log: FileLog, offset: int = 0, chunk_size: int = 1 << 20) -> bytes:
    """Everything a subscriber at `offset` receives until its channel ends."""
    received = bytearray()
    with trio.fail_after(PATIENCE):
        async with log.subscribe(offset, chunk_size=chunk_size) as channel:
            async for chunk in channel:
                received += chunk
    return bytes(received)


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task alive in this run, found by walking the tree from the root task."""
    found: set[trio.lowlevel.Task] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every read of a file from here on (offset, length), inline or in a thread."""
    done: list[tuple[int, int]] = []
    real_pread, real_preadv = os.pread, os.preadv

    def counting_pread(fd: int, count: int, offset: int) -> bytes:
        done.append((offset, count))
        return real_pread(fd, count, offset)

    def counting_preadv(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        done.append((offset, len(buffers[0])))
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(shared_reads.os, "pread", counting_pread)
    monkeypatch.setattr(shared_reads.os, "preadv", counting_preadv)
    return done


@pytest.fixture
def uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads find nothing in the page cache, so they take the worker-thread path."""

    def would_block(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(shared_reads.os, "preadv", would_block)


@contextlib.asynccontextmanager
async def every_token_taken(limiter: trio.CapacityLimiter) -> AsyncIterator[None]:
    """Inside: `limiter` has no token left for anybody else."""
    before = limiter.total_tokens
    token = object()
    limiter.total_tokens = 1
    await limiter.acquire_on_behalf_of(token)
    try:
        yield
    finally:
        limiter.release_on_behalf_of(token)
        limiter.total_tokens = before


def finished(path: Path, data: bytes) -> FileLog:
    """The log of a job that has ended with `data` as its output."""
    path.write_bytes(data)
    return FileLog.restored(path, len(data))


# ---- every byte, exactly once, in order, whoever asks, whenever ----------------------


async def test_followers_joining_before_during_and_after_get_every_byte_once_in_order(
    tmp_path: Path,
) -> None:
    """A writer thread appends 4 MiB in pieces of 1 byte to 256 KiB; followers that
    join before it starts, while it writes, and after the log closed, with chunk
    sizes that do not divide the blocks, each get exactly the bytes written."""
    data = stream(4 * MiB + 17)
    results: dict[str, bytes] = {}

    async def follower(name: str, log: FileLog, chunk_size: int) -> None:
        results[name] = await drain(log, chunk_size=chunk_size)

    half = len(data) // 2
    async with live(tmp_path / "out") as log, trio.open_nursery() as nursery:
        nursery.start_soon(follower, "first", log, 1 << 20)
        nursery.start_soon(follower, "first-small", log, 777)
        await trio.testing.wait_all_tasks_blocked()
        await write_in_a_thread(log.path, data[:half])
        nursery.start_soon(follower, "during", log, 100_000)
        await write_in_a_thread(log.path, data[half:])
        log.close()  # the copier has exited: the output is complete (close takes its size)
        nursery.start_soon(follower, "after", log, 1 << 20)
    assert log.size == len(data)
    assert {name: got == data for name, got in results.items()} == dict.fromkeys(
        ["first", "first-small", "during", "after"], True
    )


@pytest.mark.parametrize("offset", [0, 1, BLOCK - 1, BLOCK, 1_234_567, 3 * MiB + 5])
async def test_a_late_joiner_gets_every_byte_from_its_offset(tmp_path: Path, offset: int) -> None:
    """A follower that joins after the job ended gets exactly bytes[offset:], every
    byte value included, from a live log that closed and from a restored one."""
    data = stream(4 * MiB + 17, seed=2)
    async with live(tmp_path / "out") as log:
        await write_in_a_thread(log.path, data)
        log.close()
    assert await drain(log, offset, chunk_size=100_000) == data[offset:]
    restored = FileLog.restored(log.path, len(data))
    assert await drain(restored, offset) == data[offset:]


async def test_a_follower_at_or_past_the_end_of_a_closed_log_ends_at_once(tmp_path: Path) -> None:
    """Asking at the end of a complete output, or beyond it, is an empty stream, not a wait."""
    log = finished(tmp_path / "out", b"abc")
    with trio.fail_after(PATIENCE):
        assert await log.read(3, 10) == b""
        assert await log.read(1000, 10) == b""
    assert await drain(log, 3) == b""
    assert await drain(log, 1000) == b""


async def test_a_thousand_followers_of_one_live_file_each_get_every_byte(tmp_path: Path) -> None:
    """1,000 subscribers follow one writer thread's 1 MiB: each gets all of it, once,
    in order."""
    data = stream(MiB, seed=3)
    correct = 0

    async def follower(log: FileLog) -> None:
        nonlocal correct
        if await drain(log) == data:
            correct += 1

    async with live(tmp_path / "out") as log, trio.open_nursery() as nursery:
        for _ in range(1000):
            nursery.start_soon(follower, log)
        await trio.testing.wait_all_tasks_blocked()
        await write_in_a_thread(log.path, data, largest=64 << 10)
        log.close()
    assert correct == 1000


# ---- shared reads ------------------------------------------------------------------------


async def test_followers_at_the_same_place_share_one_read_per_block(
    tmp_path: Path, reads: list[tuple[int, int]]
) -> None:
    """100 followers of a finished 4 MiB file starting at different offsets in its first
    block: after their first read each is on a block boundary, every block is read
    once, and the followers at a block get the very same bytes object."""
    data = stream(4 * MiB, seed=4)
    log = finished(tmp_path / "out", data)
    got: dict[int, list[bytes]] = {}

    async def reader(index: int) -> None:
        offset = index * 1000
        chunks = got[index] = []
        for _ in range(len(data) // BLOCK + 2):  # at most one read per block, and the end
            chunk = await log.read(offset, BLOCK)
            if not chunk:
                return
            chunks.append(chunk)
            offset += len(chunk)
        raise AssertionError("more reads than blocks")

    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:
            for index in range(100):
                nursery.start_soon(reader, index)
    for index, chunks in got.items():
        assert b"".join(chunks) == data[index * 1000 :]
    blocks = len(data) // BLOCK
    # One read per block, plus one per distinct starting offset (the first block's tails).
    assert blocks <= len(reads) <= blocks + 100
    assert len(set(reads)) == len(reads)
    assert all(offset % BLOCK == 0 for offset, _ in reads[100:])
    assert len({id(chunks[1]) for chunks in got.values()}) == 1, "followers got copies of a block"
    await log.aclose()


async def test_parked_followers_woken_by_one_write_share_its_read(
    tmp_path: Path, reads: list[tuple[int, int]]
) -> None:
    """100 followers parked at the end of a live file; one block is written: the
    watcher wakes them all, the file is read once, and all get the same object."""
    got: list[bytes] = []

    async def reader(log: FileLog) -> None:
        got.append(await log.read(0, BLOCK))

    with trio.fail_after(PATIENCE):
        async with live(tmp_path / "out") as log, trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(reader, log)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [] and reads == []
            append_all(log.path, [b"x" * BLOCK])  # the readers end once the watcher woke them
    assert reads == [(0, BLOCK)]
    assert len({id(chunk) for chunk in got}) == 1 and got[0] == b"x" * BLOCK


async def test_cached_reads_need_no_thread(tmp_path: Path) -> None:
    """Bytes still in the page cache are read inline: with the read threads all taken,
    the read still returns at once."""
    log = finished(tmp_path / "out", b"a" * 100)
    async with every_token_taken(shared_reads.shared_reads().threads):
        with trio.fail_after(5):
            assert await log.read(0, 1000) == b"a" * 100


@pytest.mark.usefixtures("uncached")
async def test_uncached_reads_use_threads_of_their_own_not_the_default_limiter(
    tmp_path: Path,
) -> None:
    """Reads that would wait for the disk go to the shared reads' own threads: they
    neither wait for nor exhaust trio's default limiter, which the service uses."""
    log = finished(tmp_path / "out", b"a" * 100)
    async with every_token_taken(trio.to_thread.current_default_thread_limiter()):
        with trio.fail_after(5):
            assert await log.read(0, 1000) == b"a" * 100


@pytest.mark.usefixtures("uncached")
async def test_a_failed_shared_read_fails_each_waiting_follower_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read error is not shared: each follower waiting for the block tries, and sees
    the error, itself."""
    log = finished(tmp_path / "out", b"a" * 100_000)
    calls = 0

    def broken_pread(fd: int, count: int, offset: int) -> bytes:
        nonlocal calls
        calls += 1
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shared_reads.os, "pread", broken_pread)
    failures = 0

    async def reader() -> None:
        nonlocal failures
        with pytest.raises(BadStateError, match="cannot read the job's output file"):
            await log.read(0, 1000)
        failures += 1

    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(reader)
    assert (failures, calls) == (5, 5)


@pytest.mark.usefixtures("uncached")
async def test_a_cancelled_shared_read_leaves_its_waiters_to_read_for_themselves(
    tmp_path: Path,
) -> None:
    """The follower whose read others wait for is cancelled before its read ran: the
    waiters are neither stranded nor failed; one of them reads the block instead."""
    log = finished(tmp_path / "out", b"a" * 100)
    got: list[bytes] = []
    threads = shared_reads.shared_reads().threads

    async def waiter() -> None:
        got.append(await log.read(0, 1000))

    async with every_token_taken(threads), trio.open_nursery() as nursery:
        nursery.cancel_scope.deadline = trio.current_time() + PATIENCE
        first = trio.CancelScope()

        async def first_reader() -> None:
            with first:
                await log.read(0, 1000)

        nursery.start_soon(first_reader)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()  # its read is still waiting for a thread
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # the waiters now wait for a read of their own
        threads.total_tokens = 2  # a thread for the new read: every waiter gets the bytes
    assert got == [b"a" * 100] * 3


@pytest.mark.usefixtures("uncached")
async def test_discard_while_a_second_follower_waits_on_a_shared_read_fails_both_cleanly(
    tmp_path: Path,
) -> None:
    """Follower B waits for follower A's read; the log is discarded; A's read ends.
    Both get BadStateError saying the output is no longer followed, not bytes of a
    deleted file or an error about it."""
    log = finished(tmp_path / "out", b"a" * 100)
    outcomes: list[str] = []
    threads = shared_reads.shared_reads().threads

    async def reader() -> None:
        with pytest.raises(BadStateError, match="no longer followed"):
            await log.read(0, 1000)
        outcomes.append("discarded")

    async with every_token_taken(threads), trio.open_nursery() as nursery:
        nursery.cancel_scope.deadline = trio.current_time() + PATIENCE
        nursery.start_soon(reader)  # A: its read waits for a thread
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(reader)  # B: waits for A's read
        await trio.testing.wait_all_tasks_blocked()
        log.discard()
        threads.total_tokens = 2  # A's read runs, and finds the log discarded
    assert outcomes == ["discarded", "discarded"]


# ---- fast and slow followers ------------------------------------------------------------


async def test_a_follower_ahead_of_the_writer_parks_and_the_watcher_wakes_it(
    tmp_path: Path,
) -> None:
    """A read at the end waits (every task blocked: no polling) until the file grows,
    and it is the watcher, not the test, that tells the log so; a read beyond the end
    waits for bytes there; after close a read at the end returns b""."""
    send, got = trio.open_memory_channel[tuple[int, bytes]](10)

    async def reader(log: FileLog, offset: int) -> None:
        await send.send((offset, await log.read(offset, 100)))

    async def next_read() -> tuple[int, bytes]:
        with trio.fail_after(PATIENCE):
            return await got.receive()

    async with live(tmp_path / "out") as log, trio.open_nursery() as nursery:
        nursery.start_soon(reader, log, 0)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            got.receive_nowait()
        append_all(log.path, [b"hello"])  # no refresh: only inotify says it grew
        assert await next_read() == (0, b"hello")
        nursery.start_soon(reader, log, 10)
        nursery.start_soon(reader, log, 7)
        await trio.testing.wait_all_tasks_blocked()
        append_all(log.path, [b"abc"])
        assert await next_read() == (7, b"c")  # woken by the watcher...
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            got.receive_nowait()  # ...and so was the reader at 10, which parked again
        append_all(log.path, [b"defg"])
        assert await next_read() == (10, b"fg")
        nursery.start_soon(reader, log, 12)
        await trio.testing.wait_all_tasks_blocked()
        log.close()
    assert got.receive_nowait() == (12, b"")


async def test_a_stuck_and_a_slow_follower_never_hold_the_writer_or_the_others_up(
    tmp_path: Path,
) -> None:
    """While one subscriber never reads its channel and another reads slowly, the
    writer thread writes all 8 MiB and three other followers get every byte; then
    the stuck and the slow one still get every byte, in order."""
    data = stream(8 * MiB, seed=5)
    release = trio.Event()
    results: dict[str, bytes] = {}
    others_done = trio.Event()

    async def stuck(log: FileLog) -> None:
        received = bytearray()
        async with log.subscribe() as channel:
            await release.wait()
            async for chunk in channel:
                received += chunk
        results["stuck"] = bytes(received)

    async def slow(log: FileLog) -> None:
        received = bytearray()
        async with log.subscribe(chunk_size=64 << 10) as channel:
            async for chunk in channel:
                received += chunk
                await trio.sleep(0.001)
        results["slow"] = bytes(received)

    async def follower(log: FileLog, name: str) -> None:
        results[name] = await drain(log)
        if len([key for key in results if key.startswith("other")]) == 3:
            others_done.set()

    async with live(tmp_path / "out") as log, trio.open_nursery() as nursery:
        nursery.start_soon(stuck, log)
        nursery.start_soon(slow, log)
        for index in range(3):
            nursery.start_soon(follower, log, f"other-{index}")
        await trio.testing.wait_all_tasks_blocked()
        # Returns within PATIENCE though one subscriber has read nothing: nobody held it.
        await write_in_a_thread(log.path, data)
        log.close()
        with trio.fail_after(PATIENCE):
            await others_done.wait()  # while the stuck one has still read nothing
        assert "stuck" not in results
        release.set()
    assert {name: got == data for name, got in results.items()} == dict.fromkeys(
        ["stuck", "slow", "other-0", "other-1", "other-2"], True
    )


# ---- the end of the stream, and what is missing ------------------------------------------


async def test_a_stream_ends_only_after_close_once_its_last_byte_went_out(
    tmp_path: Path,
) -> None:
    """A subscriber's channel stays open while the job runs, delivers every byte, and
    ends only after close(), which takes the file's last size itself."""
    async with live(tmp_path / "out") as log, log.subscribe() as channel:
        append_all(log.path, [b"one"])
        with trio.fail_after(PATIENCE):
            assert await channel.receive() == b"one"
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            channel.receive_nowait()
        append_all(log.path, [b"two"])
        log.close()
        with trio.fail_after(PATIENCE):
            assert await channel.receive() == b"two"
            with pytest.raises(trio.EndOfChannel):
                await channel.receive()


async def test_lost_output_is_reported_to_status_and_to_followers_at_the_gap(
    tmp_path: Path,
) -> None:
    """The copier could not write (a full disk): `truncated` says where and why, and a
    follower gets every byte that is there, then BadStateError, not a silent end."""
    async with live(tmp_path / "out") as log:
        append_all(log.path, [b"a" * 100])
        log.refresh()
        log.lost("No space left on device")
        log.close()
    assert log.truncated == "output after byte 100 was lost: No space left on device"
    with pytest.raises(BadStateError, match=r"lost \(No space left on device\)"):
        await drain(log)
    assert await log.read(0, 1000) == b"a" * 100


async def test_output_at_its_cap_is_full_and_says_so_but_ends_normally(tmp_path: Path) -> None:
    """At max_size the copier stops: the log is full, truncated says the limit was
    reached, and followers get the bytes and a normal end (a policy, not a loss)."""
    async with live(tmp_path / "out", max_size=250) as log:
        append_all(log.path, [b"a" * 200])
        log.refresh()
        assert not log.full and log.truncated is None
        append_all(log.path, [b"b" * 50])
        log.close()
    assert log.full and log.size == 250
    assert log.truncated is not None and "limit of 250 bytes" in log.truncated
    assert await drain(log) == b"a" * 200 + b"b" * 50


async def test_a_file_cut_under_the_log_is_reported_and_reads_past_its_end_fail(
    tmp_path: Path,
) -> None:
    """Something truncated the output file: `truncated` says so, the size already seen
    stays (offsets are for ever), and a read of the missing bytes gets BadStateError."""
    async with live(tmp_path / "out") as log:
        append_all(log.path, [b"x" * 1000])
        log.refresh()
        os.truncate(log.path, 10)
        log.refresh()
        assert log.truncated == "the output file was cut to 10 bytes after 1000 were read"
        assert log.size == 1000
        assert await log.read(0, 100) == b"x" * 10
        with pytest.raises(BadStateError, match="ends before byte 500"):
            await log.read(500, 100)
        log.close()


async def test_a_restored_log_whose_file_is_gone_says_so(tmp_path: Path) -> None:
    """A finished job's output file deleted behind jwsd's back: no bytes on disk, and
    a read says the file is gone."""
    log = FileLog.restored(tmp_path / "missing", 123, truncated="earlier note")
    assert log.disk_size == 0 and log.size == 123 and log.closed
    assert log.truncated == "earlier note"
    with pytest.raises(BadStateError, match="output file is gone"):
        await log.read(0, 10)


# ---- discard, aclose, detach; subscriptions' tasks -------------------------------------


@pytest.mark.parametrize("how", ["discard", "aclose"])
async def test_discard_and_aclose_delete_the_file_and_fail_waiting_followers(
    tmp_path: Path, how: str
) -> None:
    """Forgetting a log deletes its file and closes its fd; followers that were
    waiting, and later ones, get BadStateError (not a silent end); both idempotent."""
    errors: list[str] = []

    async def subscriber(log: FileLog) -> None:
        with pytest.raises(BadStateError, match="no longer followed") as info:
            await drain(log)
        errors.append(str(info.value))

    fds = len(os.listdir("/proc/self/fd"))
    async with live(tmp_path / "out") as log, trio.open_nursery() as nursery:
        append_all(log.path, [b"abc"])
        log.refresh()
        nursery.start_soon(subscriber, log)
        await trio.testing.wait_all_tasks_blocked()  # it has "abc" and waits at the end
        if how == "discard":
            log.discard()
        else:
            await log.aclose()
        assert len(os.listdir("/proc/self/fd")) == fds + 1  # the watcher's, not the log's
    assert len(errors) == 1
    assert not log.path.exists() and log.closed
    with pytest.raises(BadStateError, match="no longer followed"):
        await log.read(0, 10)
    log.discard()
    await log.aclose()


async def test_detach_fails_followers_and_leaves_the_file(tmp_path: Path) -> None:
    """The daemon leaves the job running: its followers end with BadStateError (ask
    again), the file stays for the next daemon, and the log's fd is closed."""
    async with live(tmp_path / "out") as log:
        append_all(log.path, [b"still here"])
        log.refresh()
        async with trio.open_nursery() as nursery:

            async def waiting() -> None:
                with pytest.raises(BadStateError, match="ask again"):
                    await log.read(10, 10)

            nursery.start_soon(waiting)
            await trio.testing.wait_all_tasks_blocked()
            log.detach()
    assert log.path.read_bytes() == b"still here"


async def test_a_cancelled_subscriber_leaves_no_task_behind(tmp_path: Path) -> None:
    """Cancelling a subscriber mid-stream removes its feeder at once, and so does
    leaving its block early: the task tree is what it was before it subscribed."""
    log = finished(tmp_path / "out", b"x" * 1000)
    before = all_tasks()
    with trio.CancelScope() as scope:
        async with log.subscribe(chunk_size=10) as channel:
            assert await channel.receive() == b"x" * 10
            assert len(all_tasks() - before) == 1  # the feeder, blocked sending the next chunk
            scope.cancel()
            await channel.receive()
    assert scope.cancelled_caught
    assert all_tasks() == before
    async with log.subscribe(chunk_size=10) as channel:
        await channel.receive()
    assert all_tasks() == before


async def test_an_error_in_a_subscribers_block_comes_out_unwrapped(tmp_path: Path) -> None:
    """An exception raised inside `async with subscribe()` reaches the caller as itself,
    not inside an exception group, and stops the feeder."""
    log = finished(tmp_path / "out", b"data")
    before = all_tasks()

    async def fail_inside() -> None:
        async with log.subscribe() as channel:
            await channel.receive()
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await fail_inside()
    assert all_tasks() == before


async def test_bad_offsets_and_sizes_are_rejected(tmp_path: Path) -> None:
    """A negative offset, an empty read or a chunk size below 1 is the caller's error."""
    log = finished(tmp_path / "out", b"data")
    with pytest.raises(InvalidRequestError, match="offset"):
        await log.read(-1, 10)
    with pytest.raises(InvalidRequestError, match="at least one byte"):
        await log.read(0, 0)
    with pytest.raises(InvalidRequestError, match="offset"):
        async with log.subscribe(-5):
            pass
    with pytest.raises(InvalidRequestError, match="chunk size"):
        async with log.subscribe(chunk_size=0):
            pass

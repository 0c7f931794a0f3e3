"""OutputLog: every subscriber gets every byte exactly once, in order, and the writer never waits."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobworker import output
from jobworker.errors import BadStateError, InvalidRequestError
from jobworker.output import MERGE_BELOW, OutputLog

MiB = 1 << 20


def stream(size: int, seed: int = 0) -> bytes:
    """`size` bytes that hold every byte value (the first 256 are 0..255), the rest random."""
    head = bytes(range(256))
    return (head + random.Random(seed).randbytes(max(0, size - 256)))[:size]


def pieces(data: bytes, seed: int = 1, largest: int = 256 << 10) -> Iterator[bytes]:
    """`data` cut into pieces of random sizes between 1 byte and `largest`."""
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        size = rng.choice([1, 7, MERGE_BELOW - 1, MERGE_BELOW, 65536, largest])
        yield data[position : position + size]
        position += size


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def drain(log: OutputLog, offset: int = 0, chunk_size: int = 1 << 20) -> bytes:
    """Everything a subscriber at `offset` receives until its channel ends."""
    received = bytearray()
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


# ---- every byte, whoever asks, whenever ---------------------------------------


@pytest.mark.parametrize(
    ("memory_limit", "offset"),
    [(64 * MiB, 0), (64 * MiB, 1_234_567), (1000, 0), (1000, 1_234_567), (0, 3 * MiB + 5)],
    ids=["memory", "memory-offset", "spilled", "spilled-offset", "all-spilled-offset"],
)
async def test_late_subscriber_gets_byte_identical_output(
    tmp_path: Path, memory_limit: int, offset: int
) -> None:
    """A subscriber that joins after the job ended gets exactly bytes[offset:], every byte
    value included, whether the log kept it in memory or spilled it to its file."""
    data = stream(4 * MiB + 17)
    log = OutputLog(tmp_path / "out", memory_limit=memory_limit)
    for piece in pieces(data):
        log.append(piece)
    log.close()
    assert log.size == len(data)
    assert log.spilled == (memory_limit < len(data))
    received = await drain(log, offset, chunk_size=100_000)
    assert sha(received) == sha(data[offset:])
    log.discard()


async def test_subscribers_joining_before_during_and_after_get_everything(tmp_path: Path) -> None:
    """Subscribers that join first, half-way and after close all get the whole stream."""
    data = stream(3 * MiB, seed=2)
    log = OutputLog(tmp_path / "out", memory_limit=256 << 10)
    results: dict[str, bytes] = {}

    async def subscriber(name: str) -> None:
        results[name] = await drain(log)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber, "first")
        await trio.testing.wait_all_tasks_blocked()
        for index, piece in enumerate(pieces(data)):
            log.append(piece)
            if index == 40:
                nursery.start_soon(subscriber, "during")
            await trio.lowlevel.checkpoint()
        log.close()
        nursery.start_soon(subscriber, "after")
    assert {name: sha(got) for name, got in results.items()} == dict.fromkeys(
        ["first", "during", "after"], sha(data)
    )
    log.discard()


async def test_hundred_concurrent_subscribers_all_get_everything(tmp_path: Path) -> None:
    """100 subscribers following one live stream each get every byte once, in order."""
    data = stream(2 * MiB, seed=3)
    log = OutputLog(tmp_path / "out", memory_limit=MiB)
    digests: list[str] = []

    async def subscriber() -> None:
        digest = hashlib.sha256()
        async with log.subscribe() as channel:
            async for chunk in channel:
                digest.update(chunk)
        digests.append(digest.hexdigest())

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(subscriber)
        for piece in pieces(data, largest=64 << 10):
            log.append(piece)
            await trio.lowlevel.checkpoint()
        log.close()
    assert digests == [sha(data)] * 100
    log.discard()


async def test_read_of_a_whole_chunk_returns_the_stored_object_without_copying(
    tmp_path: Path,
) -> None:
    """A reader at a chunk's first byte gets the appended object itself; inside a chunk,
    at most max_bytes of that one chunk."""
    log = OutputLog(tmp_path / "out")
    first, second = b"a" * 10_000, b"b" * 10_000
    log.append(first)
    log.append(second)
    assert await log.read(0, 1 << 20) is first
    assert await log.read(10_000, 1 << 20) is second
    assert await log.read(5, 100) == b"a" * 100
    assert await log.read(9_990, 1 << 20) == b"a" * 10  # the rest of one chunk, never a join
    assert not (tmp_path / "out").exists()


async def test_many_tiny_appends_read_back_in_order(tmp_path: Path) -> None:
    """One-byte appends (a process that flushes every character) read back unchanged,
    in memory and spilled, across the merging of small chunks."""
    data = stream(50_000, seed=4)
    for limit in (1 << 20, 3000):
        log = OutputLog(tmp_path / f"out-{limit}", memory_limit=limit)
        for index in range(len(data)):
            log.append(data[index : index + 1])
        log.close()
        assert await drain(log, chunk_size=777) == data
        assert await drain(log, 12_345) == data[12_345:]
        log.discard()


# ---- waiting, ending, cancelling --------------------------------------------------


async def test_read_waits_without_polling_until_an_append_and_returns_empty_at_end(
    tmp_path: Path,
) -> None:
    """read() at the end parks (every task blocked, nothing returned) until an append
    wakes it; after close() it returns b"" at and past the end."""
    log = OutputLog(tmp_path / "out")
    got: list[bytes] = []

    async def reader(offset: int) -> None:
        got.append(await log.read(offset, 100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, 0)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        log.append(b"hello")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [b"hello"]
        nursery.start_soon(reader, 10)  # waits for bytes beyond the end, too
        await trio.testing.wait_all_tasks_blocked()
        log.append(b"abc")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [b"hello"]
        log.append(b"defg")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [b"hello", b"fg"]
        nursery.start_soon(reader, 12)
        await trio.testing.wait_all_tasks_blocked()
        log.close()
    assert got == [b"hello", b"fg", b""]
    assert await log.read(12, 100) == b""
    assert await log.read(1000, 100) == b""


async def test_stream_ends_after_close_only_once_the_last_byte_went_out(tmp_path: Path) -> None:
    """A subscriber's channel stays open while the job runs, delivers every byte, and
    ends only after close()."""
    log = OutputLog(tmp_path / "out")
    async with log.subscribe() as channel:
        log.append(b"one")
        assert await channel.receive() == b"one"
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            channel.receive_nowait()
        log.append(b"two")
        log.close()
        assert await channel.receive() == b"two"
        with pytest.raises(trio.EndOfChannel):
            await channel.receive()


async def test_cancelled_subscriber_leaves_no_task_behind(tmp_path: Path) -> None:
    """Cancelling a subscriber mid-stream removes its feeder at once: the task tree is
    exactly what it was before it subscribed."""
    log = OutputLog(tmp_path / "out")
    log.append(b"x" * 1000)
    before = all_tasks()
    with trio.CancelScope() as scope:
        async with log.subscribe(chunk_size=10) as channel:
            assert await channel.receive() == b"x" * 10
            assert len(all_tasks() - before) == 1  # the feeder, blocked sending the next chunk
            scope.cancel()
            await channel.receive()
    assert scope.cancelled_caught
    assert all_tasks() == before
    # Leaving normally in the middle of the stream, too.
    async with log.subscribe(chunk_size=10) as channel:
        await channel.receive()
    assert all_tasks() == before


async def test_stuck_subscriber_slows_neither_the_writer_nor_the_others(tmp_path: Path) -> None:
    """A subscriber that never reads its channel holds only itself: every append
    completes, and the other subscribers get the whole stream while it is stuck."""
    data = stream(2 * MiB, seed=5)
    log = OutputLog(tmp_path / "out", memory_limit=64 << 10)
    release = trio.Event()
    digests: list[str] = []

    async def stuck() -> None:
        async with log.subscribe() as channel:
            await release.wait()
            digests.append(sha(b"".join([chunk async for chunk in channel])))

    followed = trio.Event()

    async def follower() -> None:
        digests.append(sha(await drain(log)))
        if len(digests) == 3:
            followed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck)
        for _ in range(3):
            nursery.start_soon(follower)
        await trio.testing.wait_all_tasks_blocked()
        for piece in pieces(data, largest=64 << 10):
            log.append(piece)
            await trio.lowlevel.checkpoint()
        log.close()
        with trio.fail_after(10):
            await followed.wait()  # (some read the file in threads: not "blocked" tasks)
        assert digests == [sha(data)] * 3  # done while the stuck one has not read a byte
        assert log.memory_size <= (64 << 10) * 2
        release.set()
    assert digests == [sha(data)] * 4
    log.discard()


async def test_error_in_subscriber_block_comes_out_unwrapped(tmp_path: Path) -> None:
    """An exception raised inside `async with subscribe()` reaches the caller as itself,
    not inside an exception group, and stops the feeder."""
    log = OutputLog(tmp_path / "out")
    log.append(b"data")
    before = all_tasks()

    async def fail_inside() -> None:
        async with log.subscribe() as channel:
            await channel.receive()
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await fail_inside()
    assert all_tasks() == before


# ---- misuse -------------------------------------------------------------------


async def test_append_after_close_raises(tmp_path: Path) -> None:
    """No byte can be added after the job's output ended."""
    log = OutputLog(tmp_path / "out")
    log.append(b"a")
    log.close()
    with pytest.raises(BadStateError, match="closed"):
        log.append(b"b")
    assert log.size == 1 and log.closed


async def test_bad_offsets_and_sizes_are_rejected(tmp_path: Path) -> None:
    """A negative offset, an empty read or chunk, or a negative memory limit is an error."""
    log = OutputLog(tmp_path / "out")
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
    with pytest.raises(InvalidRequestError, match="memory limit"):
        OutputLog(tmp_path / "out", memory_limit=-1)


async def test_empty_appends_change_nothing(tmp_path: Path) -> None:
    """An empty append neither adds bytes nor ends a reader's wait."""
    log = OutputLog(tmp_path / "out")
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await log.read(0, 10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        log.append(b"")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and log.size == 0
        log.append(b"z")
    assert got == [b"z"]


# ---- memory, spill file, discard ------------------------------------------------


async def test_spill_file_appears_only_past_the_limit_and_holds_every_byte(
    tmp_path: Path,
) -> None:
    """Up to memory_limit bytes no file exists; one more byte creates it with every byte
    so far, and later appends are written through."""
    path = tmp_path / "out"
    log = OutputLog(path, memory_limit=10_000)
    log.append(b"a" * 6000)
    log.append(b"b" * 4000)
    assert not path.exists() and not log.spilled
    log.append(b"c")
    assert path.read_bytes() == b"a" * 6000 + b"b" * 4000 + b"c"
    log.append(b"d" * 20_000)
    assert path.read_bytes() == b"a" * 6000 + b"b" * 4000 + b"c" + b"d" * 20_000
    log.discard()
    assert not path.exists()


@pytest.mark.parametrize("how", ["discard", "aclose"])
async def test_discard_and_aclose_remove_the_file_and_fail_waiting_readers(
    tmp_path: Path, how: str
) -> None:
    """Releasing the log deletes its spill file and frees its memory; readers that were
    waiting, and later ones, get BadStateError (not a silent end of stream)."""
    path = tmp_path / "out"
    log = OutputLog(path, memory_limit=10)
    log.append(b"0123456789abc")
    assert path.exists()
    errors: list[str] = []

    async def subscriber() -> None:
        with pytest.raises(BadStateError, match="discarded") as info:
            await drain(log)
        errors.append(str(info.value))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber)
        await trio.testing.wait_all_tasks_blocked()
        if how == "discard":
            log.discard()
        else:
            await log.aclose()
    assert len(errors) == 1
    assert not path.exists() and log.memory_size == 0 and log.closed
    with pytest.raises(BadStateError):
        await log.read(0, 10)
    log.discard()  # idempotent
    await log.aclose()


async def test_memory_held_stays_within_the_limit_plus_one_chunk(tmp_path: Path) -> None:
    """However the output arrives, the log holds at most memory_limit bytes in memory
    plus the newest chunk, and still serves every byte."""
    rng = random.Random(6)
    limit = 100_000
    log = OutputLog(tmp_path / "out", memory_limit=limit)
    reference = bytearray()
    newest = 0
    for _ in range(500):
        piece = rng.randbytes(rng.choice([0, 1, 100, 5000, 50_000, 300_000]))
        log.append(piece)
        reference += piece
        newest = len(piece) or newest
        assert log.memory_size <= limit + max(newest, 2 * MERGE_BELOW)
    log.close()
    assert sha(await drain(log)) == sha(bytes(reference))
    log.discard()


async def test_unwritable_spill_file_keeps_what_it_has_and_reports_the_loss(
    tmp_path: Path,
) -> None:
    """When the spill file cannot be written (here /dev/full: ENOSPC), the writer never
    fails, every byte kept stays readable, and a reader reaching the gap gets
    BadStateError saying output was lost, instead of a stream that just stops."""
    full = tmp_path / "full"
    full.symlink_to("/dev/full")  # discard deletes the link, never /dev/full itself
    log = OutputLog(full, memory_limit=100)
    log.append(b"a" * 80)
    log.append(b"b" * 80)  # spill: ENOSPC
    log.append(b"c" * 80)  # dropped
    log.close()
    assert log.size == 160
    with pytest.raises(BadStateError, match=r"lost \(80 bytes\).*No space left"):
        await drain(log)
    assert await log.read(0, 1000) == b"a" * 80 + b"b" * 80
    log.discard()
    assert not full.is_symlink() and Path("/dev/full").exists()


async def test_spill_into_a_missing_directory_reports_the_loss(tmp_path: Path) -> None:
    """A spill file that cannot even be created is handled like a full disk."""
    log = OutputLog(tmp_path / "gone" / "out", memory_limit=4)
    log.append(b"12345")
    log.append(b"6")
    log.close()
    assert await log.read(0, 10) == b"12345"
    with pytest.raises(BadStateError, match="No such file"):
        await log.read(5, 10)
    log.discard()


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


@pytest.fixture
def uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spill reads find nothing in the page cache, so they take the thread path."""

    def would_block(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(output.os, "preadv", would_block)


async def test_cached_spill_reads_need_no_thread(tmp_path: Path) -> None:
    """Bytes still in the page cache are read inline: with the spill threads all taken,
    the read still returns at once."""
    log = OutputLog(tmp_path / "out", memory_limit=10)
    log.append(b"a" * 100)
    log.append(b"b" * MERGE_BELOW)
    async with every_token_taken(output._spill_reads().threads):
        with trio.fail_after(5):
            assert await log.read(0, 1000) == b"a" * 100  # behind the memory window
    log.discard()


@pytest.mark.usefixtures("uncached")
async def test_spill_reads_do_not_depend_on_the_default_thread_limiter(tmp_path: Path) -> None:
    """Lagging readers read the spill file through the log's own threads: they neither
    wait for nor exhaust trio's default limiter, which the rest of the service uses."""
    log = OutputLog(tmp_path / "out", memory_limit=10)
    log.append(b"a" * 100)
    log.append(b"b" * MERGE_BELOW)
    async with every_token_taken(trio.to_thread.current_default_thread_limiter()):
        with trio.fail_after(5):
            assert await log.read(0, 1000) == b"a" * 100  # behind the memory window
    log.discard()


@pytest.mark.usefixtures("uncached")
async def test_discard_during_a_spill_read_keeps_the_fd_until_the_read_ends(
    tmp_path: Path,
) -> None:
    """A pread that is under way when the log is discarded still reads the right file:
    the descriptor is closed only after it, so its number cannot be reused under it."""
    log = OutputLog(tmp_path / "out", memory_limit=10)
    log.append(b"a" * 100)
    log.append(b"b" * MERGE_BELOW)
    fd = log._fd
    assert fd is not None
    readers = output._spill_reads().threads  # held, so that the read waits with its pread counted
    token = object()
    readers.total_tokens = 1
    await readers.acquire_on_behalf_of(token)
    outcome: list[str] = []

    async def reader() -> None:
        with pytest.raises(BadStateError, match="discarded"):
            await log.read(0, 1000)
        outcome.append("discarded")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        log.discard()
        assert not (tmp_path / "out").exists()
        os.fstat(fd)  # still open: the read has not run yet
        readers.release_on_behalf_of(token)
    assert outcome == ["discarded"]
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


async def test_readers_behind_the_window_share_one_read_per_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 readers that fell behind the memory window at different offsets: reads line
    up on SPILL_BLOCK boundaries, each block is read from the file once and the readers
    get the very same bytes object; every reader still gets every byte in order."""
    data = stream(4 << 20)
    log = OutputLog(tmp_path / "out", memory_limit=256 << 10)
    for piece in pieces(data, largest=64 << 10):
        log.append(piece)
    log.close()
    preads: list[tuple[int, int]] = []  # reads of the file, inline or in a thread
    real_pread, real_preadv = os.pread, os.preadv

    def counting_pread(fd: int, count: int, offset: int) -> bytes:
        preads.append((offset, count))
        return real_pread(fd, count, offset)

    def counting_preadv(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        preads.append((offset, len(buffers[0])))
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(output.os, "pread", counting_pread)
    monkeypatch.setattr(output.os, "preadv", counting_preadv)
    got: dict[int, list[bytes]] = {}

    async def reader(index: int) -> None:
        offset = index * 1000  # all over the first block
        chunks = got[index] = []
        while chunk := await log.read(offset, output.SPILL_BLOCK):
            chunks.append(chunk)
            offset += len(chunk)

    async with trio.open_nursery() as nursery:
        for index in range(100):
            nursery.start_soon(reader, index)
    for index, chunks in got.items():
        assert b"".join(chunks) == data[index * 1000 :]
    # After its first read each reader is on a block boundary: one pread per block,
    # plus one per distinct starting offset.
    spilled_blocks = -(-(len(data) - log.memory_size) // output.SPILL_BLOCK)
    assert spilled_blocks <= len(preads) <= spilled_blocks + 100
    assert len(set(preads)) == len(preads)
    assert all(offset % output.SPILL_BLOCK == 0 for offset, _ in preads[100:])
    second_chunks = {id(chunks[1]) for chunks in got.values()}
    assert len(second_chunks) == 1, "readers at the same block got copies of it"
    await log.aclose()


@pytest.mark.usefixtures("uncached")
async def test_a_failed_shared_read_fails_each_waiting_reader_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = OutputLog(tmp_path / "out", memory_limit=10)
    log.append(b"a" * 100_000)
    log.append(b"b" * MERGE_BELOW)
    calls = 0

    def broken_pread(fd: int, count: int, offset: int) -> bytes:
        nonlocal calls
        calls += 1
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(output.os, "pread", broken_pread)
    failures = 0

    async def reader() -> None:
        nonlocal failures
        with pytest.raises(BadStateError, match="cannot read the spilled output"):
            await log.read(0, 1000)
        failures += 1

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
    assert failures == 5
    assert calls == 5  # a failure is not shared: each reader tried (and saw it) itself
    log.discard()


@pytest.mark.usefixtures("uncached")
async def test_a_cancelled_shared_read_leaves_its_waiters_to_read_for_themselves(
    tmp_path: Path,
) -> None:
    """The reader whose pread others wait for is cancelled before its read ran: the
    waiters are not stranded and not failed; one of them reads the block instead."""
    log = OutputLog(tmp_path / "out", memory_limit=10)
    log.append(b"a" * 100)
    log.append(b"b" * MERGE_BELOW)
    got: list[bytes] = []

    async def waiter() -> None:
        got.append(await log.read(0, 1000))

    async with every_token_taken(output._spill_reads().threads), trio.open_nursery() as nursery:
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
        nursery.cancel_scope.deadline = trio.current_time() + 5
        # Giving the threads back lets the new read run; every waiter gets the bytes.
        output._spill_reads().threads.total_tokens = 2
    assert got == [b"a" * 100] * 3
    log.discard()


@pytest.mark.usefixtures("uncached")
async def test_discard_while_a_second_reader_waits_on_a_shared_read_fails_both_cleanly(
    tmp_path: Path,
) -> None:
    """Reader B waits for reader A's spill read; the log is discarded; A's read fails.
    B then finds nothing cached and nothing in flight and would read for itself: it
    must get the same BadStateError ("discarded"), not trip over the closed file."""
    log = OutputLog(tmp_path / "out", memory_limit=10)
    log.append(b"a" * 100)
    log.append(b"b" * MERGE_BELOW)
    outcomes: list[str] = []

    async def reader() -> None:
        with pytest.raises(BadStateError, match="discarded"):
            await log.read(0, 1000)
        outcomes.append("discarded")

    threads = output._spill_reads().threads
    async with every_token_taken(threads), trio.open_nursery() as nursery:
        nursery.start_soon(reader)  # A: its pread waits for a thread
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(reader)  # B: waits for A's read
        await trio.testing.wait_all_tasks_blocked()
        log.discard()
        nursery.cancel_scope.deadline = trio.current_time() + 5
        threads.total_tokens = 2  # A's read runs, and fails: the log is gone
    assert outcomes == ["discarded", "discarded"]


# ---- any interleaving ------------------------------------------------------------

_small = st.tuples(st.just("append"), st.binary(max_size=40))
# Big enough not to be merged; few, so that one-byte subscribers stay quick.
_big = st.tuples(st.just("append"), st.binary(min_size=MERGE_BELOW, max_size=MERGE_BELOW + 9))
_chunk_size = st.integers(1, 50) | st.sampled_from([1000, 1 << 20])
_join = st.tuples(st.just("join"), st.integers(0, 200), _chunk_size)
_op = st.one_of(_small, _small, _small, _big, _join, _join, st.tuples(st.just("settle")))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=st.lists(_op, max_size=40),
    late=st.lists(st.tuples(st.integers(0, 300), _chunk_size), max_size=3),
    memory_limit=st.integers(0, 300) | st.integers(0, 9000) | st.just(1 << 20),
)
async def test_any_interleaving_gives_each_subscriber_the_reference_bytes(
    ops: list[tuple[object, ...]], late: list[tuple[int, int]], memory_limit: int
) -> None:
    """Appends of any size (empty too), subscribers joining at any time and offset,
    with any memory limit: each subscriber's bytes equal the reference bytes[offset:]."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "out"
        log = OutputLog(path, memory_limit=memory_limit)
        reference = bytearray()
        results: list[tuple[int, bytes]] = []
        newest = 0

        async def subscriber(offset: int, chunk_size: int) -> None:
            results.append((offset, await drain(log, offset, chunk_size)))

        async with trio.open_nursery() as nursery:
            for op in ops:
                if op[0] == "append":
                    assert isinstance(op[1], bytes)
                    log.append(op[1])
                    reference += op[1]
                    newest = len(op[1]) or newest
                    assert log.memory_size <= memory_limit + max(newest, 2 * MERGE_BELOW)
                elif op[0] == "join":
                    assert isinstance(op[1], int) and isinstance(op[2], int)
                    nursery.start_soon(subscriber, op[1], op[2])
                else:
                    await trio.testing.wait_all_tasks_blocked()
            log.close()
            for offset, chunk_size in late:
                nursery.start_soon(subscriber, offset, chunk_size)
        for offset, received in results:
            assert received == bytes(reference[offset:])
        assert log.size == len(reference)
        assert path.exists() == (len(reference) > memory_limit)
        await log.aclose()
        assert not os.listdir(directory)


# ---- a finished log lives on disk; the output cap ------------------------------------


async def test_release_moves_a_closed_log_to_disk_and_frees_its_memory(tmp_path: Path) -> None:
    """A log that never reached its memory limit holds all of its output in memory;
    `release` after `close` writes it to the spill file and keeps none of it in memory,
    and every byte still reads back, from any offset."""
    path = tmp_path / "out"
    data = stream(3 * MiB, seed=11)
    log = OutputLog(path, memory_limit=8 * MiB)
    for piece in pieces(data):
        log.append(piece)
    assert log.memory_size == len(data) and not path.exists()
    log.close()
    fds = len(os.listdir("/proc/self/fd"))
    await log.release()
    assert len(os.listdir("/proc/self/fd")) == fds  # thousands of finished logs: no fd each
    assert log.memory_size == 0
    assert path.read_bytes() == data and log.disk_size == len(data)
    assert sha(await drain(log)) == sha(data)
    assert sha(await drain(log, offset=12345)) == sha(data[12345:])
    await log.aclose()
    assert not path.exists()


async def test_release_before_close_refuses_appends_and_readers_wait_for_close(
    tmp_path: Path,
) -> None:
    """The job's pump is done before the job is marked ended: `release` then, and
    readers at the end still wait for `close` to learn the output is complete."""
    log = OutputLog(tmp_path / "out", memory_limit=1 << 20)
    log.append(b"abc")
    await log.release()
    assert log.memory_size == 0 and log.disk_size == 3
    with pytest.raises(BadStateError, match="closed"):
        log.append(b"d")
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(log, got))
        await trio.testing.wait_all_tasks_blocked()
        assert got == [b"abc"]  # read from the file, then waiting at the end
        log.close()
    assert got == [b"abc", b""]
    log.discard()


async def _collect(log: OutputLog, got: list[bytes]) -> None:
    got.append(await log.read(0, 10))
    got.append(await log.read(3, 10))


async def test_release_of_a_spilled_log_drops_the_memory_window(tmp_path: Path) -> None:
    path = tmp_path / "out"
    data = stream(MiB, seed=12)
    log = OutputLog(path, memory_limit=100_000)
    for piece in pieces(data):
        log.append(piece)
    assert log.memory_size > 0
    log.close()
    fds = len(os.listdir("/proc/self/fd"))
    await log.release()
    assert len(os.listdir("/proc/self/fd")) == fds - 1  # the spill file's fd is closed
    assert log.memory_size == 0 and path.read_bytes() == data
    assert sha(await drain(log)) == sha(data)
    log.discard()
    assert not path.exists()


async def test_release_that_cannot_write_keeps_the_bytes_readable(tmp_path: Path) -> None:
    """A full disk at release loses nothing: the bytes stay in memory and readable."""
    full = tmp_path / "full"
    full.symlink_to("/dev/full")
    log = OutputLog(full, memory_limit=1000)
    log.append(b"x" * 500)
    log.close()
    await log.release()
    assert log.memory_size == 500 and log.truncated is None
    assert await drain(log) == b"x" * 500
    log.discard()


async def test_output_past_max_size_is_cut_and_says_so(tmp_path: Path) -> None:
    """The cap keeps exactly max_size bytes, drops the rest, marks the log full and
    truncated; readers get the kept bytes and a normal end, not an error."""
    log = OutputLog(tmp_path / "out", memory_limit=100, max_size=250)
    log.append(b"a" * 200)
    assert not log.full and log.truncated is None
    log.append(b"b" * 100)
    assert log.full and log.size == 250
    log.append(b"c" * 10)  # a late append changes nothing
    log.close()
    assert log.size == 250
    assert log.truncated is not None and "limit of 250 bytes" in log.truncated
    assert await drain(log) == b"a" * 200 + b"b" * 50
    log.discard()


async def test_a_full_disk_marks_the_log_truncated(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.symlink_to("/dev/full")
    log = OutputLog(full, memory_limit=100)
    log.append(b"a" * 80)
    log.append(b"b" * 80)  # spill: ENOSPC
    assert log.truncated is None  # nothing lost yet: every byte is still in memory
    log.append(b"c" * 80)  # dropped
    assert log.truncated is not None and "No space left" in log.truncated
    log.discard()


def test_max_size_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="output limit"):
        OutputLog(tmp_path / "out", max_size=-1)

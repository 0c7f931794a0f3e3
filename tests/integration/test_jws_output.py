"""`jws output` writes to its stdout without stopping its event loop: while a reader
is slow, the connection to jwsd keeps being served (its other calls, its window
updates), and every byte still arrives in order."""

from __future__ import annotations

import fcntl
import os
import termios
import threading
import time
from pathlib import Path

import pytest
import trio

from jobworker.cli.stdout import copy_output
from tests.support.daemon import Daemon
from tests.support.timing import scaled
from tests.support.waiting import eventually

pytestmark = [pytest.mark.root, pytest.mark.hierarchy_independent]

SIZE = 8 << 20


def _pipe_is_full(read_end: int) -> bool:
    waiting = int.from_bytes(fcntl.ioctl(read_end, termios.FIONREAD, bytes(4)), "little")
    return waiting >= fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ)


async def test_output_into_a_full_pipe_leaves_the_client_free_to_make_calls(
    daemon: Daemon,
) -> None:
    read_end, write_end = os.pipe()
    go = threading.Event()
    received = bytearray()
    drain_started = [0.0]

    def drain() -> None:
        # Starts when told, or after a while at the latest: a client whose loop is
        # stuck in a write gets unstuck, and the test fails instead of hanging.
        go.wait(timeout=scaled(8))
        drain_started[0] = time.monotonic()
        while data := os.read(read_end, 1 << 20):
            received.extend(data)

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        async with daemon.connect("alex") as client, trio.open_nursery() as nursery:
            job = await client.start(args=["head", "-c", str(SIZE), "/dev/zero"])

            async def copy() -> None:
                try:
                    await copy_output(client, job.job_id, 0, write_end)
                finally:
                    os.close(write_end)

            nursery.start_soon(copy)
            await eventually(lambda: _pipe_is_full(read_end), timeout=scaled(5), what="full pipe")
            await client.status(job.job_id)  # served while the pipe stays full
            answered = time.monotonic()
            go.set()
    finally:
        go.set()
        await trio.to_thread.run_sync(drainer.join)
        os.close(read_end)
    assert answered < drain_started[0]
    assert received == bytes(SIZE)


async def test_output_into_a_file_is_exact_and_into_a_closed_pipe_is_a_broken_pipe(
    daemon: Daemon, tmp_path: Path
) -> None:
    async with daemon.connect("alex") as client:
        job = await client.start(args=["head", "-c", str(SIZE), "/dev/urandom"])
        with (tmp_path / "all").open("wb") as file:  # a file: written from a worker thread
            await copy_output(client, job.job_id, 0, file.fileno())
        with (tmp_path / "tail").open("wb") as file:
            await copy_output(client, job.job_id, SIZE - 10, file.fileno())
        everything = (tmp_path / "all").read_bytes()
        assert len(everything) == SIZE and (tmp_path / "tail").read_bytes() == everything[-10:]
        read_end, write_end = os.pipe()
        os.close(read_end)  # `jws output | head`: the reader has gone
        try:
            with pytest.raises(BrokenPipeError):
                await copy_output(client, job.job_id, 0, write_end)
            assert os.get_blocking(write_end), "the pipe was left non-blocking"
        finally:
            os.close(write_end)

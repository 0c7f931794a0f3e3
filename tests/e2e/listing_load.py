"""A load process for tests/e2e/test_listing.py, run apart from the test so that its
own CPU does not slow the client being measured:

    python -m tests.e2e.listing_load flood ADDR TLS_DIR USER CONNECTIONS SECONDS
        loops ListJobs (every page) on CONNECTIONS connections until its stdin closes,
        SECONDS at most from its start; prints "ready" once every connection has listed once, then
        {"calls": N, "errors": [..]}
    python -m tests.e2e.listing_load start ADDR TLS_DIR USER COUNT
        starts COUNT jobs of ~960 KB of argv each; prints their ids, one a line
    python -m tests.e2e.listing_load probe ADDR TLS_DIR USER JOB_ID CALLS
        times CALLS GetJobStatus calls one after another; prints {"seconds": [...]}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import trio

from jobworker.client import Credentials, connect
from jobworker.errors import JobWorkerError
from jobworker.units import parse_addr


async def flood(addr: str, tls_dir: str, user: str, connections: int, seconds: float) -> None:
    host, port = parse_addr(addr, default_port=50051)
    calls = 0
    errors: list[str] = []
    listed = trio.Semaphore(0)

    async def loop() -> None:
        nonlocal calls
        async with connect((host, port), Credentials(Path(tls_dir), user)) as client:
            first = True
            while True:
                try:
                    await client.list()
                except JobWorkerError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                calls += 1
                if first:
                    listed.release()
                    first = False

    with trio.move_on_after(seconds):  # the whole flood, its connecting and first lists too
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(loop)
            for _ in range(connections):
                await listed.acquire()
            print("ready", flush=True)
            with trio.move_on_after(seconds):
                await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()
    print(json.dumps({"calls": calls, "errors": errors[:10]}), flush=True)


async def probe(addr: str, tls_dir: str, user: str, job_id: str, count: int) -> None:
    host, port = parse_addr(addr, default_port=50051)
    seconds: list[float] = []
    async with connect((host, port), Credentials(Path(tls_dir), user)) as client:
        await client.status(job_id)  # warm
        for _ in range(count):
            start = time.perf_counter()
            await client.status(job_id)
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds}), flush=True)


#: About 960 KB of argv: the red team's job.
BIG_ARGV = ["true", *["x" * 120_000] * 8]


async def start(addr: str, tls_dir: str, user: str, count: int) -> None:
    host, port = parse_addr(addr, default_port=50051)
    async with connect((host, port), Credentials(Path(tls_dir), user)) as client:
        for _ in range(count):
            print((await client.start(args=BIG_ARGV)).job_id, flush=True)


def main(argv: list[str]) -> None:
    mode, addr, tls_dir, user, *rest = argv
    if mode == "flood":
        # The attacker's CPU is not jwsd's: on this test's host (two cores shared by
        # jwsd, the probe and this flood) the flood's own decoding would otherwise
        # slow the probe's client and jwsd alike, which says nothing about jwsd.
        os.nice(19)
        trio.run(flood, addr, tls_dir, user, int(rest[0]), float(rest[1]))
    elif mode == "start":
        trio.run(start, addr, tls_dir, user, int(rest[0]))
    else:
        trio.run(probe, addr, tls_dir, user, rest[0], int(rest[1]))


if __name__ == "__main__":
    main(sys.argv[1:])

"""WatchJobs fan-out (issue 22): `python -m tests.bench.watch_fanout [--watchers W]
[--jobs J]` (root).

Starts a real jwsd of its own, opens W WatchJobs streams as alex (90 a
connection: a connection carries 100 streams at most), waits until every one has
begun (its "watching" event), then starts J `true` jobs one after another on a
connection of their own and waits until every watcher has had every job's three
events (created, active, terminated). Prints the wall time from the first start
to the last event, the events delivered per second, and jwsd's RSS before the
watchers, with them idle, and at the end. The watchers run in this one process,
which shares the machine with jwsd: the figure is a floor of what jwsd does.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import trio

from jobworker.client import Credentials, JobWorkerClient, connect
from tests.e2e.conftest import Jwsd, start_jwsd
from tests.support.certs import TestPKI

#: Streams per connection (jwsd's SETTINGS_MAX_CONCURRENT_STREAMS is 100).
PER_CONNECTION = 90


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def fan_out(jwsd: Jwsd, watchers: int, jobs: int) -> dict[str, float]:
    host, port = jwsd.addr.rsplit(":", 1)
    credentials = Credentials(jwsd.tls_dir, "alex")
    expected = 3 * jobs
    begun = trio.Semaphore(0)
    remaining = watchers
    all_done = trio.Event()

    async def watch(client: JobWorkerClient) -> None:
        nonlocal remaining
        seen = 0
        async with contextlib.aclosing(client.watch()) as events:
            async for event in events:
                if event.kind == "watching":
                    begun.release()
                    continue
                seen += 1
                if seen == expected:
                    remaining -= 1
                    if not remaining:
                        all_done.set()
                    return

    async with contextlib.AsyncExitStack() as stack:
        count = -(-watchers // PER_CONNECTION) + 1
        clients = [
            await stack.enter_async_context(
                connect((host, int(port)), credentials, server_hostname="localhost")
            )
            for _ in range(count)
        ]
        async with trio.open_nursery() as nursery:
            for n in range(watchers):
                nursery.start_soon(watch, clients[1 + n // PER_CONNECTION])
            with trio.fail_after(300):
                for _ in range(watchers):
                    await begun.acquire()
                idle = rss_mib(jwsd.process.pid)
                began = time.monotonic()
                for _ in range(jobs):
                    await clients[0].start(args=["true"])
                await all_done.wait()
            seconds = time.monotonic() - began
    return {
        "seconds": seconds,
        "events_per_second": watchers * expected / seconds,
        "rss_idle_mib": idle,
        "rss_end_mib": rss_mib(jwsd.process.pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        Path(scratch).chmod(0o755)  # the job user must reach the data dir inside it
        jwsd = start_jwsd(Path(scratch), TestPKI())
        try:
            before = rss_mib(jwsd.process.pid)
            result = trio.run(fan_out, jwsd, args.watchers, args.jobs)
        finally:
            jwsd.stop()
    print(
        f"{args.watchers} watchers, {args.jobs} jobs: {args.watchers * args.jobs * 3} events "
        f"in {result['seconds']:.1f} s = {result['events_per_second']:.0f} events/s; "
        f"jwsd RSS {before} MiB, {result['rss_idle_mib']} MiB with the watchers idle, "
        f"{result['rss_end_mib']} MiB at the end"
    )


if __name__ == "__main__":
    main()

"""`python -m tests.bench.bench_output`: how fast OutputLog takes output in and hands it out.

One writer appends a stream (default 1 GiB, in 256 KiB chunks of one reused bytes
object that holds every byte value) to an `OutputLog`, with a checkpoint after each
append as the job's pump has (its `receive_some` is one), while N subscribers drain
it through `subscribe()`. Each run prints:

* append path: the stream's size over the wall time spent inside `append()` only:
  what the log costs the writer (storing, waking readers, writing through to the
  spill file once spilled). The target is >= 1 GiB/s with 100 subscribers attached.
  "cpu" is the same over the writer thread's CPU time in `append()`: the log's own
  cost, without the time the thread waited for a core (other processes, or threads
  reading the spill file for lagging subscribers, on this 2-core machine).
* writer wall: the stream's size over the writer's wall time, first append to
  close(); on one event-loop thread this includes the subscribers' work.
* delivery: bytes received by all subscribers together over the wall time until
  the last one has its last byte.

Every subscriber's byte count is checked against the stream's size (exit status 1
if one is wrong). The spill file lives in a temporary directory (`--dir`), removed
at the end; the default memory limit is the tracker's (8 MiB), so the 1 GiB stream
spills and is written through to the page cache.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import attrs
import trio
import trio.testing

from jobworker.output import OutputLog

MiB = 1 << 20


@attrs.frozen
class Result:
    subscribers: int
    total: int
    in_append: float
    cpu_in_append: float
    writer_wall: float
    delivery_wall: float
    received: tuple[int, ...]
    spilled: bool
    peak_memory: int

    def line(self) -> str:
        ok = all(count == self.total for count in self.received)
        return (
            f"{self.subscribers:>4} subscribers: "
            f"append path {self.total / MiB / self.in_append:>6,.0f} MiB/s "
            f"(cpu {self.total / MiB / self.cpu_in_append:>6,.0f}) | "
            f"writer wall {self.total / MiB / self.writer_wall:>7,.0f} MiB/s | "
            f"delivery {sum(self.received) / MiB / self.delivery_wall:>7,.0f} MiB/s total, "
            f"{self.total / MiB / self.delivery_wall:>6,.0f} MiB/s each | "
            f"spilled={self.spilled} peak memory {self.peak_memory / MiB:.2f} MiB | "
            f"bytes {'ok' if ok else 'WRONG'}"
        )


async def run_once(
    directory: Path, subscribers: int, total: int, chunk: int, memory_limit: int
) -> Result:
    """One writer, `subscribers` drains; return the timings and every byte count."""
    data = (bytes(range(256)) * (chunk // 256 + 1))[:chunk]
    appends, rest = divmod(total, chunk)
    assert not rest, "the stream size must be a multiple of the chunk size"
    log = OutputLog(directory / f"bench-{subscribers}.log", memory_limit=memory_limit)
    received = [0] * subscribers
    finished = trio.Event()
    remaining = [subscribers]
    if not subscribers:
        finished.set()

    async def drain(index: int) -> None:
        count = 0
        async with log.subscribe() as channel:
            async for piece in channel:
                count += len(piece)
        received[index] = count
        remaining[0] -= 1
        if not remaining[0]:
            finished.set()

    clock, cpu_clock = time.perf_counter, time.thread_time
    in_append = cpu_in_append = 0.0
    peak = 0
    try:
        async with trio.open_nursery() as nursery:
            for index in range(subscribers):
                nursery.start_soon(drain, index)
            await trio.testing.wait_all_tasks_blocked()
            append, checkpoint = log.append, trio.lowlevel.checkpoint
            start = clock()
            for _ in range(appends):
                before, cpu_before = clock(), cpu_clock()
                append(data)
                in_append += clock() - before
                cpu_in_append += cpu_clock() - cpu_before
                peak = max(peak, log.memory_size)
                await checkpoint()
            log.close()
            writer_wall = clock() - start
            await finished.wait()
            delivery_wall = clock() - start
        return Result(
            subscribers=subscribers,
            total=total,
            in_append=in_append,
            cpu_in_append=cpu_in_append,
            writer_wall=writer_wall,
            delivery_wall=delivery_wall,
            received=tuple(received),
            spilled=log.spilled,
            peak_memory=peak,
        )
    finally:
        await log.aclose()


async def main_async(args: argparse.Namespace) -> int:
    total, chunk = args.total_mib * MiB, args.chunk_kib * 1024
    print(
        f"OutputLog: {args.total_mib} MiB stream in {args.chunk_kib} KiB appends, "
        f"memory limit {args.memory_limit_mib} MiB, spill dir {args.dir or tempfile.gettempdir()}"
    )
    failed = False
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for subscribers in args.subscribers:
            result = await run_once(
                Path(directory), subscribers, total, chunk, args.memory_limit_mib * MiB
            )
            print(result.line(), flush=True)
            failed |= any(count != total for count in result.received)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mib", type=int, default=1024, help="stream size (MiB)")
    parser.add_argument("--chunk-kib", type=int, default=256, help="append size (KiB)")
    parser.add_argument(
        "--memory-limit-mib", type=int, default=8, help="OutputLog memory_limit (MiB)"
    )
    parser.add_argument(
        "--subscribers", type=int, nargs="+", default=[1, 100], help="subscriber counts to run"
    )
    parser.add_argument("--dir", default=None, help="where the spill file goes")
    args = parser.parse_args()
    sys.exit(trio.run(main_async, args))


if __name__ == "__main__":
    main()

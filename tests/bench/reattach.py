"""How long a new jwsd takes to take over running jobs, and to replay a finished
job's output after a restart: `python -m tests.bench.reattach [--jobs N] [--mib M]` (root).

1. A `JobTracker` starts N jobs (`sleep`), then exits leaving them running
   (`leave_running`, jwsd's SIGUSR1); a second tracker on the same data dir is
   timed from `__aenter__` to ready (every record loaded, every job taken over:
   pidfd, cgroup, output watch). The PSS of one job's output copier is read too.
2. A job writes M MiB; the tracker exits; a new tracker reads the whole output
   from byte 0 through `follow` (what GetJobOutput does), timed, in MiB/s.

Prints one line per figure. Used for docs/performance.md ("Durable jobs").
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import uuid
from pathlib import Path

import trio

from jobworker.model import JobSpec, Limits
from jobworker.tracker import JobTracker


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


async def reattach(jobs: int) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as workspace:
        Path(workspace).chmod(0o711)
        data = Path(workspace) / "data"
        name = f"jobworker-bench-{uuid.uuid4().hex[:8]}"
        options = {"cgroup_name": name, "max_running_per_user": None, "stop_grace": 0.5}
        spec = JobSpec(argv=("sleep", "600"), limits=Limits(memory=64 << 20, pids=16))
        async with JobTracker(data, **options) as first:  # type: ignore[arg-type]
            started = [await first.start("bench", spec) for _ in range(jobs)]
            job = first._jobs[started[0].job_id]
            assert job.launched is not None and job.launched.copier is not None
            print(f"output copier PSS: {_pss_kib(job.launched.copier.pid)} KiB")
            first.leave_running()
        began = time.perf_counter()
        second = JobTracker(data, **options)  # type: ignore[arg-type]
        await second.__aenter__()
        took = time.perf_counter() - began
        try:
            active = [s for s in second.list("", admin=True) if s.state.value == "Active"]
            print(f"take over {len(active)} running jobs: {took * 1000:.0f} ms")
        finally:
            await second.__aexit__(None, None, None)


async def replay(mib: int) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as workspace:
        Path(workspace).chmod(0o711)
        data = Path(workspace) / "data"
        name = f"jobworker-bench-{uuid.uuid4().hex[:8]}"
        spec = JobSpec(argv=("head", "-c", str(mib << 20), "/dev/zero"))
        async with JobTracker(data, cgroup_name=name) as first:
            status = await first.start("bench", spec)
            await first.wait("bench", status.job_id)
        async with JobTracker(data, cgroup_name=name) as second:
            began = time.perf_counter()
            total = 0
            async with contextlib.aclosing(second.follow("bench", status.job_id)) as chunks:
                async for chunk in chunks:
                    total += len(chunk)
            took = time.perf_counter() - began
            assert total == mib << 20, total
            print(f"replay {mib} MiB after a restart: {mib / took:.0f} MiB/s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.reattach")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    trio.run(reattach, args.jobs)
    trio.run(replay, args.mib)


if __name__ == "__main__":
    main()

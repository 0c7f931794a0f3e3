"""Where a job start's time goes: `python -m tests.bench.start_breakdown` (root).

1. In process: a `JobTracker` starts `true` with limits COUNT times, one at a
   time (50 ms apart, so one job's clean-up never overlaps the next start), with
   timers around the steps of `JobTracker.start`.
2. bubblewrap's pieces: the same sandbox built up flag by flag, run by hand as
   the job user, p50 of COUNT runs each.
3. The kernel's price for moving a process into a fresh cgroup (a write to
   cgroup.procs), right after the previous move and after an idle gap: cgroup
   v1 takes `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace
   period unless another move happened moments before (or the hierarchy was
   mounted with `favordynmods`).

Prints p50s in ms. Used for docs/performance.md ("What dominates ... Start").
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from jobworker.jobs.config import TrackerConfig
from jobworker.jobs.tracker import JobTracker
from jobworker.model import JobSpec, Limits, NetworkMode
from jobworker.sandbox import facade


def _timed(samples: dict[str, list[float]], label: str, fn: Callable[..., Any]) -> Any:
    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            samples.setdefault(label, []).append((time.perf_counter() - began) * 1000)

    return timed


async def tracker_steps(count: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    facade.launch = _timed(samples, "launch: fork to the ready byte", facade.launch)  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as workspace:
        Path(workspace).chmod(0o711)
        async with JobTracker(
            TrackerConfig(
                data_dir=Path(workspace) / "data",
                cgroup_name=f"jobworker-breakdown-{uuid.uuid4().hex[:8]}",
                network_default=NetworkMode.NONE,
            )
        ) as tracker:
            assert tracker.cgroups is not None
            create = tracker.cgroups.create

            def timed_create(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return create(*args, **kwargs)
                finally:
                    samples.setdefault("cgroup create", []).append(
                        (time.perf_counter() - began) * 1000
                    )

            tracker.cgroups.create = timed_create  # type: ignore[method-assign]
            store = tracker._store
            assert store is not None
            store.put = _timed(samples, "job record write", store.put)  # type: ignore[method-assign]
            spec = JobSpec(argv=("true",), limits=Limits(cpu=1.0, memory=256 << 20, pids=64))
            for _ in range(count):
                began = time.perf_counter()
                await tracker.start("alex", spec)
                samples.setdefault("JobTracker.start, all of it", []).append(
                    (time.perf_counter() - began) * 1000
                )
                await trio.sleep(0.05)
    return {label: statistics.median(values) for label, values in samples.items()}


def bwrap_pieces(count: int) -> dict[str, float]:
    setpriv = [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534"]
    setpriv += ["--clear-groups", "--"]
    bwrap = [*setpriv, shutil.which("bwrap") or "bwrap", "--unshare-user", "--ro-bind", "/", "/"]
    true = ["--", "/bin/true"]
    variants = {
        "fork+exec true": ["/bin/true"],
        "setpriv true": [*setpriv, "/bin/true"],
        "bwrap: user ns + ro root": [*bwrap, *true],
        "  + pid ns + /proc": [*bwrap, "--unshare-pid", "--proc", "/proc", *true],
        "  + net ns": [*bwrap, "--unshare-net", *true],
        "  + ipc, uts, cgroup ns": [*bwrap, "--unshare-ipc", "--unshare-uts", "--unshare-cgroup", *true],
        "  + --dev /dev": [*bwrap, "--dev", "/dev", *true],
        "  + 2 tmpfs + a bind": [*bwrap, "--tmpfs", "/tmp", "--tmpfs", "/srv", "--bind", "/srv", "/srv", *true],
    }  # fmt: skip
    result = {}
    for name, argv in variants.items():
        runs = []
        for _ in range(count):
            began = time.perf_counter()
            subprocess.run(argv, check=True)
            runs.append((time.perf_counter() - began) * 1000)
        result[name] = statistics.median(runs)
    return result


def cgroup_moves(count: int) -> dict[str, float]:
    parent = Path("/sys/fs/cgroup/pids")
    if not (parent / "cgroup.procs").exists():
        parent = Path("/sys/fs/cgroup")  # v2
    result = {}
    for gap in (0.0, 0.02, 0.1):
        runs = []
        for _ in range(count):
            group = parent / f"jobworker-breakdown-{uuid.uuid4().hex[:8]}"
            group.mkdir()
            try:
                with subprocess.Popen(["sleep", "10"]) as process:
                    time.sleep(gap)
                    began = time.perf_counter()
                    (group / "cgroup.procs").write_text(str(process.pid))
                    runs.append((time.perf_counter() - began) * 1000)
                    process.kill()
            finally:
                group.rmdir()
        result[f"move into a fresh cgroup, {gap * 1000:.0f} ms after the last"] = statistics.median(
            runs
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.start_breakdown")
    parser.add_argument("--count", type=int, default=60)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root: the tracker needs cgroups")
    print("JobTracker.start, p50 ms:")
    for label, value in trio.run(tracker_steps, args.count).items():
        print(f"  {label:46s} {value:6.2f}")
    print("bubblewrap's pieces, p50 ms:")
    for label, value in bwrap_pieces(args.count).items():
        print(f"  {label:46s} {value:6.2f}")
    print("the kernel's cgroup moves, p50 ms:")
    for label, value in cgroup_moves(min(args.count, 20)).items():
        print(f"  {label:46s} {value:6.2f}")


if __name__ == "__main__":
    main()

"""Start p50 of two versions of jwsd side by side: `python -m tests.bench.start_ab OTHER_PYTHON
[--rounds R] [--starts N]` (root).

Runs two real jwsd at once: this tree's, and the one of the tree whose virtualenv
interpreter is OTHER_PYTHON (e.g. a clone of `main` with its own .venv: its `jwsd`
code is what that interpreter imports). StartJob (`true` with the bench's limits,
over one mTLS connection to each) alternates between them one request at a time,
R rounds of N starts each (the order flips each round), so both see the same
moments of a shared, noisy machine. Prints each round's p50s and their ratio
(this tree ÷ the other), then the median ratio: what docs/performance.md's
"Durable jobs" section reports. Both daemons are stopped at the end and nothing
of their jobs may be left (checked).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from jobworker.client import Credentials, JobWorkerClient, connect
from tests.bench.durable import JWSD_FLAGS, leftovers
from tests.bench.load import limits
from tests.e2e.conftest import Jwsd, start_jwsd
from tests.support.certs import TestPKI


async def alternate(
    daemons: dict[str, Jwsd], rounds: int, starts: int
) -> list[tuple[float, float]]:
    """The rounds' StartJob p50s in ms, ("this", "other"), one pair per round (each round
    also said on stderr)."""
    p50s = []
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, JobWorkerClient] = {}
        for name, daemon in daemons.items():
            host, _, port = daemon.addr.rpartition(":")
            clients[name] = await stack.enter_async_context(
                connect(
                    (host, int(port)),
                    Credentials(daemon.tls_dir, "alex"),
                    server_hostname="localhost",
                )
            )
        for client in clients.values():  # warm-up: connections, caches
            for _ in range(3):
                await client.start(args=["true"], limits=limits())
        for index in range(rounds):
            samples: dict[str, list[float]] = {name: [] for name in clients}
            order = list(clients.items())[:: -1 if index % 2 else 1]
            for _ in range(starts):
                for name, client in order:
                    began = time.perf_counter()
                    await client.start(args=["true"], limits=limits())
                    samples[name].append((time.perf_counter() - began) * 1000)
            this, other = (statistics.median(samples[name]) for name in ("this", "other"))
            p50s.append((this, other))
            print(
                f"round {index + 1}: p50 this {this:.1f} ms, other {other:.1f} ms,"
                f" this ÷ other {this / other:.3f} (load average {os.getloadavg()[0]:.1f})",
                file=sys.stderr,
                flush=True,
            )
    return p50s


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.start_ab")
    parser.add_argument("other_python", help="the other tree's virtualenv python")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--starts", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root: jwsd needs cgroups")
    workspace = Path(tempfile.mkdtemp(prefix="jwbench-ab-", dir="/var/tmp"))
    workspace.chmod(0o711)
    pki = TestPKI()
    daemons: dict[str, Jwsd] = {}
    try:
        # This tree's jwsd script run by the other interpreter imports the other
        # tree's jobworker: a script's dir comes first on sys.path, not the cwd.
        daemons["other"] = start_jwsd(
            workspace / "other", pki, *JWSD_FLAGS, wrapper=[args.other_python]
        )
        daemons["this"] = start_jwsd(workspace / "this", pki, *JWSD_FLAGS)
        ratios = [
            this / other for this, other in trio.run(alternate, daemons, args.rounds, args.starts)
        ]
        print(
            f"this ÷ other, median of {len(ratios)} rounds: {statistics.median(ratios):.3f}"
            f" ({min(ratios):.3f}–{max(ratios):.3f})"
        )
    finally:
        for daemon in daemons.values():
            daemon.stop(timeout=60)
            for left in leftovers(daemon):
                print(f"left behind: {left}")
        shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    main()

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

`--cgroup-drivers` instead: this tree's jwsd twice, "this" with the systemd cgroup
driver and "other" with the cgroupfs one (on a host where systemd is PID 1): the
D-Bus round trips' cost, which docs/performance.md reports.
`python -m tests.bench.start_ab --modes outbound,none` instead compares two network
modes of this tree's one jwsd, the same way: the first mode ÷ the second.
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
    daemons: dict[str, Jwsd], rounds: int, starts: int, networks: dict[str, str] | None = None
) -> list[tuple[float, float]]:
    """The rounds' StartJob p50s in ms, ("this", "other"), one pair per round (each round
    also said on stderr). networks: the network mode each side asks for ("": the
    server's default)."""
    networks = networks or {}
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
        for name, client in clients.items():  # warm-up: connections, caches
            for _ in range(3):
                await client.start(args=["true"], limits=limits(), network=networks.get(name, ""))
        for index in range(rounds):
            samples: dict[str, list[float]] = {name: [] for name in clients}
            order = list(clients.items())[:: -1 if index % 2 else 1]
            for _ in range(starts):
                for name, client in order:
                    began = time.perf_counter()
                    await client.start(
                        args=["true"], limits=limits(), network=networks.get(name, "")
                    )
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
    parser.add_argument("other_python", nargs="?", help="the other tree's virtualenv python")
    parser.add_argument(
        "--cgroup-drivers",
        action="store_true",
        help="this tree with the systemd driver against this tree with cgroupfs",
    )
    parser.add_argument(
        "--modes", help="THIS,OTHER: compare two network modes of this tree's jwsd instead"
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--starts", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root: jwsd needs cgroups")
    workspace = Path(tempfile.mkdtemp(prefix="jwbench-ab-", dir="/var/tmp"))
    workspace.chmod(0o711)
    pki = TestPKI()
    daemons: dict[str, Jwsd] = {}
    networks: dict[str, str] = {}
    if args.modes:
        networks = dict(zip(("this", "other"), args.modes.split(","), strict=True))
    elif not args.other_python and not args.cgroup_drivers:
        parser.error("give the other tree's python, or --modes, or --cgroup-drivers")
    try:
        if args.modes:
            daemon = start_jwsd(workspace / "this", pki, *JWSD_FLAGS)
            daemons = {"this": daemon}
            pairs = trio.run(
                alternate, {"this": daemon, "other": daemon}, args.rounds, args.starts, networks
            )
            ratios = [this / other for this, other in pairs]
            print(
                f"{args.modes.replace(',', ' ÷ ')}, median of {len(ratios)} rounds: "
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})"
            )
            return
        # This tree's jwsd script run by the other interpreter imports the other
        # tree's jobworker: a script's dir comes first on sys.path, not the cwd.
        if args.cgroup_drivers:
            daemons["other"] = start_jwsd(workspace / "other", pki, *JWSD_FLAGS)
            daemons["this"] = start_jwsd(
                workspace / "this", pki, *JWSD_FLAGS, env={"JOBWORKER_CGROUP_DRIVER": "systemd"}
            )
        else:
            # The other tree's own default network (it may not know --network-default);
            # this tree's jobs get loopback only, as a tree without the modes gives.
            daemons["other"] = start_jwsd(
                workspace / "other",
                pki,
                *JWSD_FLAGS,
                wrapper=[args.other_python],
                network_default=None,
            )
            daemons["this"] = start_jwsd(workspace / "this", pki, *JWSD_FLAGS)
        try:
            ratios = [
                this / other
                for this, other in trio.run(alternate, daemons, args.rounds, args.starts)
            ]
        except BaseException:
            for name, daemon in daemons.items():  # what each jwsd said, before it goes
                print(f"== jwsd {name} (exit status {daemon.process.poll()}), its log's end:")
                print(daemon.log[-4000:])
            raise
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

"""The "observe" group of `just bench`: what metrics and the audit trail cost.

Two real jwsd in the same run: the bench's own (the audit trail on, as always by
default, and `--metrics-addr` serving; a scraper GETs /metrics every second while
the group runs, as a Prometheus would), and one with `--no-audit` and no metrics
endpoint. The start row (StartJob p50: one request to each in turn, as
`tests.bench.start_ab` does) and the RPC-rate row (GetJobStatus from 50 clients,
a run on each in turn) see the same moments of a shared machine. The ratio is on ÷ off for the
rate, off ÷ on for latencies, as `Report` shows every subject against its peer:
the target is 0.95× or more.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import trio

from tests.bench.durable import JWSD_FLAGS, remove_cgroups
from tests.bench.start_ab import alternate
from tests.e2e.conftest import Jwsd, start_jwsd

if TYPE_CHECKING:
    from tests.bench.run import Bench

GROUP_START = "metrics + audit: start latency (on vs off)"
GROUP_RPC = "metrics + audit: RPC rate (on vs off)"
ON = "jwsd, metrics + audit on"
OFF = "jwsd, both off"
#: StartJob calls to each jwsd per round of the start row.
START_ROUND = 50
#: The scraper's interval, seconds.
SCRAPE_EVERY = 1.0


def metrics_url(daemon: Jwsd) -> str:
    found = re.findall(r"serving metrics on (http://\S+/metrics)", daemon.log)
    if not found:
        raise RuntimeError("the bench's jwsd serves no metrics (run with --metrics-addr)")
    return str(found[-1])


@contextlib.contextmanager
def scraping(url: str) -> Iterator[list[int]]:
    """GET `url` every SCRAPE_EVERY seconds until the block ends; yields the sizes seen."""
    sizes: list[int] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(SCRAPE_EVERY):
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
                sizes.append(len(answer.read()))

    thread = threading.Thread(target=scrape, name="scraper", daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        thread.join(timeout=15)


@contextlib.contextmanager
def quiet_jwsd(bench: Bench) -> Iterator[Jwsd]:
    """A second jwsd, with no audit trail and no metrics endpoint."""
    daemon = start_jwsd(bench.workspace / "jwsd-off", bench.pki, *JWSD_FLAGS, "--no-audit")
    try:
        yield daemon
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.stop(timeout=60)
        remove_cgroups(daemon.cgroup_name)


def observe(bench: Bench, load: Callable[..., Any]) -> None:
    sizes, report = bench.sizes, bench.report
    on = bench.jwsd
    start_note = (
        f"StartJob as the start row, to each jwsd in turn one request at a time, "
        f"{START_ROUND} to each per round, p50 of each round; on: the audit record of each "
        f"start written before its answer, /metrics scraped every {SCRAPE_EVERY:g} s"
    )
    rpc_note = (
        f"{sizes.rpc_clients} clients for {sizes.rpc_seconds:.0f} s per run, as the RPC row "
        "(GetJobStatus is not audited unless refused: the metrics' cost)"
    )
    with quiet_jwsd(bench) as off, scraping(metrics_url(on)) as scrapes:
        jobs = {
            daemon.addr: load(
                "start-many", daemon.addr, bench.tls, "--count", "1", "--concurrency", "1"
            )["job_ids"][0]
            for daemon in (on, off)
        }
        # One request at a time to each in turn (tests.bench.start_ab): both see the
        # same moments of the machine, which swings more between runs than this differs.
        rounds = trio.run(alternate, {"this": on, "other": off}, 2 * sizes.runs, START_ROUND)
        for on_p50, off_p50 in rounds:
            for path, value, subject in ((ON, on_p50, True), (OFF, off_p50, False)):
                report.row(
                    GROUP_START, path, "p50", "ms", subject=subject, note=start_note
                ).samples.append(value)
        sides = ((ON, on, True), (OFF, off, False))
        for index in range(2 * sizes.runs):
            for path, daemon, subject in sides[:: -1 if index % 2 else 1]:
                result = load(
                    "rpc", daemon.addr, bench.tls, "--clients", str(sizes.rpc_clients),
                    "--seconds", str(sizes.rpc_seconds), "--jobs", jobs[daemon.addr],
                )  # fmt: skip
                if result["errors"]:
                    raise RuntimeError(f"{path}: GetJobStatus failed: {result['errors']}")
                report.row(
                    GROUP_RPC, path, "rate", "req/s", higher_is_better=True, subject=subject,
                    note=rpc_note,
                ).samples.append(result["rate"])  # fmt: skip
                report.row(
                    GROUP_RPC, path, "p99", "ms", subject=subject, note=rpc_note
                ).samples.append(result["p99_ms"])
        for daemon in (on, off):
            ids = bench.workspace / f"observe-ids-{daemon.addr.rpartition(':')[2]}"
            ids.write_text(jobs[daemon.addr])
            load("stop-many", daemon.addr, bench.tls, "--ids-file", str(ids))
    if not scrapes:
        raise RuntimeError("the scraper got no answer from /metrics")

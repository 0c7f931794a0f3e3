"""`jwsd --metrics-addr`, scraped by a real Prometheus (Debian's `prometheus`) on
loopback: jobs that exit 0, exit 1, are OOM-killed, time out and are stopped move
the counters and gauges as they should, asked through Prometheus' HTTP API in
PromQL; and `promtool check metrics` finds nothing to say of the exposition.

Hierarchy-independent: what is counted is the outcome the tracker recorded, and
how an OOM kill or a stop is told apart on cgroup v1 and v2 is what the outcome
tests (tests/integration/test_cgroups_kernel.py, tests/e2e/test_sandbox.py) show
on both; Prometheus itself is installed on the host only (./dev, for the tests).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REQUIRE_ROOT, require_root
from tests.e2e.conftest import Jwsd, restart_jwsd, start_jwsd
from tests.e2e.test_watch import events_until, kinds
from tests.support.certs import TestPKI
from tests.support.timing import scaled
from tests.support.waiting import eventually_blocking

pytestmark = [pytest.mark.e2e, pytest.mark.hierarchy_independent]

#: How often Prometheus scrapes jwsd in this test.
SCRAPE_INTERVAL = "1s"


def _require(tool: str) -> str:
    """The path of `tool`; skip without it, fail when JOBWORKER_REQUIRE_ROOT=1 (./dev
    installs Debian's prometheus for the tests)."""
    path = shutil.which(tool)
    if path is None:
        if REQUIRE_ROOT:
            pytest.fail(f"{tool} is missing; install Debian's prometheus (./dev does, as root)")
        pytest.skip(f"needs {tool} (apt-get install prometheus)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=scaled(10)) as answer:  # noqa: S310 - loopback
        body: bytes = answer.read()
    return body


@attrs.frozen
class Prometheus:
    url: str

    def query(self, promql: str) -> float | None:
        """The value of an instant query with one series in its answer; None with none."""
        answer = json.loads(
            _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        )
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def until(self, promql: str, expected: float) -> None:
        """Wait (a few scrapes) until `promql` answers `expected`."""
        eventually_blocking(
            lambda: self.query(promql) == expected,
            timeout=scaled(20),
            what=f"{promql} == {expected} (last: {self.query(promql)})",
        )


METRICS_FLAGS = ("--metrics-addr", "127.0.0.1:0", "--max-limits", "memory=1G")


def _endpoint(daemon: Jwsd) -> str:
    """The URL of the metrics endpoint the last start of `daemon` serves."""
    found = re.findall(r"serving metrics on (http://127\.0\.0\.1:\d+/metrics)", daemon.log)
    assert found, daemon.log
    return str(found[-1])


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, by (name, labels), read with the client's parser."""
    families = text_string_to_metric_families(_get(url).decode())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


@pytest.fixture
def metrics_jwsd(tmp_path: Path, pki: TestPKI) -> Iterator[tuple[Jwsd, str]]:
    """A jwsd serving metrics on a free loopback port, and that endpoint's URL."""
    require_root()
    daemon = start_jwsd(tmp_path, pki, *METRICS_FLAGS)
    try:
        yield daemon, _endpoint(daemon)
    finally:
        assert daemon.stop() == 0, daemon.log


@pytest.fixture
def prometheus(tmp_path: Path, metrics_jwsd: tuple[Jwsd, str]) -> Iterator[Prometheus]:
    """A real Prometheus scraping `metrics_jwsd` every SCRAPE_INTERVAL."""
    binary = _require("prometheus")
    target = urllib.parse.urlsplit(metrics_jwsd[1]).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n"
        f"scrape_configs:\n  - job_name: jwsd\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def up() -> bool:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return server.query('up{job="jwsd"}') == 1
            except OSError:
                return False

        eventually_blocking(up, timeout=scaled(30), what="prometheus scrapes jwsd")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=scaled(10))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _jws(daemon: Jwsd, *args: str) -> subprocess.CompletedProcess[bytes]:
    return daemon.jws(*args)


def test_prometheus_sees_starts_ends_by_outcome_and_jobs_by_state(
    metrics_jwsd: tuple[Jwsd, str], prometheus: Prometheus
) -> None:
    daemon, _ = metrics_jwsd
    assert _jws(daemon, "run", "--", "echo", "hello").stdout == b"hello\n"
    assert _jws(daemon, "run", "--", "sh", "-c", "exit 1").returncode == 1
    oom = _jws(daemon, "run", "--memory", "32M", "--", "python3", "-c", "b = b'x' * (256 << 20)")
    assert oom.returncode != 0, oom.stderr
    timed_out = _jws(daemon, "run", "--timeout", "1s", "--", "sleep", "60")
    assert b"time limit" in timed_out.stderr, timed_out.stderr
    started = _jws(daemon, "start", "--", "sleep", "60")
    job_id = started.stdout.decode().strip()
    assert started.returncode == 0 and job_id, started.stderr
    prometheus.until('jobworker_jobs{state="active"}', 1)
    assert _jws(daemon, "stop", "-j", job_id).returncode == 0
    refused = _jws(daemon, "run", "--memory", "2G", "--", "true")
    assert refused.returncode != 0

    for outcome in ("exit_zero", "exit_nonzero", "oom_killed", "timed_out", "stopped"):
        prometheus.until(f'jobworker_job_ends_total{{outcome="{outcome}"}}', 1)
    prometheus.until('jobworker_job_ends_total{outcome="lost"}', 0)
    prometheus.until('jobworker_job_starts_total{result="started"}', 5)
    prometheus.until('jobworker_job_starts_total{result="limits"}', 1)
    prometheus.until('jobworker_jobs{state="terminated"}', 5)
    prometheus.until('jobworker_jobs{state="active"}', 0)
    prometheus.until("jobworker_job_run_seconds_count", 5)
    prometheus.until('jobworker_rpcs_total{method="StartJob",code="OK"}', 5)
    prometheus.until('jobworker_rpcs_total{method="StartJob",code="INVALID_ARGUMENT"}', 1)
    prometheus.until('jobworker_rpcs_total{method="StopJob",code="OK"}', 1)
    prometheus.until('jobworker_rpc_duration_seconds_count{method="StopJob"}', 1)
    # Each `jws run` followed its job's output to its end.
    prometheus.until("jobworker_output_followers", 0)
    prometheus.until("jobworker_output_served_bytes_total", len(b"hello\n"))
    prometheus.until("jobworker_output_written_bytes_total", len(b"hello\n"))
    prometheus.until("jobworker_output_disk_bytes", len(b"hello\n"))
    assert (prometheus.query("jobworker_store_write_seconds_count") or 0) >= 10
    assert prometheus.query('jobworker_build_info{version="0.1.0"}') == 1


def test_promtool_finds_the_exposition_well_formed_and_well_named(
    metrics_jwsd: tuple[Jwsd, str],
) -> None:
    promtool = _require("promtool")
    daemon, url = metrics_jwsd
    assert _jws(daemon, "run", "--", "true").returncode == 0
    exposition = _get(url)
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    assert checked.returncode == 0 and not checked.stdout and not checked.stderr, (
        checked.stdout + checked.stderr
    ).decode()
    assert b'jobworker_job_ends_total{outcome="exit_zero"} 1.0' in exposition


def test_the_take_over_at_start_up_counts_jobs_reattached_and_ended_while_away(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """jwsd is SIGKILLed with two jobs running; one ends while no jwsd runs. The next
    jwsd re-attaches one and finds the other ended, and counts both."""
    first = start_jwsd(tmp_path, pki, *METRICS_FLAGS)
    daemons.append(first)
    long = first.jws("start", "--", "sleep", "600").stdout.decode().strip()
    short = first.jws("start", "--", "sh", "-c", "sleep 1").stdout.decode().strip()
    assert long and short
    first.stop(signal.SIGKILL)
    status_file = first.data_dir / "jobs" / short / "status.json"
    eventually_blocking(
        lambda: b"exit-code" in status_file.read_bytes(), timeout=scaled(10), what="the job ends"
    )
    again = restart_jwsd(first, pki, *METRICS_FLAGS)
    daemons.append(again)
    samples = _scrape(_endpoint(again))
    takeover = {
        result: samples[("jobworker_takeover_jobs_total", (("result", result),))]
        for result in ("reattached", "ended", "lost")
    }
    assert takeover == {"reattached": 1, "ended": 1, "lost": 0}
    assert samples[("jobworker_jobs", (("state", "active"),))] == 1
    assert samples[("jobworker_jobs", (("state", "terminated"),))] == 1
    assert again.jws("stop", "-j", long).returncode == 0


def test_reloads_are_counted_by_result(metrics_jwsd: tuple[Jwsd, str], tmp_path: Path) -> None:
    """SIGHUP with good files counts ok; with a users file that does not parse, refused."""
    daemon, url = metrics_jwsd

    def reloads() -> dict[str, float]:
        samples = _scrape(url)
        return {
            result: samples[("jobworker_reloads_total", (("result", result),))]
            for result in ("ok", "refused")
        }

    assert reloads() == {"ok": 0, "refused": 0}
    daemon.process.send_signal(signal.SIGHUP)
    eventually_blocking(
        lambda: reloads()["ok"] == 1, timeout=scaled(10), what="the reload is counted"
    )
    users = tmp_path / "users.toml"
    good = users.read_text()
    users.write_text("[users\n")
    daemon.process.send_signal(signal.SIGHUP)
    eventually_blocking(
        lambda: reloads() == {"ok": 1, "refused": 1},
        timeout=scaled(10),
        what="the refused reload is counted",
    )
    users.write_text(good)


def test_open_watch_streams_are_a_gauge_and_each_watch_is_counted_when_it_ends(
    metrics_jwsd: tuple[Jwsd, str],
) -> None:
    daemon, url = metrics_jwsd
    # A name in use is an invalid start, not refused limits.
    assert _jws(daemon, "start", "--name", "once", "--", "true").returncode == 0
    assert _jws(daemon, "start", "--name", "once", "--", "true").returncode == 1
    assert b'jobworker_job_starts_total{result="invalid"} 1.0' in _get(url)
    watchers = [daemon.popen("events", "--json") for _ in range(2)]
    try:
        for watcher in watchers:
            assert kinds(events_until(watcher, 1, "the watch begins")) == ["watching"]
        assert b"\njobworker_watchers 2.0\n" in _get(url)
    finally:
        for watcher in watchers:
            watcher.kill()
            watcher.communicate(timeout=scaled(10))  # closes its pipes

    def counted() -> bool:
        exposition = _get(url)
        return (
            b"\njobworker_watchers 0.0\n" in exposition
            and b'jobworker_rpcs_total{code="CANCELLED",method="WatchJobs"} 2.0' in exposition
        )

    eventually_blocking(counted, timeout=scaled(10), what="both watches end and are counted")

"""`Metrics`: jwsd's Prometheus metrics, in a registry of their own.

Every component counts into one `Metrics` (the tracker, the call guard, the RPC
server, the service); `jobworker.server.metrics_http` serves its text exposition
when `jwsd --metrics-addr` is given. Counting costs a lock and an add per event,
so it is always on; only serving them is optional.

Two kinds of values:

* events are counters and histograms, bumped where they happen (a start, an end,
  a call, a refused connection, a store write);
* levels are read at scrape time from their owner (`add_live`): jobs by state,
  disk used by output and work dirs, connections open, followers. Nothing keeps
  them in step by hand, so they cannot drift from what the tracker holds.

Low cardinality by design: no label takes a job id, a command, a user name or a
peer address; every label's values are a short fixed list (the RPC methods, the
status codes, the outcomes and reasons below). Names follow Prometheus' naming
conventions: base units (`_seconds`, `_bytes`), `_total` for counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from jobworker import __version__
from jobworker.model import Outcome

#: Why a start was refused: the `result` label of `jobworker_job_starts_total`.
START_RESULTS: Final = ("started", "quota", "limits", "invalid", "sandbox", "unavailable")
#: How a job ended: the `outcome` label of `jobworker_job_ends_total`.
END_OUTCOMES: Final = (
    "exit_zero",
    "exit_nonzero",
    "signaled",
    "oom_killed",
    "timed_out",
    "stopped",
    "lost",
)
#: Why a connection was refused or closed: `jobworker_connections_refused_total`'s `reason`.
REFUSED_REASONS: Final = ("handshake", "quota", "idle")
#: What taking over an earlier jwsd's jobs found: `jobworker_takeover_jobs_total`'s `result`.
TAKEOVER_RESULTS: Final = ("reattached", "ended", "lost")

# Job run times span a second to days; RPC latencies a tenth of a millisecond to a
# minute (a StopJob waits out a grace period; a stream lasts as long as its job).
_RUN_BUCKETS: Final = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)
_RPC_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 60.0)
_STORE_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)


def end_outcome(outcome: Outcome | None, exit_code: int | None) -> str:
    """The `outcome` label of a job that ended as `outcome` with `exit_code`."""
    if outcome is Outcome.EXITED:
        return "exit_zero" if exit_code == 0 else "exit_nonzero"
    if outcome is None:
        return "lost"
    return outcome.value.replace("-", "_")


@attrs.define(eq=False)
class _Live(Collector):
    """A collector whose metrics its owner computes at each scrape."""

    collect_fn: Callable[[], Iterable[Metric]]

    def collect(self) -> Iterable[Metric]:
        return self.collect_fn()

    def describe(self) -> Iterable[Metric]:
        # Nothing to check for clashes at registration (and `collect` may not be
        # ready to run yet): the owner's names are its own.
        return ()


class Metrics:
    """jwsd's metrics, each a prometheus-client metric in `registry` (see the module
    docstring); the attributes are the events, `add_live` adds the levels."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.job_starts = self._counter(
            "jobworker_job_starts",
            "StartJob calls by result: started, or why it was refused.",
            ["result"],
        )
        self.job_ends = self._counter(
            "jobworker_job_ends",
            "Jobs that ended, by outcome.",
            ["outcome"],
        )
        self.job_run_seconds = Histogram(
            "jobworker_job_run_seconds",
            "How long jobs ran, from their start to their end.",
            buckets=_RUN_BUCKETS,
            registry=registry,
        )
        self.jobs_truncated = self._counter(
            "jobworker_jobs_output_truncated",
            "Jobs that ended with output missing (past --max-output, or a full disk).",
        )
        self.rpcs = self._counter(
            "jobworker_rpcs",
            "Calls handled, by method and status code.",
            ["method", "code"],
        )
        self.rpc_seconds = Histogram(
            "jobworker_rpc_duration_seconds",
            "How long calls took, by method (a stream: as long as it was followed).",
            ["method"],
            buckets=_RPC_BUCKETS,
            registry=registry,
        )
        self.connections_refused = self._counter(
            "jobworker_connections_refused",
            "Client connections refused or closed by jwsd, by reason: a failed TLS "
            "handshake, the per-user connection quota, no call for --idle-timeout.",
            ["reason"],
        )
        self.output_served_bytes = self._counter(
            "jobworker_output_served_bytes",
            "Bytes of job output sent to GetJobOutput callers.",
        )
        self.output_followers = Gauge(
            "jobworker_output_followers",
            "GetJobOutput streams open right now.",
            registry=registry,
        )
        self.watchers = Gauge(
            "jobworker_watchers",
            "WatchJobs streams open right now.",
            registry=registry,
        )
        self.takeover_jobs = self._counter(
            "jobworker_takeover_jobs",
            "At start-up, the earlier jwsd's unfinished jobs: re-attached, found "
            "ended while no jwsd ran, or lost.",
            ["result"],
        )
        self.store_write_seconds = Histogram(
            "jobworker_store_write_seconds",
            "How long a job record's write to jobs.db took.",
            buckets=_STORE_BUCKETS,
            registry=registry,
        )
        self.audit_write_failures = self._counter(
            "jobworker_audit_write_failures",
            "Audit records that could not be written to audit.db (each is logged, and a "
            "gap record says so once writing works again).",
        )
        self.reloads = self._counter(
            "jobworker_reloads",
            "SIGHUP reloads of the TLS files and the users file, by result.",
            ["result"],
        )
        build_info = Gauge(
            "jobworker_build_info",
            "Always 1; the jobworker version in a label.",
            ["version"],
            registry=registry,
        )
        build_info.labels(version=__version__).set(1)
        # Every label value exists from the first scrape, so that rate() and
        # increase() see a 0 before the first event, not a series out of nowhere.
        for result in START_RESULTS:
            self.job_starts.labels(result=result)
        for outcome in END_OUTCOMES:
            self.job_ends.labels(outcome=outcome)
        for reason in REFUSED_REASONS:
            self.connections_refused.labels(reason=reason)
        for result in TAKEOVER_RESULTS:
            self.takeover_jobs.labels(result=result)
        for result in ("ok", "refused"):
            self.reloads.labels(result=result)

    def _counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, documentation, list(labels), registry=self.registry)

    def add_live(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Have `collect` compute metrics at each scrape (it runs in the scraping task,
        on trio's thread: it must be quick and not block)."""
        self.registry.register(_Live(collect))

    def count_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one call of `method` (a method the server serves) that ended with
        `code` after `seconds`. The labelled series are looked up once each: `labels()`
        costs some 7 µs a call, the lookup here a dict's (methods × codes: a few dozen)."""
        children = self._rpc_children.get((method, code))
        if children is None:
            children = self._rpc_children[(method, code)] = (
                self.rpcs.labels(method=method, code=code),
                self.rpc_seconds.labels(method=method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def count_refused(self, reason: str) -> None:
        """Count a connection refused or closed for `reason` (one of REFUSED_REASONS)."""
        self.connections_refused.labels(reason=reason).inc()


__all__ = ["END_OUTCOMES", "REFUSED_REASONS", "START_RESULTS", "Metrics", "end_outcome"]

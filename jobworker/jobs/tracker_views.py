"""What the tracker shows of its jobs beside the API's answers: the metrics it counts
and the levels it reports at a scrape (`count_end`, `live_metrics`), and the event
stream a watcher reads (`events_for`). Functions of the tracker's jobs and logs, kept
out of `tracker.py`, which keeps the registry, the quotas and the operations."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterable

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jobworker.jobs.events import Cursor, EventKind, EventLog, JobEvent
from jobworker.jobs.job import Job
from jobworker.jobs.record import JobRecord
from jobworker.metrics import Metrics, end_outcome
from jobworker.model import JobState, JobStatus

#: Events a watcher takes from the log between checkpoints.
WATCH_BATCH = 64


def count_end(metrics: Metrics, record: JobRecord) -> None:
    """Count a job's end: its outcome, its run time, its truncation."""
    metrics.job_ends.labels(outcome=end_outcome(record.outcome, record.exit_code)).inc()
    if record.started_at is not None and record.ended_at is not None:
        metrics.job_run_seconds.observe(max(0.0, record.ended_at - record.started_at))
    if record.output_truncated is not None:
        metrics.jobs_truncated.inc()


def live_metrics(jobs: Iterable[Job], forgotten_output: int) -> list[Metric]:
    """The tracker's levels, computed at a scrape: O(jobs), a few attribute reads per
    job and one statvfs per running job's work dir, on trio's thread.
    forgotten_output: the output bytes of jobs already removed."""
    held = list(jobs)
    by_state = collections.Counter(job.phase.state for job in held)
    states = GaugeMetricFamily("jobworker_jobs", "Jobs jwsd holds, by state.", labels=["state"])
    for state in JobState:
        states.add_metric([state.value.lower()], by_state[state])
    workdirs = 0
    for job in held:
        if job.running is not None and not job.phase.ended:
            with contextlib.suppress(OSError):
                workdirs += job.running.workdir_bytes() or 0
    return [
        states,
        CounterMetricFamily(
            "jobworker_output_written_bytes",
            "Bytes of output jobs wrote (kept, up to each job's cap), since jwsd started "
            "(a taken-over job's earlier output included).",
            value=forgotten_output + sum(job.log.size for job in held),
        ),
        GaugeMetricFamily(
            "jobworker_output_disk_bytes",
            "Bytes of job output on disk in the data dir.",
            value=sum(job.log.disk_size for job in held),
        ),
        GaugeMetricFamily(
            "jobworker_workdir_bytes",
            "Bytes in use in the running jobs' work dirs (tmpfs work dirs only).",
            value=workdirs,
        ),
    ]


async def events_for(
    log: EventLog,
    current: Callable[[], Iterable[JobStatus | None]],
    wanted: Callable[[JobStatus | None], bool],
    since: Cursor | None,
) -> AsyncGenerator[JobEvent, None]:
    """The events of `log` that `wanted` selects, after `since` (None: from now); see
    `JobTracker.watch`. current: the held jobs' recorded statuses (None for a job
    removed meanwhile), which a stale cursor gets first."""
    stale = since is not None and log.is_stale(since)
    seq = log.cursor.seq if since is None or stale else since.seq
    if not stale:
        yield JobEvent(seq, EventKind.WATCHING, time.time(), None)
    while True:
        if stale:
            stale = False
            seq = log.cursor.seq  # the live events are those after the state below
            yield JobEvent(seq, EventKind.STALE, time.time(), None)
            for status in current():
                if wanted(status):
                    yield JobEvent(seq, EventKind.CURRENT, time.time(), status)
            continue
        events = log.after(seq, WATCH_BATCH)
        if not events:
            await log.wait_after(seq)
            continue
        for event in events:
            seq = event.seq
            if wanted(event.status):
                yield event
        # A watcher slower than the log's retention has missed events: say so.
        stale = log.is_stale(Cursor(log.epoch, seq))
        await trio.lowlevel.checkpoint()

"""Taking over an earlier jwsd's jobs at start-up: each record, with what the host
shows of it, through the reconcile table (`lifecycle.reconcile`), to a `Job`.

    record ──▶ the host shows (the sandbox: `attach`, else `inspect`) ──▶ decision
          Keep · TakeOver · EndedWhileAway · Lost ──▶ a Job, its record rewritten
          if it changed

The table decides; this module only asks the sandbox what is there and carries
the decision out: a taken-over job gets its `RunningJob` and its output followed
again; a job that ended while no jwsd ran is Terminated as it would have been;
one that vanished is Terminated, lost, with the reason. Then every job dir no
record claims, and the work dir of every job that no longer runs, is deleted,
and the sandbox kills and removes every cgroup no running job claims: a job is
never run twice, and nothing runs that no record names.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs
import trio

from jobworker.jobs.job import Job
from jobworker.jobs.lifecycle import (
    Decision,
    EndedWhileAway,
    HostView,
    Keep,
    Lifecycle,
    Lost,
    TakeOver,
    reconcile,
)
from jobworker.jobs.output_log import FileLog
from jobworker.jobs.record import JobRecord
from jobworker.model import JobState, Outcome
from jobworker.sandbox import OUTPUT_NAME, WORK_NAME, RunningJob, Sandbox
from jobworker.units import counted

log = logging.getLogger(__name__)

#: What a Terminated job's status says when its job dir was gone at start-up.
OUTPUT_GONE = "its job dir was gone when jwsd started: the output is lost"


@attrs.frozen
class Restored:
    """jobs: every recorded job, oldest first. changed: the records the reconcile
    table rewrote (the caller writes them before serving)."""

    jobs: list[Job]
    ended: list[JobRecord]


def restore(
    records: Iterable[JobRecord],
    *,
    sandbox: Sandbox,
    follow: Callable[[Job], None],
    jobs_dir: Path,
) -> Restored:
    """The jobs of `records` (from `JobStore.load`), taken over or ended as the
    reconcile table says; then what no record claims is cleaned up. follow: watches
    the output of a job taken over (the tracker's, as for a job it starts)."""
    now, clock = time.time(), trio.current_time()
    jobs: list[Job] = []
    ended: list[JobRecord] = []
    for record in records:
        job = _restored(record, jobs_dir / record.job_id, sandbox, follow, now)
        if job.phase.ended:
            if record.state is not JobState.TERMINATED:
                ended.append(job.record)
            assert job.record.ended_at is not None
            job.ended_clock = clock - max(0.0, now - job.record.ended_at)
        jobs.append(job)
    running = {job.job_id for job in jobs if job.running is not None}
    _clean_leftovers(jobs_dir, {job.job_id for job in jobs}, running)
    stale = sandbox.cleanup_stale(keep=running)
    if stale:
        log.warning("removed %d job cgroups that no running job claims", len(stale))
    if jobs:
        log.info(
            "restored %s; took over %s",
            counted(len(jobs), "job record"),
            counted(len(running), "running job"),
        )
    return Restored(jobs, ended)


def _restored(
    record: JobRecord, directory: Path, sandbox: Sandbox, follow: Callable[[Job], None], now: float
) -> Job:
    running: RunningJob | None = None
    host: HostView | None = None
    usage = None
    status_written_at = None
    if record.state is not JobState.TERMINATED:
        running = sandbox.attach(record.job_id, record.owner, directory, record.processes)
        if running is not None:
            host = HostView(supervisor_running=True, sandbox_started=True)
        else:
            remains = sandbox.inspect(record.job_id, record.owner, directory)
            usage, status_written_at = remains.usage, remains.status_written_at
            host = HostView(
                supervisor_running=False,
                sandbox_started=remains.sandbox_started,
                exit_code=remains.exit_code,
                oom_kills=usage.oom_kills if usage is not None else 0,
            )
    decision: Decision = reconcile(
        record.state, stop=record.stop, job_dir_exists=directory.exists(), host=host
    )
    output = directory / OUTPUT_NAME
    if isinstance(decision, TakeOver):
        assert running is not None
        job = Job(
            record,
            directory,
            FileLog.open(output, record.limits.output),
            Lifecycle.for_restored(decision),
            running=running,
        )
        follow(job)
        if record.started_at is None:
            # jwsd died before the record that names its start time: bubblewrap wrote the
            # status file (the sandbox init's pid) as the job started. Its time limit
            # counts from then.
            job.update(started_at=running.status_written_at())
        job.update(state=job.phase.state)
        log.info(
            "job %s: taken over (supervisor pid %s)",
            record.job_id,
            running.processes.supervisor_pid,
        )
        return job
    lifecycle = Lifecycle.for_restored(decision)
    if isinstance(decision, Keep):
        truncated = OUTPUT_GONE if decision.output_lost else record.output_truncated
        log_ = FileLog.restored(output, record.output_size, truncated=truncated)
        return Job(record, directory, log_, lifecycle)
    # It ended, or vanished, while no jwsd ran: its output is what its file holds.
    log_ = FileLog.restored(output, _file_size(output), truncated=record.output_truncated)
    ended = attrs.evolve(record, state=JobState.TERMINATED, output_size=log_.size)
    if usage is not None:
        ended = ended.with_usage(usage)
    if isinstance(decision, EndedWhileAway):
        ended = attrs.evolve(
            ended,
            outcome=decision.outcome,
            exit_code=decision.exit_code,
            signal=decision.signal,
            # When bubblewrap wrote the exit code (its start, if it was SIGKILLed).
            ended_at=status_written_at or now,
            outcome_reason=None,
        )
    else:
        assert isinstance(decision, Lost)
        ended = attrs.evolve(
            ended, outcome=Outcome.LOST, ended_at=now, outcome_reason=decision.reason
        )
    return Job(ended, directory, log_, lifecycle)


def _clean_leftovers(jobs_dir: Path, recorded: set[str], running: set[str]) -> None:
    """Delete what an earlier run left that no record claims: a job dir without a
    record (a start that never returned), and the work dir of every job that is not
    `running` any more."""
    for leftover in jobs_dir.iterdir():
        if leftover.name in running:
            continue
        if leftover.name in recorded:
            shutil.rmtree(leftover / WORK_NAME, ignore_errors=True)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


__all__ = ["OUTPUT_GONE", "Restored", "restore"]

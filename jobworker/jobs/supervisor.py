"""`Supervisor`: a running job's life from its launch (or take-over) to its terminal
record — the waiting, the time limit, stops, the bounded clean-up, and the record
writes in the order a crash must not break (docs/architecture.md, "State on disk").

Each running job has one supervisor task (`supervise`) in the tracker's nursery.
It waits for the job's bubblewrap through the sandbox's handle and then, whatever
cancelled it, finishes the job in a shielded scope bounded by FINISH_TIMEOUT:
the sandbox's clean-up (kill what is left, read usage, wait for the copier,
remove the cgroup), the work dir, the terminal record on disk, and only then the
job's end said to anyone (`Event.RECORDED`). When the tracker leaves its jobs
running (`leave_running`), the task only lets go of its job.

Stops (`stop`) are tasks of the tracker's nursery too, never of the caller: a
caller that hangs up does not cancel the escalation. The stop is on disk before
the signal, so that a job that dies of it while no jwsd runs is reconciled as
stopped, not as killed by a signal.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable

import attrs
import trio

from jobworker import faults, logs
from jobworker.errors import StartFailedError
from jobworker.jobs.job import Job
from jobworker.jobs.lifecycle import Event, Phase, StopCause, outcome
from jobworker.jobs.record import JobRecord
from jobworker.jobs.store import JobStore
from jobworker.jobs.watcher import OutputWatcher

log = logging.getLogger("jobworker.jobs.tracker")

#: How long a job's final clean-up may take after its processes were killed.
FINISH_TIMEOUT = 10.0


@attrs.define(eq=False)
class Supervisor:
    """store: where records go. watcher: the output files' inotify watcher.
    nursery: the tracker's (stops and supervisor tasks belong to it).
    stop_grace: the grace a time limit's stop gets.
    ended: called once a job has ended and its end is known to all (the tracker
        counts it finished and frees its running quota)."""

    store: JobStore
    watcher: OutputWatcher
    nursery: trio.Nursery
    stop_grace: float
    ended: Callable[[Job], Awaitable[None]]
    # Set when the tracker leaves its jobs running as it exits (`leave_running`).
    leaving: bool = False

    # ---- records -----------------------------------------------------------------

    async def save(self, record: JobRecord, doing: str) -> None:
        """Write `record`; raise StartFailedError saying why when the store cannot
        (`doing`: what then cannot be done, e.g. "start the job")."""
        try:
            await self.store.put(record)
        except sqlite3.Error as exc:
            log.error("job %s: cannot write its record: %s", record.job_id, exc)
            raise StartFailedError(
                f"cannot {doing}: its record cannot be written ({exc}); "
                "free space in the server's data dir and try again"
            ) from exc

    async def save_quietly(self, job: Job) -> None:
        """Write the job's record as it is now; a failure is logged, and the record
        marked stale (written again when the tracker exits). Nothing once its supervisor
        has exited: the terminal record is the next, and the last, write."""
        if job.phase in (Phase.FINISHING, Phase.TERMINATED):
            await trio.lowlevel.checkpoint()
            return
        try:
            await self.store.put(job.current_record())
        except sqlite3.Error as exc:
            log.error("job %s: cannot write its record: %s", job.job_id, exc)
            job.record_stale = True

    def write_stale(self, jobs: Iterable[Job]) -> None:
        """At exit: write again each record that could not be written (blocking)."""
        for job in jobs:
            if job.record_stale:
                try:
                    self.store.put_blocking(attrs.evolve(job.current_record(), outcome_reason=None))
                except sqlite3.Error as exc:
                    log.error("job %s: its record is still not written: %s", job.job_id, exc)

    # ---- a running job -------------------------------------------------------------

    def start(self, job: Job) -> None:
        """Supervise a job that runs (just launched, or taken over); carry out a stop
        that was recorded before an earlier jwsd died, before it was signalled."""
        self.nursery.start_soon(self.supervise, job)
        if job.phase is Phase.STOPPING:
            cause = job.lifecycle.stop_cause
            assert cause is not None
            self.nursery.start_soon(self.stop, job, self.stop_grace, cause)

    async def supervise(self, job: Job) -> None:
        """Own a running job until it has ended: wait for its end, then finish it
        (shielded and bounded), whatever cancels us; unless the tracker is leaving its
        jobs running: then only let go."""
        with logs.fields(job=job.job_id, user=job.owner):
            await self._supervise(job)

    async def _supervise(self, job: Job) -> None:
        running = job.running
        assert running is not None
        try:
            # What taking over needs (the supervisor's pid and start time), off the
            # start's critical path: a start that returned is on disk already.
            await self.save_quietly(job)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._enforce_timeout, job)
                await running.wait()
                nursery.cancel_scope.cancel()
            faults.reach("job.exited")
        finally:
            if self.leaving:
                self._let_go(job)
            else:
                await self._wind_up(job)

    async def stop(
        self,
        job: Job,
        grace: float,
        cause: StopCause = StopCause.USER,
        reason: str | None = None,
    ) -> None:
        """SIGTERM the job's process group, give it `grace` seconds, then SIGKILL
        everything in its cgroup; return once it has ended. `cause`: who asked (the
        first stop's cause is the job's); `reason`: the first stop's outcome_reason
        (None: the outcome says it all)."""
        await job.until_started()
        if job.phase.ended:
            return
        if job.handle(Event.STOP, cause=cause):
            if reason is not None:
                job.record = attrs.evolve(job.record, outcome_reason=reason)
            # On disk before the signal: a job that dies of it while no jwsd runs is
            # reconciled as stopped, not as killed by a signal.
            await self.save_quietly(job)
            faults.reach("stop.recorded")
        if job.phase.ended:
            return
        assert job.running is not None  # it has started, and has not ended
        job.running.signal(signal.SIGTERM)
        with trio.move_on_after(grace):
            await job.until_ended()
        if not job.phase.ended:
            log.info("job %s: still running %.1f s after SIGTERM; killing it", job.job_id, grace)
            job.running.kill()
        await job.until_ended()

    async def _enforce_timeout(self, job: Job) -> None:
        """Stop the job once it has run for its time limit, counted from its start
        (wall clock, so that a job taken over after a restart keeps its deadline; one
        whose deadline passed while no jwsd ran is stopped at once)."""
        timeout, started_at = job.record.limits.timeout, job.record.started_at
        if timeout is None or started_at is None:
            return
        await trio.sleep(max(0.0, started_at + timeout - time.time()))
        # The stop belongs to the tracker (as a `jws stop`'s does), not to this timer,
        # which the job's end cancels.
        self.nursery.start_soon(self.stop, job, self.stop_grace, StopCause.TIME_LIMIT)

    def _let_go(self, job: Job) -> None:
        """Stop watching a running job, leaving it (and its record) for the next jwsd."""
        self._unwatch(job)
        if job.running is not None:
            job.running.let_go()
        job.log.detach()

    def _unwatch(self, job: Job) -> None:
        if job.watch is not None:
            self.watcher.unwatch(job.watch)
            job.watch = None

    # ---- the end -------------------------------------------------------------------

    async def _wind_up(self, job: Job) -> None:
        """Finish a job whose supervisor has exited (or who is being stopped): shielded
        and bounded by FINISH_TIMEOUT; then tell everyone."""
        running = job.running
        assert running is not None
        job.handle(Event.EXITED)
        with trio.CancelScope(shield=True), trio.move_on_after(FINISH_TIMEOUT) as scope:
            await self._finish(job)
        if scope.cancelled_caught:
            log.error("job %s: clean-up did not finish within %.0f s", job.job_id, FINISH_TIMEOUT)
            # What the clean-up read before it gave up (the last readings, once taken).
            with contextlib.suppress(Exception):
                job.record = job.record.with_usage(running.usage())
            live = running.workdir_bytes()
            if live is not None:
                job.update(workdir_bytes=live)
        with trio.CancelScope(shield=True):
            await self._record_end(job, running.exit_status())  # unless `_finish` did
            await self.ended(job)

    async def _finish(self, job: Job) -> None:
        running = job.running
        assert running is not None
        ending = await running.finish()
        if ending.usage is not None:
            job.record = job.record.with_usage(ending.usage)
        self._unwatch(job)
        job.log.refresh()
        if ending.copier_failure is not None:
            job.log.lost(ending.copier_failure)
        if ending.workdir_bytes is not None:
            job.update(workdir_bytes=ending.workdir_bytes)
        await trio.to_thread.run_sync(shutil.rmtree, job.workdir, True)
        faults.reach("finish.cleaned")
        await self._record_end(job, (ending.exit_code, ending.signal))

    async def _record_end(self, job: Job, status: tuple[int, int | None]) -> None:
        """Record how the job ended (`status`: its exit code and signal), then tell
        everyone: its record is on disk before its state, status and followers say it
        has ended."""
        if job.phase is not Phase.FINISHING:
            await trio.lowlevel.checkpoint()
            return
        exit_code, signum = status
        ended = attrs.evolve(
            job.current_record(),
            state=Phase.TERMINATED.state,
            outcome=outcome(
                exit_code=exit_code,
                signum=signum,
                oom_kills=job.record.oom_kills,
                stop=job.lifecycle.stop_cause,
            ),
            exit_code=exit_code,
            signal=signum,
            ended_at=time.time(),
        )
        try:
            await self.store.put(ended)
        except sqlite3.Error as exc:
            # The job has ended all the same. The write is tried again when the tracker
            # exits; if it fails then too, the next start finds the job gone and
            # reports it lost.
            log.error("job %s: cannot write how it ended: %s", job.job_id, exc)
            job.record_stale = True
            ended = attrs.evolve(
                ended,
                outcome_reason=f"how it ended could not be written to disk ({exc}); "
                "if jwsd restarts before space is freed, this job will be reported lost",
            )
        faults.reach("finish.recorded")
        job.record = ended
        job.ended_clock = trio.current_time()
        job.log.close()
        job.handle(Event.RECORDED)


__all__ = ["FINISH_TIMEOUT", "Supervisor"]

"""`Job`: one job in jwsd — its record (the data), its lifecycle (the phase), its
output log, and while it runs the sandbox's handle on its processes.

The data half is a `JobRecord`, replaced whole (`update`) in one step between
awaits, so a reader never sees it half-updated. The phase lives in its `Lifecycle`
and moves only through `handle`, which also keeps the record's state in step and
wakes every task waiting for the job (`until_started`, `until_ended`). The
runtime handles (the sandbox's `RunningJob`, the inotify watch) are the only
things here that are not data.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from jobworker.jobs.lifecycle import Event, Lifecycle, Phase, StopCause
from jobworker.jobs.output_log import FileLog
from jobworker.jobs.record import JobRecord
from jobworker.model import JobSpec, JobStatus
from jobworker.sandbox import WORK_NAME, RunningJob

T = TypeVar("T")


@attrs.define(eq=False)
class Job:
    """record: the job's data as the store keeps it (the output size and the
        processes are brought up to date by `current_record`).
    directory: its job dir (`DATA/jobs/ID`), holding its output and status files.
    log: its output file, for any number of followers.
    lifecycle: its phase, and the cause of the stop that ended it.
    running: the sandbox's handle on its processes, from launch (or take-over) on.
    watch: its output file's inotify watch, while the file may grow.
    ended_clock: when it ended, on trio's clock (the retention's).
    record_stale: its terminal record could not be written (a full disk): it is
        written again when the tracker exits.
    on_phase: called (synchronously) after each change of phase, with the job: the
        tracker's event log (`jobworker.jobs.events`); None: nobody listens.
    """

    record: JobRecord
    directory: Path
    log: FileLog
    lifecycle: Lifecycle = attrs.Factory(Lifecycle)
    running: RunningJob | None = None
    watch: int | None = None
    ended_clock: float | None = None
    record_stale: bool = False
    on_phase: Callable[[Job], None] | None = None
    _changed: trio.Event = attrs.Factory(trio.Event)
    # (encode, encode(listed snapshot)) once Terminated: `listed_entry`.
    _entry: tuple[Callable[[JobStatus], Any], Any] | None = None

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def owner(self) -> str:
        return self.record.owner

    @property
    def created_at(self) -> float:
        return self.record.created_at

    @property
    def name(self) -> str | None:
        return self.record.name

    @property
    def phase(self) -> Phase:
        return self.lifecycle.phase

    @property
    def workdir(self) -> Path:
        return self.directory / WORK_NAME

    def update(self, **changes: Any) -> None:
        """Replace the job's record with one with these fields changed."""
        self.record = attrs.evolve(self.record, **changes)
        self._entry = None

    def handle(self, event: Event, *, cause: StopCause | None = None) -> bool:
        """Move the job on `event` (see `lifecycle.TRANSITIONS`); keep its record's
        state and stop in step; wake its waiters. Returns whether the phase changed.
        Raises BadStateError for a move the table does not allow."""
        changed = self.lifecycle.handle(event, cause=cause)
        if changed:
            self.record = attrs.evolve(self.record, state=self.phase.state).with_stop(
                self.lifecycle.stop_cause
            )
            self._changed.set()
            self._changed = trio.Event()
            self._entry = None
            if self.on_phase is not None:
                self.on_phase(self)
        return changed

    async def until(self, reached: Callable[[Phase], bool]) -> None:
        """Wait until `reached(phase)` is true (at once if it is)."""
        while not reached(self.phase):
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    async def until_started(self) -> None:
        """Wait until it runs, or has ended (its start failed, or it was restored ended)."""
        await self.until(lambda phase: phase is not Phase.STARTING)

    async def until_ended(self) -> None:
        """Wait until it has ended for good: its end is on disk and its output complete."""
        await self.until(lambda phase: phase.ended)

    def current_record(self) -> JobRecord:
        """The record as it should be written now: the output size and why it was cut
        from the log, the processes and cgroups from the sandbox while it runs."""
        record = attrs.evolve(
            self.record, output_size=self.log.size, output_truncated=self.log.truncated
        )
        if self.running is not None:
            record = record.with_processes(self.running.processes, self.running.cgroup_dirs)
        return record

    @functools.cached_property
    def spec(self) -> JobSpec:
        """What the job runs (its record's `spec`), built once: the argv never changes,
        and checking 1 MiB of it on every status or listing would cost the event loop
        a millisecond each time."""
        return self.record.spec

    @functools.cached_property
    def listed_spec(self) -> tuple[JobSpec, bool]:
        """The spec as a listing shows it, and whether its argv was cut
        (`JobSpec.listed`), made once: a page costs O(jobs), whatever their argvs."""
        return self.spec.listed()

    def recorded_snapshot(self) -> JobStatus:
        """The job as its record has it, its argv cut as a listing's: no live reading
        (no cgroup file is read), so cheap enough for every event."""
        spec, argv_cut = self.listed_spec
        return self.record.status(spec=spec, argv_cut=argv_cut, output_size=self.log.size)

    def listed_entry(self, encode: Callable[[JobStatus], T]) -> T:
        """`encode(self.snapshot(listed=True))`: a listing's form of the job (the
        server's encoded message). Kept once the job is Terminated, when its snapshot
        no longer changes, so that listing kept jobs costs no building nor encoding
        (a page is then concatenation); made afresh each time before."""
        if self._entry is not None and self._entry[0] is encode:
            kept: T = self._entry[1]
            return kept
        entry = encode(self.snapshot(listed=True))
        if self.phase is Phase.TERMINATED:
            self._entry = (encode, entry)
        return entry

    def snapshot(self, *, listed: bool = False) -> JobStatus:
        """The job as the API reports it; usage, output size and work dir read live while
        it runs (best effort: the final readings are not). listed: with its argv cut
        as a listing shows it."""
        spec, argv_cut = self.listed_spec if listed else (self.spec, False)
        running = self.running if not self.phase.ended else None
        usage = workdir_bytes = None
        if running is not None:
            self.log.refresh()  # an fstat: exact, whatever inotify has said so far
            with contextlib.suppress(Exception):
                usage = running.usage()
            workdir_bytes = running.workdir_bytes()
        return self.record.status(
            spec=spec,
            argv_cut=argv_cut,
            usage=usage,
            output_size=self.log.size,
            output_disk_bytes=self.log.disk_size,
            output_truncated=self.log.truncated,
            workdir_bytes=workdir_bytes,
        )


__all__ = ["Job"]

"""`Selection`: which jobs a listing shows, by owner, name, labels, state and age.

The tracker applies it while it walks its index (`jobworker.jobs.job_index`): the
owner and the age narrow where the walk starts and which list it walks, the rest
is tested job by job on the job's record, in memory.
"""

from __future__ import annotations

import enum

import attrs

from jobworker.jobs.record import JobRecord
from jobworker.model import JobState
from jobworker.naming import Labels, selects


class StateFilter(enum.StrEnum):
    """The states a listing selects; the words are the API's (ListJobsRequest.state)."""

    ACTIVE = "active"  # not ended: Pending or Active
    ENDED = "ended"  # Terminated


@attrs.frozen
class Selection:
    """The jobs a listing shows; every field given must hold, None (or no labels): any.

    owner: only this user's jobs (the tracker allows it to an admin, or for oneself).
    name: only jobs of this name.
    labels: only jobs with every one of these labels.
    state: only jobs in these states.
    created_after: only jobs created at or after this Unix time.
    """

    owner: str | None = None
    name: str | None = None
    labels: Labels = ()
    state: StateFilter | None = None
    created_after: float | None = None

    def matches(self, record: JobRecord) -> bool:
        """Whether the job of `record` is selected (its owner and age aside, which the
        walk over the index applies)."""
        return self.selected(record.name, record.state, record.labels)

    def selected(self, name: str | None, state: JobState, labels: Labels) -> bool:
        """Whether a job of this name, state and labels is selected (owner and age aside)."""
        if self.name is not None and name != self.name:
            return False
        if self.state is not None and (state is JobState.TERMINATED) != (
            self.state is StateFilter.ENDED
        ):
            return False
        return selects(self.labels, labels)


#: Every job.
EVERY_JOB = Selection()

__all__ = ["EVERY_JOB", "Selection", "StateFilter"]

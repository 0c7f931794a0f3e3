"""The job state machine, as a table. Everything that changes a job's state goes
through `transition`; an illegal move raises, so a bug cannot quietly resurrect a
terminated job or report an exit before a start.

    Pending ──started──▶ Active ──ended──▶ Terminated
       │                                      ▲
       └──────────failed to start─────────────┘ (the tracker then drops the entry)
"""

from __future__ import annotations

from jobworker.errors import BadStateError
from jobworker.model import JobState

_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.ACTIVE, JobState.TERMINATED}),
    JobState.ACTIVE: frozenset({JobState.TERMINATED}),
    JobState.TERMINATED: frozenset(),
}


def transition(current: JobState, new: JobState) -> JobState:
    """Return `new` if a job may move from `current` to it; raise BadStateError otherwise."""
    if new not in _ALLOWED[current]:
        raise BadStateError(f"a job cannot go from {current.value} to {new.value}")
    return new

"""Which finished jobs the daemon forgets: by age and by count per owner.

A pure policy over (job id, owner, end time) triples, so that whatever keeps
the records (the tracker's memory today, a record store later) asks the same
question and gets the same answer. Forgetting a job deletes its record and its
output; running jobs are never considered.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable

import attrs

from jobworker.errors import InvalidRequestError


@attrs.frozen
class Finished:
    """A finished job as the policy sees it. ended: when it ended, on the clock the
    caller also passes as `now` (any monotonic clock)."""

    job_id: str
    owner: str
    ended: float


@attrs.frozen
class RetentionPolicy:
    """max_age: seconds a finished job is kept after it ended (`None`: forever).
    max_per_owner: the most finished jobs kept per owner; the oldest go first
    (`None`: no limit). Raises InvalidRequestError for values that keep nothing."""

    max_age: float | None = 24 * 3600.0
    max_per_owner: int | None = 100

    def __attrs_post_init__(self) -> None:
        if self.max_age is not None and not (math.isfinite(self.max_age) and self.max_age > 0):
            raise InvalidRequestError(
                f"retention must be a positive duration, not {self.max_age} seconds"
            )
        if self.max_per_owner is not None and self.max_per_owner < 1:
            raise InvalidRequestError(
                f"the finished jobs kept per user must be at least 1, not {self.max_per_owner}"
            )

    def to_forget(self, finished: Iterable[Finished], now: float) -> list[str]:
        """The ids of the jobs in `finished` to forget at time `now`: those older than
        max_age, and each owner's oldest beyond max_per_owner. `finished` in any
        order; the answer oldest first."""
        ordered = sorted(finished, key=lambda job: job.ended)
        forget: list[str] = []
        kept: list[Finished] = []
        for job in ordered:
            if self.max_age is not None and now - job.ended >= self.max_age:
                forget.append(job.job_id)
            else:
                kept.append(job)
        if self.max_per_owner is not None:
            remaining = collections.Counter(job.owner for job in kept)
            for job in kept:
                if remaining[job.owner] > self.max_per_owner:
                    remaining[job.owner] -= 1
                    forget.append(job.job_id)
        return forget

    def next_expiry(self, finished: Iterable[Finished]) -> float:
        """When the oldest of `finished` reaches max_age (`math.inf`: never)."""
        if self.max_age is None:
            return math.inf
        return min((job.ended for job in finished), default=math.inf) + self.max_age


__all__ = ["Finished", "RetentionPolicy"]

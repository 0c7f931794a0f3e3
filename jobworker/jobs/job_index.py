"""`JobIndex`: the tracker's jobs by id, kept in listing order as well, overall and
per owner, so that a page of a listing costs O(log n + page), not O(all jobs).

Listing order is the key (created_at, job_id): a job's creation time never
changes, and the id breaks ties, so the order is total and stable. A page starts
strictly after a cursor (the key of the last job of the previous page): jobs that
start meanwhile sort after it (or, if the clock stepped back, before it, where a
later page does not look), removed ones are gone, and no job that stays is ever
repeated or skipped.

The index is a mapping like the dict it replaces; inserting and removing move
the tail of a sorted list (a memmove: microseconds for tens of thousands of jobs).
Not thread-safe: the tracker uses it from the event loop only.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, MutableMapping
from typing import Protocol, TypeVar

#: A job's place in listing order: (created_at, job_id).
ListKey = tuple[float, str]


class Listable(Protocol):
    """What the index needs of a job (never changed once the job is indexed)."""

    @property
    def job_id(self) -> str: ...

    @property
    def owner(self) -> str: ...

    @property
    def created_at(self) -> float: ...


_J = TypeVar("_J", bound=Listable)


def list_key(job: Listable) -> ListKey:
    """The job's place in listing order."""
    return (job.created_at, job.job_id)


class JobIndex(MutableMapping[str, _J]):
    """Jobs by id, each also in listing order overall and in its owner's list."""

    def __init__(self) -> None:
        self._jobs: dict[str, _J] = {}
        self._order: list[ListKey] = []
        self._by_owner: dict[str, list[ListKey]] = {}

    def __getitem__(self, job_id: str) -> _J:
        return self._jobs[job_id]

    def __setitem__(self, job_id: str, job: _J) -> None:
        if job_id != job.job_id:
            raise ValueError(f"job {job.job_id} indexed as {job_id}")
        if job_id in self._jobs:
            del self[job_id]
        self._jobs[job_id] = job
        key = list_key(job)
        bisect.insort(self._order, key)
        bisect.insort(self._by_owner.setdefault(job.owner, []), key)

    def __delitem__(self, job_id: str) -> None:
        job = self._jobs.pop(job_id)
        key = list_key(job)
        _remove(self._order, key)
        owned = self._by_owner[job.owner]
        _remove(owned, key)
        if not owned:
            del self._by_owner[job.owner]

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def page(self, owner: str | None, after: ListKey | None, limit: int) -> list[_J]:
        """At most `limit` jobs of `owner` (None: every owner's) in listing order,
        starting strictly after the key `after` (None: from the first)."""
        keys = self._order if owner is None else self._by_owner.get(owner, [])
        start = 0 if after is None else bisect.bisect_right(keys, after)
        return [self._jobs[job_id] for _, job_id in keys[start : start + max(0, limit)]]


def _remove(keys: list[ListKey], key: ListKey) -> None:
    at = bisect.bisect_left(keys, key)
    if at == len(keys) or keys[at] != key:
        raise KeyError(key)
    del keys[at]


__all__ = ["JobIndex", "ListKey", "Listable", "list_key"]

"""`JobIndex`: the tracker's jobs by id, kept in listing order as well, overall and
per owner, so that a page of a listing costs O(log n + page), not O(all jobs).

Listing order is the key (created_at, job_id): a job's creation time never
changes, and the id breaks ties, so the order is total and stable. A page starts
strictly after a cursor (the key of the last job of the previous page): jobs that
start meanwhile sort after it (or, if the clock stepped back, before it, where a
later page does not look), removed ones are gone, and no job that stays is ever
repeated or skipped.

It also finds a job by its owner and name (`named`): a name is unique among an
owner's indexed jobs, which the tracker checks (`named`) before it indexes a new one.

The index is a mapping like the dict it replaces; inserting and removing move
the tail of a sorted list (a memmove: microseconds for tens of thousands of jobs).
Not thread-safe: the tracker uses it from the event loop only.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, Protocol, TypeVar

import attrs

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

    @property
    def name(self) -> str | None: ...


_J = TypeVar("_J", bound=Listable)
_T = TypeVar("_T")


@attrs.frozen
class Scanned(Generic[_T]):
    """What a scan found. found: the jobs that matched, in listing order; stopped:
    the key of the last job it looked at, or None when it looked at the last one
    without filling its limit; looked: how many jobs it looked at."""

    found: list[_T]
    stopped: ListKey | None
    looked: int


def list_key(job: Listable) -> ListKey:
    """The job's place in listing order."""
    return (job.created_at, job.job_id)


class JobIndex(MutableMapping[str, _J]):
    """Jobs by id, each also in listing order overall and in its owner's list."""

    def __init__(self) -> None:
        self._jobs: dict[str, _J] = {}
        self._order: list[ListKey] = []
        self._by_owner: dict[str, list[ListKey]] = {}
        self._by_name: dict[tuple[str, str], str] = {}

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
        if job.name is not None:
            # The first job of a name keeps it (the tracker never indexes a second).
            self._by_name.setdefault((job.owner, job.name), job_id)

    def __delitem__(self, job_id: str) -> None:
        job = self._jobs.pop(job_id)
        key = list_key(job)
        _remove(self._order, key)
        owned = self._by_owner[job.owner]
        _remove(owned, key)
        if not owned:
            del self._by_owner[job.owner]
        if job.name is not None and self._by_name.get((job.owner, job.name)) == job_id:
            del self._by_name[job.owner, job.name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def named(self, owner: str, name: str) -> _J | None:
        """`owner`'s job named `name`, if they have one."""
        job_id = self._by_name.get((owner, name))
        return None if job_id is None else self._jobs[job_id]

    def page(self, owner: str | None, after: ListKey | None, limit: int) -> list[_J]:
        """At most `limit` jobs of `owner` (None: every owner's) in listing order,
        starting strictly after the key `after` (None: from the first)."""
        keys = self._order if owner is None else self._by_owner.get(owner, [])
        start = 0 if after is None else bisect.bisect_right(keys, after)
        return [self._jobs[job_id] for _, job_id in keys[start : start + max(0, limit)]]

    def scan(
        self,
        owner: str | None,
        after: ListKey | None,
        limit: int,
        match: Callable[[_J], bool],
        budget: int,
    ) -> Scanned[_J]:
        """At most `limit` jobs of `owner` (None: every owner's) that `match`, in
        listing order strictly after the key `after` (None: from the first), looking
        at no more than `budget` (at least 1) jobs: O(log n + budget)."""
        if budget < 1:
            raise ValueError(f"a scan looks at one job at least, not {budget}")
        keys = self._order if owner is None else self._by_owner.get(owner, [])
        start = 0 if after is None else bisect.bisect_right(keys, after)
        stop = min(len(keys), start + budget)
        found: list[_J] = []
        for at in range(start, stop):
            job = self._jobs[keys[at][1]]
            if match(job):
                found.append(job)
                if len(found) >= limit:
                    return Scanned(found, keys[at], at + 1 - start)
        return Scanned(found, keys[stop - 1] if stop < len(keys) else None, stop - start)


def _remove(keys: list[ListKey], key: ListKey) -> None:
    at = bisect.bisect_left(keys, key)
    if at == len(keys) or keys[at] != key:
        raise KeyError(key)
    del keys[at]


__all__ = ["JobIndex", "ListKey", "Listable", "Scanned", "list_key"]

"""`EventLog`: what happened to jobs, in order, for `WatchJobs` (issue 22).

Every change of a job the API shows is one `JobEvent`: created (accepted,
Pending), active (its command runs), stop-requested, terminated (with its
outcome), removed (forgotten, or a start that failed). The tracker appends them
as they happen (`Job.handle` and its own registry changes); each gets the next
sequence number. Watchers read from a cursor and park on a fresh `trio.Event`
per append (the fan-out pattern of docs: one log, a wake-up per generation, each
watcher its own reader), so jwsd never polls.

The log keeps the last `retention` events in memory. A cursor names an event by
(this log's epoch, its sequence number): one older than what is kept, or of an
earlier jwsd (another epoch: the log starts afresh with each jwsd, see
docs/architecture.md), is *stale*, and its watcher gets the current state of
every job first, then the live events, and is told so. A cursor that is not one
of ours, or one past the last event, is InvalidRequestError.
"""

from __future__ import annotations

import collections
import enum
import re
import secrets

import attrs
import trio

from jobworker.echo import quoted
from jobworker.errors import InvalidRequestError
from jobworker.model import JobStatus

#: Events kept for watchers that resume: at a few hundred bytes each, a few MiB.
DEFAULT_RETENTION = 10_000

_CURSOR = re.compile(r"([0-9a-f]{16})-([0-9]{1,19})")


class EventKind(enum.StrEnum):
    """What happened; the words are the API's (JobEvent.kind)."""

    CREATED = "created"
    ACTIVE = "active"
    STOP_REQUESTED = "stop-requested"
    TERMINATED = "terminated"
    REMOVED = "removed"
    #: Not changes: the first event of every watch, its cursor where it starts
    #: (the client knows from then on that it misses nothing); or, in its place,
    #: told to a watcher whose cursor was stale, before it gets the
    #: state of every job as it is now (CURRENT, one a job).
    WATCHING = "watching"
    STALE = "stale"
    CURRENT = "current"


@attrs.frozen
class JobEvent:
    """One change of one job. seq: its place in the log (1, 2, ...); at: when
    (Unix time); status: the job's snapshot as it was then (its argv cut as a
    listing's); None for WATCHING and STALE."""

    seq: int
    kind: EventKind
    at: float
    status: JobStatus | None


@attrs.frozen
class Cursor:
    """Where a watcher is: after event `seq` of the log of `epoch`."""

    epoch: str
    seq: int

    def encode(self) -> str:
        return f"{self.epoch}-{self.seq}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor `text` spells; InvalidRequestError unless it is exactly one
        `encode` makes."""
        match = _CURSOR.fullmatch(text) if len(text) <= 40 else None
        if match is None or str(int(match[2])) != match[2]:
            raise InvalidRequestError(
                f"cursor {quoted(text)} is not one of this server's; pass the cursor of an "
                "event as it came, or none for the live events only"
            )
        return cls(match[1], int(match[2]))


@attrs.define(eq=False)
class EventLog:
    """The events of this jwsd, the last `retention` of them kept (see the module)."""

    retention: int = DEFAULT_RETENTION
    epoch: str = attrs.field(factory=lambda: secrets.token_hex(8))
    _events: collections.deque[JobEvent] = attrs.field(init=False)
    _last: int = attrs.field(init=False, default=0)
    _appended: trio.Event = attrs.field(init=False, factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._events = collections.deque(maxlen=self.retention)

    @property
    def cursor(self) -> Cursor:
        """The cursor after the last event: live events only from here."""
        return Cursor(self.epoch, self._last)

    def append(self, kind: EventKind, status: JobStatus, at: float) -> JobEvent:
        """Record one event and wake every watcher. Synchronous and O(1)."""
        self._last += 1
        event = JobEvent(self._last, kind, at, status)
        self._events.append(event)
        self._appended.set()
        self._appended = trio.Event()
        return event

    def is_stale(self, cursor: Cursor) -> bool:
        """Whether events after `cursor` are no longer all kept (or were another
        jwsd's); raises InvalidRequestError for a cursor past the last event."""
        if cursor.epoch != self.epoch:
            return True
        if cursor.seq > self._last:
            raise InvalidRequestError(
                f"cursor {quoted(cursor.encode())} is past this server's last event; "
                "pass the cursor of an event as it came"
            )
        first = self._events[0].seq if self._events else self._last + 1
        return cursor.seq < first - 1

    def after(self, seq: int, limit: int) -> list[JobEvent]:
        """At most `limit` kept events after `seq`, oldest first."""
        if not self._events or seq >= self._last:
            return []
        first = self._events[0].seq
        start = max(0, seq + 1 - first)
        return [self._events[i] for i in range(start, min(len(self._events), start + limit))]

    async def wait_after(self, seq: int) -> None:
        """Return once there is an event after `seq` (at once if there is one)."""
        while self._last <= seq:
            await self._appended.wait()


__all__ = ["DEFAULT_RETENTION", "Cursor", "EventKind", "EventLog", "JobEvent"]

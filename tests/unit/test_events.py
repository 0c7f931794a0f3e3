"""The event log behind WatchJobs: sequence numbers in order, a wake-up per
append (no polling), a bounded retention whose older cursors are stale, and
cursors checked strictly."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from jobworker.errors import InvalidRequestError
from jobworker.jobs.events import Cursor, EventKind, EventLog
from jobworker.model import JobSpec, JobState, JobStatus

pytestmark = pytest.mark.hierarchy_independent

STATUS = JobStatus(
    job_id="5f0c1a2b-0000-4000-8000-000000000000",
    owner="alex",
    spec=JobSpec(argv=("true",)),
    state=JobState.PENDING,
    created_at=1.0,
)


def test_events_are_numbered_in_order_and_read_after_a_cursor() -> None:
    log = EventLog(retention=10)
    for kind in (EventKind.CREATED, EventKind.ACTIVE, EventKind.TERMINATED):
        log.append(kind, STATUS, 1.0)
    assert [e.seq for e in log.after(0, 100)] == [1, 2, 3]
    assert [e.kind for e in log.after(1, 100)] == [EventKind.ACTIVE, EventKind.TERMINATED]
    assert [e.seq for e in log.after(0, 2)] == [1, 2]
    assert log.after(3, 100) == []
    assert log.cursor == Cursor(log.epoch, 3)


def test_a_cursor_older_than_the_retention_or_of_another_epoch_is_stale() -> None:
    log = EventLog(retention=3)
    for _ in range(5):
        log.append(EventKind.CREATED, STATUS, 1.0)
    assert [e.seq for e in log.after(0, 100)] == [3, 4, 5]
    assert log.is_stale(Cursor(log.epoch, 1))
    assert not log.is_stale(Cursor(log.epoch, 2))  # the events after it are all kept
    assert not log.is_stale(Cursor(log.epoch, 5))
    assert log.is_stale(Cursor("0" * 16, 5))
    with pytest.raises(InvalidRequestError, match="past this server's last event"):
        log.is_stale(Cursor(log.epoch, 6))


@pytest.mark.parametrize(
    "text", ["", "x", "0123456789abcdef", "0123456789abcdef-", "0123456789ABCDEF-1",
             "0123456789abcdef-01", "0123456789abcdef-1-2", "0123456789abcdef-" + "9" * 20]
)  # fmt: skip
def test_a_cursor_that_is_not_one_of_ours_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="not one of this server's"):
        Cursor.decode(text)


def test_a_cursor_reads_back_as_it_was_made() -> None:
    cursor = Cursor("0123456789abcdef", 42)
    assert Cursor.decode(cursor.encode()) == cursor


async def test_a_watcher_parks_until_the_next_append_and_is_woken_by_it() -> None:
    log = EventLog()
    woken: list[int] = []

    async def watcher() -> None:
        await log.wait_after(0)
        woken.append(log.cursor.seq)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(watcher)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        log.append(EventKind.CREATED, STATUS, 1.0)
    assert woken == [1, 1, 1]
    with trio.fail_after(1):
        await log.wait_after(0)  # at once: there is one after 0

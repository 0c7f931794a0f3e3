"""WatchJobs through jwsd's real gRPC service (in-process, real mutual TLS): each
change of a job as it happens, only the caller's (an admin's: all), resumed after
any event's cursor, a stale cursor answered with the current state first, filters
applied by jwsd, bad cursors refused (issue 22)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import purerpc
import pytest
import trio

from jobworker.client import JobFilter, JobWorkerClient, WatchedEvent
from jobworker.v1 import jobworker_pb2 as pb
from tests.integration.test_service import expect_code
from tests.support.daemon import Daemon
from tests.support.timing import scaled

pytestmark = [pytest.mark.root, pytest.mark.hierarchy_independent]

Code = purerpc.StatusCode


async def take(events: AsyncGenerator[WatchedEvent, None], count: int) -> list[WatchedEvent]:
    """The next `count` events, within a bound."""
    taken = []
    with trio.fail_after(scaled(30)):
        for _ in range(count):
            taken.append(await anext(events))
    return taken


async def nothing_more(events: AsyncGenerator[WatchedEvent, None]) -> None:
    with trio.move_on_after(0.5) as quiet:
        event = await anext(events)
        raise AssertionError(f"an event that should not be: {event}")
    assert quiet.cancelled_caught


def kinds(events: list[WatchedEvent]) -> list[tuple[str, str | None]]:
    return [(event.kind, event.job.name if event.job else None) for event in events]


@contextlib.asynccontextmanager
async def watching(
    client: JobWorkerClient, **kwargs: object
) -> AsyncGenerator[AsyncGenerator[WatchedEvent, None], None]:
    """A watch that has begun: its first event ("watching", or "stale") taken."""
    events = client.watch(**kwargs)  # type: ignore[arg-type]
    async with contextlib.aclosing(events):
        (first,) = await take(events, 1)
        assert first.kind in ("watching", "stale") and first.job is None
        yield events


async def test_each_change_comes_once_in_order_to_its_owner_and_admins_only(
    daemon: Daemon,
) -> None:
    async with (
        daemon.connect("alex") as alex,
        daemon.connect("betty") as betty,
        daemon.connect("admin") as admin,
        watching(alex) as mine,
        watching(betty) as hers,
        watching(admin) as every,
    ):
        job = await alex.start(args=["sh", "-c", "exit 3"], name="three")
        got = await take(mine, 3)
        assert kinds(got) == [("created", "three"), ("active", "three"), ("terminated", "three")]
        assert got[2].job is not None and got[2].job.exit_code == 3
        assert got[2].job.job_id == job.job_id
        await alex.remove("three")
        (removed,) = await take(mine, 1)
        assert removed.kind == "removed" and removed.job and removed.job.job_id == job.job_id
        assert kinds(await take(every, 4)) == kinds([*got, removed])
        await nothing_more(hers)  # betty sees none of alex's jobs
        cursors = [event.cursor for event in [*got, removed]]
        assert len(set(cursors)) == 4

        # Resumed after the first event: the three after it, exactly, then live.
        async with watching(alex, since=got[0].cursor) as resumed:
            assert [e.cursor for e in await take(resumed, 3)] == cursors[1:]
            await nothing_more(resumed)


async def test_a_stale_cursor_gets_the_current_state_first_and_says_so(daemon: Daemon) -> None:
    async with daemon.connect("alex") as alex:
        await alex.start(args=["sleep", "30"], name="long", labels={"team": "a"})
        other_epoch = "0123456789abcdef-1"  # an earlier jwsd's cursor
        events = alex.watch(since=other_epoch)
        async with contextlib.aclosing(events):
            stale, current = await take(events, 2)
            assert stale.kind == "stale" and stale.job is None
            assert current.kind == "current" and current.job and current.job.name == "long"
            await alex.stop("long", grace=0)
            assert kinds(await take(events, 2)) == [
                ("stop-requested", "long"),
                ("terminated", "long"),
            ]


async def test_filters_are_applied_by_jwsd(daemon: Daemon) -> None:
    async with (
        daemon.connect("alex") as alex,
        daemon.connect("admin") as admin,
        watching(alex, selection=JobFilter(labels={"team": "a"})) as team_a,
        watching(alex, selection=JobFilter(state="ended")) as ended,
        watching(admin, selection=JobFilter(owner="betty")) as bettys,
    ):
        await alex.start(args=["true"], name="a1", labels={"team": "a"})
        await alex.start(args=["true"], name="b1", labels={"team": "b"})
        got = await take(team_a, 3)
        assert {name for _, name in kinds(got)} == {"a1"}
        assert sorted(kinds(await take(ended, 2))) == [("terminated", "a1"), ("terminated", "b1")]
        await nothing_more(bettys)
        async with watching(alex, job_ids=["b1"], since=got[0].cursor) as only_b1:
            assert {name for _, name in kinds(await take(only_b1, 3))} == {"b1"}


async def test_bad_watch_requests_get_invalid_argument_or_not_found(daemon: Daemon) -> None:
    async with daemon.connect("alex") as alex, daemon.connect("betty") as betty:
        job = await alex.start(args=["true"], name="mine")
        stub = alex.stub

        async def first(request: pb.WatchJobsRequest) -> object:
            async with contextlib.aclosing(stub.WatchJobs(request)) as stream:
                return await anext(stream)

        for request, what in [
            (pb.WatchJobsRequest(since="not-a-cursor"), "not one of this server's"),
            (pb.WatchJobsRequest(since="0123456789abcdef-01"), "not one of this server's"),
            (pb.WatchJobsRequest(job_ids=["x"] * 101), "at most 100"),
            (pb.WatchJobsRequest(labels={"bad key": "v"}), "bad label key"),
            (pb.WatchJobsRequest(state="done"), "state must be"),
        ]:
            await expect_code(Code.INVALID_ARGUMENT, first(request), what)
        async with contextlib.aclosing(alex.watch()) as events:
            begun = await anext(events)  # "watching", at the log's last event
        epoch, seq = begun.cursor.rsplit("-", 1)
        ahead = pb.WatchJobsRequest(since=f"{epoch}-{int(seq) + 1000}")
        await expect_code(Code.INVALID_ARGUMENT, first(ahead), "past this server's last event")
        await expect_code(Code.NOT_FOUND, first(pb.WatchJobsRequest(job_ids=["nope"])))
        betty_stub = betty.stub
        with pytest.raises(purerpc.RpcFailedError) as denied:
            async with contextlib.aclosing(
                betty_stub.WatchJobs(pb.WatchJobsRequest(job_ids=[job.job_id]))
            ) as stream:
                await anext(stream)
        assert denied.value.status.status_code is Code.PERMISSION_DENIED

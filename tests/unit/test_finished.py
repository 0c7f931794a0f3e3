"""FinishedJobs: the retention policy's wiring, on trio's mock clock: finished jobs
are forgotten by count at once and by age when they expire, without polling, and
jobs restored at start-up are held to the policy too."""

from __future__ import annotations

import trio
import trio.testing

from jobworker.jobs.finished import FinishedJobs
from jobworker.jobs.retention import RetentionPolicy


def recorder() -> tuple[list[str], FinishedJobs]:
    forgotten: list[str] = []

    async def forget(job_id: str) -> None:
        await trio.lowlevel.checkpoint()
        forgotten.append(job_id)

    return forgotten, FinishedJobs(RetentionPolicy(max_age=60.0, max_per_owner=2), forget)


async def test_an_owners_oldest_beyond_the_count_is_forgotten_when_another_finishes() -> None:
    forgotten, finished = recorder()
    now = trio.current_time()
    for n in range(3):
        await finished.finished(f"alex-{n}", "alex", now)
    await finished.finished("betty-0", "betty", now)
    assert forgotten == ["alex-0"]


async def test_finished_jobs_are_forgotten_when_they_reach_the_age_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    forgotten, finished = recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(finished.run)
        await finished.finished("a", "alex", trio.current_time())
        await trio.sleep(30)
        await finished.finished("b", "alex", trio.current_time())
        await trio.sleep(29.5)
        assert forgotten == []
        await trio.sleep(1)
        assert forgotten == ["a"]
        await trio.sleep(30)
        assert forgotten == ["a", "b"]
        nursery.cancel_scope.cancel()


async def test_jobs_restored_over_the_count_are_forgotten_as_soon_as_it_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A crash loop must not keep more finished jobs per user than --max-finished."""
    forgotten, finished = recorder()
    now = trio.current_time()
    for n in range(5):
        finished.restored(f"alex-{n}", "alex", now + n)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(finished.run)
        await trio.testing.wait_all_tasks_blocked()
        assert forgotten == ["alex-0", "alex-1", "alex-2"]
        nursery.cancel_scope.cancel()


async def test_a_discarded_job_is_never_forgotten_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    forgotten, finished = recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(finished.run)
        await finished.finished("a", "alex", trio.current_time())
        finished.discard("a", "alex")  # `jws rm` took it
        await trio.sleep(120)
        assert forgotten == []
        nursery.cancel_scope.cancel()

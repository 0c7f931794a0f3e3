"""Names and labels on the real tracker: a name is unique among an owner's jobs
that have not been removed, finds only its owner's job (an admin's too), comes back
with the records after a restart; a listing filters by labels, state, name, owner
and age before it pages.

Every test here needs root (the tracker runs real jobs).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jobworker.errors import AccessDeniedError, InvalidRequestError, JobNotFoundError
from jobworker.jobs.selection import Selection, StateFilter
from jobworker.jobs.tracker import JobTracker
from jobworker.model import JobSpec, JobState
from jobworker.server import listing
from tests.support.tracking import run_to_end, running_tracker

pytestmark = pytest.mark.root


def named(name: str | None = None, script: str = "sleep 30", **labels: str) -> JobSpec:
    return JobSpec(argv=("sh", "-c", script), name=name, labels=labels)


def ids(tracker: JobTracker, owner: str, selection: Selection, *, admin: bool = False) -> list[str]:
    scanned = tracker.select(owner, selection, listing.entry, admin=admin, limit=100, budget=100)
    assert scanned.stopped is None
    return [entry.key[1] for entry in scanned.found]


async def test_a_name_is_unique_per_owner_and_free_again_once_its_job_is_removed(
    tracker: JobTracker,
) -> None:
    first = await tracker.start("alex", named("nightly", "true"))
    with pytest.raises(InvalidRequestError, match="already have a job named 'nightly'"):
        await tracker.start("alex", named("nightly"))
    assert [s.job_id for s in tracker.list("alex")] == [first.job_id]  # nothing recorded
    other = await tracker.start("betty", named("nightly"))  # another owner's own name
    await tracker.wait("alex", "nightly")
    await tracker.remove("alex", "nightly")
    again = await tracker.start("alex", named("nightly"))
    assert tracker.status("alex", "nightly").job_id == again.job_id != first.job_id
    await tracker.stop("alex", "nightly", grace=0)
    await tracker.stop("betty", other.job_id, grace=0)


async def test_a_name_finds_only_the_callers_own_job_even_for_an_admin(
    tracker: JobTracker,
) -> None:
    """betty cannot resolve alex's names: her name lookups see her jobs only, and
    an admin (who may act on alex's job by its id) cannot reach it by its name."""
    alex = await tracker.start("alex", named("build"))
    with pytest.raises(JobNotFoundError, match="no job of yours is named 'build'"):
        tracker.status("betty", "build")
    with pytest.raises(JobNotFoundError, match="no job of yours is named 'build'"):
        await tracker.stop("betty", "build")
    with pytest.raises(JobNotFoundError):
        tracker.status("root", "build", admin=True)
    assert tracker.status("root", alex.job_id, admin=True).name == "build"
    status = await tracker.stop("alex", "build", grace=0)
    assert status.job_id == alex.job_id and status.state is JobState.TERMINATED


async def test_names_and_labels_are_kept_with_the_record_across_a_restart(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with running_tracker(data) as tracker:
        _, status = await run_to_end(tracker, named("kept", "true", team="infra"))
    async with running_tracker(data) as tracker:
        restored = tracker.status("alex", "kept")
        assert restored.job_id == status.job_id
        assert restored.spec.labels == (("team", "infra"),)
        with pytest.raises(InvalidRequestError, match="already have a job named 'kept'"):
            await tracker.start("alex", named("kept"))
        assert ids(tracker, "alex", Selection(labels=(("team", "infra"),))) == [status.job_id]


async def test_a_selection_filters_by_labels_state_name_owner_and_age(
    tracker: JobTracker,
) -> None:
    _, ended = await run_to_end(tracker, named("ended", "true", team="a"))
    active = await tracker.start("alex", named("active", team="a", tier="web"))
    plain = await tracker.start("alex", named())
    betty = await tracker.start("betty", named("active", team="a"))
    team_a = Selection(labels=(("team", "a"),))
    assert ids(tracker, "alex", team_a) == [ended.job_id, active.job_id]
    assert ids(tracker, "root", team_a, admin=True) == [
        ended.job_id,
        active.job_id,
        betty.job_id,
    ]
    assert ids(tracker, "alex", Selection(labels=(("team", "a"), ("tier", "web")))) == [
        active.job_id
    ]
    assert ids(tracker, "alex", Selection(state=StateFilter.ENDED)) == [ended.job_id]
    assert ids(tracker, "alex", Selection(state=StateFilter.ACTIVE)) == [
        active.job_id,
        plain.job_id,
    ]
    assert ids(tracker, "root", Selection(name="active"), admin=True) == [
        active.job_id,
        betty.job_id,
    ]
    assert ids(tracker, "root", Selection(owner="betty"), admin=True) == [betty.job_id]
    assert ids(tracker, "alex", Selection(owner="alex")) == [
        ended.job_id,
        active.job_id,
        plain.job_id,
    ]
    with pytest.raises(AccessDeniedError):
        tracker.select("alex", Selection(owner="betty"), listing.entry)
    assert ids(tracker, "alex", Selection(created_after=plain.created_at)) == [plain.job_id]
    assert ids(tracker, "alex", Selection(created_after=time.time() + 1)) == []
    for job_id, owner in [(active.job_id, "alex"), (plain.job_id, "alex"), (betty.job_id, "betty")]:
        await tracker.stop(owner, job_id, grace=0)

"""`JobIndex`: the tracker's jobs by id, in listing order overall and per owner, so
that pages never skip or repeat a job while jobs come and go."""

from __future__ import annotations

import random

import attrs
import pytest

from jobworker.jobs.job_index import JobIndex, list_key

pytestmark = pytest.mark.hierarchy_independent


@attrs.frozen
class Job:
    job_id: str
    owner: str
    created_at: float
    name: str | None = None


def walk(index: JobIndex[Job], owner: str | None, size: int) -> list[str]:
    """Every page of `owner`'s jobs, `size` at a time, as a client follows them."""
    seen: list[str] = []
    after = None
    while page := index.page(owner, after, size):
        seen += [job.job_id for job in page]
        after = list_key(page[-1])
    return seen


def test_pages_follow_created_at_then_id_per_owner_and_overall() -> None:
    index: JobIndex[Job] = JobIndex()
    jobs = [Job(f"{n:02}", "alex" if n % 3 else "betty", float(n // 2)) for n in range(30)]
    for job in random.Random(1).sample(jobs, len(jobs)):  # inserted in any order
        index[job.job_id] = job
    ordered = sorted(jobs, key=lambda j: (j.created_at, j.job_id))
    assert walk(index, None, 7) == [j.job_id for j in ordered]
    assert walk(index, "alex", 4) == [j.job_id for j in ordered if j.owner == "alex"]
    assert walk(index, "nobody", 4) == []
    assert len(index) == 30 and index["05"] is jobs[5]


def test_jobs_that_start_and_end_between_pages_never_make_one_skip_or_repeat() -> None:
    """Every job that exists throughout is seen exactly once; a removed one is gone."""
    index: JobIndex[Job] = JobIndex()
    for n in range(10):
        index[f"old-{n}"] = Job(f"old-{n}", "alex", float(n))
    first = index.page("alex", None, 4)
    del index["old-1"]  # already listed
    del index["old-6"]  # not yet listed
    index["new"] = Job("new", "alex", 100.0)
    seen = [j.job_id for j in first]
    after = list_key(first[-1])
    while page := index.page("alex", after, 4):
        seen += [j.job_id for j in page]
        after = list_key(page[-1])
    throughout = [f"old-{n}" for n in range(10) if n not in (1, 6)]
    assert [s for s in seen if s in throughout] == throughout
    assert len(seen) == len(set(seen))
    assert "old-6" not in seen and "new" in seen


def test_removing_the_last_job_of_an_owner_forgets_the_owner() -> None:
    index: JobIndex[Job] = JobIndex()
    index["a"] = Job("a", "alex", 1.0)
    del index["a"]
    assert index.page("alex", None, 10) == [] and not index._by_owner
    with pytest.raises(KeyError):
        del index["a"]


def test_a_job_indexed_under_another_id_is_refused() -> None:
    index: JobIndex[Job] = JobIndex()
    with pytest.raises(ValueError, match="indexed as"):
        index["b"] = Job("a", "alex", 1.0)


def test_a_name_finds_its_owners_job_only_until_that_job_is_removed() -> None:
    index: JobIndex[Job] = JobIndex()
    index["a1"] = Job("a1", "alex", 1.0, name="nightly")
    index["b1"] = Job("b1", "betty", 2.0, name="nightly")
    index["a2"] = Job("a2", "alex", 3.0)
    assert index.named("alex", "nightly") == index["a1"]
    assert index.named("betty", "nightly") == index["b1"]
    assert index.named("admin", "nightly") is None
    del index["a1"]
    assert index.named("alex", "nightly") is None
    index["a3"] = Job("a3", "alex", 4.0, name="nightly")  # the name is free again
    assert index.named("alex", "nightly") == index["a3"]


def test_a_scan_looks_at_its_budget_at_most_and_says_where_it_stopped() -> None:
    index: JobIndex[Job] = JobIndex()
    for n in range(20):
        index[f"{n:02}"] = Job(f"{n:02}", "alex", float(n), name="odd" if n % 2 else None)
    odd = lambda job: job.name == "odd"  # noqa: E731
    scanned = index.scan(None, None, 3, odd, 100)
    assert [j.job_id for j in scanned.found] == ["01", "03", "05"]
    assert scanned.stopped == (5.0, "05") and scanned.looked == 6
    scanned = index.scan(None, (5.0, "05"), 100, odd, 4)  # looks at 06..09
    assert [j.job_id for j in scanned.found] == ["07", "09"]
    assert scanned.stopped == (9.0, "09") and scanned.looked == 4
    scanned = index.scan("alex", (15.0, "15"), 100, odd, 100)  # to the end
    assert [j.job_id for j in scanned.found] == ["17", "19"]
    assert scanned.stopped is None and scanned.looked == 4
    assert index.scan("betty", None, 5, odd, 5).stopped is None
    with pytest.raises(ValueError, match="one job at least"):
        index.scan(None, None, 1, odd, 0)

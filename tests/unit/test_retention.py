"""RetentionPolicy: which finished jobs are forgotten, by age and by count per owner."""

from __future__ import annotations

import math

import pytest

from jobworker.errors import InvalidRequestError
from jobworker.jobs.retention import Finished, RetentionPolicy


def jobs(*spec: tuple[str, str, float]) -> list[Finished]:
    return [Finished(job_id, owner, ended) for job_id, owner, ended in spec]


def test_jobs_older_than_max_age_are_forgotten_oldest_first() -> None:
    policy = RetentionPolicy(max_age=100, max_per_owner=None)
    finished = jobs(("b", "alex", 50), ("a", "alex", 10), ("c", "betty", 99))
    assert policy.to_forget(finished, now=149) == ["a"]
    assert policy.to_forget(finished, now=150) == ["a", "b"]
    assert policy.to_forget(finished, now=1000) == ["a", "b", "c"]
    assert policy.next_expiry(finished) == 110


def test_each_owner_keeps_its_newest_max_per_owner() -> None:
    policy = RetentionPolicy(max_age=None, max_per_owner=2)
    finished = jobs(
        ("a1", "alex", 1), ("b1", "betty", 2), ("a2", "alex", 3), ("a3", "alex", 4),
        ("a4", "alex", 5), ("b2", "betty", 6),
    )  # fmt: skip
    assert policy.to_forget(finished, now=10) == ["a1", "a2"]
    assert policy.next_expiry(finished) == math.inf


def test_age_and_count_together_never_forget_a_job_twice() -> None:
    policy = RetentionPolicy(max_age=10, max_per_owner=1)
    finished = jobs(("old", "alex", 0), ("mid", "alex", 5), ("new", "alex", 8))
    assert policy.to_forget(finished, now=12) == ["old", "mid"]


@pytest.mark.parametrize(
    "kwargs", [{"max_age": 0}, {"max_age": -1}, {"max_age": math.nan}, {"max_per_owner": 0}]
)
def test_a_policy_that_keeps_nothing_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidRequestError):
        RetentionPolicy(**kwargs)  # type: ignore[arg-type]

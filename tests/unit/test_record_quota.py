"""`RecordQuota`: the record bytes each owner holds, bounded at start, released when
a job is forgotten."""

from __future__ import annotations

import pytest

from jobworker.errors import QuotaExceededError
from jobworker.jobs.record_quota import RECORD_OVERHEAD, RecordQuota, record_bytes


def test_record_bytes_count_what_the_owner_chose_in_utf8() -> None:
    assert record_bytes(("é",), ("K",), "/w") == RECORD_OVERHEAD + 2 + 1 + 2
    assert record_bytes(("a",), name="nm", labels=(("k", "vv"),)) == RECORD_OVERHEAD + 1 + 2 + 3


def test_a_start_over_the_bound_is_refused_saying_what_to_remove_and_counts_nothing() -> None:
    quota = RecordQuota(limit=10_000)
    quota.charge("betty", "a", 6_000)
    with pytest.raises(QuotaExceededError, match=r"5\.9 KiB.*remove finished jobs.*jws rm"):
        quota.charge("betty", "b", 6_000)
    assert quota.held("betty") == 6_000
    quota.charge("alex", "c", 6_000)  # another owner's bytes are their own
    quota.release("a")
    quota.charge("betty", "b", 6_000)  # room again once a job is forgotten
    assert quota.held("betty") == 6_000


def test_restored_records_count_without_a_check_and_release_is_idempotent() -> None:
    quota = RecordQuota(limit=100)
    quota.restore("alex", "a", 500)  # already on disk: counted, never refused
    assert quota.held("alex") == 500
    with pytest.raises(QuotaExceededError):
        quota.charge("alex", "b", 1)
    quota.release("a")
    quota.release("a")
    quota.release("never-charged")
    assert quota.held("alex") == 0


def test_no_limit_counts_but_never_refuses() -> None:
    quota = RecordQuota(limit=None)
    quota.charge("alex", "a", 1 << 40)
    assert quota.held("alex") == 1 << 40

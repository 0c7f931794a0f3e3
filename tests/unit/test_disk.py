"""The disk quota's arithmetic (the auto default, its floor and ceiling, charges and
releases) and the records' reserve (`jobworker.jobs.disk`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobworker.errors import QuotaExceededError
from jobworker.jobs import disk
from jobworker.jobs.config import TrackerConfig
from jobworker.jobs.disk import DiskQuota, SpaceReserve

GiB = 1 << 30
MiB = 1 << 20


@pytest.mark.parametrize(
    ("fs_size", "quota"),
    [
        (400 * GiB, 100 * GiB),  # a quarter of a big disk
        (4 * GiB, GiB),  # a quarter that is the floor
        (2 * GiB, GiB),  # the floor above a quarter
        (30 * MiB, 30 * MiB),  # never more than the file system
        (GiB, GiB),
    ],
)
def test_auto_is_a_quarter_of_the_file_system_at_least_1_gib_never_more_than_it(
    fs_size: int, quota: int
) -> None:
    assert disk.auto_quota(fs_size) == quota


def test_the_default_is_auto_resolved_on_the_data_dirs_file_system(tmp_path: Path) -> None:
    assert TrackerConfig().max_disk_per_user == "auto"
    st = os.statvfs(tmp_path)
    assert disk.resolve("auto", tmp_path) == disk.auto_quota(st.f_blocks * st.f_frsize)
    assert disk.resolve(5 * MiB, tmp_path) == 5 * MiB
    assert disk.resolve(None, tmp_path) is None


def test_the_flag_reads_a_size_auto_or_0_for_none() -> None:
    assert disk.parse_setting("auto") == "auto"
    assert disk.parse_setting(" AUTO ") == "auto"
    assert disk.parse_setting("10M") == 10 * MiB
    assert disk.parse_setting("0") is None
    with pytest.raises(ValueError, match="is not a size"):
        disk.parse_setting("lots")


def test_a_start_gets_what_its_owner_has_left_and_nothing_left_is_refused() -> None:
    quota = DiskQuota(10 * MiB)
    assert quota.allowance("alex", GiB) == 10 * MiB  # the cap shrinks to the quota
    assert quota.allowance("alex", MiB) == MiB  # a smaller output limit stays
    assert quota.allowance("alex", None) == 5 * MiB  # no output limit: half of what is left
    quota.charge("alex", "a", 6 * MiB)
    assert quota.allowance("alex", GiB) == 4 * MiB
    quota.charge("alex", "b", 4 * MiB)
    with pytest.raises(QuotaExceededError, match=r"disk quota per user \(10.0 MiB"):
        quota.allowance("alex", GiB)
    assert quota.allowance("betty", GiB) == 10 * MiB  # another owner's is their own
    quota.charge("alex", "a", MiB)  # a's end: what its output holds, not its cap
    assert quota.used("alex") == 5 * MiB
    quota.release("b")  # b forgotten
    quota.release("b")  # twice is nothing
    assert quota.used("alex") == MiB
    assert quota.allowance("alex", GiB) == 9 * MiB


def test_jobs_with_no_output_limit_each_get_half_of_what_is_left() -> None:
    """With no output cap the first job would hold all of the quota while it runs, and
    every other start would be refused: each gets half of what is left instead."""
    quota = DiskQuota(8 * MiB)
    for job_id, expected in (("a", 4 * MiB), ("b", 2 * MiB), ("c", MiB)):
        granted = quota.allowance("alex", None)
        assert granted == expected
        quota.charge("alex", job_id, granted)
    assert quota.used("alex") < 8 * MiB
    quota.charge("alex", "d", MiB)  # the rest, by a job that asked for it
    with pytest.raises(QuotaExceededError):
        quota.allowance("alex", None)


def test_no_quota_charges_nothing_and_keeps_the_cap() -> None:
    quota = DiskQuota(None)
    quota.charge("alex", "a", 100 * GiB)
    assert quota.used("alex") == 0
    assert quota.allowance("alex", None) is None
    assert quota.allowance("alex", GiB) == GiB


def test_the_reserve_is_preallocated_freed_once_and_made_again(tmp_path: Path) -> None:
    reserve = SpaceReserve.make(tmp_path)
    assert reserve.held and reserve.size == disk.RESERVE_SIZE
    assert os.stat(reserve.path).st_blocks * 512 >= reserve.size
    assert reserve.release() is True
    assert os.stat(reserve.path).st_size == 0
    assert reserve.release() is False  # nothing more to free
    reserve.refill()
    assert reserve.held and os.stat(reserve.path).st_blocks * 512 >= reserve.size

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


@pytest.mark.parametrize(
    ("fs_size", "window"),
    [
        (int(7.8 * GiB), disk.auto_quota(int(7.8 * GiB)) // 64),  # CI's v2 VM: ~31 MiB
        (250 * GiB, 256 * MiB),  # a typical disk: the ceiling
        (GiB, 16 * MiB),  # the auto floor: the window's floor
    ],
)
def test_the_default_quota_lets_a_user_start_their_32_jobs_at_1_gib_output_each(
    fs_size: int, window: int
) -> None:
    """The reverted quota charged a running job its whole output cap (1 GiB): on CI's
    7.8 GiB disk (auto: 1.9 GiB) alex's second start was refused. Now each start holds
    one window: all 32 of his jobs start, holding at most half his quota unwritten."""
    quota = DiskQuota(disk.auto_quota(fs_size))
    assert quota.limit is not None and quota.window == window
    grants = [quota.grant("alex", f"job{n}", GiB) for n in range(32)]
    assert all(grant is not None and grant.limit == window for grant in grants)
    assert quota.used("alex") == 32 * window <= max(quota.limit // 2, 32 * disk.WINDOW_MIN)


def test_a_writer_gets_window_after_window_until_its_owner_has_nothing_left() -> None:
    """The grant moves a window past what was written once less than half a window is
    left, up to the quota: there the writer is cut, the quota named; betty's own quota
    is untouched, and alex's other job is not cut (it keeps the window it holds)."""
    quota = DiskQuota(64 * MiB)  # windows of 16 MiB
    first = quota.grant("alex", "a", GiB)
    assert first is not None and (first.limit, first.short) == (16 * MiB, False)
    assert quota.extend("a", 8 * MiB) is None  # half a window left: not yet
    moved = quota.extend("a", 9 * MiB)
    assert moved is not None and moved.limit == 25 * MiB
    other = quota.grant("alex", "b", GiB)
    assert other is not None and other.limit == 16 * MiB
    assert quota.used("alex") == 41 * MiB
    for written, limit in ((20 * MiB, 36 * MiB), (30 * MiB, 46 * MiB), (40 * MiB, 48 * MiB)):
        moved = quota.extend("a", written)
        assert moved is not None and moved.limit == limit
    assert moved.short and quota.used("alex") == 64 * MiB  # 48 + b's 16: all of it
    assert quota.extend("a", 47 * MiB) is None  # nothing left: it stops at 48 MiB, said once
    note = disk.grant_note(moved, 64 * MiB)
    assert note is not None and note.startswith(
        "the disk quota per user (64.0 MiB, jwsd --max-disk-per-user) was used up at byte "
        f"{48 * MiB} of this job's output"
    )
    with pytest.raises(QuotaExceededError, match=r"disk quota per user \(64.0 MiB"):
        quota.grant("alex", "c", MiB)
    betty = quota.grant("betty", "d", GiB)
    assert betty is not None and betty.limit == 16 * MiB
    quota.ended("b", 2 * MiB)  # b ends with 2 MiB: 14 MiB back to alex
    assert quota.used("alex") == 50 * MiB
    moved = quota.extend("a", 47 * MiB)
    assert moved is not None and (moved.limit, moved.short) == (62 * MiB, True)


def test_the_output_limit_bounds_the_grant_and_none_means_windows_for_ever() -> None:
    quota = DiskQuota(GiB)
    small = quota.grant("alex", "a", MiB)
    assert small is not None and small.limit == MiB
    assert disk.grant_note(small, GiB) is None  # the output limit says it itself
    assert quota.extend("a", MiB) is None
    endless = quota.grant("alex", "b", None)
    assert endless is not None and endless.limit == 16 * MiB
    moved = quota.extend("b", 15 * MiB)
    assert moved is not None and moved.limit == 31 * MiB
    note = disk.grant_note(moved, GiB)
    assert note is not None and "before jwsd granted more" in note  # not the quota's doing


def test_an_ended_job_holds_its_output_and_a_forgotten_one_nothing() -> None:
    quota = DiskQuota(64 * MiB)
    quota.grant("alex", "a", GiB)
    quota.ended("a", 3 * MiB)
    assert quota.used("alex") == 3 * MiB
    assert quota.extend("a", 3 * MiB) is None  # ended: no more windows
    quota.release("a")
    quota.release("a")  # twice is nothing
    quota.ended("a", MiB)  # a forgotten job's late end charges nothing
    assert quota.used("alex") == 0


def test_a_job_taken_over_holds_what_its_copier_may_write() -> None:
    """After a restart the copier's own limit is the grant, even past a smaller quota;
    a copier found with no limit gets a first window past what it wrote."""
    quota = DiskQuota(32 * MiB)
    kept = quota.adopt("alex", "a", GiB, 40 * MiB, 30 * MiB)
    assert kept is not None and kept.limit == 40 * MiB and quota.used("alex") == 40 * MiB
    stays = quota.extend("a", 39 * MiB)  # over the quota: no more, and it says why
    assert stays is not None and (stays.limit, stays.short) == (40 * MiB, True)
    fresh = quota.adopt("betty", "b", GiB, None, 5 * MiB)
    assert fresh is not None and fresh.limit == 21 * MiB


def test_no_quota_charges_nothing_and_grants_nothing() -> None:
    quota = DiskQuota(None)
    quota.charge("alex", "a", 100 * GiB)
    assert quota.used("alex") == 0
    assert quota.grant("alex", "b", GiB) is None
    assert quota.extend("b", GiB) is None
    assert quota.window is None


def test_the_reserve_is_preallocated_freed_once_and_made_again(tmp_path: Path) -> None:
    reserve = SpaceReserve.make(tmp_path)
    assert reserve.held and reserve.size == disk.RESERVE_SIZE
    assert os.stat(reserve.path).st_blocks * 512 >= reserve.size
    assert reserve.release() is True
    assert os.stat(reserve.path).st_size == 0
    assert reserve.release() is False  # nothing more to free
    reserve.refill()
    assert reserve.held and os.stat(reserve.path).st_blocks * 512 >= reserve.size

"""`DiskQuota`: how much of the data dir's disk each user's jobs may hold
(`jwsd --max-disk-per-user`), and `SpaceReserve`, the room kept for the records.

A user's disk is the bytes their jobs' output files hold, running and kept. It is
accounted, never scanned: a job is charged its output cap from its start (the
most its copier may write: RLIMIT_FSIZE stops it there), and once it has ended
the size its output reached; removal, by `jws rm` or the retention, gives it
back. So the sum a user holds never exceeds the quota whatever their jobs do,
and a start costs a dict look-up. The cap a start gets is the smaller of its
output limit and what its owner has left; an owner with nothing left is refused
(QuotaExceededError, RESOURCE_EXHAUSTED). To run several jobs at once under a
small quota, a user asks each for less output (`jws run --max-output`). A job
with no output limit at all (`jwsd --max-output 0`, and none asked for) gets half
of what its owner has left: the next one can still start, and the sum stays
under the quota.

Work dirs are tmpfs mounts inside each sandbox (`jobworker.sandbox.workdir`),
bounded by `--workdir-size` and charged to the job's memory cgroup: they hold
no block of the data dir's disk, so they cost nothing here. With
`--workdir-size 0` a work dir is a plain directory on the data dir, which no
quota bounds (docs/operations.md says so; jwsd logs it at start-up).

The default (`auto`) is a quarter of the data dir's file system, at least 1 GiB,
never more than the file system: four users at their quota fill a disk that is
all jobworker's, one user alone cannot. For the records, whatever fills the
disk, `SpaceReserve` keeps a preallocated file the store frees when SQLite
says the disk is full: one user's output never stops another's start, stop or
status.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Literal

import attrs

from jobworker.errors import QuotaExceededError
from jobworker.units import format_size, parse_size

log = logging.getLogger(__name__)

#: `--max-disk-per-user auto`: this share of the data dir's file system ...
AUTO_SHARE = 0.25
#: ... but at least this much (never more than the file system, though).
AUTO_FLOOR = 1 << 30
#: What `TrackerConfig.max_disk_per_user` holds: bytes, "auto", or None (no quota).
DiskSetting = int | Literal["auto"] | None

#: The records' reserve: this much, or a sixteenth of a smaller file system.
RESERVE_SIZE = 8 << 20
#: The reserve's file in the data dir.
RESERVE_NAME = "space-reserve"


def file_system_size(path: Path) -> int:
    """The size in bytes of the file system `path` is on."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def auto_quota(fs_size: int) -> int:
    """`--max-disk-per-user auto` on a file system of `fs_size` bytes."""
    return min(fs_size, max(AUTO_FLOOR, int(fs_size * AUTO_SHARE)))


def resolve(setting: DiskSetting, data_dir: Path) -> int | None:
    """The quota in bytes that `setting` stands for on `data_dir` (None: no quota)."""
    if setting == "auto":
        return auto_quota(file_system_size(data_dir))
    return setting


def parse_setting(text: str) -> DiskSetting:
    """A `--max-disk-per-user`: a size ("10G"), "auto", or 0 for no quota."""
    if text.strip().lower() == "auto":
        return "auto"
    return parse_size(text) or None


@attrs.define
class DiskQuota:
    """The bytes each owner's jobs hold against `limit` (None: no quota); see the
    module docstring. Every method is a few dict operations."""

    limit: int | None

    # job id -> (owner, bytes charged)
    _charges: dict[str, tuple[str, int]] = attrs.field(init=False, factory=dict)
    _used: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)

    def used(self, owner: str) -> int:
        """Bytes charged to `owner`'s jobs."""
        return self._used[owner]

    def allowance(self, owner: str, cap: int | None) -> int | None:
        """The output cap a job of `owner`'s may start with: the smaller of `cap` (its
        output limit) and what `owner` has left; with no output limit (None), half of
        what is left, so that the job does not hold all of it while it runs. Raises
        QuotaExceededError when nothing is left. The caller `charge`s the job with it
        once it is in."""
        if self.limit is None:
            return cap
        left = self.limit - self._used[owner]
        if cap is None:
            left //= 2
        if left <= 0:
            raise QuotaExceededError(
                f"your jobs hold {format_size(self._used[owner])} of disk, all of this "
                f"server's disk quota per user ({format_size(self.limit)}, jwsd "
                "--max-disk-per-user); remove finished jobs (jws rm) or wait for your "
                "running ones to end"
            )
        return left if cap is None else min(cap, left)

    def charge(self, owner: str, job_id: str, size: int) -> None:
        """Charge the job `size` bytes (in place of what it was charged before)."""
        if self.limit is None:
            return
        self.release(job_id)
        self._charges[job_id] = (owner, size)
        self._used[owner] += size

    def release(self, job_id: str) -> None:
        """The job holds no more disk (forgotten, or its start failed)."""
        charged = self._charges.pop(job_id, None)
        if charged is not None:
            owner, size = charged
            self._used[owner] -= size
            if not self._used[owner]:
                del self._used[owner]


def quota_note(granted: int, limit: int) -> str:
    """What a job's status says when its output stopped at the cap the quota gave it."""
    return (
        f"the disk quota per user ({format_size(limit)}, jwsd --max-disk-per-user) left "
        f"{granted} bytes for this job's output; its output was closed there (its next "
        "write got EPIPE)"
    )


@attrs.define
class SpaceReserve:
    """A preallocated file of the data dir that the store frees when the disk is full,
    so the records still fit; made again once there is room. Blocking calls: the
    store's worker thread, or start-up."""

    path: Path
    size: int
    held: bool = False

    @classmethod
    def make(cls, data_dir: Path) -> SpaceReserve:
        """The reserve of `data_dir`: RESERVE_SIZE, or a sixteenth of a smaller disk."""
        size = min(RESERVE_SIZE, file_system_size(data_dir) // 16)
        reserve = cls(data_dir / RESERVE_NAME, size)
        reserve.refill()
        return reserve

    def release(self) -> bool:
        """Free the reserve's blocks; return whether there were any to free."""
        if not self.held:
            return False
        os.truncate(self.path, 0)
        self.held = False
        log.error(
            "the data dir's disk is full: released the %s kept for job records; "
            "free space (jws rm, a shorter --retention, a smaller --max-disk-per-user)",
            format_size(self.size),
        )
        return True

    def refill(self) -> None:
        """Preallocate the reserve again if it is not held and the disk has twice its
        room free (a disk that is nearly full keeps what it has for the records)."""
        if self.held:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_blocks * 512 >= self.size:  # an earlier jwsd's, whole
                self.held = True
                return
        st = os.statvfs(self.path.parent)
        if st.f_bavail * st.f_frsize < 2 * self.size:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)
            self.held = True
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EOPNOTSUPP):
                raise
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)


__all__ = [
    "AUTO_FLOOR",
    "AUTO_SHARE",
    "RESERVE_NAME",
    "RESERVE_SIZE",
    "DiskQuota",
    "DiskSetting",
    "SpaceReserve",
    "auto_quota",
    "file_system_size",
    "parse_setting",
    "quota_note",
    "resolve",
]

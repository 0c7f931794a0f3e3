"""`DiskQuota`: how much of the data dir's disk each user's jobs may hold
(`jwsd --max-disk-per-user`), and `SpaceReserve`, the room kept for the records.

A user's disk is the bytes their jobs' output files hold, running and kept. It is
accounted, never scanned, and charged as it is written, in windows:

* a running job's copier may write up to its *grant* (its RLIMIT_FSIZE: the kernel
  cuts it there whether or not jwsd runs), and the job is charged its grant;
* a start's first grant is the smallest of the job's output limit, one window
  (`window`: 1/64 of the quota, 16 MiB to 256 MiB, at most the quota) and what its
  owner has left; an owner with nothing left is refused (QuotaExceededError,
  RESOURCE_EXHAUSTED);
* as the job writes (jwsd hears of each batch of writes from inotify), once less
  than half a window is left of its grant, `extend` moves the grant to a window
  past what it has written, within the job's output limit and what its owner has
  left; when the owner has nothing left, the grant stays, and the copier is cut
  there (the job's next write gets EPIPE): the writer that crosses the quota is the
  one stopped, and no other user's job is;
* once a job has ended it is charged what its output file holds; removal (`jws rm`,
  the retention) gives that back.

So what a user's files hold never exceeds the quota, whatever their jobs do and
whether or not jwsd runs, while a running job holds at most one window it has not
written: 32 running jobs of one user (`--max-running-per-user`) hold at most half
of a quota of 1 GiB or more unwritten, and each starts. The cost: a start and an
extension are a few dict operations, an extension one prlimit(2) per half window
written. A job that writes a window faster than jwsd answers (a host too busy, or
no jwsd running) is cut at its grant too; its status says so, not the quota.

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

#: A running job's window (`window`): this share of the quota ...
WINDOWS_PER_QUOTA = 64
#: ... at least this much (a small quota's writer is cut at the quota itself, not
#: at a window jwsd must extend in time) ...
WINDOW_MIN = 16 << 20
#: ... and at most this much (what a running job may write while no jwsd runs).
WINDOW_MAX = 256 << 20

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


def window(limit: int) -> int:
    """The most a running job holds unwritten under a quota of `limit` bytes: 1/64 of
    it, between WINDOW_MIN and WINDOW_MAX, never more than `limit`."""
    return min(limit, WINDOW_MAX, max(WINDOW_MIN, limit // WINDOWS_PER_QUOTA))


@attrs.define
class Grant:
    """What a running job's copier may write (`limit`, its RLIMIT_FSIZE) under its
    output limit `cap` (None: none); `short`: the quota, not the window nor the cap,
    set the last limit (so a job cut there was cut by the quota)."""

    owner: str
    cap: int | None
    limit: int
    short: bool = False


@attrs.define
class DiskQuota:
    """The bytes each owner's jobs hold against `limit` (None: no quota); see the
    module docstring. Every method is a few dict operations."""

    limit: int | None

    # job id -> (owner, bytes charged): every job, running or ended
    _charges: dict[str, tuple[str, int]] = attrs.field(init=False, factory=dict)
    # job id -> its grant, while it runs
    _grants: dict[str, Grant] = attrs.field(init=False, factory=dict)
    _used: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)

    @property
    def window(self) -> int | None:
        """The most a running job holds unwritten (`window`); None without a quota."""
        return None if self.limit is None else window(self.limit)

    def used(self, owner: str) -> int:
        """Bytes charged to `owner`'s jobs."""
        return self._used[owner]

    def grant(self, owner: str, job_id: str, cap: int | None) -> Grant | None:
        """The first grant of a job of `owner`'s that starts with output limit `cap`
        (None: none), charged at once; None without a quota (the cap alone bounds the
        job). Raises QuotaExceededError, charging nothing, when `owner` has nothing
        left. `release` it if the start fails."""
        if self.limit is None:
            return None
        left = self.limit - self._used[owner]
        if left <= 0:
            raise QuotaExceededError(
                f"your jobs hold {format_size(self._used[owner])} of disk, all of this "
                f"server's disk quota per user ({format_size(self.limit)}, jwsd "
                "--max-disk-per-user); remove finished jobs (jws rm) or wait for your "
                "running ones to end"
            )
        return self._set(job_id, Grant(owner, cap, 0), 0, left)

    def adopt(
        self, owner: str, job_id: str, cap: int | None, limit: int | None, written: int
    ) -> Grant | None:
        """The grant of a running job taken over after a restart, whose copier may write
        `limit` bytes (as the earlier jwsd left it), charged as it stands even past the
        quota (a smaller one than the earlier jwsd's: the job gets no more until its
        owner is under it). limit None (a copier with no limit, or none left): a first
        window past the `written` bytes, within what the owner has left, for the
        caller to set. None without a quota."""
        if self.limit is None:
            return None
        if limit is None:
            left = max(0, self.limit - self._used[owner])
            return self._set(job_id, Grant(owner, cap, written), written, left)
        grant = Grant(owner, cap, limit)
        self._grants[job_id] = grant
        self.charge(owner, job_id, limit)
        return grant

    def extend(self, job_id: str, written: int) -> Grant | None:
        """The job's grant once it has changed, now that its output holds `written`
        bytes: moved (less than half a window was left of it, and there is room under
        its cap and its owner's quota), or said `short` (no room: the copier stops
        there); else None (nothing changed)."""
        grant = self._grants.get(job_id)
        if grant is None or self.limit is None:
            return None
        step = window(self.limit)
        if grant.limit - written >= step // 2 or grant.limit == grant.cap:
            return None
        left = self.limit - self._used[grant.owner]
        if left <= 0:  # it stops where it is: said once
            if grant.short:
                return None
            grant.short = True
            return grant
        return self._set(job_id, grant, written, left)

    def _set(self, job_id: str, grant: Grant, written: int, left: int) -> Grant:
        """Move `grant` to a window past `written`, within its cap and `left` more."""
        assert self.limit is not None
        wanted = written + window(self.limit)
        if grant.cap is not None:
            wanted = min(wanted, grant.cap)
        # All that was left went to it: stopping there is the quota's doing.
        grant.short = wanted >= grant.limit + left
        grant.limit = min(wanted, grant.limit + left)
        self._grants[job_id] = grant
        self.charge(grant.owner, job_id, grant.limit)
        return grant

    def ended(self, job_id: str, size: int) -> None:
        """The job has ended with `size` bytes of output on disk: its charge from now on."""
        grant = self._grants.pop(job_id, None)
        charged = self._charges.get(job_id)
        owner = grant.owner if grant is not None else charged[0] if charged else None
        if owner is not None:
            self.charge(owner, job_id, size)

    def charge(self, owner: str, job_id: str, size: int) -> None:
        """Charge the job `size` bytes (in place of what it was charged before)."""
        if self.limit is None:
            return
        self._uncharge(job_id)
        self._charges[job_id] = (owner, size)
        self._used[owner] += size

    def release(self, job_id: str) -> None:
        """The job holds no more disk (forgotten, or its start failed)."""
        self._grants.pop(job_id, None)
        self._uncharge(job_id)

    def _uncharge(self, job_id: str) -> None:
        charged = self._charges.pop(job_id, None)
        if charged is not None:
            owner, size = charged
            self._used[owner] -= size
            if not self._used[owner]:
                del self._used[owner]


def grant_note(grant: Grant, limit: int) -> str | None:
    """What a job's status says once its output reached its grant's limit, when that is
    not its output limit (None: it is, and the log says so itself)."""
    if grant.limit == grant.cap:
        return None
    if grant.short:
        return (
            f"the disk quota per user ({format_size(limit)}, jwsd --max-disk-per-user) was "
            f"used up at byte {grant.limit} of this job's output; its output was closed "
            "there (its next write got EPIPE)"
        )
    return (
        f"the output reached the {grant.limit} bytes jwsd had granted it so far (a window "
        f"of the disk quota per user, {format_size(limit)}) before jwsd granted more: the "
        "host was too busy, or no jwsd was running; its output was closed there"
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
    "WINDOWS_PER_QUOTA",
    "WINDOW_MAX",
    "WINDOW_MIN",
    "DiskQuota",
    "DiskSetting",
    "Grant",
    "SpaceReserve",
    "auto_quota",
    "file_system_size",
    "grant_note",
    "parse_setting",
    "resolve",
    "window",
]

"""A host uid per owner: the range jwsd owns (`jwsd --job-uids`), checked against the
host's accounts at start-up, and the owners' ids in it, kept in the data dir.

Why: the kernel counts some limits per uid (inotify instances and watches, POSIX
message queue bytes, RLIMIT_NPROC), and lets a process of the same uid read another's
/proc/PID/environ and open its /proc/PID/fd. Jobs that all ran as `nobody` on the host
shared those limits (one user's job took all 128 inotify instances, and every other
user's job then failed at its first), and any host service running as `nobody` could
read a job's environment. Each owner's jobs now run on the host as an id of their
own, from a range no account uses; inside its user namespace a job still sees
itself as the job user (`--job-user`), as before.

    DATA/uids.json     {"range": "FIRST-LAST", "owners": {"alex": 1879048192, ...}}

An owner's id (its gid is the same number) is allocated at their first start, written
atomically (a temporary file, fsync, rename, fsync of the dir) before any job of
theirs runs as it, and kept for ever: a job taken over after a restart, and every
later job of that owner, runs as the same id. Ids are never reused: 65,536 of them
by default, one per owner the users file (or the CA) can name.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import trio

from jobworker.errors import QuotaExceededError, SetupError, StartFailedError

log = logging.getLogger(__name__)

#: The table's file in the data dir.
UIDS_NAME = "uids.json"
#: The default range: 65,536 ids from 0x70000000, where no distribution allocates
#: (systemd's container ranges end just below it; useradd stays under 60000).
DEFAULT_FIRST = 0x70000000
DEFAULT_COUNT = 1 << 16
#: The fewest ids a range may hold: a range that small is a typo, not a plan.
MIN_COUNT = 64
#: Ids no range may hold: root, the 16-bit and 32-bit "no id" values (-1) that
#: setuid(2) and chown(2) read as "unchanged".
RESERVED = frozenset({0, 0xFFFF, 0xFFFFFFFF})
#: The biggest uid the kernel accepts.
MAX_ID = 0xFFFFFFFE
#: Where the host delegates subordinate ids to its users' own user namespaces.
SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
#: The ids jwsd's own user namespace has (a rootless container's may hold 65,536 only).
UID_MAP = Path("/proc/self/uid_map")
GID_MAP = Path("/proc/self/gid_map")


@attrs.frozen
class UidRange:
    """FIRST-LAST, inclusive: the host uids (and gids) jobs run as."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> UidRange:
        """A range as `--job-uids` takes it ("1879048192-1879113727"); raises ValueError
        for one that is malformed, too small, or holds an id no job may run as."""
        match = re.fullmatch(r"\s*(\d{1,10})\s*-\s*(\d{1,10})\s*", text)
        if match is None:
            raise ValueError(f"job uid range {text!r} is not FIRST-LAST (two numbers)")
        first, last = int(match[1]), int(match[2])
        if last > MAX_ID:
            raise ValueError(f"job uid range {text!r} goes past the biggest uid, {MAX_ID}")
        if last - first + 1 < MIN_COUNT:
            raise ValueError(
                f"job uid range {text!r} holds fewer than {MIN_COUNT} ids; give a range of "
                f"at least {MIN_COUNT} (one id per user)"
            )
        reserved = sorted(i for i in RESERVED if first <= i <= last)
        if reserved:
            raise ValueError(f"job uid range {text!r} holds {reserved[0]}, which no job may run as")
        return cls(first, last)

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.first <= uid <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def overlaps(self, start: int, count: int) -> bool:
        return start <= self.last and self.first < start + count

    def check_free(
        self,
        users: Iterable[tuple[str, int]],
        groups: Iterable[tuple[str, int]],
        subordinate: Iterable[tuple[str, str, int, int]] = (),
    ) -> None:
        """Raise SetupError, in one line naming the first clash, when an account
        (`users`: name, uid), a group (name, gid) or a subordinate range (file, name,
        start, count) holds an id of this range: their files, processes or user
        namespaces would then be the jobs'."""
        for what, entries in (("user", users), ("group", groups)):
            for name, number in entries:
                if number in self:
                    raise SetupError(
                        f"--job-uids {self} holds {number}, the id of the host's {what} {name}; "
                        "give jwsd a range no account or group uses"
                    )
        for file, name, start, count in subordinate:
            if self.overlaps(start, count):
                raise SetupError(
                    f"--job-uids {self} overlaps {name}'s subordinate ids {start}-"
                    f"{start + count - 1} in {file}; give jwsd a range no one is delegated"
                )


#: The default range, `jwsd --job-uids`.
DEFAULT_RANGE = UidRange(DEFAULT_FIRST, DEFAULT_FIRST + DEFAULT_COUNT - 1)


def check_host_free(
    uids: UidRange,
    subuid: Path = SUBUID,
    subgid: Path = SUBGID,
    maps: tuple[Path, ...] = (UID_MAP, GID_MAP),
) -> None:
    """`UidRange.check_free` against this host: every passwd and group entry the name
    service lists, and /etc/subuid and /etc/subgid (missing files: none); and every
    id of the range must exist in jwsd's user namespace (`maps`), else no job could
    run as it."""
    for path in maps:
        check_mapped(uids, path)
    uids.check_free(
        ((entry.pw_name, entry.pw_uid) for entry in pwd.getpwall()),
        ((entry.gr_name, entry.gr_gid) for entry in grp.getgrall()),
        [*read_subordinate(subuid), *read_subordinate(subgid)],
    )


def check_mapped(uids: UidRange, path: Path) -> None:
    """Raise SetupError unless the id map `path` (/proc/self/uid_map's form: INSIDE
    OUTSIDE COUNT a line) holds every id of `uids` in one of its ranges."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SetupError(f"cannot read {path} to check --job-uids: {exc.strerror}") from exc
    for line in lines:
        inside, _, count = (int(field) for field in line.split())
        if inside <= uids.first and uids.last < inside + count:
            return
    shown = ", ".join(f"{int(f[0])}-{int(f[0]) + int(f[2]) - 1}" for f in map(str.split, lines))
    raise SetupError(
        f"--job-uids {uids} is not all in jwsd's user namespace ({path} has {shown or 'none'}): "
        "jwsd runs in a container with fewer ids; give a range inside those"
    )


def read_subordinate(path: Path) -> list[tuple[str, str, int, int]]:
    """The ranges of an /etc/subuid-style file, as (file, name, start, count); lines
    that are not NAME:START:COUNT are skipped (newuidmap skips them too)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SetupError(f"cannot read {path} to check --job-uids: {exc.strerror}") from exc
    found = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            found.append((str(path), fields[0], int(fields[1]), int(fields[2])))
    return found


@attrs.define(eq=False)
class HostUids:
    """The owners' host ids in one data dir (see the module docstring). `load` at
    start-up; `known` answers at once, `allocate` gives a new owner the lowest free id.

    path: the table's file. uids: the range in force.
    """

    path: Path
    uids: UidRange
    _owners: dict[str, int] = attrs.field(factory=dict)
    _lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)

    @classmethod
    def load(cls, data_dir: Path, uids: UidRange, recorded: Mapping[str, int] = {}) -> HostUids:
        """The table of `data_dir` (none yet: empty). Ids outside `uids` (the range was
        changed) are dropped, and their owners get new ones; `recorded` (owner → the id
        their job records name) fills what the file lacks (a file moved away while
        their jobs run). Raises SetupError for a file that is not such a table."""
        path = data_dir / UIDS_NAME
        owners = _read_table(path)
        kept = {owner: uid for owner, uid in owners.items() if uid in uids}
        if len(kept) < len(owners):
            log.warning(
                "%d owners' host uids are outside --job-uids %s: their next jobs get new ones",
                len(owners) - len(kept),
                uids,
            )
        taken = set(kept.values())
        for owner, uid in recorded.items():
            if owner not in kept and uid in uids and uid not in taken:
                kept[owner] = uid
                taken.add(uid)
        table = cls(path, uids, kept)
        if kept != owners:
            try:
                table._write(kept)
            except OSError as exc:
                raise SetupError(f"cannot write {path}: {exc.strerror}") from exc
        return table

    def known(self, owner: str) -> int | None:
        """The owner's id, if they have one."""
        return self._owners.get(owner)

    async def allocate(self, owner: str) -> int:
        """The owner's id, allocated (and on disk) if they had none. Raises
        QuotaExceededError when the range is used up, StartFailedError when the table
        cannot be written (then nothing changed)."""
        async with self._lock:
            found = self._owners.get(owner)
            if found is not None:
                return found
            taken = set(self._owners.values())
            uid = next(
                (i for i in range(self.uids.first, self.uids.last + 1) if i not in taken), None
            )
            if uid is None:
                raise QuotaExceededError(
                    f"every host uid of --job-uids {self.uids} has an owner; the operator must "
                    "widen the range"
                )
            owners = {**self._owners, owner: uid}
            try:
                await trio.to_thread.run_sync(self._write, owners)
            except OSError as exc:
                raise StartFailedError(
                    f"cannot give {owner} a host uid: {self.path} cannot be written ({exc.strerror})"
                ) from exc
            self._owners = owners
            log.info("owner %s runs jobs as host uid %d", owner, uid)
            return uid

    def _write(self, owners: Mapping[str, int]) -> None:
        """Replace the file with `owners`, atomically and durably."""
        text = json.dumps({"range": str(self.uids), "owners": dict(owners)}, indent=1)
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _read_table(path: Path) -> dict[str, int]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from exc
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        owners = data.get("owners") if isinstance(data, dict) else None
        if (
            isinstance(owners, dict)
            and all(isinstance(owner, str) and type(uid) is int for owner, uid in owners.items())
            and len(set(owners.values())) == len(owners)
        ):
            return dict(owners)
    raise SetupError(
        f"{path} is not a table of owners' host uids; restore it, or move it away "
        "(running jobs' owners keep their ids, the others get new ones)"
    )


__all__ = [
    "DEFAULT_RANGE",
    "MIN_COUNT",
    "UIDS_NAME",
    "HostUids",
    "UidRange",
    "check_host_free",
    "check_mapped",
    "read_subordinate",
]

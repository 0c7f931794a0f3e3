"""Which block device holds a path: the device numbers IO limits are written for."""

from __future__ import annotations

import os
from pathlib import Path

from jobworker.errors import InvalidRequestError


def block_device_of(
    path: Path,
    *,
    sys_dev_block: Path = Path("/sys/dev/block"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
) -> tuple[int, int]:
    """(major, minor) of the whole block device holding `path`, from its st_dev.

    A partition resolves to its disk (the kernel throttles whole disks only): its
    /sys/dev/block/MAJ:MIN entry has a `partition` file and sits in the disk's
    directory, whose `dev` file gives the disk's numbers.
    sys_dev_block / mountinfo: where to look; tests point them at fakes.

    Raises InvalidRequestError when `path` is not on a block device (tmpfs,
    overlay, btrfs subvolumes use anonymous devices) or cannot be looked at.
    """
    try:
        st_dev = os.stat(path).st_dev
    except OSError as exc:
        raise InvalidRequestError(f"cannot look at {path}: {exc.strerror}") from exc
    major, minor = os.major(st_dev), os.minor(st_dev)
    entry = sys_dev_block / f"{major}:{minor}"
    if not entry.exists():
        fstype = _fstype_of(major, minor, mountinfo)
        raise InvalidRequestError(
            f"io limits need the data dir on a block device; {path} is on {fstype} "
            f"(device {major}:{minor}), which is not one; move the data dir to a disk "
            f"or drop the io limits"
        )
    if not (entry / "partition").exists():
        return major, minor
    dev = entry.resolve().parent / "dev"
    try:
        disk_major, disk_minor = dev.read_text().strip().split(":")
        return int(disk_major), int(disk_minor)
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(
            f"cannot find the disk of partition {major}:{minor} holding {path} ({dev} "
            f"is unreadable)"
        ) from exc


def _fstype_of(major: int, minor: int, mountinfo: Path) -> str:
    """The filesystem type mounted from device MAJ:MIN, for error messages."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return "an unknown filesystem"
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[2] == f"{major}:{minor}" and " - " in line:
            return line.split(" - ", 1)[1].split()[0]
    return "an unknown filesystem"

"""Looking at the host's real cgroup tree from tests, on either hierarchy."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroups_named(name: str, *, root: Path = CGROUP_ROOT) -> list[Path]:
    """Every cgroup directory called `name`, in every hierarchy mounted under `root`
    (v1: one per controller; v2: the unified one).

    The walk skips what vanishes under it: other daemons, jobs and test runs on the
    host make and remove cgroups meanwhile (`Path.rglob` raised FileNotFoundError
    for one removed between its listing and its descent)."""
    found = []
    for directory, subdirs, _ in os.walk(root):  # os.walk ignores scandir errors
        if name in subdirs:
            found.append(Path(directory) / name)
            subdirs.remove(name)  # a cgroup's name is not used again below it
    return sorted(found)


def job_cgroup_dirs(cgroup_name: str, job_id: str) -> list[Path]:
    """The cgroup directories of job `job_id` of the jwsd (or tracker) whose cgroups are
    named `cgroup_name`, in every hierarchy (v1) or the one (v2): in its owner's group,
    or (drivers used without an owner) right under the parent."""
    return [
        directory
        for parent in cgroups_named(cgroup_name)
        for directory in [parent / job_id, *parent.glob(f"user-*/{job_id}")]
        if directory.is_dir()
    ]


def cgroup_pids(cgroup_name: str, job_id: str) -> list[int]:
    """Every pid in job `job_id`'s cgroups, as the kernel lists them (sorted)."""
    found: set[int] = set()
    for directory in job_cgroup_dirs(cgroup_name, job_id):
        try:
            found.update(int(pid) for pid in (directory / "cgroup.procs").read_text().split())
        except FileNotFoundError:
            continue  # removed under us: empty
    return sorted(found)

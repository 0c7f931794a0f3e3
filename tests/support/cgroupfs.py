"""Looking at the host's real cgroup tree from tests, on either hierarchy."""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroups_named(name: str) -> list[Path]:
    """Every cgroup directory called `name`, in every hierarchy mounted under
    /sys/fs/cgroup (v1: one per controller; v2: the unified one)."""
    return sorted(CGROUP_ROOT.rglob(name))

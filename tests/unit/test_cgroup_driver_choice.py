"""`--cgroup-driver`: what `auto` picks where the systemd driver cannot work, and
that `systemd` refuses there with the reason instead of falling back."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobworker.errors import SetupError
from jobworker.sandbox.cgroups import pick

HYBRID = (
    "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
    "31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
)


def test_the_systemd_driver_is_refused_with_its_reason_on_a_hybrid_host(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(HYBRID)
    with pytest.raises(SetupError, match="not the unified cgroup2 hierarchy"):
        pick("systemd", root=Path("/sys/fs/cgroup"), mountinfo=mountinfo)


def test_a_named_cgroup_parent_keeps_the_cgroupfs_driver() -> None:
    with pytest.raises(SetupError, match="--cgroup-parent names the cgroup"):
        pick("systemd", subtree="/jobworker.slice")


def test_an_unknown_driver_is_refused() -> None:
    with pytest.raises(SetupError, match="bad cgroup driver 'runc'"):
        pick("runc")

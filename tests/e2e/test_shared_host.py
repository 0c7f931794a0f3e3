"""Two jwsd on one host, as the real binaries run them: each keeps its own cgroup
tree on every v1 hierarchy, and one whose tree is removed under it says so and
rebuilds it instead of failing every start with "internal error"."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker.sandbox.cgroups.detect import read_mounts, read_own_cgroups
from tests.e2e.conftest import BIN, Jwsd, start_jwsd
from tests.support.certs import TestPKI
from tests.support.cgroupfs import cgroups_named
from tests.support.timing import scaled
from tests.support.waiting import eventually_blocking

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@pytest.fixture
def other_memory_cgroup() -> Iterator[Path]:
    """A memory cgroup beside this test's own, all other hierarchies the same: where a
    second jwsd on this host runs when its memory hierarchy is split from cpu and pids."""
    mounts = read_mounts(Path("/proc/self/mountinfo"))
    if any(m.fstype == "cgroup2" and m.mount_point == Path("/sys/fs/cgroup") for m in mounts):
        pytest.skip("cgroup v2 has one hierarchy; this is the v1 split-hierarchy case")
    (memory,) = [m for m in mounts if m.fstype == "cgroup" and "memory" in m.controllers]
    own = read_own_cgroups(Path("/proc/self/cgroup"))["memory"].lstrip("/")
    directory = memory.mount_point / own / f"jobworker-test-mem-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    try:
        yield directory
    finally:
        directory.rmdir()  # its one process, the refused jwsd, has exited


def test_a_jwsd_in_another_memory_cgroup_is_refused_the_tree_it_would_share(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd], other_memory_cgroup: Path
) -> None:
    """Two jwsd of one --cgroup-name in different memory cgroups (different data dirs
    and ports) shared `cpu/<name>` and the rest; the lock was on the memory one only,
    so both ran, and one removed the other's tree. The second is refused, naming the
    shared cgroup, and leaves nothing behind."""
    first = start_jwsd(tmp_path / "first", pki)
    daemons.append(first)
    (tmp_path / "second").mkdir()
    pki.write_tls_dir(tmp_path / "second" / "tls", ["alex"])
    enter = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    second = subprocess.run(
        ["sh", "-c", enter, str(other_memory_cgroup), str(BIN / "jwsd"),
         "--addr", "127.0.0.1:0",
         "--tls-dir", str(tmp_path / "second" / "tls"),
         "--data-dir", str(tmp_path / "second" / "data")],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env=dict(os.environ, JOBWORKER_CGROUP_NAME=first.cgroup_name, JOBWORKER_CGROUP_DRIVER="cgroupfs"),
    )  # fmt: skip
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1 and len(lines) == 1, second.stderr
    assert "another jwsd owns cgroup /sys/fs/cgroup/" in lines[0], lines
    assert first.cgroup_name in lines[0] and "--cgroup-name" in lines[0]
    assert not (other_memory_cgroup / first.cgroup_name).exists(), "the refused jwsd left a cgroup"
    result = first.jws("start", "--", "true")
    assert result.returncode == 0, result.stderr


def test_a_tree_removed_under_jwsd_is_logged_rebuilt_and_jobs_start_again(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """Someone removes jwsd's (empty) job parent on every hierarchy while it runs: every
    start failed with "internal error" while `jws health` said SERVING. jwsd logs it,
    rebuilds the tree within its check interval, and serves starts again."""
    jwsd = start_jwsd(tmp_path, pki)
    daemons.append(jwsd)
    parents = cgroups_named(jwsd.cgroup_name)
    assert parents
    for parent in parents:
        parent.rmdir()
    eventually_blocking(
        lambda: "rebuilt the job cgroup tree" in jwsd.log,
        timeout=scaled(10),
        what="jwsd rebuilds its tree",
    )
    assert "was removed while jwsd runs" in jwsd.log
    assert all(parent.is_dir() for parent in parents)
    assert jwsd.jws("health").stdout.decode().strip() == "SERVING"
    result = jwsd.jws("start", "--", "true")
    assert result.returncode == 0, result.stderr
    assert "internal error" not in jwsd.log

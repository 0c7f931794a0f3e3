"""The tests' look at the cgroup tree survives cgroups that come and go meanwhile:
other jobs, other daemons and other test runs on the host make and remove theirs."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.support.cgroupfs import cgroups_named


def test_finding_a_cgroup_by_name_ignores_others_removed_during_the_walk(tmp_path: Path) -> None:
    for hierarchy in ["cpu", "memory", "pids"]:
        (tmp_path / hierarchy / "mine" / "job").mkdir(parents=True)
    churn = [
        tmp_path / hierarchy / f"other-{i}" for hierarchy in ["cpu", "memory"] for i in range(20)
    ]
    stop = threading.Event()

    def come_and_go() -> None:
        # Another daemon's cgroups, each with a child, made and removed in a loop.
        while not stop.is_set():
            for directory in churn:
                (directory / "child").mkdir(parents=True, exist_ok=True)
            for directory in churn:
                (directory / "child").rmdir()
                directory.rmdir()

    thread = threading.Thread(target=come_and_go)
    thread.start()
    try:
        for _ in range(300):
            assert cgroups_named("mine", root=tmp_path) == [
                tmp_path / hierarchy / "mine" for hierarchy in ["cpu", "memory", "pids"]
            ]
            assert cgroups_named("job", root=tmp_path) == [
                tmp_path / hierarchy / "mine" / "job" for hierarchy in ["cpu", "memory", "pids"]
            ]
    finally:
        stop.set()
        thread.join()

"""The records' reserve on a real full file system: when SQLite says the disk is full
the store frees the reserve and the write goes through (issue 18 item 6).

Needs root (a tmpfs mount of its own)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker.jobs.disk import SpaceReserve
from jobworker.jobs.record import JobRecord
from jobworker.jobs.store import JobStore
from tests.conftest import require_root

pytestmark = [pytest.mark.root]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> None:
    """Write a file until the file system is full."""
    with contextlib.suppress(OSError), (directory / "filler").open("wb", buffering=0) as out:
        while True:
            out.write(bytes(64 << 10))


def big_record(job_id: str) -> JobRecord:
    return JobRecord(
        job_id=job_id, owner="betty", argv=("x" * (256 << 10),), state="Active", created_at=1.0
    )


@pytest.mark.parametrize("with_reserve", [True, False])
def test_a_full_disk_still_takes_a_record_while_the_reserve_lasts(
    tmp_path: Path, with_reserve: bool
) -> None:
    require_root()
    with tmpfs(tmp_path / "disk", "16m") as disk:
        store = JobStore.open(disk / "jobs.db")
        try:
            reserve = SpaceReserve.make(disk)
            assert reserve.held and reserve.size == 1 << 20  # a sixteenth of 16 MiB
            if with_reserve:
                store.on_full = reserve.release
            fill(disk)
            if not with_reserve:
                with pytest.raises(sqlite3.OperationalError, match="full"):
                    store.put_blocking(big_record("b"))
                return
            store.put_blocking(big_record("b"))
            assert not reserve.held
            assert [record.job_id for record in store.load()] == ["b"]
            (disk / "filler").unlink()
            reserve.refill()  # room again: the reserve is made again
            assert reserve.held
        finally:
            store.close()


def test_a_restart_on_a_full_disk_holds_the_reserve_it_finds(tmp_path: Path) -> None:
    """The next jwsd on a disk that filled up (its reserve still whole) takes that
    reserve over, though it could not make one there, so it can still free it."""
    require_root()
    with tmpfs(tmp_path / "disk", "16m") as disk:
        SpaceReserve.make(disk)
        fill(disk)
        again = SpaceReserve.make(disk)
        assert again.held
        assert again.release()

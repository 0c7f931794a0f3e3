"""The data dir's lock: one holder at a time, the holder's pid named to the next."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobworker.errors import SetupError
from jobworker.jobs.datadir import LOCK_NAME, DataDirLock


def test_a_second_holder_is_refused_naming_the_first_ones_pid_until_it_lets_go(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "made" / "on demand"
    first = DataDirLock.acquire(data_dir)
    assert (data_dir / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(SetupError, match=rf"another jwsd \(pid {os.getpid()}\) uses data dir"):
        DataDirLock.acquire(data_dir)  # flock: another open file is another holder
    first.release()
    first.release()  # idempotent
    DataDirLock.acquire(data_dir).release()


def test_a_pid_left_by_a_dead_holder_does_not_lock_the_next_one(tmp_path: Path) -> None:
    """Only the flock says who holds the data dir: the kernel drops it with its process."""
    (tmp_path / LOCK_NAME).write_text("999999999\n")
    lock = DataDirLock.acquire(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    lock.release()


def test_a_holder_that_wrote_no_pid_yet_is_still_refused(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path)
    (tmp_path / LOCK_NAME).write_text("")  # as between its flock and its write
    with pytest.raises(SetupError, match="its pid not yet written"):
        DataDirLock.acquire(tmp_path)
    first.release()

"""What a daemon keeps in its data dir across runs: the job records and each job's
directory, read straight from the files (not through the daemon)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from jobworker.jobs.record import JobRecord


def records(data_dir: Path) -> dict[str, JobRecord]:
    """Every job record in the data dir's store, by id ({} when there is no store)."""
    path = data_dir / "jobs.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT id, record FROM jobs").fetchall()
    finally:
        db.close()
    return {job_id: JobRecord.from_json(text) for job_id, text in rows}


def assert_only_records_left(data_dir: Path) -> None:
    """After a daemon (or tracker) has exited: every job dir belongs to a record of a
    terminated job, holds no work dir, and nothing is mounted below the data dir."""
    kept = records(data_dir)
    dirs = {d.name for d in (data_dir / "jobs").iterdir()}
    assert dirs <= set(kept), f"job dirs without a record: {dirs - set(kept)}"
    assert all(r.state == "Terminated" for r in kept.values()), "a record left not Terminated"
    assert not [d for d in dirs if (data_dir / "jobs" / d / "work").exists()], "work dirs left"
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        mounts = [line.split()[4] for line in info if line.split()[4].startswith(f"{data_dir}/")]
    assert mounts == [], "mounts left behind on the host"

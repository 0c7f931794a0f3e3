"""`JobStore`: records on disk, the schema's version and migrations, and the faults
that make jwsd refuse to start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from jobworker.errors import SetupError
from jobworker.jobs import store
from jobworker.jobs.record import JobRecord
from jobworker.jobs.store import JobStore


def record(job_id: str = "a", **fields: object) -> JobRecord:
    values: dict[str, object] = {
        "job_id": job_id,
        "owner": "alex",
        "argv": ("sh", "-c", "echo hi"),
        "state": "Active",
        "created_at": 1.0,
    }
    values.update(fields)
    return JobRecord(**values)  # type: ignore[arg-type]


async def test_records_outlive_the_connection_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    db = JobStore.open(path)
    first = record("a", limits={"memory": 16 << 20}, cgroups=("/sys/fs/cgroup/x",), env_keys=("K",))
    await db.put(first)
    await db.put(record("b", created_at=2.0))
    await db.put(record("b", created_at=2.0, state="Terminated", exit_code=3))
    await db.put(record("c", created_at=3.0))
    await db.delete("c")
    db.close()
    assert path.stat().st_mode & 0o777 == 0o600
    again = JobStore.open(path)
    try:
        loaded = again.load()
    finally:
        again.close()
    assert loaded == [first, record("b", created_at=2.0, state="Terminated", exit_code=3)]
    assert (
        sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    )


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"garbage " * 1000)
    with pytest.raises(SetupError, match=r"job database .* (unreadable|damaged).*move it away"):
        JobStore.open(path)


def test_a_database_of_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    JobStore.open(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 7")
    raw.close()
    before = path.read_bytes()
    with pytest.raises(
        SetupError, match=f"schema version 7, newer than this jwsd's {store.SCHEMA_VERSION}"
    ):
        JobStore.open(path)
    assert path.read_bytes() == before


def test_a_damaged_record_is_refused_naming_the_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    JobStore.open(path).close()
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO jobs VALUES ('bad-id', 'alex', 'Active', 1.0, '[1, 2]')")
    raw.commit()
    raw.close()
    db = JobStore.open(path)
    try:
        with pytest.raises(SetupError, match="damaged record for job bad-id"):
            db.load()
    finally:
        db.close()


async def test_an_older_schema_is_migrated_forward_keeping_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of this version opened by a jobworker of the next: the migration runs
    once, records are kept, and the version is the next."""
    path = tmp_path / "jobs.db"
    db = JobStore.open(path)
    await db.put(record("a"))
    db.close()
    following = store.SCHEMA_VERSION + 1
    monkeypatch.setattr(store, "SCHEMA_VERSION", following)
    monkeypatch.setattr(
        store, "MIGRATIONS", (*store.MIGRATIONS, "ALTER TABLE jobs ADD COLUMN note TEXT")
    )
    db = JobStore.open(path)
    try:
        assert db.load() == [record("a")]
    finally:
        db.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == following
    assert "note" in [row[1] for row in raw.execute("PRAGMA table_info(jobs)")]
    raw.close()
    JobStore.open(path).close()  # a second open has nothing to migrate


def test_fields_a_newer_minor_version_added_are_ignored() -> None:
    text = record("a").to_json()[:-1] + ',"future":1}'
    assert JobRecord.from_json(text) == record("a")


def file_bytes(path: Path) -> int:
    """The store's size on disk, its WAL included."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_removing_jobs_with_large_records_gives_their_space_back(tmp_path: Path) -> None:
    """jobs.db shrinks once large records are deleted (incremental auto-vacuum):
    records of 1 MiB commands never hold the disk after their jobs are gone."""
    path = tmp_path / "jobs.db"
    db = JobStore.open(path)
    big = ("x" * (128 << 10),) * 8  # 1 MiB of argv, as much as a job may have
    for n in range(20):
        await db.put(record(f"job-{n}", argv=big, created_at=float(n)))
    await db.put(record("small", created_at=99.0))
    db.close()
    full = file_bytes(path)
    assert full > 20 << 20
    db = JobStore.open(path)
    try:
        for n in range(20):
            await db.delete(f"job-{n}")
        assert db.load() == [record("small", created_at=99.0)]
    finally:
        db.close()
    assert file_bytes(path) < 1 << 20, f"{full} bytes before, {file_bytes(path)} after"


async def test_a_file_of_schema_1_is_switched_to_incremental_auto_vacuum(tmp_path: Path) -> None:
    """An existing jobs.db (written before auto-vacuum) is vacuumed once into the mode
    that gives space back, keeping its records."""
    path = tmp_path / "jobs.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.executescript(store.MIGRATIONS[0])
    raw.execute("PRAGMA user_version = 1")
    raw.execute(
        "INSERT INTO jobs VALUES (?, ?, ?, ?, ?)",
        ("a", "alex", "Active", 1.0, record("a").to_json()),
    )
    assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # none
    raw.close()
    db = JobStore.open(path)
    try:
        assert db.load() == [record("a")]
    finally:
        db.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert raw.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    raw.close()

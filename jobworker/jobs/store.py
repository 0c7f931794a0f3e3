"""`JobStore`: every job's record in one SQLite file in the data dir, so that
jwsd's jobs outlive jwsd.

One connection per daemon. Every call runs in a worker thread
(`trio.to_thread.run_sync`) through a `CapacityLimiter(1)` (one statement at a
time on the one connection) and is never abandoned on cancel: a transaction
is always done or not done, never half done, and the event loop never waits for
the disk.

The file: `DATA/jobs.db`, mode 0600 (records name users and commands), in WAL
mode with `synchronous=NORMAL`: a commit is in the WAL file before the call
returns, so it survives jwsd being killed at any moment (the kernel has the
bytes); only a power cut may lose the last commits, which costs an fsync per
job start otherwise (docs/architecture.md, "State on disk"). `busy_timeout`
makes a second opener (an operator's `sqlite3` shell) wait rather than fail.

Schema: `PRAGMA user_version` is the schema's version; `MIGRATIONS[n]` takes a
file from version n to n + 1, in one transaction each. A file from a newer
jobworker (a version above `SCHEMA_VERSION`) is refused: this jwsd cannot know
what it would lose by writing it.

A record is a `JobRecord` (`jobworker.jobs.record`), stored as its JSON.

A full disk: when SQLite says so (SQLITE_FULL), the store calls `on_full` (the
data dir's `SpaceReserve.release`, `jobworker.jobs.disk`) and, if it freed
space, tries the statement once more: one user filling the disk never stops
another's start or stop.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from jobworker.errors import SetupError
from jobworker.jobs.record import JobRecord

#: The schema version this jobworker writes.
SCHEMA_VERSION = 2

#: Each entry takes the schema from its index to the next version.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX jobs_by_owner ON jobs (owner);
    """,
    # Give the space of deleted records back to the file system (`_delete` runs an
    # incremental vacuum): a 1 MiB argv per job made jobs.db grow for good. Switching
    # an existing file needs one VACUUM, which cannot run in a transaction.
    """
    PRAGMA auto_vacuum = INCREMENTAL;
    VACUUM;
    """,
)

#: Migrations that cannot run in a transaction (VACUUM). Each is idempotent: a
#: crash before its version is written repeats it at the next start, harmlessly.
UNTRANSACTED = frozenset({1})

#: How long a statement waits for a lock another connection holds.
BUSY_TIMEOUT_MS = 5000

_T = TypeVar("_T")


class JobStore:
    """The job records of one data dir; see the module docstring.

    Open with `JobStore.open(path)` (synchronous: start-up only), close with `close()`.
    `on_write`, when set, is called with each record write's duration in seconds (from
    the worker thread that wrote it: it must be thread-safe, as a metric is).
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.on_write: Callable[[float], None] | None = None
        self._db = connection
        self._limiter = trio.CapacityLimiter(1)
        #: Frees space when the disk is full; returns whether it did.
        self.on_full: Callable[[], bool] | None = None

    @classmethod
    def open(cls, path: Path) -> JobStore:
        """Open (or create) the store at `path` and bring its schema up to date.

        Raises SetupError, in one line saying why and what to do, when the file
        cannot be opened, is not a SQLite database or is damaged, or was written by
        a newer jobworker.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except OSError as exc:
            raise SetupError(
                f"cannot open the job database {path}: {exc.strerror or exc}; "
                "check the data dir's permissions"
            ) from exc
        except sqlite3.Error as exc:
            raise SetupError(f"cannot open the job database {path}: {exc}") from exc
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _check_integrity(db, path)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            _migrate(db, path)
        except sqlite3.Error as exc:
            db.close()
            raise SetupError(
                f"the job database {path} is unreadable ({exc}); move it away to start with "
                "no job records, or restore it from a backup"
            ) from exc
        except BaseException:
            db.close()
            raise
        # The WAL and shared-memory files hold the same data: same mode.
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        return cls(path, db)

    def close(self) -> None:
        """Close the connection (a checkpoint folds the WAL into the file). Idempotent."""
        self._db.close()

    def load(self) -> list[JobRecord]:
        """Every record, oldest first. Synchronous: for start-up, before serving.
        Raises SetupError when the file cannot be read or a record is not one."""
        try:
            rows = self._db.execute(
                "SELECT id, record FROM jobs ORDER BY created_at, id"
            ).fetchall()
        except sqlite3.Error as exc:
            raise SetupError(
                f"the job database {self.path} is unreadable ({exc}); move it away to start "
                "with no job records, or restore it from a backup"
            ) from exc
        records = []
        for job_id, text in rows:
            try:
                records.append(JobRecord.from_json(text))
            except (ValueError, TypeError) as exc:
                raise SetupError(
                    f"the job database {self.path} has a damaged record for job {job_id} "
                    f"({exc}); delete that row, or move the file away to start afresh"
                ) from exc
        return records

    async def put(self, record: JobRecord) -> None:
        """Write `record` (insert, or replace the job's earlier one); it is on disk
        when this returns. Raises sqlite3.Error (a full disk: OperationalError)."""
        await self._run(self._put, record)

    async def delete(self, job_id: str) -> None:
        """Delete the job's record (none: nothing happens). Raises sqlite3.Error."""
        await self._run(self._delete, job_id)

    def put_blocking(self, record: JobRecord) -> None:
        """`put` for synchronous start-up code."""
        self._unless_full(self._put, record)

    def delete_blocking(self, job_id: str) -> None:
        """`delete` for synchronous start-up code."""
        self._unless_full(self._delete, job_id)

    # ---- internals ---------------------------------------------------------

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        return await trio.to_thread.run_sync(
            self._unless_full, function, *args, limiter=self._limiter, abandon_on_cancel=False
        )

    def _unless_full(self, function: Callable[..., _T], *args: Any) -> _T:
        """`function(*args)`, once more after `on_full` freed space if the disk was full."""
        try:
            return function(*args)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL or not (self.on_full and self.on_full()):
                raise
        return function(*args)

    def _put(self, record: JobRecord) -> None:
        started = time.perf_counter()
        self._db.execute(
            "INSERT OR REPLACE INTO jobs (id, owner, state, created_at, record) "
            "VALUES (?, ?, ?, ?, ?)",
            (record.job_id, record.owner, record.state, record.created_at, record.to_json()),
        )
        if self.on_write is not None:
            self.on_write(time.perf_counter() - started)

    def _delete(self, job_id: str) -> None:
        self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        # The freed pages go back to the file system (at the next checkpoint, in WAL
        # mode). A script: `execute` steps the pragma once, which frees one page only.
        self._db.executescript("PRAGMA incremental_vacuum;")


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _check_integrity(db: sqlite3.Connection, path: Path) -> None:
    """Raise SetupError unless SQLite finds the file sound (a quick check: it reads
    every page once, milliseconds for thousands of records)."""
    problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise SetupError(
            f"the job database {path} is damaged ({problems[0]}); move it away to start with "
            "no job records, or restore it from a backup"
        )


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, one migration per transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SetupError(
            f"the job database {path} has schema version {version}, newer than this jwsd's "
            f"{SCHEMA_VERSION}: it was written by a newer jobworker; run that version (or "
            "newer), or move the file away to start with no job records"
        )
    while version < SCHEMA_VERSION:
        if version in UNTRANSACTED:
            _run_script(db, MIGRATIONS[version])
            version += 1
            db.execute(f"PRAGMA user_version = {version}")
            continue
        with _transaction(db):
            _run_script(db, MIGRATIONS[version])
            version += 1
            db.execute(f"PRAGMA user_version = {version}")


def _run_script(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "JobStore"]

"""`AuditLog`: who did what to which job, from where, and how it ended — kept apart
from the jobs, so that it outlives them.

One `Entry` per call that changes something or reads a job's data (StartJob,
StopJob, RemoveJob, GetJobOutput, WatchJobs, GetAuditLog), per refused call of any method
(every status but OK and CANCELLED: an unknown user, access denied, a quota, an
invalid request, shutting down), and per failed TLS handshake. The call guard
(`jobworker.server.auth`) makes the entry when the handler is done and writes it
before the answer leaves: a call whose answer a client saw has its record on
disk, even if jwsd is SIGKILLed right after (the write is SQLite's, in WAL mode,
as the job records are: it survives the process, not a power cut).

Where: `DATA/audit.db`, a SQLite file of its own, so an audit write never queues
behind a job record's and the other way round. A write is inline on trio's
thread (an append to the WAL, no fsync, no checkpoint: `AuditLog.record` says
why); queries and the WAL's checkpoints run in a worker thread on a connection
of their own, and never make a write wait. `jws rm` and the jobs' retention never touch it; its own retention
(`--audit-retention`, by age) and size bound (`--audit-max-records`) prune the
oldest entries, at start-up and every `PRUNE_INTERVAL` (`PRUNE_CHUNK` at a time).

A full disk (any write error) never loses a record silently: the entry is logged
at ERROR, counted in `jobworker_audit_write_failures_total`, and the next write
that succeeds first writes a `gap` entry saying how many were lost, from when to
when. Every entry is also one JSON line in jwsd's log (logger `jobworker.audit`),
with control characters (and all non-ASCII) escaped, for journald or a shipper.

What an entry holds is bounded whatever the request was: a command is its argv
cut to `MAX_COMMAND_BYTES` (`model.cut_argv`), the environment its names only (never a
value), cut to `MAX_ENV_NAMES_BYTES`; every text is JSON-escaped when stored and
`echo.quoted` when shown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from cryptography import x509

from jobworker.errors import SetupError
from jobworker.transport import Peer

log = logging.getLogger(__name__)
#: One JSON line per entry.
audit_log = logging.getLogger("jobworker.audit")

#: The audit trail's file in the data dir.
AUDIT_NAME: Final = "audit.db"
#: How long an entry is kept by default (90 days).
DEFAULT_RETENTION: Final = 90 * 86400.0
#: How many entries are kept at most by default.
DEFAULT_MAX_RECORDS: Final = 1_000_000
#: Seconds between two prunings.
PRUNE_INTERVAL: Final = 3600.0
#: The most entries one step of a pruning deletes (a few ms on trio's thread).
PRUNE_CHUNK: Final = 500
#: Seconds between two checkpoints of the WAL into the file (when there were writes).
CHECKPOINT_INTERVAL: Final = 2.0
#: How long a query waits for a lock (a checkpoint) before it fails.
BUSY_TIMEOUT_MS: Final = 5000
#: The most entries one GetAuditLog answer holds.
MAX_PAGE: Final = 200
#: Bytes of a start's argv an entry keeps (arguments' UTF-8 plus one each).
MAX_COMMAND_BYTES: Final = 1024
#: Bytes of a start's environment names an entry keeps.
MAX_ENV_NAMES_BYTES: Final = 512
#: The most bytes of a text field (a user, a peer, a job id as sent, a reason).
MAX_FIELD: Final = 256
#: How many certificates' serial and fingerprint are remembered.
_IDENTITY_CACHE: Final = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    user TEXT NOT NULL,
    job_id TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user, id);
CREATE INDEX IF NOT EXISTS audit_job ON audit (job_id, id);
"""


def _cut(text: str, limit: int = MAX_FIELD) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@attrs.frozen
class Identity:
    """The client certificate of a call: its Common Name (None: none usable), serial
    (hex) and SHA-256 fingerprint (hex) of its DER; "" for each without a certificate."""

    common_name: str | None = None
    serial: str = ""
    fingerprint: str = ""


class Identities:
    """The `Identity` of each peer's certificate, parsed once per certificate."""

    def __init__(self) -> None:
        self._known: dict[bytes, tuple[str, str]] = {}

    def of(self, peer: Peer | None) -> Identity:
        if peer is None:
            return Identity()
        if peer.certificate is None:
            return Identity(peer.common_name)
        known = self._known.get(peer.certificate)
        if known is None:
            if len(self._known) >= _IDENTITY_CACHE:
                self._known.clear()
            try:
                serial = f"{x509.load_der_x509_certificate(peer.certificate).serial_number:x}"
            except ValueError:
                serial = ""
            known = (serial, hashlib.sha256(peer.certificate).hexdigest())
            self._known[peer.certificate] = known
        return Identity(peer.common_name, *known)


@attrs.frozen
class Entry:
    """One audit record.

    time: Unix time of the call's end. user: the authenticated user ("-" before
    or without one). identity: the certificate. peer: "host:port" ("-": unknown).
    method: the RPC method, or "tls-handshake", or "gap". job_id: as checked, or as
    sent when the call was refused before ("-": none). code: the gRPC status name.
    detail: what else the call said (a start's command, env names and limits; an
    output read's offset and the job's owner; a refusal's reason), JSON-safe values.
    id: its row, once stored (0 before).
    """

    time: float
    user: str
    identity: Identity
    peer: str
    method: str
    job_id: str
    code: str
    detail: Mapping[str, Any] = attrs.field(factory=dict)
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 6),
            "user": _cut(self.user),
            "cn": _cut(self.identity.common_name or "-"),
            "serial": self.identity.serial,
            "sha256": self.identity.fingerprint,
            "peer": _cut(self.peer),
            "method": _cut(self.method),
            "job": _cut(self.job_id),
            "code": self.code,
            "detail": dict(self.detail),
        }

    def to_json(self) -> str:
        # ensure_ascii: every control character and every non-ASCII one is a \\u escape,
        # so a line is one printable line whatever a request held.
        return json.dumps(self.to_dict(), ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_row(cls, row_id: int, text: str) -> Entry:
        data = json.loads(text)
        return cls(
            time=float(data["time"]),
            user=str(data["user"]),
            identity=Identity(
                None if data["cn"] == "-" else str(data["cn"]),
                str(data["serial"]),
                str(data["sha256"]),
            ),
            peer=str(data["peer"]),
            method=str(data["method"]),
            job_id=str(data["job"]),
            code=str(data["code"]),
            detail=dict(data["detail"]),
            id=row_id,
        )


@attrs.frozen
class Query:
    """Which entries to read: of `user` and/or `job_id` (None: any), at or after
    `since` (Unix time; None: any), with an id below `before_id` (None: the newest);
    at most `limit`, newest first."""

    user: str | None = None
    job_id: str | None = None
    since: float | None = None
    before_id: int | None = None
    limit: int = MAX_PAGE


class AuditLog:
    """The audit trail of one data dir; see the module docstring.

    Open with `AuditLog.open(path, ...)` (synchronous: start-up only), run `run()`
    in a nursery for the checkpoints and the retention, close with `close()`.
    `on_failure` is called once per entry that could not be written (a metric's `inc`).
    """

    def __init__(
        self,
        path: Path,
        db: sqlite3.Connection,
        reader: sqlite3.Connection,
        *,
        retention: float | None,
        max_records: int | None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.retention = retention
        self.max_records = max_records
        self.identities = Identities()
        self._db = db  # trio's thread only: every write
        self._reader = reader  # worker threads only: queries and checkpoints
        self._limiter = trio.CapacityLimiter(1)
        self._on_failure = on_failure
        self._written = 0  # entries since the last checkpoint
        # Entries lost since the last write that succeeded: (how many, first, last time).
        self._lost: tuple[int, float, float] | None = None

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        retention: float | None = DEFAULT_RETENTION,
        max_records: int | None = DEFAULT_MAX_RECORDS,
        on_failure: Callable[[], None] | None = None,
    ) -> AuditLog:
        """Open (or create) the audit file at `path`; prune it. Raises SetupError
        saying why and what to do when it cannot be opened or is damaged."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise SetupError(
                f"cannot open the audit trail {path}: {exc}; check the data dir's permissions"
            ) from exc
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            # No checkpoint in a write (it would fsync on trio's thread): `run` makes them.
            db.execute("PRAGMA wal_autocheckpoint = 0")
            db.executescript(_SCHEMA)
            reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # A first read opens its WAL and shared-memory files now, not at the first
            # checkpoint: the fds it holds are the same from start to end.
            reader.execute("SELECT count(*) FROM (SELECT 1 FROM audit LIMIT 1)").fetchone()
        except sqlite3.Error as exc:
            db.close()
            raise SetupError(
                f"the audit trail {path} is unreadable ({exc}); move it away (and keep it: "
                "it is the record of who did what) to start a new one"
            ) from exc
        audit = cls(
            path, db, reader, retention=retention, max_records=max_records, on_failure=on_failure
        )
        try:
            while audit._prune_some():
                pass
        except sqlite3.Error as exc:
            log.error("cannot prune the audit trail %s: %s", path, exc)
        return audit

    def close(self) -> None:
        """Close the file (the last connection's close checkpoints the WAL)."""
        self._reader.close()
        self._db.close()

    async def run(self) -> None:
        """Until cancelled: checkpoint the WAL into the file every CHECKPOINT_INTERVAL
        (in a worker thread, a connection of its own: writes never wait for it), and
        prune every PRUNE_INTERVAL (on trio's thread, PRUNE_CHUNK entries at a time)."""
        next_prune = trio.current_time() + PRUNE_INTERVAL
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL)
            try:
                if trio.current_time() >= next_prune:
                    next_prune = trio.current_time() + PRUNE_INTERVAL
                    while self._prune_some():
                        await trio.lowlevel.checkpoint()  # others get a turn between chunks
                if self._written:
                    self._written = 0
                    await trio.to_thread.run_sync(
                        self._reader.execute,
                        "PRAGMA wal_checkpoint(PASSIVE)",
                        limiter=self._limiter,
                        abandon_on_cancel=False,
                    )
            except sqlite3.Error as exc:
                log.error("cannot checkpoint or prune the audit trail %s: %s", self.path, exc)

    def record(self, entry: Entry) -> None:
        """Write `entry` (on disk, in the WAL, when this returns) and log it as a JSON
        line. Never raises for a write that fails: that is logged, counted, and said by
        a gap entry once writing works again (see the module docstring).

        Inline on trio's thread, by design: an append to the WAL with no fsync and no
        checkpoint (`run` makes those), some 50 µs. A worker thread's round trip cost
        a loaded 2-core host 20-40 ms per call (two thread wake-ups), on the critical
        path of every audited call."""
        audit_log.info("%s", entry.to_json())
        try:
            self._insert(entry)
        except sqlite3.Error as exc:
            log.error(
                "cannot write an audit record (%s); it is only in this log: %s",
                exc,
                entry.to_json(),
            )
            count, first, _ = self._lost or (0, entry.time, entry.time)
            self._lost = (count + 1, first, entry.time)
            if self._on_failure is not None:
                self._on_failure()

    async def query(self, query: Query) -> list[Entry]:
        """The entries `query` asks for, newest first (a worker thread, its own
        connection: a reader of the WAL never waits for the writes). Raises sqlite3.Error."""
        entries: list[Entry] = await trio.to_thread.run_sync(
            self._select, query, limiter=self._limiter, abandon_on_cancel=False
        )
        return entries

    # ---- internals ---------------------------------------------------------

    def _insert(self, entry: Entry) -> None:
        rows = [entry]
        if self._lost is not None:
            count, first, last = self._lost
            rows.insert(
                0,
                Entry(
                    time=last,
                    user="-",
                    identity=Identity(),
                    peer="-",
                    method="gap",
                    job_id="-",
                    code="DATA_LOSS",
                    detail={"lost": count, "from": first, "to": last},
                ),
            )
        with self._db:  # one transaction: the gap and the entry land together, or neither
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO audit (time, user, job_id, entry) VALUES (?, ?, ?, ?)",
                [(row.time, _cut(row.user), _cut(row.job_id), row.to_json()) for row in rows],
            )
        self._lost = None
        self._written += len(rows)

    def _select(self, query: Query) -> list[Entry]:
        conditions = (
            ("user = ?", query.user),
            ("job_id = ?", query.job_id),
            ("time >= ?", query.since),
            ("id < ?", query.before_id),
        )
        where = [sql for sql, value in conditions if value is not None]
        args: list[object] = [value for _, value in conditions if value is not None]
        sql = "SELECT id, entry FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(max(1, min(query.limit, MAX_PAGE)))
        rows = self._reader.execute(sql, args)
        return [Entry.from_row(row_id, text) for row_id, text in rows]

    def _prune_some(self) -> bool:
        """Delete at most PRUNE_CHUNK of the oldest entries past the bounds; whether
        there may be more."""
        cutoff = -math.inf if self.retention is None else time.time() - self.retention
        keep = self.max_records
        if keep is not None:
            # The id of the newest entry past the size bound (None: within it).
            row = self._db.execute(
                "SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,)
            ).fetchone()
            last_over = row[0] if row is not None else -1
        else:
            last_over = -1
        deleted = self._db.execute(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE time < ? OR id <= ? "
            "ORDER BY id LIMIT ?)",
            (cutoff, last_over, PRUNE_CHUNK),
        ).rowcount
        return bool(deleted == PRUNE_CHUNK)


__all__ = [
    "AUDIT_NAME",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_RETENTION",
    "MAX_PAGE",
    "AuditLog",
    "Entry",
    "Identities",
    "Identity",
    "Query",
]

"""The audit trail's file (`jobworker.server.audit.AuditLog`): entries come back as
written, newest first and filtered; retention and the size bound prune the oldest;
a write that fails (a full database) loses no entry silently; every JSON line is
one escaped line."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import attrs
import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from jobworker.errors import SetupError
from jobworker.server import audit as audit_module
from jobworker.server.audit import AuditLog, Entry, Identities, Identity, Query
from jobworker.transport import Peer


def _entry(n: int, *, user: str = "alex", job: str = "-", at: float | None = None) -> Entry:
    return Entry(
        time=time.time() if at is None else at,
        user=user,
        identity=Identity(user, "1f", "ab" * 32),
        peer="127.0.0.1:4000",
        method="StartJob",
        job_id=job,
        code="OK",
        detail={"n": n},
    )


async def test_entries_come_back_newest_first_filtered_and_paged(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path / "audit.db")
    try:
        for n in range(6):
            audit.record(_entry(n, user="alex" if n % 2 else "betty", job=f"job-{n % 3}"))
        newest = await audit.query(Query(limit=3))
        assert [e.detail["n"] for e in newest] == [5, 4, 3]
        older = await audit.query(Query(before_id=newest[-1].id, limit=3))
        assert [e.detail["n"] for e in older] == [2, 1, 0]
        assert [e.detail["n"] for e in await audit.query(Query(user="alex"))] == [5, 3, 1]
        assert [e.detail["n"] for e in await audit.query(Query(job_id="job-1"))] == [4, 1]
        assert newest[0].identity == Identity("alex", "1f", "ab" * 32)
    finally:
        audit.close()


async def test_retention_and_the_size_bound_prune_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    audit = AuditLog.open(path)
    now = time.time()
    for n in range(5):
        audit.record(_entry(n, at=now - 100 + n))  # 100 s to 96 s old
    for n in range(5, 10):
        audit.record(_entry(n))
    audit.close()
    audit = AuditLog.open(path, retention=50, max_records=None)
    assert [e.detail["n"] for e in await audit.query(Query())] == [9, 8, 7, 6, 5]
    audit.close()
    audit = AuditLog.open(path, retention=None, max_records=2)
    try:
        assert [e.detail["n"] for e in await audit.query(Query())] == [9, 8]
    finally:
        audit.close()


async def test_a_full_database_loses_no_entry_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite says the database is full: the entry is logged whole at ERROR and counted;
    once writes work again, a gap entry says how many were lost, from when to when."""
    failures: list[None] = []
    audit = AuditLog.open(tmp_path / "audit.db", on_failure=lambda: failures.append(None))
    try:
        audit.record(_entry(0))
        pages = audit._db.execute("PRAGMA page_count").fetchone()[0]
        audit._db.execute(f"PRAGMA max_page_count = {pages}")
        big = attrs.evolve(_entry(1), detail={"n": 1, "pad": "x" * 20000})
        with caplog.at_level(logging.ERROR, logger="jobworker.server.audit"):
            audit.record(big)
            audit.record(big)
        assert len(failures) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2 and all('"n":1' in m and "full" in m for m in errors), errors
        audit._db.execute("PRAGMA max_page_count = 1073741823")
        audit.record(_entry(2))
        methods = [(e.method, e.code, e.detail.get("lost")) for e in await audit.query(Query())]
        assert methods == [
            ("StartJob", "OK", None),
            ("gap", "DATA_LOSS", 2),
            ("StartJob", "OK", None),
        ]
    finally:
        audit.close()


async def test_each_entry_is_one_escaped_json_line_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog.open(tmp_path / "audit.db")
    hostile = "\x1b[2J\nfake line\u2028\x00é"
    try:
        with caplog.at_level(logging.INFO, logger="jobworker.audit"):
            audit.record(attrs.evolve(_entry(0), detail={"argv": [hostile]}))
        (line,) = [r.getMessage() for r in caplog.records if r.name == "jobworker.audit"]
        assert line.isascii() and line.isprintable(), line
        assert json.loads(line)["detail"]["argv"] == [hostile]
        (stored,) = await audit.query(Query())
        assert stored.detail["argv"] == [hostile]
    finally:
        audit.close()


def test_the_identity_is_the_certificates_serial_and_sha256_fingerprint() -> None:
    leaf = trustme.CA().issue_cert("alex@example")
    pem = leaf.cert_chain_pems[0].bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(Encoding.DER)
    identity = Identities().of(Peer("alex", "127.0.0.1:1", der))
    assert identity == Identity(
        "alex", f"{cert.serial_number:x}", cert.fingerprint(hashes.SHA256()).hex()
    )
    assert Identities().of(None) == Identity()


def test_a_damaged_file_is_a_setup_error_saying_to_keep_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(SetupError, match="keep it"):
        AuditLog.open(path)
    # The file is left as it was.
    assert path.read_bytes().startswith(b"not a database")


async def test_run_prunes_in_chunks_and_checkpoints_while_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries past the retention while jwsd runs are pruned (PRUNE_CHUNK at a time),
    and the WAL is checkpointed into the file, by `run`."""
    monkeypatch.setattr(audit_module, "PRUNE_INTERVAL", 0.0)
    monkeypatch.setattr(audit_module, "CHECKPOINT_INTERVAL", 0.05)
    monkeypatch.setattr(audit_module, "PRUNE_CHUNK", 3)
    path = tmp_path / "audit.db"
    audit = AuditLog.open(path, retention=50, max_records=None)
    try:
        for n in range(10):
            audit.record(_entry(n, at=time.time() - 100))  # past the retention
        audit.record(_entry(10))
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(audit.run)
                while len(await audit.query(Query())) > 1:
                    await trio.sleep(0.05)
                while audit._written:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        assert [e.detail["n"] for e in await audit.query(Query())] == [10]
        wal = path.with_name(path.name + "-wal")
        busy, pages, done = audit._reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, pages - done) == (0, 0), wal.stat().st_size  # nothing left to copy
    finally:
        audit.close()

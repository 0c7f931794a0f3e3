"""The audit trail through the real jwsd and jws: every kind of call and refusal
leaves exactly one record with the caller's certificate and peer; a record outlives
`jws rm`, the jobs' retention and a SIGKILL of jwsd (right after a call returned,
and at the `call.audited` fault point); `jws audit` is for admins only.

Hierarchy-independent: the trail is a file and the call guard; no cgroup matters.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.conftest import require_root
from tests.e2e.conftest import Jwsd, restart_jwsd, start_jwsd
from tests.e2e.test_watch import events_until, kinds
from tests.support.certs import TestPKI
from tests.support.timing import scaled
from tests.support.waiting import eventually_blocking

pytestmark = [pytest.mark.e2e, pytest.mark.hierarchy_independent]

HOSTILE_ARG = "hi\x1b[2J\nfake line"


def _ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(result.stdout.decode()).strip()


def _trail(daemon: Jwsd, *args: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(
        _ok(daemon.jws("audit", "--json", "--limit", "200", *args, user="admin"))
    )
    return records


def _certificate(daemon: Jwsd, user: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((daemon.tls_dir / user / "client_cert.pem").read_bytes())


def _terminated(daemon: Jwsd, job_id: str) -> None:
    def ended() -> bool:
        status = json.loads(_ok(daemon.jws("status", "-j", job_id, "--json")))
        return bool(status["status"] == "Terminated")

    eventually_blocking(ended, timeout=scaled(20), what=f"job {job_id} ends")


def _handshake_without_certificate(daemon: Jwsd) -> None:
    """A TLS 1.3 connection that presents no client certificate: jwsd refuses it."""
    host, port = daemon.addr.rsplit(":", 1)
    context = ssl.create_default_context(cafile=daemon.tls_dir / "server_ca_cert.pem")
    context.check_hostname = False
    with (
        socket.create_connection((host, int(port)), timeout=scaled(10)) as raw,
        context.wrap_socket(raw) as tls,
        contextlib.suppress(ssl.SSLError, ConnectionError),
    ):
        tls.recv(1)  # the server's alert arrives here (TLS 1.3)


@pytest.fixture
def audited(tmp_path: Path, pki: TestPKI) -> Any:
    require_root()
    daemon = start_jwsd(tmp_path, pki, "--max-running-per-user", "1", "--max-limits", "memory=1G")
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log


def test_every_kind_of_call_and_refusal_leaves_exactly_one_record(audited: Jwsd) -> None:
    daemon = audited
    first = _ok(daemon.jws("start", "-e", "SECRET_NAME=topsecretvalue", "--", "echo", HOSTILE_ARG))
    _terminated(daemon, first)
    _ok(daemon.jws("output", "-j", first))
    assert daemon.jws("output", "-j", first, user="betty").returncode != 0
    assert daemon.jws("status", "-j", first, user="betty").returncode != 0
    assert daemon.jws("status", "-j", first, user="mallory").returncode != 0
    assert daemon.jws("start", "--memory", "2G", "--", "true").returncode != 0
    second = _ok(daemon.jws("start", "--", "sleep", "60"))
    assert daemon.jws("start", "--", "true").returncode != 0  # one running job at most
    _ok(daemon.jws("stop", "-j", second))
    _ok(daemon.jws("rm", "-j", first))
    refused = daemon.jws("audit", user="betty")
    assert refused.returncode != 0 and b"access denied" in refused.stderr, refused.stderr
    _handshake_without_certificate(daemon)
    eventually_blocking(
        lambda: any(r["method"] == "tls-handshake" for r in _trail(daemon)),
        timeout=scaled(10),
        what="the failed handshake is recorded",
    )

    # Each admin query is itself recorded (GetAuditLog OK): leave those out.
    trail = [r for r in _trail(daemon) if not (r["method"] == "GetAuditLog" and r["code"] == "OK")]
    kinds = Counter((r["method"], r["code"], r["user"]) for r in trail)
    assert kinds == Counter(
        {
            ("StartJob", "OK", "alex"): 2,
            ("GetJobOutput", "OK", "alex"): 1,
            ("GetJobOutput", "PERMISSION_DENIED", "betty"): 1,
            ("GetJobStatus", "PERMISSION_DENIED", "betty"): 1,
            ("GetJobStatus", "UNAUTHENTICATED", "-"): 1,
            ("StartJob", "INVALID_ARGUMENT", "alex"): 1,
            ("StartJob", "RESOURCE_EXHAUSTED", "alex"): 1,
            ("StopJob", "OK", "alex"): 1,
            ("RemoveJob", "OK", "alex"): 1,
            ("GetAuditLog", "PERMISSION_DENIED", "betty"): 1,
            ("tls-handshake", "UNAUTHENTICATED", "-"): 1,
        }
    ), kinds

    for record in trail:
        if record["method"] == "tls-handshake":
            assert (record["common_name"], record["serial"]) == ("-", "")
            assert record["peer"].startswith("127.0.0.1:")
            continue
        cn = "mallory" if record["code"] == "UNAUTHENTICATED" else record["user"]
        cert = _certificate(daemon, cn)
        assert record["common_name"] == cn
        assert record["serial"] == f"{cert.serial_number:x}"
        assert record["fingerprint_sha256"] == cert.fingerprint(hashes.SHA256()).hex()
        assert record["peer"].startswith("127.0.0.1:"), record

    (start,) = [r for r in trail if r["method"] == "StartJob" and r["job_id"] == first]
    assert start["detail"]["argv"] == ["echo", HOSTILE_ARG]  # outlived `jws rm`
    assert start["detail"]["env_names"] == ["SECRET_NAME"]
    (read,) = [r for r in trail if r["method"] == "GetJobOutput" and r["code"] == "OK"]
    assert (read["job_id"], read["detail"]["offset"], read["detail"]["owner"]) == (first, 0, "alex")

    # Never an environment value, on disk or in the log; the log's lines are escaped.
    assert b"topsecretvalue" not in (daemon.data_dir / "audit.db").read_bytes()
    log = daemon.log_path.read_bytes()
    assert b"topsecretvalue" not in log and b"\x1b" not in log
    lines = [
        line.split("jobworker.audit: ", 1)[1]
        for line in daemon.log.splitlines()
        if "jobworker.audit: " in line
    ]
    logged = [json.loads(line) for line in lines]
    assert any(entry["detail"].get("argv") == ["echo", HOSTILE_ARG] for entry in logged)

    text = _ok(daemon.jws("audit", "--of", "betty", user="admin"))
    assert len(text.splitlines()) == 3 and "PERMISSION_DENIED" in text, text


def test_a_record_outlives_the_jobs_retention(tmp_path: Path, pki: TestPKI) -> None:
    require_root()
    daemon = start_jwsd(tmp_path, pki, "--retention", "1s")
    try:
        job_id = _ok(daemon.jws("start", "--", "true"))
        eventually_blocking(
            lambda: b"no job with id" in daemon.jws("status", "-j", job_id).stderr,
            timeout=scaled(20),
            what="the retention forgets the job",
        )
        trail = _trail(daemon, "-j", job_id)
        # The start, then the status calls that found the job gone (refusals: NOT_FOUND).
        assert (trail[-1]["method"], trail[-1]["code"]) == ("StartJob", "OK")
        assert {(r["method"], r["code"]) for r in trail[:-1]} == {("GetJobStatus", "NOT_FOUND")}
    finally:
        assert daemon.stop() == 0, daemon.log


def test_a_record_survives_a_sigkill_right_after_the_call_and_at_the_fault_point(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """SIGKILL as soon as `jws start` returned; then jwsd dies at `call.audited` (its
    record written, the answer not sent) during a `jws rm`: both records are there."""
    require_root()
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = _ok(first.jws("start", "--", "true"))
    first.stop(signal.SIGKILL)
    armed = restart_jwsd(first, pki, env={"JOBWORKER_FAULT_POINT": "call.audited"})
    daemons.append(armed)
    _terminated(armed, job_id)  # a status: not audited, so not the armed point
    assert armed.jws("rm", "-j", job_id).returncode != 0  # no answer: jwsd died
    armed.process.wait(timeout=scaled(10))
    assert "fault point call.audited: killing myself" in armed.log
    again = restart_jwsd(armed, pki)
    daemons.append(again)
    trail = _trail(again, "-j", job_id)
    assert [(r["method"], r["code"]) for r in reversed(trail)] == [
        ("StartJob", "OK"),
        ("RemoveJob", "OK"),
    ]


def test_no_audit_keeps_no_trail_and_says_so(tmp_path: Path, pki: TestPKI) -> None:
    """`jwsd --no-audit` (the bench's "off"): no audit.db, no audit line, and `jws audit`
    says there is no trail instead of showing an empty one."""
    require_root()
    daemon = start_jwsd(tmp_path, pki, "--no-audit")
    try:
        _ok(daemon.jws("start", "--", "true"))
        refused = daemon.jws("audit", user="admin")
        assert refused.returncode != 0 and b"keeps no audit trail" in refused.stderr
        assert not (daemon.data_dir / "audit.db").exists()
        assert "jobworker.audit" not in daemon.log
    finally:
        assert daemon.stop() == 0, daemon.log


def test_a_watch_is_audited_as_a_read_of_job_data(audited: Jwsd) -> None:
    """WatchJobs reads jobs' data as GetJobOutput does: each stream leaves one record
    when it ends (the client leaving: CANCELLED), with what it selected; a refused
    one its refusal."""
    daemon = audited
    job_id = _ok(daemon.jws("start", "--label", "team=a", "--", "true"))
    _terminated(daemon, job_id)
    events = daemon.popen("events", "-j", job_id, "--label", "team=a", "--json")
    try:
        assert kinds(events_until(events, 1, "the watch begins")) == ["watching"]
    finally:
        events.kill()
        events.communicate(timeout=scaled(10))  # closes its pipes
    refused = daemon.jws("events", "-j", job_id, user="betty")
    assert refused.returncode == 1 and b"access denied" in refused.stderr, refused.stderr

    def watches() -> list[dict[str, Any]]:
        return [r for r in _trail(daemon) if r["method"] == "WatchJobs"]

    eventually_blocking(
        lambda: len(watches()) == 2, timeout=scaled(10), what="both watches are recorded"
    )
    mine, bettys = sorted(watches(), key=lambda r: r["user"])
    assert (mine["user"], mine["code"]) == ("alex", "CANCELLED")
    assert mine["detail"]["jobs"] == [job_id] and mine["detail"]["labels"] == ["team=a"]
    assert mine["common_name"] == "alex" and mine["peer"].startswith("127.0.0.1:")
    assert (bettys["user"], bettys["code"]) == ("betty", "PERMISSION_DENIED")

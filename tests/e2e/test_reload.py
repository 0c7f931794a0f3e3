"""SIGHUP (`systemctl reload jwsd`) re-reads the TLS files and the users file of the real
jwsd: new connections get the new server certificate and client CA, a revoked user's
open streams end and their next call is refused, everything else goes on, and a file
that is wrong is refused in one line with the configuration in force kept."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.e2e.conftest import Jwsd, start_jwsd
from tests.support import certs
from tests.support.certs import TestPKI
from tests.support.timing import scaled
from tests.support.waiting import eventually_blocking

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.hierarchy_independent]

TICKER = "sh -c 'i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done'"


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def reload(jwsd: Jwsd, outcome: str = "reloaded") -> str:
    """SIGHUP jwsd and return its log line saying how the reload went (`outcome`:
    "reloaded" or "reload refused")."""
    before = jwsd.log.count("got SIGHUP:")
    os.kill(jwsd.process.pid, signal.SIGHUP)
    eventually_blocking(
        lambda: jwsd.log.count("got SIGHUP:") > before, timeout=scaled(10), what="jwsd reloads"
    )
    line = [line for line in jwsd.log.splitlines() if "got SIGHUP:" in line][before]
    assert outcome in line, line
    return line


def server_serial(jwsd: Jwsd, user: str = "alex") -> int:
    """The serial of the certificate jwsd shows a new connection."""
    return certs.server_serial(jwsd.addr, jwsd.tls_dir, user, timeout=scaled(10))


def write_server_cert(tls_dir: Path, cert: trustme.LeafCert) -> None:
    cert.cert_chain_pems[0].write_to_path(str(tls_dir / "server_cert.pem"))
    cert.private_key_pem.write_to_path(str(tls_dir / "server_key.pem"))


def follow(jwsd: Jwsd, job_id: str, user: str) -> subprocess.Popen[bytes]:
    """`jws output -j` of `user`, once it has printed its first line (so it follows)."""
    follower = jwsd.popen("output", "-j", job_id, user=user)
    assert follower.stdout is not None
    assert follower.stdout.readline().startswith(b"tick ")
    return follower


def close(follower: subprocess.Popen[bytes]) -> None:
    follower.kill()
    follower.wait()
    for pipe in (follower.stdout, follower.stderr):
        if pipe is not None:
            pipe.close()


def state(jwsd: Jwsd, job_id: str) -> str:
    return ok(jwsd.jws("status", "-j", job_id, user="admin")).splitlines()[0]


def test_a_new_connection_gets_the_server_certificate_of_the_reload(
    jwsd: Jwsd, pki: TestPKI
) -> None:
    old = server_serial(jwsd)
    new = pki.server_ca.issue_cert("localhost", "127.0.0.1")
    write_server_cert(jwsd.tls_dir, new)
    line = reload(jwsd)
    serial = x509.load_pem_x509_certificate(new.cert_chain_pems[0].bytes()).serial_number
    assert f"serial {serial:x}" in line
    assert server_serial(jwsd) == serial != old
    assert ok(jwsd.jws("list")) is not None  # and jws works on with it


def test_a_user_removed_from_the_users_file_loses_their_streams_and_nobody_else(
    jwsd: Jwsd, tmp_path: Path
) -> None:
    betty_job = ok(jwsd.jws("start", "-c", TICKER, user="betty")).strip()
    alex_job = ok(jwsd.jws("start", "-c", TICKER, user="alex")).strip()
    betty = follow(jwsd, betty_job, "betty")
    alex = follow(jwsd, alex_job, "alex")
    try:
        (tmp_path / "users.toml").write_text('[users]\nalex = "user"\nadmin = "admin"\n')
        line = reload(jwsd)
        assert "ended 1 calls" in line, line
        # betty's stream ends at once with UNAUTHENTICATED, as her next call does.
        assert betty.wait(timeout=scaled(10)) == 1
        assert betty.stderr is not None
        assert betty.stderr.read().decode() == "jws: unknown user 'betty'\n"
        refused = jwsd.jws("status", "-j", betty_job, user="betty")
        assert (refused.returncode, refused.stderr) == (1, b"jws: unknown user 'betty'\n")
        # alex's stream goes on, and both jobs run on.
        assert alex.stdout is not None
        for _ in range(3):
            assert alex.stdout.readline().startswith(b"tick ")
        assert alex.poll() is None
        assert state(jwsd, betty_job) == state(jwsd, alex_job) == "Active"
        assert "user=betty method=GetJobOutput" in jwsd.log
        assert "code=UNAUTHENTICATED" in jwsd.log
    finally:
        close(alex)
        close(betty)
    ok(jwsd.jws("stop", "-j", alex_job, user="admin"))
    ok(jwsd.jws("stop", "-j", betty_job, user="admin"))


def test_a_broken_users_file_is_refused_in_one_line_and_the_old_one_stays(
    jwsd: Jwsd, tmp_path: Path
) -> None:
    users = tmp_path / "users.toml"
    # It would remove betty, were it taken.
    users.write_text('[users]\nalex = "user"\nadmin = "admin"\n[users\n')
    line = reload(jwsd, "reload refused")
    assert f"the users file {users} is not valid TOML" in line, line
    assert ok(jwsd.jws("list", user="betty")) is not None  # the old file is in force
    users.write_text('[users]\nalex = "user"\nadmin = "admin"\n')
    reload(jwsd)
    assert jwsd.jws("list", user="betty").returncode == 1


def test_a_key_that_does_not_match_its_certificate_is_refused_and_the_old_pair_stays(
    jwsd: Jwsd, pki: TestPKI
) -> None:
    old = server_serial(jwsd)
    other = pki.server_ca.issue_cert("localhost", "127.0.0.1")
    key = jwsd.tls_dir / "server_key.pem"
    other.private_key_pem.write_to_path(str(key))
    line = reload(jwsd, "reload refused")
    assert f"server private key {key} does not match certificate" in line, line
    assert server_serial(jwsd) == old
    assert ok(jwsd.jws("list")) is not None


def test_after_a_client_ca_rotation_the_old_cas_certificates_are_refused(
    jwsd: Jwsd, pki: TestPKI
) -> None:
    job_id = ok(jwsd.jws("start", "-c", TICKER, user="alex")).strip()
    alex = follow(jwsd, job_id, "alex")
    try:
        new_ca = trustme.CA()
        new_ca.cert_pem.write_to_path(str(jwsd.tls_dir / "client_ca_cert.pem"))
        pki.add_user(jwsd.tls_dir, "betty", ca=new_ca)
        pki.add_user(jwsd.tls_dir, "admin", ca=new_ca)
        reload(jwsd)
        # alex's certificate is of the old CA: the open stream ends, new connections fail.
        assert alex.wait(timeout=scaled(10)) == 1
        assert alex.stderr is not None
        assert "not signed by the client ca in force" in alex.stderr.read().decode()
        refused = jwsd.jws("list", user="alex", timeout=60)
        assert refused.returncode != 0, refused
        assert "rejected tls connection" in jwsd.log
        # The new CA's users are in, and the job ran on.
        assert ok(jwsd.jws("list", user="betty")) is not None
        assert state(jwsd, job_id) == "Active"
    finally:
        close(alex)
    ok(jwsd.jws("stop", "-j", job_id, user="admin"))


def test_the_service_manager_hears_reloading_then_ready_whether_or_not_it_worked(
    daemons: list[Jwsd], tmp_path: Path, pki: TestPKI
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(scaled(10))
        jwsd = start_jwsd(tmp_path, pki, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        daemons.append(jwsd)
        assert sock.recv(4096).startswith(b"READY=1\n")
        reload(jwsd)
        assert sock.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096) == f"READY=1\nSTATUS=serving on {jwsd.addr}\n".encode()
        (tmp_path / "users.toml").write_text("[users\n")
        reload(jwsd, "reload refused")
        assert sock.recv(4096).startswith(b"RELOADING=1\n")
        ready = sock.recv(4096).decode()
        assert ready.startswith(
            f"READY=1\nSTATUS=serving on {jwsd.addr}; the last reload was refused: the users file"
        )

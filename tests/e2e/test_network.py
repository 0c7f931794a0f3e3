"""The seed's sample session as written, `jws start -c "ping HOST"`, through the real
`jws` and `jwsd` with its default network mode (outbound), against the remote
host the test builds (tests/support/remote_host.py): no internet needed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.e2e.conftest import BIN, Jwsd, start_jwsd
from tests.support.certs import TestPKI
from tests.support.remote_host import REMOTE, REMOTE_NAME, RemoteHost
from tests.support.timing import scaled

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.fixture
def jwsd_for_remote(
    tmp_path: Path, pki: TestPKI, remote_host: RemoteHost, host_pings: None
) -> Iterator[Jwsd]:
    daemon = start_jwsd(
        tmp_path,
        pki,
        "--job-bind",
        f"{remote_host.resolv_conf}:/etc/resolv.conf",
        network_default=None,  # jwsd's own: the session runs as written
    )
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log


def test_the_seeds_sample_session_pings_a_host(jwsd_for_remote: Jwsd) -> None:
    jwsd = jwsd_for_remote
    job_id = ok(jwsd.jws("start", "-c", f"ping {REMOTE_NAME}")).strip()
    assert len(job_id) == 36
    status = ok(jwsd.jws("status", "-j", job_id))
    assert status.splitlines()[0] == "Active"
    assert ["network", "outbound"] in [line.split() for line in status.splitlines()], status
    denied = jwsd.jws("status", "-j", job_id, user="betty")
    assert (denied.returncode, denied.stderr.decode()) == (1, "jws: access denied\n")
    with jwsd.popen("output", "-j", job_id) as follower:
        assert follower.stdout is not None and follower.stderr is not None
        first = [follower.stdout.readline() for _ in range(3)]
        ok(jwsd.jws("stop", "-j", job_id))
        rest = follower.stdout.read()
        err = follower.stderr.read()
        assert follower.wait(timeout=10) == 0, err
    assert first[0].startswith(f"PING {REMOTE_NAME} ({REMOTE})".encode()), first
    replies = [line for line in first[1:] + rest.splitlines(keepends=True) if b"bytes from" in line]
    assert replies and all(f"bytes from {REMOTE}".encode() in line for line in replies)
    status = ok(jwsd.jws("status", "-j", job_id))
    assert status.splitlines()[0].startswith("Terminated (stopped")


@pytest.mark.hierarchy_independent  # refused before any work: no cgroup, no namespace
def test_a_mode_the_server_does_not_allow_is_refused_naming_the_allowed_ones(
    tmp_path: Path, pki: TestPKI
) -> None:
    jwsd = start_jwsd(tmp_path, pki)
    try:
        refused = jwsd.jws("run", "--network", "host", "--", "true")
        assert refused.returncode != 0
        assert "allowed: none, outbound" in refused.stderr.decode()
    finally:
        assert jwsd.stop() == 0, jwsd.log


@pytest.mark.hierarchy_independent  # jwsd stops before any work
@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--network-deny", "10.0.0.0/8,not-a-cidr"],
            "jwsd: --network-deny: 'not-a-cidr' is not an address range (CIDR)",
        ),
        (
            ["--network-deny", "10.0.0.0/33"],
            "jwsd: --network-deny: '10.0.0.0/33' is not an address range (CIDR)",
        ),
        (
            ["--network-deny", ",".join(["10.0.0.0/8"] * 257)],
            "jwsd: --network-deny: 257 ranges given; at most 256 are allowed",
        ),
        (
            ["--network-allow", "none,bridge"],
            "jwsd: --network-allow: unknown network mode 'bridge'; the modes are none, outbound, host",
        ),
        (
            ["--network-allow", "none"],
            "jwsd: --network-default outbound is not one of the modes --network-allow gives",
        ),
    ],
)
def test_a_network_list_that_does_not_parse_stops_jwsd_with_one_line(
    tmp_path: Path, pki: TestPKI, flags: list[str], line: str
) -> None:
    require_root()
    tls_dir = pki.write_tls_dir(tmp_path / "tls", ["alex"])
    result = subprocess.run(
        [str(BIN / "jwsd"), "--addr", "127.0.0.1:0", "--tls-dir", str(tls_dir),
         "--data-dir", str(tmp_path / "data"), *flags],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (1, line + "\n")
    assert not (tmp_path / "data").exists()  # stopped before any work

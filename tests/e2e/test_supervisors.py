"""What a supervisor sees of the real jwsd: sd_notify READY/STOPPING on $NOTIFY_SOCKET
(systemd's Type=notify) and `jws health` as a probe."""

from __future__ import annotations

import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.e2e.conftest import Jwsd, start_jwsd
from tests.support.certs import TestPKI

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """A datagram socket bound where $NOTIFY_SOCKET (set for jwsd) names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address: str | bytes = str(tmp_path / "notify.sock")
        name = str(address)
    else:
        name = f"@jobworker-test-notify-{uuid.uuid4().hex}"
        address = b"\0" + name[1:].encode()
    sock.bind(address)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    with sock:
        yield sock


def receive(sock: socket.socket, timeout: float = 30) -> dict[str, str]:
    sock.settimeout(timeout)
    message = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.splitlines() if line)


def test_ready_once_serving_and_stopping_when_shutdown_begins(
    tmp_path: Path, pki: TestPKI, notify_socket: socket.socket
) -> None:
    require_root()
    jwsd = start_jwsd(tmp_path, pki)
    try:
        ready = receive(notify_socket)
        assert ready["READY"] == "1", ready
        # READY means serving: the port accepts, and health says so at once.
        host, port = jwsd.addr.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=1).close()
        assert ready["STATUS"] == f"serving on {jwsd.addr}"
        health = jwsd.jws("health")
        assert (health.returncode, health.stdout) == (0, b"SERVING\n"), health.stderr
        # A job that ignores SIGTERM keeps jwsd in its shutdown for the stop grace (1 s).
        started = jwsd.jws("start", "-c", "sh -c 'trap \"\" TERM; while :; do sleep 1; done'")
        assert started.returncode == 0, started.stderr
        jwsd.process.send_signal(signal.SIGTERM)
        stopping = receive(notify_socket)
        assert stopping["STOPPING"] == "1", stopping
        assert jwsd.process.poll() is None, "STOPPING=1 must come when the shutdown begins"
        assert jwsd.stop() == 0, jwsd.log
        notify_socket.settimeout(0)
        with pytest.raises(BlockingIOError):
            notify_socket.recv(4096)  # nothing after STOPPING
    finally:
        jwsd.stop()


def test_jws_health_is_a_probe_for_any_certificate_of_the_client_ca(jwsd: Jwsd) -> None:
    # mallory has a certificate from the client CA but is not in the users file.
    health = jwsd.jws("health", user="mallory")
    assert (health.returncode, health.stdout) == (0, b"SERVING\n"), health.stderr
    api = jwsd.jws("list", user="mallory")
    assert api.returncode == 1, api
    api_health = jwsd.jws("health", "--service", "jobworker.v1.JobWorkerService")
    assert (api_health.returncode, api_health.stdout) == (0, b"SERVING\n"), api_health.stderr
    unknown = jwsd.jws("health", "--service", "no.such.Service")
    assert unknown.returncode == 1 and b"no service" in unknown.stderr, unknown


def test_jws_health_fails_when_nothing_listens(jwsd: Jwsd) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    health = jwsd.jws("health", "--addr", f"127.0.0.1:{free}")
    assert health.returncode == 3, health
    assert health.stdout == b""

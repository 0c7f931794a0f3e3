"""sd_notify messages reach the socket $NOTIFY_SOCKET names, a path or an abstract name."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from jobworker.server.notify import Notifier
from tests.support.names import unique_name


def test_no_notify_socket_means_no_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_environment()
    assert notifier.address is None
    assert notifier.ready("serving") is False


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_one_datagram_of_key_value_lines(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if kind == "path":
            sock.bind(str(tmp_path / "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        else:
            name = unique_name()
            sock.bind(b"\0" + name.encode())
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_environment()
        assert notifier.ready("serving on 127.0.0.1:1") is True
        assert notifier.stopping("stopping every job") is True
        sock.settimeout(1)
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving on 127.0.0.1:1\n"
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping every job\n"


def test_the_variable_is_taken_out_of_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing jwsd starts later may talk to the service manager in its name."""
    import os

    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    Notifier.from_environment()
    assert "NOTIFY_SOCKET" not in os.environ


def test_an_unreachable_manager_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING):
        assert notifier.ready("serving") is False
    assert "cannot notify the service manager" in caplog.text


def test_a_reload_is_reloading_with_the_monotonic_time(tmp_path: Path) -> None:
    """systemd 253+ matches RELOADING=1 to its reload by MONOTONIC_USEC (CLOCK_MONOTONIC)."""
    import time

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert Notifier(str(tmp_path / "notify")).reloading("reloading") is True
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        sock.settimeout(1)
        lines = sock.recv(4096).decode().splitlines()
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].removeprefix("MONOTONIC_USEC=")) <= after
    assert lines[2] == "STATUS=reloading"

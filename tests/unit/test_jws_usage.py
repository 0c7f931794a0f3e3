"""Usage errors of `jws` (exit code 2, one plain line), in-process through `cli(argv)`.

Each is found before anything is sent: no server is needed (JWS_ADDR points at a
port where nothing listens, so a test that did connect would fail with exit 3).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobworker.cli.jws import cli
from tests.support.certs import TestPKI


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tls_dir = TestPKI().write_tls_dir(tmp_path / "tls", ["alex"])
    monkeypatch.setenv("JWS_ADDR", "127.0.0.1:1")
    monkeypatch.setenv("JWS_TLS_DIR", str(tls_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("JWS_USER", raising=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["status", "-u", "alex"], "give one job id"),
        # What to run is checked before connecting: no server hears of it.
        (["start", "-u", "alex", "--memory", "lots", "--", "true"], "'lots' is not a size"),
        (["start", "-u", "alex", "--cpu", "half", "--", "true"], "'half' is not a number of cores"),
        (["start", "-u", "alex", "--pids", "0", "--", "true"], "pids limit must be between 1"),
        (["run", "-u", "alex", "--memory", "1K", "--", "true"], "memory limit must be at least"),
        (["start", "-u", "alex", "-c", "true", "--", "true"], "not both"),
        (["start", "-u", "alex"], "not both"),
        (["start", "-u", "alex", "-e", "=NONAME", "--", "true"], "--env wants NAME=VALUE or NAME"),
        (["stop", "-u", "alex", "-j", "x", "--grace", "soon"], "not a duration"),
        (["output", "-u", "alex", "-j", "x", "--reconnect-timeout", "soon"], "not a duration"),
        (["run", "-u", "alex", "--reconnect-timeout", "-1s", "--", "true"], "not a duration"),
        (["list"], "no user"),
        # Click keeps the last of a repeated option silently; jws refuses it.
        (["status", "-u", "alex", "-j", "a", "-j", "b"], "--job was given more than once"),
        (["stop", "-u", "alex", "a", "--grace", "1s", "--grace", "2s"], "--grace was given more"),
        (["stop", "-u", "alex"], "no job id"),
        (["start", "-u", "alex", "-c", "echo 'open"], "-c: cannot split the command line"),
        (["start", "-u", "alex", "ls", "-l"], "The program's own arguments go after --"),
        (["list", "-u", "nobody-here"], "no credentials for user 'nobody-here'"),
    ],
)
def test_usage_errors_exit_2_with_one_plain_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert message in err
    assert "Traceback" not in err

"""A real `jwsd` process (as root, on loopback, with throwaway certificates) and a way to run the real `jws`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import attrs
import pytest

from jobworker.sandbox import SANDBOX_SETUP_TIMEOUT
from tests.conftest import require_root
from tests.support.certs import TestPKI
from tests.support.names import unique_name
from tests.support.timing import scaled
from tests.support.waiting import eventually_blocking

BIN = Path(sys.executable).parent


@attrs.define
class Jwsd:
    process: subprocess.Popen[bytes]
    addr: str
    tls_dir: Path
    data_dir: Path
    cgroup_name: str
    home: Path
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            JWS_ADDR=self.addr, JWS_TLS_DIR=str(self.tls_dir), XDG_CONFIG_HOME=str(self.home)
        )
        env.pop("JWS_USER", None)
        env.update(extra)
        return env

    def jws(
        self,
        *args: str,
        user: str | None = "alex",
        input: bytes | None = None,
        timeout: float = 30,
        **env: str,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = (
            [str(BIN / "jws"), *args]
            if user is None
            else [str(BIN / "jws"), *args[:1], "-u", user, *args[1:]]
        )
        return subprocess.run(
            argv, env=self.env(**env), capture_output=True, timeout=scaled(timeout), input=input
        )

    def popen(self, *args: str, user: str = "alex") -> subprocess.Popen[bytes]:
        argv = [str(BIN / "jws"), args[0], "-u", user, *args[1:]]
        return subprocess.Popen(
            argv, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        return code


def start_jwsd(
    tmp_path: Path,
    pki: TestPKI,
    *extra: str,
    users: bool = True,
    wrapper: Sequence[str] = (),
    cgroup_name: str | None = None,
    env: Mapping[str, str] | None = None,
    network_default: str | None = "none",
) -> Jwsd:
    """A jwsd on a free loopback port with alex, betty and admin; `wrapper` is a
    command line that runs it (e.g. setpriv dropping a capability). Called again on
    the same tmp_path (and the first run's `cgroup_name`) it is a restart: same data
    dir, certificates and home. `env`: more of jwsd's environment.
    `network_default`: its --network-default; "none" (loopback only) where the
    network is not what a test is about, so that it needs no pasta, no default
    route and none of pasta's memory; None: jwsd's own default (outbound)."""
    tls_dir = tmp_path / "tls"
    if not tls_dir.exists():
        pki.write_tls_dir(tls_dir, ["alex", "betty", "admin", "mallory"])
    args = [
        str(BIN / "jwsd"),
        "--addr", "127.0.0.1:0",
        "--tls-dir", str(tls_dir),
        "--data-dir", str(tmp_path / "data"),
        "--stop-grace", "1s",
        "--sandbox-timeout", f"{scaled(SANDBOX_SETUP_TIMEOUT):.0f}s",
    ]  # fmt: skip
    if users:
        users_file = tmp_path / "users.toml"
        users_file.write_text('[users]\nalex = "user"\nbetty = "user"\nadmin = "admin"\n')
        args += ["--users", str(users_file)]
    if network_default is not None:
        args += ["--network-default", network_default]
    name = cgroup_name or unique_name()
    # The cgroupfs driver unless `env` says otherwise: these tests look at the job
    # cgroups jwsd makes itself; the systemd driver's tests are its own
    # (tests/integration/test_systemd_driver.py, tests/system/test_systemd_unit.py).
    environment = {
        **os.environ,
        "JOBWORKER_CGROUP_NAME": name,
        "JOBWORKER_CGROUP_DRIVER": "cgroupfs",
        **(env or {}),
    }
    log_path = tmp_path / "jwsd.log"
    start = log_path.stat().st_size if log_path.exists() else 0  # a restart appends
    with log_path.open("ab") as log_file:  # a file, not a pipe: a full pipe would block jwsd
        process = subprocess.Popen([*wrapper, *args, *extra], stderr=log_file, env=environment)

    def listening() -> re.Match[str] | None:
        if process.poll() is not None:
            raise AssertionError("jwsd exited:\n" + log_path.read_text(errors="replace"))
        return re.search(
            r"listening on 127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace")[start:]
        )

    try:
        # jwsd's log is a file (see above): its "listening" line is polled for.
        eventually_blocking(listening, timeout=scaled(30), what="jwsd listens")
    except BaseException:
        process.kill()
        process.wait()
        raise
    match = listening()
    assert match is not None
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return Jwsd(process, f"127.0.0.1:{match[1]}", tls_dir, tmp_path / "data", name, home, log_path)


@pytest.fixture
def jwsd(tmp_path: Path, pki: TestPKI) -> Iterator[Jwsd]:
    require_root()
    daemon = start_jwsd(tmp_path, pki)
    try:
        yield daemon
    finally:
        code = daemon.stop()
        assert code == 0, daemon.log


@pytest.fixture
def daemons(tmp_path: Path, pki: TestPKI) -> Iterator[list[Jwsd]]:
    """Every jwsd a test starts on tmp_path (those still running are stopped at the end)."""
    require_root()
    started: list[Jwsd] = []
    try:
        yield started
    finally:
        for daemon in started:
            if daemon.process.poll() is None:
                daemon.stop()


def restart_jwsd(
    old: Jwsd, pki: TestPKI, *extra: str, env: Mapping[str, str] | None = None
) -> Jwsd:
    """A new jwsd on `old`'s data dir, certificates and cgroup name (`old` has exited)."""
    assert old.process.poll() is not None, "the old jwsd still runs"
    return start_jwsd(old.data_dir.parent, pki, *extra, cgroup_name=old.cgroup_name, env=env)

"""System tests: jwsd as the supervisors people run it under, on a whole machine of its own.

Every module sets `pytestmark = pytest.mark.system`. They install a systemd unit (`jwsd.service`), write /etc/jobworker, build and run
container images with podman: run them only on a throwaway machine (CI runs them in
a cgroup v2 VM: `just system-test`). They are marked `system`, which the default
`pytest` run leaves out (addopts: -m "not system"). When run, a missing systemd or
podman is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

#: The checkout's venv, where `jwsd` and `jws` are.
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("system tests need root (they install units and run containers)")


def require_systemd() -> None:
    """Fail unless systemd is PID 1 and systemctl is here."""
    require_root()
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        pytest.fail("this test needs systemd as PID 1 (run it in the VM: just system-test)")


def require_podman() -> None:
    require_root()
    if shutil.which("podman") is None:
        pytest.fail("this test needs podman (run it in the VM: just system-test)")


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 300, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run `argv`, capture its output as text; with `check`, fail showing both streams."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def processes_with(marker: str) -> list[int]:
    """The pids whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found

"""`./dev`, the one entry point on a fresh machine, decides when to (re)install the
Python packages: run under the shell a fresh Debian machine uses for `sh`, dash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of ./dev beside a stand-in .venv whose python and just only log their calls."""
    shutil.copy(REPO / "dev", tmp_path / "dev")
    for name in ("pyproject.toml", "constraints.txt"):
        (tmp_path / name).write_text("")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "just"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "$(dirname "$0")/../calls"\n')
        script.chmod(0o755)
    return tmp_path


def run_dev(checkout: Path) -> list[str]:
    dash = shutil.which("dash")
    assert dash, "dash is Debian's /bin/sh; install it (apt-get install dash)"
    # bwrap, openssl and setpriv are found on this machine, so no apt-get runs.
    subprocess.run([dash, "dev", "lint"], cwd=checkout, check=True, capture_output=True)
    return (checkout / ".venv" / "calls").read_text().splitlines()


def test_dev_installs_when_the_venv_exists_but_was_never_marked_installed(checkout: Path) -> None:
    """An interrupted first install leaves .venv/bin/just but no stamp: install again (in
    dash, `[ a -nt missing ]` is false, which used to skip it)."""
    calls = run_dev(checkout)
    assert any(c.startswith("python -m pip install") for c in calls), calls
    assert calls[-1] == "just lint"
    assert (checkout / ".venv" / ".installed").exists()


def test_dev_does_not_reinstall_when_nothing_changed(checkout: Path) -> None:
    run_dev(checkout)
    (checkout / ".venv" / "calls").unlink()
    assert run_dev(checkout) == ["just lint"]

"""The job's view of the host is an allow-list, on the real kernel and bubblewrap:
the host's unix sockets (under /run, /var/tmp) and any procfs mounted below an
allowed directory are out of reach, the usual programs still run, an
operator's `--job-bind` shows a directory read-only, and the program lookup
says "not found" for a hidden program exactly as for a missing one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker.errors import StartFailedError
from jobworker.model import JobSpec
from jobworker.sandbox.hostview import JobBind
from tests.conftest import require_root
from tests.support.tracking import run_to_end, running_tracker

pytestmark = pytest.mark.root

ENV = {"PATH": "/usr/bin:/bin"}


def _host_dir(parent: str) -> Iterator[Path]:
    require_root()
    Path(parent).mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="jobworker-test-", dir=parent))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(directory)], check=True)


@pytest.fixture(params=["/run", "/var/tmp"])
def listener(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A root listener on a 0666 unix socket in a world-readable dir under /run or /var/tmp."""
    for directory in _host_dir(request.param):
        path = directory / "listener.sock"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            path.chmod(0o666)
            server.listen()
            yield path


async def test_a_host_unix_socket_is_unreachable_from_a_job(tmp_path: Path, listener: Path) -> None:
    connect = f"import socket; socket.socket(socket.AF_UNIX).connect({str(listener)!r})"
    subprocess.run([sys.executable, "-c", connect], check=True)  # reachable on the host
    async with running_tracker(tmp_path / "data", check_records=False) as tracker:
        out, status = await run_to_end(tracker, JobSpec(argv=("python3", "-c", connect), env=ENV))
    assert status.exit_code == 1, out
    assert b"FileNotFoundError" in out, out


@pytest.fixture
def host_procfs() -> Iterator[Path]:
    """A procfs mounted in a dir made under /opt (an allowed directory); unmounted after."""
    for directory in _host_dir("/opt"):
        proc = directory / "proc"
        proc.mkdir()
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
        try:
            yield proc
        finally:
            subprocess.run(["umount", str(proc)], check=True)


async def test_a_host_procfs_below_an_allowed_dir_is_invisible(
    tmp_path: Path, host_procfs: Path
) -> None:
    assert (host_procfs / "1" / "cmdline").exists()  # every host process, on the host
    async with running_tracker(tmp_path / "data", check_records=False) as tracker:
        out, status = await run_to_end(
            tracker, JobSpec(argv=("ls", "-A", str(host_procfs)), env=ENV)
        )
    assert status.exit_code == 0, out
    assert out == b""


async def test_the_allow_list_runs_the_usual_programs_and_shows_nothing_else(
    tmp_path: Path,
) -> None:
    script = (
        "python3 -c 'print(\"py\")' && ls /usr >/dev/null && id -u && env >/dev/null"
        " && getent passwd root && echo tmp > /var/tmp/x && cat /tmp/x"
        " && ls /; for d in /run /var/run /home /root /mnt /media /srv /sys; do"
        " test -e $d && echo SEEN $d; done; true"
    )
    async with running_tracker(tmp_path / "data", check_records=False) as tracker:
        out, status = await run_to_end(tracker, JobSpec(argv=("sh", "-c", script), env=ENV))
    assert status.exit_code == 0, out
    lines = out.decode().split()
    assert lines[:3] == ["py", "65534", "root:x:0:0:root:/root:/bin/bash"], out
    assert "tmp" in lines, out
    assert not [line for line in lines if line == "SEEN"], out
    assert {"usr", "etc", "bin", "proc", "dev", "tmp"} <= set(lines), out


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    for directory in _host_dir("/var/tmp"):
        (directory / "shared.txt").write_text("from the host\n")
        yield directory


async def test_a_job_bind_shows_a_host_dir_read_only(tmp_path: Path, shared_dir: Path) -> None:
    bind = JobBind.parse(f"{shared_dir}:/data")
    async with running_tracker(
        tmp_path / "data", check_records=False, job_binds=(bind,)
    ) as tracker:
        out, status = await run_to_end(
            tracker,
            JobSpec(argv=("sh", "-c", "cat /data/shared.txt; touch /data/new"), env=ENV),
        )
    assert status.exit_code == 1, out
    assert out.startswith(b"from the host\n"), out
    assert b"Read-only file system" in out, out
    assert not (shared_dir / "new").exists()


@pytest.mark.parametrize(
    "value",
    ["relative/dir", "/no/such/dir", "/usr:/proc/x", "/usr:/data:rx:ro", "/usr::ro"],
)
def test_a_bad_job_bind_stops_jwsd_in_one_line(value: str, tmp_path: Path) -> None:
    require_root()
    jwsd = Path(sys.executable).parent / "jwsd"
    result = subprocess.run(
        [str(jwsd), "--data-dir", str(tmp_path / "data"), "--job-bind", value],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jwsd: --job-bind "), lines


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A world-readable dir under /run holding an executable script."""
    for directory in _host_dir("/run"):
        script = directory / "alpha"
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(0o755)
        yield directory


async def test_a_program_under_run_is_not_found_exactly_as_a_missing_one(
    tmp_path: Path, run_dir: Path
) -> None:
    async with running_tracker(tmp_path / "data", check_records=False) as tracker:
        answers = set()
        for name in ["alpha", "omega"]:
            for spec in [
                JobSpec(argv=(str(run_dir / name),), env=ENV),
                JobSpec(argv=(name,), env={"PATH": str(run_dir)}),
            ]:
                with pytest.raises(StartFailedError) as caught:
                    await tracker.start("alex", spec)
                answers.add(str(caught.value).replace(name, "NAME"))
    assert len(answers) == 2, answers  # one for a path, one for a PATH search
    assert any("no such file" in answer for answer in answers), answers

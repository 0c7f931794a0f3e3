"""The sandbox as an attacker with a valid certificate meets it: the real `jws`
against a real `jwsd` with its default flags.

No code of the request's choosing runs outside the sandbox; safe default limits
hold a job that asks for none; the job sees neither another job's cgroup nor a
nested user namespace; program lookup tells nothing about files the job user
cannot reach.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.e2e.conftest import Jwsd, start_jwsd
from tests.support.certs import TestPKI
from tests.support.names import unique_name
from tests.support.waiting import eventually_blocking

pytestmark = [pytest.mark.root, pytest.mark.e2e]

#: Seconds one `jws` call may take: generous, for a VM that emulates its CPU.
JWS_TIMEOUT = 180


@pytest.fixture(scope="module")
def jwsd(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Iterator[Jwsd]:
    """One jwsd with its default flags for the module (the tests share nothing else):
    a daemon's start and stop cost more than most of these tests."""
    require_root()
    base = tmp_path_factory.mktemp("jwsd")
    for directory in [base, *base.parents]:  # the job user reaches its work dir by path
        if str(directory) in ("/", "/tmp"):
            break
        directory.chmod(directory.stat().st_mode | 0o011)
    daemon = start_jwsd(base, pki)
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log


#: glibc's own profiling library (package libc6): its constructor opens the file named
#: by $PCPROFILE_OUTPUT with O_CREAT, so the new file's owner says which uid ran it.
#: An attacker's library with any constructor at all stands in its place.
PCPROFILE = next(
    (
        path
        for path in (
            "/usr/lib/x86_64-linux-gnu/libpcprofile.so",
            "/lib/x86_64-linux-gnu/libpcprofile.so",
            "/usr/lib/aarch64-linux-gnu/libpcprofile.so",
            "/usr/lib64/libpcprofile.so",
        )
        if os.path.exists(path)
    ),
    "libpcprofile.so",
)


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def jws(jwsd: Jwsd, *args: str, timeout: float = JWS_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    return jwsd.jws(*args, timeout=timeout)


def start_until(jwsd: Jwsd, script: str, marker: str) -> str:
    """Start `sh -c script` (which prints `marker` then keeps running); return its id once it has."""
    job_id = ok(jws(jwsd, "start", "--", "sh", "-c", f"{script}; echo {marker}; exec sleep 60"))
    job_id = job_id.strip()

    def printed() -> bool:
        status = json.loads(ok(jws(jwsd, "status", "-j", job_id, "--json")))
        assert status["status"] != "Terminated", status
        return bool(status["output_bytes"] >= len(marker))

    eventually_blocking(printed, timeout=JWS_TIMEOUT, what=f"job {job_id} printed {marker!r}")
    return job_id


def finished(jwsd: Jwsd, job_id: str) -> tuple[str, dict[str, object]]:
    """Follow the job's output to its end; (output, final status)."""
    out = jws(
        jwsd,
        "output",
        "-j",
        job_id,
    ).stdout.decode(errors="replace")
    return out, json.loads(ok(jws(jwsd, "status", "-j", job_id, "--json")))


# ---- item 1: the request's environment exists only inside the sandbox ---------


def test_a_preloaded_library_never_runs_as_root(jwsd: Jwsd, tmp_path: Path) -> None:
    """A job asks for a library in LD_PRELOAD (and for loader debug output, another
    variable the loader obeys). Before, the root trampoline and setpriv loaded it: its
    constructor created files as uid 0. The library here is one the host has that
    writes a file when loaded (glibc's libpcprofile); an attacker's own would do
    anything else (it could come from a job's work dir, when work dirs were host
    directories)."""
    markers = tmp_path / "markers"
    markers.mkdir(mode=0o777)
    markers.chmod(0o777)
    # The library does what the attack needs: preloaded into a root process, it writes.
    subprocess.run(
        ["/bin/true"],
        env={"LD_PRELOAD": PCPROFILE, "PCPROFILE_OUTPUT": str(markers / "probe")},
        check=True,
    )
    assert (markers / "probe").stat().st_uid == 0
    (markers / "probe").unlink()

    result = jws(jwsd,
        "run",
        "-e", f"LD_PRELOAD={PCPROFILE}",
        "-e", f"PCPROFILE_OUTPUT={markers / 'pcprofile'}",
        "-e", "LD_DEBUG=libs",
        "-e", f"LD_DEBUG_OUTPUT={markers / 'lddebug'}",
        "-e", "PATH=/usr/bin:/bin",
        "--", "id", "-u",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "65534" in result.stdout.decode().split()
    created = {p.name: p.stat().st_uid for p in markers.iterdir()}
    assert created == {}, f"code of the request's choosing ran outside the sandbox: {created}"


# ---- item 5: safe defaults ------------------------------------------------------


def test_a_job_under_default_flags_cannot_allocate_3_gib(jwsd: Jwsd) -> None:
    job_id = ok(
        jws(
            jwsd, "start", "--", "python3", "-c", "b = b'x' * (3 << 30); print('allocated', len(b))"
        )
    ).strip()
    out, status = finished(jwsd, job_id)
    assert "allocated" not in out
    assert status["oom_killed"] is True, status
    assert status["limits"]["memory_bytes"] == 512 << 20  # type: ignore[index]


def test_a_fork_bomb_under_default_flags_is_held_to_the_default_pids_limit(jwsd: Jwsd) -> None:
    """Each `sleep &` is one more process; the shell dies at the first fork refused.
    The sleeps outlast the loop even on an emulated CPU (with a short one, the first
    ones ended and freed their pids before the loop did), and end with the job's pid
    namespace when the shell exits."""
    job_id = ok(
        jws(jwsd, "start", "--", "sh", "-c", "for i in $(seq 600); do sleep 3600 & echo $i; done")
    ).strip()
    out, status = finished(jwsd, job_id)
    started = [int(line) for line in out.split() if line.isdigit()]
    assert 200 < max(started) < 256, out[-300:]
    assert "fork" in out.lower()
    assert status["limits"]["pids"] == 256  # type: ignore[index]


def test_tmp_and_dev_are_size_limited_under_default_flags(jwsd: Jwsd) -> None:
    script = (
        "for d in /tmp /dev/shm; do head -c 100M /dev/zero > $d/fill; echo $d $(wc -c < $d/fill); done; "
        "echo x > /dev/fill && echo dev writable"
    )
    out = jws(jwsd, "run", "--", "sh", "-c", script).stdout.decode()
    sizes = dict(line.split() for line in out.splitlines() if line.startswith("/"))
    assert int(sizes["/tmp"]) <= 64 << 20, out
    assert int(sizes["/dev/shm"]) <= 64 << 20, out
    assert "No space left on device" in out
    assert "dev writable" not in out


def test_tmpfs_pages_are_charged_to_the_job_memory_limit(jwsd: Jwsd) -> None:
    """40 MiB in /tmp and 40 MiB in /dev/shm each fit their tmpfs, but not together
    in a 64 MiB memory limit: the job cannot keep them."""
    job_id = ok(
        jws(jwsd,
            "start", "--memory", "64M", "--", "sh", "-c",
            "head -c 40M /dev/zero > /tmp/a && head -c 40M /dev/zero > /dev/shm/b && echo kept both",
        )
    ).strip()  # fmt: skip
    out, status = finished(jwsd, job_id)
    assert "kept both" not in out
    assert status["exit_code"] != 0, status


# ---- item 9: what a job can learn or do beyond itself ----------------------------


@pytest.fixture
def unreachable_dir() -> Iterator[Path]:
    """A root-only (0700) directory in /opt, which the sandbox shows (its allow-list)."""
    directory = Path("/opt") / unique_name()
    directory.mkdir(mode=0o700)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def test_program_lookup_does_not_reveal_files_the_job_user_cannot_reach(
    jwsd: Jwsd, unreachable_dir: Path
) -> None:
    for name, mode in [("script", 0o755), ("notes", 0o644)]:
        (unreachable_dir / name).write_text("#!/bin/sh\necho hi\n")
        (unreachable_dir / name).chmod(mode)
    answers = set()
    for name in ["script", "notes", "missing"]:
        result = jws(jwsd, "start", "--", str(unreachable_dir / name))
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        answers.add(result.stderr.decode().replace(name, "NAME"))
    assert len(answers) == 1, answers
    assert "permission denied" in answers.pop()


def test_nested_user_namespaces_are_refused_inside_a_job(jwsd: Jwsd) -> None:
    result = jws(jwsd, "run", "--", "unshare", "--user", "true")
    assert result.returncode != 0, result.stdout
    assert b"unshare failed" in result.stdout


def test_a_job_does_not_see_other_jobs_cgroups(jwsd: Jwsd) -> None:
    other = start_until(jwsd, "true", "running")
    seen = ok(jws(jwsd, "run", "--", "sh", "-c", "find /sys/fs/cgroup; cat /proc/self/cgroup"))
    assert other not in seen
    ok(jws(jwsd, "stop", "-j", other, "--grace", "0s"))

"""A host uid per user's jobs (`jwsd --job-uids`), through the real `jws` and `jwsd`.

Every job ran as `nobody` on the host: alex's job took all of that uid's inotify
instances and betty's job then failed at its first, and any host process running
as `nobody` could read a job's environment and write into its output. Now each
owner's jobs run as an id of their own, kept across restarts; a range that clashes
with the host's accounts is refused at start-up.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.e2e.conftest import BIN, Jwsd, restart_jwsd, start_jwsd
from tests.support.certs import TestPKI
from tests.support.cgroupfs import cgroups_named
from tests.support.hostids import host_ids
from tests.support.records import records
from tests.support.timing import scaled
from tests.support.waiting import eventually_blocking

pytestmark = [pytest.mark.root, pytest.mark.e2e]

NOBODY = 65534


def job_uids() -> str:
    """A range of the default one's block of its own, so that jwsd processes of other
    tests on this host (each with its own data dir) do not give their jobs our ids."""
    first = 0x70000000 + random.randrange(1, 0x0FFF0000 >> 12) * 4096
    return f"{first}-{first + 4095}"


def start(jwsd: Jwsd, *args: str, user: str = "alex") -> str:
    result = jwsd.jws("start", *args, user=user)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


def command_pid(jwsd: Jwsd, job_id: str) -> int:
    """The host pid of the job's sandbox init, once its record names it."""

    def recorded() -> int | None:
        return records(jwsd.data_dir)[job_id].command_pid

    eventually_blocking(recorded, timeout=scaled(10), what="the job's pid recorded")
    pid = recorded()
    assert pid is not None
    return pid


def job_pids(job_id: str) -> list[int]:
    (procs, *_) = [d / "cgroup.procs" for d in cgroups_named(job_id)]
    return [int(pid) for pid in procs.read_text().split()]


def output_of(jwsd: Jwsd, job_id: str) -> str:
    return (jwsd.data_dir / "jobs" / job_id / "output.log").read_text()


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=scaled(10),
    )


def test_two_users_jobs_run_as_different_host_uids_none_of_them_an_account(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """The kernel's view (/proc/PID/status of each job's process): alex's two jobs share
    one uid, betty's has another, both from --job-uids, neither nobody; inside, each
    job still sees itself as nobody."""
    uids = job_uids()
    first = int(uids.split("-")[0])
    jwsd = start_jwsd(tmp_path, pki, "--job-uids", uids)
    daemons.append(jwsd)
    alex = [start(jwsd, "--", "sh", "-c", "id -u; exec sleep 60") for _ in range(2)]
    betty = start(jwsd, "--", "sh", "-c", "id -u; exec sleep 60", user="betty")
    seen = {job_id: host_ids(command_pid(jwsd, job_id)) for job_id in [*alex, betty]}
    assert seen[alex[0]] == seen[alex[1]] == (first, first), seen
    assert seen[betty] == (first + 1, first + 1), seen
    for job_id in [*alex, betty]:
        assert records(jwsd.data_dir)[job_id].host_uid == seen[job_id][0]
        eventually_blocking(
            lambda job_id=job_id: output_of(jwsd, job_id), timeout=scaled(10), what="id -u"
        )
        assert output_of(jwsd, job_id) == f"{NOBODY}\n"
    # Its work dir is its host uid's (here a tmpfs the sandbox's user namespace owns,
    # seen from the host through the job's root).
    pid = command_pid(jwsd, betty)
    workdir = Path(f"/proc/{pid}/root") / (jwsd.data_dir / "jobs" / betty / "work").relative_to("/")
    assert (workdir.stat().st_uid, workdir.stat().st_gid) == (first + 1, first + 1)
    for job_id in [*alex, betty]:
        assert jwsd.jws("stop", "-j", job_id, user="admin").returncode == 0


def test_one_users_job_exhausting_inotify_instances_leaves_anothers_working(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """alex's job takes every inotify instance its uid may have
    (fs.inotify.max_user_instances) and holds them; betty's job's inotify_init1 still
    works. Before, both were nobody: betty's got EMFILE ("Too many open files")."""
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    jwsd = start_jwsd(tmp_path, pki, "--job-uids", job_uids())
    daemons.append(jwsd)
    # Inside, the job's own user namespace shows no limit: the host's counts (at its uid).
    hog = (
        "import ctypes, os, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fds = []\n"
        f"while len(fds) < {limit + 16}:\n"
        "    fd = libc.inotify_init1(0)\n"
        "    if fd < 0:\n"
        "        break\n"
        "    fds.append(fd)\n"
        "print(len(fds), os.strerror(ctypes.get_errno()), flush=True)\n"
        "time.sleep(60)\n"
    )
    hogging = start(jwsd, "--", "python3", "-c", hog)
    eventually_blocking(
        lambda: output_of(jwsd, hogging), timeout=scaled(20), what="alex's job holds them all"
    )
    assert output_of(jwsd, hogging) == f"{limit} Too many open files\n"
    probe = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.inotify_init1(0)\n"
        "print('ok' if fd >= 0 else os.strerror(ctypes.get_errno()))\n"
    )
    result = jwsd.jws("run", "--", "python3", "-c", probe, user="betty", timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == "ok\n"
    assert jwsd.jws("stop", "-j", hogging).returncode == 0


def test_a_host_process_running_as_nobody_cannot_read_or_write_a_job(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """A host service running as nobody read a job's /proc/PID/environ (its secrets)
    and wrote into its output through /proc/PID/fd/1: the kernel allowed it, same
    uid. The job's processes are its owner's uid now: both are refused."""
    jwsd = start_jwsd(tmp_path, pki, "--job-uids", job_uids())
    daemons.append(jwsd)
    job_id = start(jwsd, "-e", "API_TOKEN=supersecret", "--", "sleep", "60")
    command_pid(jwsd, job_id)

    def the_command() -> int | None:
        for pid in job_pids(job_id):
            if b"API_TOKEN=supersecret" in Path(f"/proc/{pid}/environ").read_bytes():
                return pid  # as root: the secret is there to be read
        return None

    eventually_blocking(the_command, timeout=scaled(10), what="the command runs")
    pid = the_command()
    assert pid is not None
    read = as_nobody("cat", f"/proc/{pid}/environ")
    assert read.returncode != 0 and "supersecret" not in read.stdout, read
    assert "Permission denied" in read.stderr, read.stderr
    for target in job_pids(job_id):
        write = as_nobody("sh", "-c", f"echo forged > /proc/{target}/fd/1")
        assert write.returncode != 0, f"nobody wrote into process {target}'s output"
    assert jwsd.jws("stop", "-j", job_id).returncode == 0
    assert "forged" not in output_of(jwsd, job_id)


def test_the_owners_uid_survives_a_restart_and_the_take_over(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """jwsd exits leaving alex's job running (SIGUSR1); the next jwsd takes it over, and
    alex's next job runs as the same host uid as the one taken over (DATA/uids.json),
    betty's as another."""
    uids = job_uids()
    first = start_jwsd(tmp_path, pki, "--job-uids", uids)
    daemons.append(first)
    before = start(first, "--", "sleep", "60")
    uid = host_ids(command_pid(first, before))[0]
    assert first.stop(signal.SIGUSR1) == 0, first.log
    again = restart_jwsd(first, pki, "--job-uids", uids)
    daemons.append(again)
    status = again.jws("status", "-j", before)
    assert status.returncode == 0 and b"Active" in status.stdout, status
    betty = start(again, "--", "sleep", "60", user="betty")
    after = start(again, "--", "sleep", "60")
    assert host_ids(command_pid(again, after)) == (uid, uid)
    assert host_ids(command_pid(again, before)) == (uid, uid)
    assert host_ids(command_pid(again, betty))[0] not in (uid, NOBODY)
    assert records(again.data_dir)[before].host_uid == uid
    for job_id in (before, after):
        assert again.jws("stop", "-j", job_id).returncode == 0
    assert again.jws("stop", "-j", betty, user="betty").returncode == 0


@pytest.mark.parametrize(
    ("uids", "code", "message"),
    [
        (
            "65400-65534",
            1,
            "jwsd: --job-uids 65400-65534 holds 65534, the id of the host's user nobody",
        ),
        ("600000-600010", 2, "holds fewer than 64 ids"),
        ("600000", 2, "is not FIRST-LAST"),
        ("0-65533", 2, "holds 0, which no job may run as"),
    ],
)
def test_a_bad_range_is_refused_at_start_up_in_one_line(
    tmp_path: Path, pki: TestPKI, uids: str, code: int, message: str
) -> None:
    require_root()
    tls_dir = pki.write_tls_dir(tmp_path / "tls", ["alex"])
    result = subprocess.run(
        [str(BIN / "jwsd"), "--addr", "127.0.0.1:0", "--tls-dir", str(tls_dir),
         "--data-dir", str(tmp_path / "data"), "--job-uids", uids],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert message in result.stderr, result.stderr
    if code == 1:
        assert result.stderr.count("\n") == 1, result.stderr
        assert not (tmp_path / "data" / "uids.json").exists()

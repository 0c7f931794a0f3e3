"""Durable jobs against the real `jwsd` and `jws`: records and output survive a
restart of the daemon, and the faults of its database are refused in one line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from jobworker.units import format_duration
from tests.e2e.conftest import BIN, Jwsd, restart_jwsd, start_jwsd
from tests.support.certs import TestPKI
from tests.support.counter import COUNTER_SECONDS, counter_output, counter_script
from tests.support.records import records
from tests.support.timing import scaled
from tests.support.waiting import eventually_blocking

pytestmark = [pytest.mark.root, pytest.mark.e2e]

#: Output with every byte value, newlines and none at the end: compared byte for byte.
SCRIPT = (
    "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; printf '\\001\\377end'; exit 7"
)


def expected_output() -> bytes:
    return b"".join(b"line %d\n" % i for i in range(3000)) + b"\x01\xffend"


def status_of(jwsd: Jwsd, job_id: str, user: str = "admin") -> dict[str, object]:
    result = jwsd.jws("status", "-j", job_id, "--json", user=user)
    assert result.returncode == 0, result.stderr
    status: dict[str, object] = json.loads(result.stdout)
    return status


def wait_terminated(jwsd: Jwsd, job_id: str) -> dict[str, object]:
    eventually_blocking(
        lambda: status_of(jwsd, job_id)["status"] == "Terminated",
        timeout=scaled(20),
        what="the job ends",
    )
    return status_of(jwsd, job_id)


def start(jwsd: Jwsd, *args: str, user: str = "alex") -> str:
    result = jwsd.jws("start", *args, user=user)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


def jwsd_fails(tmp_path: Path, cgroup_name: str) -> subprocess.CompletedProcess[str]:
    """jwsd on tmp_path's data dir, expected to refuse to start."""
    return subprocess.run(
        [
            str(BIN / "jwsd"),
            "--addr",
            "127.0.0.1:0",
            "--tls-dir",
            str(tmp_path / "tls"),
            "--data-dir",
            str(tmp_path / "data"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env=dict(os.environ, JOBWORKER_CGROUP_NAME=cgroup_name, JOBWORKER_CGROUP_DRIVER="cgroupfs"),
    )


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_restart_keeps_finished_jobs_status_and_exact_output(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd], how: signal.Signals
) -> None:
    """Jobs of two users end; jwsd exits (cleanly, or killed); the next jwsd on the
    same data dir shows the same status and every byte of output, from any offset."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    mine = start(first, "--", "sh", "-c", SCRIPT)
    theirs = start(first, "--", "sh", "-c", "echo betty", user="betty")
    before = wait_terminated(first, mine)
    wait_terminated(first, theirs)
    first.stop(how)
    again = restart_jwsd(first, pki)
    daemons.append(again)
    after = status_of(again, mine)
    assert after == before
    assert (after["exit_code"], after["outcome"]) == (7, "exited")
    output = again.jws("output", "-j", mine)
    assert output.returncode == 0, output.stderr
    assert output.stdout == expected_output()
    assert again.jws("output", "-j", theirs, user="betty").stdout == b"betty\n"
    assert again.jws("status", "-j", theirs).returncode != 0  # owners still hold
    listed = again.jws("list", user="admin")
    assert mine in listed.stdout.decode() and theirs in listed.stdout.decode()


def test_a_job_whose_start_returned_is_on_disk_before_jwsd_is_killed(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """SIGKILL right after `jws start` printed the id: the next jwsd knows the job
    (its record was written before the response) and has taken it over."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "--", "sh", "-c", "echo started; sleep 600")
    assert job_id in records(first.data_dir)
    first.stop(signal.SIGKILL)
    again = restart_jwsd(first, pki)
    daemons.append(again)
    status = status_of(again, job_id)
    assert status["status"] == "Active"
    assert status["job_id"] == job_id and status["args"] == ["sh", "-c", "echo started; sleep 600"]
    assert again.jws("stop", "-j", job_id).returncode == 0
    assert status_of(again, job_id)["outcome"] == "stopped"


def lines_so_far(jwsd: Jwsd, job_id: str) -> int:
    return int(status_of(jwsd, job_id)["output_bytes"])  # type: ignore[call-overload]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGUSR1])
def test_a_running_job_outlives_jwsd_and_the_next_jwsd_takes_it_over(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd], how: signal.Signals
) -> None:
    """A job printing a counter for 10 s; jwsd is killed (SIGKILL) or exits leaving its
    jobs running (SIGUSR1, the upgrade path) half-way; the next jwsd on the same data
    dir says Active, `jws output` gives every line from the first, exactly once, and
    once the job ends its exit code is there."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "--", "sh", "-c", counter_script(exit_code=5))
    eventually_blocking(
        lambda: lines_so_far(first, job_id) > 20, timeout=scaled(10), what="some output"
    )
    code = first.stop(how)
    assert code == (0 if how == signal.SIGUSR1 else -signal.SIGKILL), first.log
    written = (first.data_dir / "jobs" / job_id / "output.log").stat().st_size
    again = restart_jwsd(first, pki)
    daemons.append(again)
    status = status_of(again, job_id)
    assert status["status"] == "Active", status
    output = again.jws("output", "-j", job_id, timeout=scaled(COUNTER_SECONDS) * 3)
    assert output.returncode == 0, output.stderr
    assert output.stdout == counter_output()
    assert written < len(counter_output()), "the job ended before jwsd went: no takeover shown"
    final = wait_terminated(again, job_id)
    assert (final["exit_code"], final["outcome"]) == (5, "exited")


def test_a_job_that_ended_while_no_jwsd_ran_has_its_exact_exit_code(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "--", "sh", "-c", "echo bye; sleep 1; kill -TERM $$")
    first.stop(signal.SIGKILL)
    status_file = first.data_dir / "jobs" / job_id / "status.json"
    eventually_blocking(
        lambda: b"exit-code" in status_file.read_bytes(), timeout=scaled(10), what="the job ends"
    )
    again = restart_jwsd(first, pki)
    daemons.append(again)
    status = status_of(again, job_id)
    assert (status["status"], status["exit_code"], status["signal_name"]) == (
        "Terminated",
        143,
        "SIGTERM",
    )
    assert status["outcome"] == "signaled"
    assert again.jws("output", "-j", job_id).stdout == b"bye\n"


def test_a_jobs_time_limit_counts_from_its_start_across_a_restart(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """The deadline is the job's, not the daemon's: a job whose time limit passed while
    no jwsd ran is stopped as soon as the next jwsd takes it over, and one whose
    limit is still ahead is stopped when it comes. A clock restarted by the takeover
    would end either a whole limit after the restart: past the bounds below (the
    restart takes well under `early`)."""
    early, late = scaled(6), scaled(10)
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    early_id = start(first, "--timeout", f"{early:g}s", "--", "sleep", "600")
    late_id = start(first, "--timeout", f"{late:g}s", "--", "sleep", "600")
    started = status_of(first, early_id)["started_at"]
    assert isinstance(started, float)
    first.stop(signal.SIGKILL)
    time.sleep(max(0.0, started + early + 0.5 - time.time()))  # past it, with no jwsd
    again = restart_jwsd(first, pki)
    daemons.append(again)
    up = time.time()
    ended = {}
    for job_id in (early_id, late_id):
        status = wait_terminated(again, job_id)
        assert (status["outcome"], status["exit_code"], status["signal_name"]) == (
            "timed-out",
            143,
            "SIGTERM",
        ), status
        assert isinstance(status["started_at"], float) and isinstance(status["ended_at"], float)
        ended[job_id] = status["ended_at"] - status["started_at"]
    assert ended[early_id] <= up - started + scaled(2), (ended, up - started)
    assert late - 0.1 <= ended[late_id] <= max(late, up - started) + scaled(2), ended
    shown = again.jws("status", "-j", early_id)
    assert shown.stdout.decode().startswith(
        f"Terminated (timed out after {format_duration(early)}, killed by SIGTERM, exit code 143)"
    ), shown.stdout


def test_a_stop_recorded_by_a_jwsd_that_died_before_signalling_is_carried_out_by_the_next(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """The stop was asked for and written down: the next jwsd finishes it rather than
    leave the job running (and report it "stopped" whenever it ends by itself)."""
    first = start_jwsd(tmp_path, pki, env={"JOBWORKER_FAULT_POINT": "stop.recorded"})
    daemons.append(first)
    job_id = start(first, "--", "sleep", "600")
    assert first.jws("stop", "-j", job_id).returncode == 3  # jwsd died under the call
    assert first.process.wait(timeout=scaled(10)) == -signal.SIGKILL
    again = restart_jwsd(first, pki)
    daemons.append(again)
    status = wait_terminated(again, job_id)
    assert (status["outcome"], status["signal_name"]) == ("stopped", "SIGTERM"), status


def test_sigterm_stops_every_job_and_keeps_its_record_and_output(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "--", "sh", "-c", "echo running; sleep 600")
    eventually_blocking(lambda: lines_so_far(first, job_id) > 0, timeout=scaled(10), what="output")
    assert first.stop(signal.SIGTERM) == 0
    again = restart_jwsd(first, pki)
    daemons.append(again)
    status = status_of(again, job_id)
    assert (status["status"], status["outcome"]) == ("Terminated", "stopped")
    assert again.jws("output", "-j", job_id).stdout == b"running\n"


def test_environment_values_are_never_written_to_disk(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "-e", "TOKEN=hunter2-secret-value", "--", "true")
    wait_terminated(first, job_id)
    first.stop()
    assert records(first.data_dir)[job_id].env_keys == ("TOKEN",)
    for path in first.data_dir.glob("jobs.db*"):
        assert b"hunter2-secret-value" not in path.read_bytes(), path
    assert (first.data_dir / "jobs.db").stat().st_mode & 0o777 == 0o600


def test_a_record_whose_job_dir_is_gone_has_a_clear_status(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    gone = start(first, "--", "sh", "-c", "echo gone")
    kept = start(first, "--", "sh", "-c", "echo kept")
    wait_terminated(first, gone)
    wait_terminated(first, kept)
    first.stop()
    subprocess.run(["rm", "-rf", str(first.data_dir / "jobs" / gone)], check=True)
    again = restart_jwsd(first, pki)
    daemons.append(again)
    status = status_of(again, gone)
    assert status["exit_code"] == 0
    assert "job dir was gone" in str(status["output_truncated_reason"])
    output = again.jws("output", "-j", gone)
    assert output.returncode != 0 and b"output file is gone" in output.stderr
    assert again.jws("output", "-j", kept).stdout == b"kept\n"  # nothing else is lost


def test_a_corrupt_database_is_refused_in_one_line(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    first.stop()
    db = first.data_dir / "jobs.db"
    with db.open("r+b") as f:
        f.write(b"this is not a database" * 10)
    result = jwsd_fails(tmp_path, first.cgroup_name)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jwsd: the job database"), result.stderr
    assert "move it away" in lines[0]


def test_a_database_from_a_newer_jobworker_is_refused_in_one_line(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    first.stop()
    db = sqlite3.connect(first.data_dir / "jobs.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    result = jwsd_fails(tmp_path, first.cgroup_name)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "schema version 99, newer than" in lines[0], result.stderr


def test_a_second_jwsd_on_the_same_data_dir_is_refused_naming_the_first_ones_pid(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    """Two jwsd on one data dir destroyed each other's jobs: the second one, with another
    cgroup name and port, started, reported the first one's running job Terminated
    (lost) and let `jws rm` delete its directory. It is refused in one line instead,
    before it reads or writes anything there, and the first one's job runs on."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "--", "sh", "-c", "echo started; sleep 600")
    assert status_of(first, job_id)["status"] == "Active"
    job_dir = first.data_dir / "jobs" / job_id
    before = sorted(p.name for p in job_dir.iterdir())
    second = jwsd_fails(tmp_path, f"{first.cgroup_name}-other")
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"another jwsd (pid {first.process.pid}) uses data dir" in lines[0], lines
    assert status_of(first, job_id)["status"] == "Active"
    assert sorted(p.name for p in job_dir.iterdir()) == before
    assert first.jws("stop", "-j", job_id).returncode == 0

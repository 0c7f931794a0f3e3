"""The real `jws` against a real `jwsd`: the seed's sample session, exit codes,
byte-exact output, and every error a user can meet, with its message and code."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, Jwsd, restart_jwsd, start_jwsd
from tests.support.certs import TestPKI
from tests.support.cgroupfs import cgroups_named
from tests.support.leaks import processes_running
from tests.support.records import records

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_the_seeds_sample_session(jwsd: Jwsd) -> None:
    """alex starts a long job, sees Active; betty is denied; alex follows the output
    and, from a second process, stops the job; the stream ends with what ran; Terminated."""
    job_id = ok(
        jwsd.jws(
            "start", "-c", "sh -c 'i=0; while :; do echo ping $i; i=$((i+1)); sleep 0.1; done'"
        )
    ).strip()
    assert len(job_id) == 36  # a UUID, and nothing else on stdout
    assert ok(jwsd.jws("status", "-j", job_id)).splitlines()[0] == "Active"
    denied = jwsd.jws("status", "-j", job_id, user="betty")
    assert denied.returncode == 1
    assert denied.stderr.decode() == "jws: access denied\n"
    with jwsd.popen("output", "-j", job_id) as follower:  # closes its pipes on exit
        assert follower.stdout is not None and follower.stderr is not None
        first = b"".join(follower.stdout.readline() for _ in range(3))  # it follows: stop now
        ok(jwsd.jws("stop", "-j", job_id))
        out = first + follower.stdout.read()  # the same buffered reader: nothing is skipped
        err = follower.stderr.read()
        assert follower.wait(timeout=10) == 0, err
    lines = out.decode().splitlines()
    assert len(lines) >= 3
    assert lines == [f"ping {i}" for i in range(len(lines))]
    status = ok(jwsd.jws("status", "-j", job_id))
    assert status.splitlines()[0].startswith("Terminated (stopped")


@pytest.mark.hierarchy_independent
def test_run_exits_with_the_jobs_exit_code(jwsd: Jwsd) -> None:
    result = jwsd.jws("run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == b"out\nerr\n"
    killed = jwsd.jws("run", "--", "sh", "-c", "kill -KILL $$")
    assert killed.returncode == 137
    assert jwsd.jws("run", "-c", "true").returncode == 0


def test_run_of_a_job_past_its_time_limit_says_so_and_exits_as_stopped(jwsd: Jwsd) -> None:
    result = jwsd.jws("run", "--timeout", "1s", "--", "sh", "-c", "echo started; sleep 60")
    assert result.returncode == 143, result.stderr
    assert result.stdout == b"started\n"
    assert result.stderr == b"jws: the job ran past its time limit (1s) and was stopped\n"


@pytest.mark.hierarchy_independent
def test_binary_output_is_byte_identical_for_concurrent_followers(jwsd: Jwsd) -> None:
    script = "head -c 3000000 /dev/urandom | tee ./data; sleep 0.5; sha256sum < ./data >&2"
    job_id = ok(jwsd.jws("start", "--", "sh", "-c", script)).strip()
    followers = [jwsd.popen("output", "-j", job_id) for _ in range(2)]
    outputs = [f.communicate(timeout=30)[0] for f in followers]
    assert all(f.returncode == 0 for f in followers)
    assert outputs[0] == outputs[1]
    payload, digest = outputs[0][:3000000], outputs[0][3000000:]
    assert hashlib.sha256(payload).hexdigest() == digest.split()[0].decode()
    # Resuming from an offset gives exactly the rest.
    rest = jwsd.jws("output", "-j", job_id, "--offset", "2999990").stdout
    assert rest == outputs[0][2999990:]


@pytest.mark.hierarchy_independent
def test_status_json_and_list(jwsd: Jwsd) -> None:
    job_id = ok(
        jwsd.jws(
            "start", "--memory", "64M", "--cpu", "0.5", "--pids", "20", "--", "sh", "-c", "exit 4"
        )
    ).strip()
    ok(jwsd.jws("output", "-j", job_id))
    status = json.loads(ok(jwsd.jws("status", "-j", job_id, "--json")))
    assert status["status"] == "Terminated"
    assert status["exit_code"] == 4
    assert status["limits"] == {
        "cpu": 0.5,
        "memory_bytes": 64 << 20,
        "io_read_bps": None,
        "io_write_bps": None,
        "pids": 20,
        "output_bytes": 1 << 30,  # jwsd's --max-output applies when a job asks for none
        "timeout_seconds": None,
    }
    listed = ok(jwsd.jws("list"))
    assert job_id in listed
    assert listed.splitlines()[0].split()[:5] == ["JOB", "ID", "NAME", "STATUS", "EXIT"]
    assert json.loads(ok(jwsd.jws("list", "--json")))[0]["job_id"] == job_id
    assert ok(jwsd.jws("list", user="betty")).splitlines()[1:] == []


#: What a red team put in a command: clear the screen (CSI), set the title (OSC ... BEL),
#: a newline (a forged row), a right-to-left override, DEL and a C1 CSI.
HOSTILE_ARG = "x\x1b[2J\x1b]0;owned\x07y\nforged row\u202eevil\x7f\u009b31m"
RAW = [b"\x1b", b"\x07", b"\x7f", "\u202e".encode(), "\u009b".encode()]


def _raw_bytes(out: bytes) -> list[bytes]:
    return [raw for raw in RAW if raw in out]


@pytest.mark.hierarchy_independent
def test_a_command_holding_terminal_controls_is_printed_escaped_by_list_and_status(
    jwsd: Jwsd,
) -> None:
    """`jws list`, `jws status` and their --json print none of a command's control bytes
    (nor its newline inside a row); only `jws output`, the job's own bytes, is raw."""
    job_id = ok(jwsd.jws("start", "--", "printf", "%s", HOSTILE_ARG)).strip()
    assert jwsd.jws("output", "-j", job_id).stdout == HOSTILE_ARG.encode()  # raw, as docker logs
    listed = jwsd.jws("list").stdout
    assert _raw_bytes(listed) == [], listed
    rows = listed.decode().splitlines()
    assert len(rows) == 2 and rows[1].startswith(job_id), rows  # the header and one row
    assert "\\x1b[2J\\x1b]0;owned\\x07y\\nforged row\\u202e" in rows[1]
    status = jwsd.jws("status", "-j", job_id).stdout
    assert _raw_bytes(status) == [], status
    (command,) = [line for line in status.decode().splitlines() if "command" in line]
    assert "forged row" in command
    for args in [("status", "-j", job_id, "--json"), ("list", "--json")]:
        out = jwsd.jws(*args).stdout
        assert _raw_bytes(out) == [] and out.isascii(), out
        data = json.loads(out)
        assert (data if isinstance(data, dict) else data[0])["args"] == [
            "printf",
            "%s",
            HOSTILE_ARG,
        ]
    # An error line that repeats the value escapes it too.
    missing = jwsd.jws("status", "-j", HOSTILE_ARG)
    assert missing.returncode == 1 and _raw_bytes(missing.stderr) == [], missing.stderr
    assert missing.stderr.count(b"\n") == 1


@pytest.mark.hierarchy_independent
def test_login_makes_a_user_the_default(jwsd: Jwsd) -> None:
    missing = jwsd.jws("list", user=None)
    assert missing.returncode == 2
    assert "no user" in missing.stderr.decode()
    ok(jwsd.jws("login", "betty", user=None))
    assert "now acting as betty" in jwsd.jws("login", "betty", user=None).stderr.decode()
    job_id = ok(jwsd.jws("start", "-c", "true", user=None)).strip()
    assert json.loads(ok(jwsd.jws("status", "-j", job_id, "--json", user=None)))["owner"] == "betty"


@pytest.mark.hierarchy_independent
@pytest.mark.parametrize(
    ("args", "user", "code", "message"),
    [
        (
            ("status", "-j", "no-such-job"),
            "alex",
            1,
            "jws: no job of yours is named 'no-such-job'\n",
        ),
        (("start", "-c", "no-such-program-xyz"), "alex", 127, "not found in PATH"),
        (("start", "-c", "echo 'unterminated"), "alex", 2, "no closing quotation"),
        (("list",), "mallory", 1, "unknown user 'mallory'"),
        (("list",), "nobody-here", 2, "no credentials for user 'nobody-here'"),
        (("start", "--memory", "lots", "-c", "true"), "alex", 2, "not a size"),
        (("start", "-c", "true", "--", "true"), "alex", 2, "not both"),
        (("stop", "-j", "x", "--grace", "soon"), "alex", 2, "not a duration"),
        (("status",), "alex", 2, "give one job id"),
    ],
)
def test_errors_are_one_plain_line_with_a_telling_exit_code(
    jwsd: Jwsd, args: tuple[str, ...], user: str, code: int, message: str
) -> None:
    result = jwsd.jws(*args, user=user)
    assert result.returncode == code, result.stderr
    err = result.stderr.decode()
    assert message in err
    assert "Traceback" not in err


@pytest.mark.hierarchy_independent
def test_an_unreachable_server_is_exit_code_3(tmp_path: Path, pki: TestPKI) -> None:
    tls_dir = pki.write_tls_dir(tmp_path / "tls", ["alex"])
    env = dict(
        os.environ, JWS_TLS_DIR=str(tls_dir), JWS_ADDR="127.0.0.1:1", XDG_CONFIG_HOME=str(tmp_path)
    )
    result = subprocess.run(
        [str(BIN / "jws"), "list", "-u", "alex"], env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 3
    assert result.stderr.decode().startswith("jws: cannot reach 127.0.0.1:1:")


def test_jwsd_shuts_down_cleanly_on_sigterm_with_jobs_running(tmp_path: Path, pki: TestPKI) -> None:
    from tests.conftest import require_root

    require_root()
    daemon = start_jwsd(tmp_path, pki)
    job_id = ok(
        daemon.jws("start", "-c", "sh -c 'trap \"\" TERM; echo up; while :; do sleep 1; done'")
    ).strip()
    follower = daemon.popen("output", "-j", job_id)
    assert follower.stdout is not None
    first = follower.stdout.readline()  # the follower's stream is open
    t0 = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 8
    rest, err = follower.communicate(timeout=10)
    assert first + rest == b"up\n"
    assert follower.returncode == 0, err  # the stream ended cleanly, after the last byte
    assert not cgroups_named(daemon.cgroup_name)
    assert "rpc user=alex method=StartJob job=" in daemon.log
    assert "PRIVATE KEY" not in daemon.log


def test_jwsd_refuses_to_start_with_one_clear_line(tmp_path: Path, pki: TestPKI) -> None:
    from tests.conftest import require_root

    require_root()
    jwsd = str(BIN / "jwsd")
    missing = subprocess.run(
        [jwsd, "--tls-dir", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        timeout=30,
    )
    assert missing.returncode == 1
    assert missing.stderr.decode().startswith("jwsd: ")
    assert "server_cert.pem" in missing.stderr.decode()
    assert missing.stderr.decode().count("\n") == 1
    tls_dir = pki.write_tls_dir(tmp_path / "tls", [])
    not_root = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            jwsd,
            "--tls-dir",
            str(tls_dir),
        ],
        capture_output=True,
        timeout=30,
    )
    assert not_root.returncode == 1
    assert (
        not_root.stderr.decode()
        == "jwsd: jwsd must run as root: cgroups and namespaces need it (try sudo)\n"
    )
    busy = start_jwsd(tmp_path / "first", pki)
    try:
        second = subprocess.run(
            [
                jwsd,
                "--addr",
                busy.addr,
                "--tls-dir",
                str(busy.tls_dir),
                "--data-dir",
                str(tmp_path / "d2"),
            ],
            capture_output=True,
            timeout=30,
            env=dict(os.environ, JOBWORKER_CGROUP_NAME="jobworker-test-second"),
        )
        assert second.returncode == 1
        assert "jwsd: " in second.stderr.decode()
        assert "in use" in second.stderr.decode()
    finally:
        busy.stop()


def test_a_killed_daemons_jobs_run_on_and_the_next_one_takes_them_over_and_cleans_up(
    tmp_path: Path, pki: TestPKI
) -> None:
    """jwsd killed with SIGKILL: its job runs on (nothing ties it to jwsd's life). The
    next jwsd takes it over, and kills and removes a job cgroup that no record claims
    (as a start that never returned leaves)."""
    from tests.conftest import require_root

    require_root()
    daemon = start_jwsd(tmp_path / "a", pki)
    marker = str(
        uuid.uuid4().int % 10**9 + 10**9
    )  # a unique sleep duration names the job's process
    job_id = ok(daemon.jws("start", "--", "sleep", marker)).strip()
    assert processes_running("sleep", marker)
    daemon.process.kill()
    daemon.process.wait()
    assert processes_running("sleep", marker), "the job died with jwsd"
    parents = cgroups_named(daemon.cgroup_name)
    stray = "00000000-0000-4000-8000-000000000000"
    for parent in parents:
        (parent / stray).mkdir()
    again = restart_jwsd(daemon, pki)
    try:
        assert not [p for p in parents if (p / stray).exists()], "a cgroup without a record"
        assert processes_running("sleep", marker)
        assert json.loads(ok(again.jws("status", "-j", job_id, "--json")))["status"] == "Active"
        assert [d.name for d in (daemon.data_dir / "jobs").iterdir()] == [job_id]
    finally:
        assert again.stop() == 0, again.log
    assert not processes_running("sleep", marker), "SIGTERM did not stop the job"
    assert records(daemon.data_dir)[job_id].outcome == "stopped"


@pytest.mark.hierarchy_independent
def test_shell_completion_and_help(tmp_path: Path) -> None:
    env = dict(os.environ, COMP_WORDS="jws st", COMP_CWORD="1", _JWS_COMPLETE="bash_complete")
    completion = subprocess.run([str(BIN / "jws")], env=env, capture_output=True, timeout=30)
    assert completion.stdout.decode().split() == ["plain,start", "plain,status", "plain,stop"]
    # The new commands and flags of issue 22 complete too.
    for words, expected in [
        ("jws w", ["plain,wait"]),
        ("jws ev", ["plain,events"]),
        ("jws list --la", ["plain,--label"]),
        ("jws start --na", ["plain,--name"]),
    ]:
        env.update(COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - 1))
        completed = subprocess.run([str(BIN / "jws")], env=env, capture_output=True, timeout=30)
        assert completed.stdout.decode().split() == expected, words
    for command in ["start", "stop", "status", "output", "list", "run", "login", "events", "wait"]:
        helped = subprocess.run(
            [str(BIN / "jws"), command, "--help"], capture_output=True, timeout=30
        )
        assert helped.returncode == 0
        assert b"Usage: jws " + command.encode() in helped.stdout
        assert b"Example" in helped.stdout

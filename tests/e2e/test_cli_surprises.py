"""The real `jws` against a real `jwsd`: what used to surprise a user silently with
exit code 0 (issue 23), and the small things a docker or ssh user's hands expect."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from tests.e2e.conftest import BIN, Jwsd, restart_jwsd, start_jwsd
from tests.support.certs import TestPKI
from tests.support.timing import scaled
from tests.support.waiting import eventually_blocking

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.hierarchy_independent]

JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def status(jwsd: Jwsd, job_id: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(ok(jwsd.jws("status", "-j", job_id, "--json")))
    return loaded


def start_sleeper(jwsd: Jwsd) -> str:
    return ok(jwsd.jws("start", "--", "sleep", "600")).strip()


def one_line_naming(stderr: bytes, job_id: str) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1 and job_id in lines[0], lines
    return lines[0]


# ---- 1. repeated options -----------------------------------------------------------


def test_stop_and_rm_act_on_every_id_given(jwsd: Jwsd) -> None:
    first, second, third, fourth = (start_sleeper(jwsd) for _ in range(4))
    ok(jwsd.jws("stop", "-j", first, "-j", second, "--grace", "0"))
    ok(jwsd.jws("stop", "--grace", "0", third, fourth))
    for job_id in (first, second, third, fourth):
        assert status(jwsd, job_id)["outcome"] == "stopped"
    ok(jwsd.jws("rm", "-j", first, "-j", second))
    ok(jwsd.jws("rm", third, fourth))
    for job_id in (first, second, third, fourth):
        assert jwsd.jws("status", "-j", job_id).returncode == 1


def test_one_refused_id_is_reported_and_the_others_are_stopped(jwsd: Jwsd) -> None:
    running = start_sleeper(jwsd)
    result = jwsd.jws("stop", "--grace", "0", "no-such-job", running)
    assert result.returncode == 1
    # Not an id nor a prefix of one: a name, which jwsd looks for among alex's jobs.
    assert result.stderr == b"jws: no job of yours is named 'no-such-job'\n"
    assert status(jwsd, running)["outcome"] == "stopped"


@pytest.mark.parametrize(
    "args",
    [
        ("status", "-j", "a", "-j", "b"),
        ("output", "-j", "a", "--job", "b"),
        ("stop", "-j", "a", "--grace", "1s", "--grace", "2s"),
        ("run", "--memory", "64M", "--memory", "128M", "--", "true"),
        ("start", "-c", "true", "-c", "false"),
    ],
)
def test_an_option_of_one_value_given_twice_is_a_usage_error(
    jwsd: Jwsd, args: tuple[str, ...]
) -> None:
    result = jwsd.jws(*args)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.decode().splitlines()
    assert "was given more than once" in line
    assert jwsd.jws("list").stdout.decode().splitlines()[1:] == []  # nothing started


# ---- 2. stdout closed, 3. Ctrl-C ----------------------------------------------------


def test_run_whose_stdout_closes_stops_its_job_and_exits_141(jwsd: Jwsd) -> None:
    """`jws run -- yes | head -c 100`: the job is stopped, not left writing to its cap."""
    started = time.monotonic()
    result = subprocess.run(
        ["sh", "-c", f"{BIN / 'jws'} run -u alex -- yes | head -c 100; echo $? >&2"],
        env=jwsd.env(),
        capture_output=True,
        timeout=scaled(30),
    )
    assert time.monotonic() - started < scaled(15)
    assert result.stdout == b"y\n" * 50
    *said, code = result.stderr.decode().splitlines()
    (job_id,) = JOB_ID.findall(said[0])
    assert said == [f"jws: stdout was closed: stopping job {job_id}"]
    # The shell reports the pipeline's last command; the first one's code is this:
    assert code == "0"
    ended = status(jwsd, job_id)
    assert ended["status"] == "Terminated" and ended["outcome"] == "stopped"
    assert isinstance(ended["output_bytes"], int) and ended["output_bytes"] < 1 << 28


def test_run_whose_stdout_closes_exits_141(jwsd: Jwsd) -> None:
    with jwsd.popen("run", "--", "yes") as run:
        assert run.stdout is not None and run.stderr is not None
        assert run.stdout.read(100) == b"y\n" * 50
        run.stdout.close()
        assert run.wait(timeout=scaled(15)) == 141
        job_id = JOB_ID.findall(one_line_naming(run.stderr.read(), ""))[0]
    assert status(jwsd, job_id)["outcome"] == "stopped"


def test_ctrl_c_on_run_stops_its_job_and_exits_130(jwsd: Jwsd) -> None:
    with jwsd.popen("run", "--grace", "2s", "--", "sh", "-c", "echo ready; sleep 600") as run:
        assert run.stdout is not None and run.stderr is not None
        assert run.stdout.readline() == b"ready\n"
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=scaled(15)) == 130
        line = one_line_naming(run.stderr.read(), "")
    (job_id,) = JOB_ID.findall(line)
    assert line == f"jws: interrupted: stopping job {job_id} (Ctrl-C again to leave it running)"
    ended = status(jwsd, job_id)
    assert ended["status"] == "Terminated" and ended["outcome"] == "stopped"


def test_a_second_ctrl_c_leaves_at_once_and_says_the_job_may_run_on(jwsd: Jwsd) -> None:
    script = "trap '' TERM; echo ready; sleep 600"  # SIGTERM is ignored: the grace runs out
    with jwsd.popen("run", "--grace", "60s", "--", "sh", "-c", script) as run:
        assert run.stdout is not None and run.stderr is not None
        assert run.stdout.readline() == b"ready\n"
        run.send_signal(signal.SIGINT)
        stopping = run.stderr.readline().decode()
        assert "interrupted: stopping job" in stopping
        (job_id,) = JOB_ID.findall(stopping)
        assert status(jwsd, job_id)["status"] == "Active"  # within its grace period
        left_at = time.monotonic()
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=scaled(15)) == 130
        assert time.monotonic() - left_at < scaled(5)
        assert run.stderr.read().decode() == (
            f"jws: interrupted again: leaving now; job {job_id} may still be running "
            f"(`jws stop -j {job_id}` stops it)\n"
        )
    ok(jwsd.jws("stop", "--grace", "0", job_id))


def test_ctrl_c_while_the_job_is_being_started_stops_it_once_started(
    tmp_path: Path, pki: TestPKI
) -> None:
    # A bubblewrap that takes 3 s to start holds StartJob open: Ctrl-C lands while
    # jwsd is starting the job, before jws knows its id.
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    (slow / "bwrap").write_text(f'#!/bin/sh\nsleep 3\nexec {bwrap} "$@"\n')
    (slow / "bwrap").chmod(0o755)
    daemon = start_jwsd(tmp_path, pki, env={"PATH": f"{slow}:{os.environ['PATH']}"})
    try:
        with daemon.popen("run", "--grace", "1s", "--", "sleep", "600") as run:
            assert run.stderr is not None
            jobs = daemon.data_dir / "jobs"
            eventually_blocking(
                lambda: jobs.is_dir() and any(jobs.iterdir()),
                timeout=scaled(20),
                what="jwsd is starting the job",
            )
            run.send_signal(signal.SIGINT)
            assert run.wait(timeout=scaled(30)) == 130
            said = run.stderr.read().decode()
        assert "interrupted while the job is being started" in said, said
        (job_id,) = set(JOB_ID.findall(said))
        ended = status(daemon, job_id)
        assert ended["status"] == "Terminated" and ended["outcome"] == "stopped", ended
    finally:
        assert daemon.stop() == 0, daemon.log


def test_detach_on_interrupt_leaves_the_job_running_and_names_it(jwsd: Jwsd) -> None:
    with jwsd.popen(
        "run", "--detach-on-interrupt", "--", "sh", "-c", "echo ready; sleep 600"
    ) as run:
        assert run.stdout is not None and run.stderr is not None
        assert run.stdout.readline() == b"ready\n"
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=scaled(15)) == 130
        line = one_line_naming(run.stderr.read(), "")
    (job_id,) = set(JOB_ID.findall(line))
    assert "keeps running" in line
    assert status(jwsd, job_id)["status"] == "Active"
    ok(jwsd.jws("stop", "--grace", "0", job_id))


# ---- 5. the environment -------------------------------------------------------------


def test_env_adds_to_the_default_environment_and_passes_the_callers_value(jwsd: Jwsd) -> None:
    result = jwsd.jws(
        "run", "-e", "FOO=1", "-e", "FROM_CALLER", "-e", "UNSET_HERE", "-e", "LANG=C", "--", "env",
        FROM_CALLER="the caller's",
    )  # fmt: skip
    env = dict(line.split("=", 1) for line in ok(result).splitlines())
    assert env["FOO"] == "1"
    assert env["FROM_CALLER"] == "the caller's"
    assert "UNSET_HERE" not in env  # as docker's -e NAME: a name the caller lacks is skipped
    assert env["LANG"] == "C"  # -e replaces a default variable of its name
    assert env["PATH"].startswith("/")
    assert env["HOME"] and env["USER"] and env["LOGNAME"]
    bad = jwsd.jws("run", "-e", "=x", "--", "true")
    assert bad.returncode == 2 and b"NAME=VALUE or NAME" in bad.stderr


# ---- 6. a certificate jwsd cannot accept ----------------------------------------------


def test_an_expired_or_foreign_client_certificate_is_one_line_and_not_exit_3(
    jwsd: Jwsd, pki: TestPKI
) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    pki.add_user(jwsd.tls_dir, "expired", not_after=past)
    pki.add_user(jwsd.tls_dir, "stranger", ca=trustme.CA())
    expired = jwsd.jws("list", user="expired")
    assert expired.returncode == 2, expired.stderr
    (line,) = expired.stderr.decode().splitlines()
    assert "expired on" in line and "expired/client_cert.pem" in line
    stranger = jwsd.jws("list", user="stranger")
    assert stranger.returncode == 2, stranger.stderr
    (line,) = stranger.stderr.decode().splitlines()
    assert "was not issued by" in line and "client_ca_cert.pem" in line


# ---- the small things ------------------------------------------------------------------


def test_a_missing_program_exits_127(jwsd: Jwsd) -> None:
    for command in ("start", "run"):
        result = jwsd.jws(command, "--", "no-such-program-xyz")
        assert result.returncode == 127, result.stderr
        assert b"not found in PATH" in result.stderr
    assert jwsd.jws("run", "--", "./no-such-file").returncode == 127


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("stpo",), "No such command 'stpo'. Did you mean 'stop'?"),
        (("list", "--jsno"), "No such option '--jsno'"),
        (("start", "ls", "-l"), "the program's own arguments go after --"),
        (("run", "-c", "echo 'unclosed"), "no closing quotation"),
        (("start", "--timeout", "2m30", "--", "true"), "not a duration"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    jwsd: Jwsd, args: tuple[str, ...], message: str
) -> None:
    result = jwsd.jws(*args, user=None)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("jws: ") and message.lower() in line.lower()


def test_durations_and_sizes_as_people_type_them(jwsd: Jwsd) -> None:
    job_id = ok(jwsd.jws("start", "--timeout", "2m30s", "--memory", "1Gi", "--", "true")).strip()
    limits = status(jwsd, job_id)["limits"]
    assert isinstance(limits, dict)
    assert limits["timeout_seconds"] == 150 and limits["memory_bytes"] == 1 << 30


def test_versions_and_help_summaries_whole(jwsd: Jwsd) -> None:
    for program in ("jws", "jwsd"):
        version = subprocess.run([str(BIN / program), "--version"], capture_output=True)
        assert version.returncode == 0
        assert version.stdout.decode().startswith(f"{program}, version ")
    helped = ok(jwsd.jws("--help", user=None))
    summaries = helped.split("Commands:")[1].splitlines()
    assert not [line for line in summaries if line.endswith(("...", "…"))], summaries
    assert "then SIGKILL." in " ".join(helped.split())  # stop's whole first sentence


def test_shutdown_log_counts_in_the_singular(jwsd: Jwsd) -> None:
    start_sleeper(jwsd)
    assert jwsd.stop() == 0
    assert "shutting down: stopping 1 running job\n" in jwsd.log


def test_output_of_a_job_stopped_by_jwsds_shutdown_says_so(jwsd: Jwsd, pki: TestPKI) -> None:
    job_id = ok(jwsd.jws("start", "--", "sh", "-c", "echo up; sleep 600")).strip()
    with jwsd.popen("output", "-j", job_id) as follower:
        assert follower.stdout is not None and follower.stderr is not None
        assert follower.stdout.readline() == b"up\n"
        assert jwsd.stop() == 0
        assert follower.wait(timeout=scaled(15)) == 0
        live = follower.stderr.read().decode()
    assert live == (
        f"jws: jwsd is shutting down: it stopped job {job_id} as it went, unless the job "
        f"had just ended (`jws status -j {job_id}` says, once jwsd is back)\n"
    )
    again = restart_jwsd(jwsd, pki)
    try:
        later = again.jws("output", "-j", job_id)
        assert later.returncode == 0 and later.stdout == b"up\n"
        assert later.stderr.decode() == (
            f"jws: job {job_id} did not end by itself: jwsd stopped it as it shut down\n"
        )
        assert status(again, job_id)["outcome"] == "stopped"
        finished = ok(again.jws("start", "--", "true")).strip()
        assert again.jws("output", "-j", finished).stderr == b""  # an end of its own: no word
    finally:
        assert again.stop() == 0


# ---- 10. set-up as the README tells it ---------------------------------------------


def test_login_remembers_the_tls_dir_from_the_environment_for_a_new_shell_elsewhere(
    jwsd: Jwsd, tmp_path: Path
) -> None:
    # The README: `export JWS_TLS_DIR=certs/dev; jws login alex`, a relative dir. A new
    # shell, in another directory and without JWS_TLS_DIR, must still find alex's files.
    relative = os.path.relpath(jwsd.tls_dir, tmp_path)
    login = subprocess.run(
        [str(BIN / "jws"), "login", "alex"],
        env=jwsd.env(JWS_TLS_DIR=relative),
        cwd=tmp_path,
        capture_output=True,
    )
    assert login.returncode == 0, login.stderr.decode()
    assert str(jwsd.tls_dir) in login.stderr.decode()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    new_shell = jwsd.env()
    del new_shell["JWS_TLS_DIR"]
    listed = subprocess.run(
        [str(BIN / "jws"), "list"], env=new_shell, cwd=elsewhere, capture_output=True
    )
    assert listed.returncode == 0, listed.stderr.decode()


def test_login_of_a_user_without_credentials_fails_and_keeps_the_old_default(
    jwsd: Jwsd,
) -> None:
    ok(jwsd.jws("login", "betty", user=None))
    refused = jwsd.jws("login", "nosuchuser", user=None)
    assert refused.returncode == 2
    line = refused.stderr.decode()
    assert line.count("\n") == 1 and "no credentials for user 'nosuchuser'" in line, line
    job_id = ok(jwsd.jws("start", "-c", "true", user=None)).strip()
    assert json.loads(ok(jwsd.jws("status", "-j", job_id, "--json", user=None)))["owner"] == "betty"


# ---- 8. ids people can type ----------------------------------------------------------


def _unique_prefix(job_id: str, others: list[str]) -> str:
    for length in range(1, 36):
        if not any(other.startswith(job_id[:length]) for other in others):
            return job_id[:length]
    raise AssertionError(job_id)


def test_a_unique_prefix_or_an_upper_case_id_works_wherever_an_id_does(jwsd: Jwsd) -> None:
    sleeper = start_sleeper(jwsd)
    echo = ok(jwsd.jws("start", "--", "echo", "prefixed")).strip()
    prefix = _unique_prefix(echo, [sleeper])
    assert status(jwsd, echo.upper())["job_id"] == echo
    assert json.loads(ok(jwsd.jws("status", prefix, "--json")))["job_id"] == echo
    assert ok(jwsd.jws("output", prefix)) == "prefixed\n"
    ok(jwsd.jws("stop", _unique_prefix(sleeper, [echo]), "--grace", "0"))
    assert status(jwsd, sleeper)["outcome"] == "stopped"
    ok(jwsd.jws("rm", "-j", prefix))
    assert jwsd.jws("status", "-j", echo).returncode == 1


def test_an_ambiguous_prefix_names_its_candidates_and_another_users_jobs_never_match(
    jwsd: Jwsd,
) -> None:
    jobs = [ok(jwsd.jws("start", "--", "true")).strip() for _ in range(18)]
    # 18 ids over 16 hex digits: some first digit begins two of them.
    shared = next(digit for digit in "0123456789abcdef" if sum(j[0] == digit for j in jobs) > 1)
    ambiguous = jwsd.jws("status", shared)
    assert ambiguous.returncode == 1
    line = ambiguous.stderr.decode()
    assert line.count("\n") == 1 and "begins the ids of" in line, line
    assert all(job in line for job in jobs if job[0] == shared) or "more" in line
    # betty's listing has none of alex's jobs: a prefix of them names nothing for her.
    refused = jwsd.jws("status", jobs[0][:8], user="betty")
    assert refused.returncode == 1 and "no job with id" in refused.stderr.decode()
    assert jobs[0] not in refused.stderr.decode()


def test_one_job_id_is_given_once(jwsd: Jwsd) -> None:
    job_id = start_sleeper(jwsd)
    both = jwsd.jws("status", "-j", job_id, job_id)
    assert both.returncode == 2 and "not both" in both.stderr.decode()
    none = jwsd.jws("output")
    assert none.returncode == 2 and "give one job id" in none.stderr.decode()


# ---- 9. prune, and the list's columns --------------------------------------------------


def test_prune_removes_only_the_callers_ended_jobs(jwsd: Jwsd) -> None:
    for _ in range(2):
        assert ok(jwsd.jws("run", "--", "true")) == ""
    running = start_sleeper(jwsd)
    bettys = ok(jwsd.jws("start", "--", "true", user="betty")).strip()
    assert ok(jwsd.jws("run", "--", "true", user="betty")) == ""
    kept = jwsd.jws("prune", "--until", "1h")
    assert kept.returncode == 0 and "no ended job" in kept.stderr.decode()
    pruned = jwsd.jws("prune")
    assert pruned.returncode == 0, pruned.stderr.decode()
    assert len(pruned.stdout.decode().split()) == 2
    assert "removed 2 jobs" in pruned.stderr.decode()
    assert ok(jwsd.jws("list", "-q")).split() == [running]
    assert status(jwsd, running)["status"] == "Active"
    assert len(ok(jwsd.jws("list", "-q", user="betty")).split()) == 2
    assert bettys in ok(jwsd.jws("list", "-q", user="betty"))


def test_list_shows_owners_to_an_admin_and_cuts_commands_unless_asked(jwsd: Jwsd) -> None:
    ok(jwsd.jws("start", "--", "echo", "a" * 100))
    ok(jwsd.jws("start", "--", "true", user="betty"))
    mine = ok(jwsd.jws("list")).splitlines()
    assert mine[0].split()[:3] == ["JOB", "ID", "NAME"]
    assert mine[1].endswith("...") and "a" * 100 not in mine[1]
    assert ("a" * 100) in ok(jwsd.jws("list", "--no-trunc"))
    every = ok(jwsd.jws("list", user="admin")).splitlines()
    assert every[0].split()[:5] == ["JOB", "ID", "OWNER", "NAME", "STATUS"]
    assert sorted(line.split()[1] for line in every[1:]) == ["alex", "betty"]


def test_shell_completion_offers_the_callers_job_ids(jwsd: Jwsd) -> None:
    mine = start_sleeper(jwsd)
    bettys = ok(jwsd.jws("start", "--", "true", user="betty")).strip()

    def completed(words: str, cword: int) -> list[str]:
        done = subprocess.run(
            [str(BIN / "jws")],
            env=jwsd.env(_JWS_COMPLETE="bash_complete", COMP_WORDS=words, COMP_CWORD=str(cword)),
            capture_output=True,
            timeout=scaled(30),
        )
        assert done.returncode == 0, done.stderr.decode()
        # bash_complete prints "type,value" lines.
        return [line.split(",", 1)[1] for line in done.stdout.decode().splitlines() if line]

    assert completed("jws status -u alex ", 4) == [mine]
    assert completed(f"jws stop -u alex -j {mine[:3]}", 5) == [mine]
    assert completed("jws output -u betty ", 4) == [bettys]
    other = next(digit for digit in "0123456789abcdef" if not mine.startswith(digit))
    assert completed(f"jws status -u alex {other}", 4) == []

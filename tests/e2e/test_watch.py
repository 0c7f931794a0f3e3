"""`jws wait` and `jws events` through the real jwsd and jws (issue 22): waiting on
jobs that end in different ways with `jws run`'s exit codes, across a jwsd crash;
events one a line, resumed after a cursor, a stale cursor after a restart."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Jwsd, start_jwsd
from tests.e2e.test_reconnect import (
    clients,  # noqa: F401  (a fixture)
    finish,
    restart_on_the_same_port,
    start,
    within,
)
from tests.support.certs import TestPKI
from tests.support.timing import scaled

pytestmark = [pytest.mark.root, pytest.mark.hierarchy_independent]


def events_until(
    process: subprocess.Popen[bytes], count: int, what: str
) -> list[dict[str, object]]:
    """The next `count` lines of a `jws events --json`, parsed."""
    stdout = process.stdout
    assert stdout is not None

    def read() -> list[dict[str, object]]:
        lines = []
        for _ in range(count):
            line = stdout.readline()
            assert line, f"jws events ended before {what}"
            lines.append(json.loads(line))
        return lines

    return within(scaled(30), what, process, read)


def kinds(events: list[dict[str, object]]) -> list[str]:
    return [str(event["kind"]) for event in events]


def test_wait_on_three_jobs_that_end_differently_exits_as_jws_run(
    jwsd: Jwsd,
    clients: list[subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    start(jwsd, "--name", "three", "--", "sh", "-c", "sleep 1; exit 3")
    start(jwsd, "--name", "killed", "--", "sh", "-c", "sleep 1; kill -KILL $$")
    start(jwsd, "--name", "stopped", "--", "sleep", "60")
    waiter = jwsd.popen("wait", "three", "killed", "stopped")
    clients.append(waiter)
    assert jwsd.jws("wait", "killed").returncode == 137  # 128 + SIGKILL, alone
    assert jwsd.jws("stop", "stopped", "--grace", "0").returncode == 0
    out, err = finish(waiter)
    assert waiter.returncode == 3, err  # the first one given that did not exit 0
    lines = out.decode().splitlines()
    assert [line.split()[1] for line in lines] == ["three", "killed", "stopped"]
    assert "exit code 3" in lines[0] and "killed by SIGKILL" in lines[1]
    assert "stopped" in lines[2]
    assert jwsd.jws("wait", "three").returncode == 3  # an ended job: at once
    start(jwsd, "--name", "zero", "--", "true")
    assert jwsd.jws("wait", "zero").returncode == 0
    start(jwsd, "--name", "long", "--", "sleep", "60")
    late = jwsd.jws("wait", "long", "--timeout", "1s")
    assert late.returncode == 124 and b"gave up waiting after 1s" in late.stderr
    refused = jwsd.jws("wait", "long", user="betty")  # alex's name: not betty's
    assert refused.returncode == 1 and b"no job of yours is named 'long'" in refused.stderr
    assert jwsd.jws("stop", "long", "--grace", "0").returncode == 0


def test_wait_rides_over_a_jwsd_crash(
    tmp_path: Path,
    pki: TestPKI,
    daemons: list[Jwsd],
    clients: list[subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    """The job ends while no jwsd runs: the next one's answer to the old cursor is
    stale, with the job's current state, and `jws wait` exits with its code."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    start(first, "--name", "seven", "--", "sh", "-c", "sleep 10; exit 7")
    waiter = first.popen("wait", "seven")
    clients.append(waiter)
    # A watch started after the waiter's has begun: the waiter's has too, most likely.
    events = first.popen("events", "--json")
    clients.append(events)
    events_until(events, 1, "the watch begins")
    again = restart_on_the_same_port(first, pki, signal.SIGKILL)
    daemons.append(again)
    out, err = finish(waiter)
    assert waiter.returncode == 7, err
    assert "exit code 7" in out.decode()
    assert "reconnecting" in err.decode()


def test_events_come_one_a_line_and_resume_after_a_cursor(
    tmp_path: Path,
    pki: TestPKI,
    daemons: list[Jwsd],
    clients: list[subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    events = first.popen("events", "--json")
    clients.append(events)
    assert kinds(events_until(events, 1, "the watch begins")) == ["watching"]
    job_id = start(first, "--name", "quick", "--label", "team=a", "--", "true")
    got = events_until(events, 3, "the job's events")
    assert kinds(got) == ["created", "active", "terminated"]
    assert all(event["job"]["job_id"] == job_id for event in got)  # type: ignore[index]
    assert got[2]["job"]["exit_code"] == 0  # type: ignore[index]
    events.kill()
    resumed = first.popen("events", "--json", "--since", str(got[0]["cursor"]))
    clients.append(resumed)
    again = events_until(resumed, 3, "the resumed events")
    assert kinds(again) == ["watching", "active", "terminated"]
    assert [e["cursor"] for e in again[1:]] == [e["cursor"] for e in got[1:]]
    resumed.kill()
    text = first.popen("events", "--since", str(got[0]["cursor"]))
    clients.append(text)
    assert text.stdout is not None
    line = within(scaled(30), "a text line", text, lambda: text.stdout.readline().decode())  # type: ignore[union-attr]
    assert " watching " in line and "cursor=" in line
    text.kill()

    # After a crash the new jwsd holds none of the old events: it says so, then sends
    # the state of each job as it is now.
    restarted = restart_on_the_same_port(first, pki, signal.SIGKILL)
    daemons.append(restarted)
    stale = restarted.popen("events", "--json", "--since", str(got[2]["cursor"]))
    clients.append(stale)
    told = events_until(stale, 2, "the stale cursor's answer")
    assert kinds(told) == ["stale", "current"]
    assert told[1]["job"]["job_id"] == job_id  # type: ignore[index]
    bad = restarted.jws("events", "--since", "not-a-cursor")
    assert bad.returncode == 1 and b"is not one of this server's" in bad.stderr

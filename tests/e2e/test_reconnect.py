"""`jws output` and `jws run` ride over a restart of jwsd, against the real binaries.

jwsd is SIGKILLed while a `jws` follows a job, then started again on the same data
dir and port: the job runs on without jwsd and the next jwsd takes it over, and the
follower reconnects and asks again from the byte it reached, so it sees every byte
exactly once and `jws run` exits with the job's code. Without a new jwsd it gives
up after its bound; with `--reconnect-timeout 0` it fails at once, as every other
command does.

Waits that depend on this machine's speed (a jwsd start, a Python start-up, moving
output through TLS) are `scaled`; `--reconnect-timeout` is the behaviour under
test and is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.e2e.conftest import Jwsd, restart_jwsd, start_jwsd
from tests.support.certs import TestPKI
from tests.support.cgroupfs import cgroup_pids
from tests.support.counter import counter_output, counter_script
from tests.support.timing import scaled
from tests.support.waiting import eventually_blocking

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.hierarchy_independent]

T = TypeVar("T")

#: How long a background `jws` may take to finish once the jwsd it needs is up: the
#: rest of a counter, a backoff delay (at most 5 s), reading megabytes through TLS.
FINISH_SECONDS = 60.0


@pytest.fixture
def clients() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every `jws` a test runs in the background: killed if still running at the end,
    their pipes closed."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.communicate()


def start(jwsd: Jwsd, *args: str) -> str:
    result = jwsd.jws("start", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


def restart_on_the_same_port(old: Jwsd, pki: TestPKI, how: int = signal.SIGKILL) -> Jwsd:
    """SIGKILL `old` (a crash), or SIGUSR1 (an upgrade: it exits leaving its jobs
    running), and start a jwsd on its data dir and address."""
    old.stop(how)
    return restart_jwsd(old, pki, "--addr", old.addr)


def within(timeout: float, what: str, process: subprocess.Popen[bytes], read: Callable[[], T]) -> T:
    """`read()`, a blocking read from `process`'s pipes, under a deadline: past it the
    process is killed (which ends the read) and the test fails naming `what`."""
    done: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            done.append(read())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        process.kill()
        thread.join()
        raise AssertionError(f"not within {timeout:g} s: {what}")
    if failed:
        raise failed[0]
    return done[0]


def finish(
    process: subprocess.Popen[bytes], timeout: float = scaled(FINISH_SECONDS)
) -> tuple[bytes, bytes]:
    """The rest of a background `jws`'s stdout (through the same buffered reader an
    earlier readline used: nothing is skipped) and its stderr, once it has exited."""
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = process.stdout, process.stderr
    out, err = within(timeout, "jws exits", process, lambda: (stdout.read(), stderr.read()))
    process.wait(timeout=scaled(10))
    return out, err


def follow_until(
    clients: list[subprocess.Popen[bytes]], jwsd: Jwsd, job_id: str, line: bytes, *args: str
) -> tuple[subprocess.Popen[bytes], bytes]:
    """A `jws output` following `job_id`, and what it wrote up to and with `line`."""
    follower = jwsd.popen("output", "-j", job_id, *args)
    clients.append(follower)
    stdout = follower.stdout
    assert stdout is not None

    def read_until_line() -> bytes:
        seen = b""
        while not seen.endswith(line):
            read = stdout.readline()
            assert read, f"the follower ended before {line!r}"
            seen += read
        return seen

    # A jws start-up, a handshake and a few of the counter's lines.
    return follower, within(scaled(30), f"the follower writes {line!r}", follower, read_until_line)


def taken_over(jwsd: Jwsd, job_id: str) -> None:
    """The job outlived the jwsd that was killed: the next one says it is Active."""
    status = jwsd.jws("status", "-j", job_id, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "Active", "the job ended before jwsd came back"


def said_once_that_it_reconnects(err: bytes) -> None:
    """stderr is the one line a loss gets, nothing more (no lost job, no lost bytes)."""
    lines = err.decode().splitlines()
    assert len(lines) == 1 and "; reconnecting (for up to 300 s" in lines[0], err


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGUSR1])
def test_a_follower_sees_every_line_once_across_a_jwsd_crash_and_restart(
    tmp_path: Path,
    pki: TestPKI,
    daemons: list[Jwsd],
    clients: list[subprocess.Popen[bytes]],
    how: signal.Signals,
) -> None:
    """jwsd crashes (SIGKILL) or exits for an upgrade (SIGUSR1); the job runs on while
    no jwsd runs and the next jwsd takes it over; the follower asks it from the byte
    it reached: every line once, in order, all of them, and one line on stderr (once,
    not once per attempt)."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "--", "sh", "-c", counter_script())
    follower, seen = follow_until(clients, first, job_id, b"line 5\n")
    again = restart_on_the_same_port(first, pki, how)
    daemons.append(again)
    taken_over(again, job_id)
    rest, err = finish(follower)
    assert follower.returncode == 0, err
    assert seen + rest == counter_output()  # each line once, in order, all of them
    said_once_that_it_reconnects(err)
    status = again.jws("status", "-j", job_id, "--json")
    assert status.returncode == 0, status.stderr
    final = json.loads(status.stdout)
    assert (final["outcome"], final["exit_code"]) == ("exited", 0), final


def test_jws_run_exits_with_the_jobs_code_across_two_jwsd_crashes(
    tmp_path: Path,
    pki: TestPKI,
    daemons: list[Jwsd],
    clients: list[subprocess.Popen[bytes]],
) -> None:
    """The job ends while `jws run` is far behind (its stdout is not read, so jwsd
    cannot send it the rest); jwsd dies, and the next one dies too while `jws run`
    reads from it; the rest and the exit code come from the third: every byte once."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    count = 4_000_000  # ~30 MB: more than a pipe, a call's window and the sockets hold
    expected = b"".join(b"%d\n" % i for i in range(1, count + 1))
    run = first.popen("run", "--", "sh", "-c", f"seq 1 {count}; exit 7")
    clients.append(run)
    assert run.stdout is not None

    def ended() -> bool:
        listed = first.jws("list", "--json")
        assert listed.returncode == 0, listed.stderr
        jobs = json.loads(listed.stdout)
        return bool(jobs) and jobs[0]["status"] == "Terminated"

    eventually_blocking(ended, timeout=scaled(60), what="the job ends")
    assert run.poll() is None  # still behind: what it lacks must come from the next jwsd
    second = restart_on_the_same_port(first, pki)
    daemons.append(second)
    stdout = run.stdout
    # More than was in flight from the first; not all.
    head = within(scaled(FINISH_SECONDS), "16 MiB of output", run, lambda: stdout.read(16 << 20))
    assert run.poll() is None
    third = restart_on_the_same_port(second, pki)
    daemons.append(third)
    rest, err = finish(run)
    assert run.returncode == 7, err
    assert head + rest == expected
    assert err.count(b"reconnecting") == 2, err  # once per loss


def test_jws_run_of_a_running_job_across_a_jwsd_crash_exits_with_its_code(
    tmp_path: Path,
    pki: TestPKI,
    daemons: list[Jwsd],
    clients: list[subprocess.Popen[bytes]],
) -> None:
    """jwsd is killed while the job runs: the job outlives it, the next jwsd takes it
    over, and `jws run` writes every line once and exits with the job's code."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    run = first.popen("run", "--", "sh", "-c", counter_script(exit_code=7))
    clients.append(run)
    stdout = run.stdout
    assert stdout is not None
    first_line = within(scaled(30), "jws run follows", run, stdout.readline)
    assert first_line == b"line 0\n"
    again = restart_on_the_same_port(first, pki)
    daemons.append(again)
    listed = again.jws("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (job,) = json.loads(listed.stdout)
    taken_over(again, job["job_id"])
    rest, err = finish(run)
    assert run.returncode == 7, err
    assert first_line + rest == counter_output()
    said_once_that_it_reconnects(err)


@pytest.mark.parametrize("bound", ["2s", "0"])
def test_a_follower_gives_up_after_its_bound_with_one_line(
    tmp_path: Path,
    pki: TestPKI,
    daemons: list[Jwsd],
    clients: list[subprocess.Popen[bytes]],
    bound: str,
) -> None:
    """No jwsd comes back: `--reconnect-timeout 2s` gives up after 2 s, `0` at once;
    exit 3 and one line saying why. The 2 s are the behaviour under test and stay as
    they are; only the margin for this machine (noticing the loss, exiting) is scaled."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "--", "sh", "-c", counter_script())
    follower, _ = follow_until(clients, first, job_id, b"line 1\n", "--reconnect-timeout", bound)
    lost = time.monotonic()
    first.stop(signal.SIGKILL)
    _, err = finish(follower)
    waited = time.monotonic() - lost
    assert follower.returncode == 3, err
    lines = err.decode().splitlines()
    if bound == "0":
        assert len(lines) == 1 and lines[0].startswith("jws: lost jwsd at "), err
        assert waited < scaled(2)
    else:
        assert len(lines) == 2 and "reconnecting (for up to 2 s" in lines[0], err
        assert lines[1].startswith("jws: gave up reconnecting to jwsd after 2 s: "), err
        assert "connection refused" in lines[1]
        assert 2 <= waited < 2 + scaled(3)
    # Every other command fails at once, as before.
    status = first.jws("status", "-j", job_id)
    assert status.returncode == 3
    assert status.stderr.decode().startswith("jws: cannot reach 127.0.0.1:"), status.stderr
    # The job outlived jwsd: a jwsd takes it over, and stops it when the test ends.
    daemons.append(restart_jwsd(first, pki))


def test_a_job_the_restarted_jwsd_does_not_know_is_a_clear_error(
    tmp_path: Path,
    pki: TestPKI,
    daemons: list[Jwsd],
    clients: list[subprocess.Popen[bytes]],
) -> None:
    """jwsd comes back without the job's record (its database was moved away):
    the follower says the job is gone, exit 1."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "--", "sh", "-c", counter_script())
    follower, _ = follow_until(clients, first, job_id, b"line 1\n")
    first.stop(signal.SIGKILL)
    for path in first.data_dir.glob("jobs.db*"):
        path.unlink()
    again = restart_jwsd(first, pki, "--addr", first.addr)
    daemons.append(again)
    _, err = finish(follower)
    assert follower.returncode == 1, err
    last = err.decode().splitlines()[-1]
    assert last == (
        f"jws: job {job_id} is gone: jwsd came back without it (its record was lost or removed)"
    ), err


def test_a_follower_of_a_job_lost_with_jwsd_says_so_in_one_line(
    tmp_path: Path,
    pki: TestPKI,
    daemons: list[Jwsd],
    clients: list[subprocess.Popen[bytes]],
) -> None:
    """The job dies with jwsd, killed as a whole (a host's OOM killer or an operator
    killing the service's cgroup): bubblewrap never wrote an exit code, so the next jwsd
    reports it lost, and the follower ends with the output it had and says why."""
    first = start_jwsd(tmp_path, pki)
    daemons.append(first)
    job_id = start(first, "--", "sh", "-c", "echo first; sleep 600")
    follower, seen = follow_until(clients, first, job_id, b"first\n")
    first.stop(signal.SIGKILL)
    for pid in cgroup_pids(first.cgroup_name, job_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    eventually_blocking(
        lambda: cgroup_pids(first.cgroup_name, job_id) == [], timeout=scaled(10), what="job gone"
    )
    again = restart_jwsd(first, pki, "--addr", first.addr)
    daemons.append(again)
    out, err = finish(follower)
    assert seen + out == b"first\n"
    assert follower.returncode == 0, err  # all the output there is, delivered
    lines = err.decode().splitlines()
    assert lines[0].startswith("jws: lost the connection to "), err
    assert len(lines) == 2, err
    assert lines[-1] == (
        "jws: the job was lost: the job's supervisor (bubblewrap) was gone, without an exit "
        "status, when jwsd started again; its output until then is kept"
    ), err

"""packaging/jwsd.service as shipped (ExecStart pointed at this checkout's jwsd by a
drop-in), under the machine's systemd: start returns once jwsd serves, jobs hold their
limits under the unit's hardening, stop and restart leave no job behind."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker.sandbox.bwrap import HELPER_PROCESSES
from tests.support.certs import TestPKI, server_serial
from tests.support.timing import scaled
from tests.system.conftest import BIN, ROOT, processes_with, require_systemd, run

# Under CPU emulation an image build alone takes minutes: past the suite-wide 300 s.
pytestmark = [pytest.mark.system, pytest.mark.timeout(1800)]

UNIT = Path("/etc/systemd/system/jwsd.service")
DROP_IN = Path("/run/systemd/system/jwsd.service.d/test.conf")
CONFIG = Path("/etc/jobworker")
ADDR = "127.0.0.1:50151"
STOP_GRACE = 2


def jws(*args: str, user: str = "alex", check: bool = True, timeout: float = 120) -> str:
    argv = [str(BIN / "jws"), args[0], "-u", user, "--addr", ADDR, "--tls-dir", str(CONFIG / "tls")]
    return run([*argv, *args[1:]], check=check, timeout=timeout).stdout


def show(*properties: str) -> dict[str, str]:
    out = run(["systemctl", "show", "jwsd", *(f"-p{name}" for name in properties)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def service_cgroup() -> Path:
    return Path("/sys/fs/cgroup") / show("ControlGroup")["ControlGroup"].lstrip("/")


@pytest.fixture(scope="module")
def unit() -> Iterator[None]:
    """The shipped unit installed, certificates and a users file in /etc/jobworker."""
    require_systemd()
    if UNIT.exists():
        pytest.fail(f"{UNIT} exists: not a throwaway machine, or a test before left it")
    pki = TestPKI()
    pki.write_tls_dir(CONFIG / "tls", ["alex", "admin"])
    (CONFIG / "users.toml").write_text('[users]\nalex = "user"\nadmin = "admin"\n')
    shutil.copy(ROOT / "packaging/jwsd.service", UNIT)
    shipped = re.search(
        r"^ExecStart=/usr/local/bin/jwsd (.*?)$", UNIT.read_text().replace("\\\n", ""), re.M
    )
    assert shipped, "the unit's ExecStart runs /usr/local/bin/jwsd"
    flags = (
        shipped[1]
        .replace("0.0.0.0:50051", ADDR)
        .replace("--stop-grace 5s", f"--stop-grace {STOP_GRACE}s")
        # The VM has no default route, which the outbound default's pasta needs; the
        # network is not what these tests are about (tests/*/test_network.py).
        + " --network-default none"
    )
    DROP_IN.parent.mkdir(parents=True, exist_ok=True)
    DROP_IN.write_text(f"[Service]\nExecStart=\nExecStart={BIN / 'jwsd'} {flags}\n")
    run(["systemctl", "daemon-reload"])
    try:
        yield
    finally:
        run(["systemctl", "stop", "jwsd"], check=False)
        print(run(["journalctl", "-u", "jwsd", "--no-pager", "-n", "60"], check=False).stdout)
        UNIT.unlink()
        shutil.rmtree(DROP_IN.parent)
        shutil.rmtree(CONFIG)
        run(["systemctl", "daemon-reload"])


@pytest.fixture(autouse=True)
def stopped_after(unit: None) -> Iterator[None]:
    """jwsd stopped after each test, so that no test sees the jobs of one before it
    (a test that failed half-way left its jobs running, and the next one's stop counted them)."""
    yield
    run(["systemctl", "stop", "jwsd"], check=False, timeout=120)


def test_start_returns_once_serving_and_jobs_hold_their_limits(unit: None) -> None:
    run(["systemctl", "start", "jwsd"], timeout=120)
    # No retry: `systemctl start` returned, so jwsd answers now.
    assert jws("health").strip() == "SERVING"
    assert show("StatusText")["StatusText"] == f"serving on {ADDR}"
    job_id = jws(
        "start", "--memory", "64M", "--cpu", "0.5", "--pids", "20", "-c", "sleep 600"
    ).strip()
    # Each user's jobs are in a group of that user's (jobworker/user-alex/<id>).
    job_cgroup = service_cgroup() / "jobworker" / "user-alex" / job_id
    assert (job_cgroup / "memory.max").read_text() == f"{64 << 20}\n"
    assert (job_cgroup / "cpu.max").read_text() == "50000 100000\n"
    # jwsd adds bubblewrap's own processes to the job's pids limit.
    assert (job_cgroup / "pids.max").read_text() == f"{20 + HELPER_PROCESSES}\n"
    jws("stop", "-j", job_id)
    # A memory hog is OOM-killed at its limit, and reported so.
    hog = run(
        [str(BIN / "jws"), "run", "-u", "alex", "--addr", ADDR, "--tls-dir", str(CONFIG / "tls"),
         "--memory", "64M", "--", "python3", "-c", "bytearray(200 << 20)"],
        check=False, timeout=120,
    )  # fmt: skip
    assert hog.returncode == 137, hog
    assert "OOM" in hog.stderr
    # A job runs to its end and its output arrives under the unit's hardening.
    assert jws("run", "--", "sh", "-c", "for i in 1 2 3; do echo tick $i; done") == (
        "tick 1\ntick 2\ntick 3\n"
    )


def test_stop_stops_every_job_and_leaves_no_cgroup(unit: None) -> None:
    run(["systemctl", "start", "jwsd"], timeout=120)
    marker = f"31{uuid.uuid4().int % 10**6:06d}"
    jws("start", "-c", f"sleep {marker}")
    jws("start", "-c", f"sh -c 'trap \"\" TERM; sleep {marker}; sleep {marker}'")
    # Both jobs run (the second one's shell and bubblewrap show the marker too).
    assert len(processes_with(f"sleep {marker}")) >= 3
    cgroup = service_cgroup()
    pid = show("MainPID")["MainPID"]
    started = time.monotonic()
    run(["systemctl", "stop", "jwsd"], timeout=120)
    elapsed = time.monotonic() - started
    assert processes_with(f"sleep {marker}") == []
    assert not (cgroup / "jobworker").exists()
    assert not cgroup.exists(), list(cgroup.rglob("cgroup.procs"))
    state = show("Result", "ExecMainStatus")
    # jwsd itself ended it all within the grace (not systemd's SIGKILL at TimeoutStopSec).
    assert state == {"Result": "success", "ExecMainStatus": "0"}, state
    assert elapsed < 30, elapsed
    journal = run(["journalctl", "-u", "jwsd", "--no-pager", f"_PID={pid}"]).stdout
    assert "shutting down: stopping 2 running jobs" in journal, journal.splitlines()


def test_restart_stops_the_jobs_and_keeps_their_records(unit: None) -> None:
    run(["systemctl", "start", "jwsd"], timeout=120)
    before = show("MainPID")["MainPID"]
    marker = f"32{uuid.uuid4().int % 10**6:06d}"
    job_id = jws("start", "-c", f"sh -c 'echo before; sleep {marker}'").strip()
    deadline = time.monotonic() + scaled(30)
    while not processes_with(f"sleep {marker}"):  # it has printed by then
        assert time.monotonic() < deadline, "the job never started its sleep"
        time.sleep(0.5)
    run(["systemctl", "restart", "jwsd"], timeout=120)
    assert show("MainPID")["MainPID"] != before
    assert jws("health").strip() == "SERVING"
    # The restart stopped the job; the new jwsd shows its record and output (docs/operations.md).
    assert processes_with(f"sleep {marker}") == []
    status = json.loads(jws("status", "-j", job_id, "--json"))
    assert (status["status"], status["outcome"]) == ("Terminated", "stopped"), status
    assert jws("output", "-j", job_id) == "before\n"
    run(["systemctl", "stop", "jwsd"], timeout=120)


def test_the_upgrade_signal_under_the_shipped_unit_ends_the_jobs(unit: None) -> None:
    """SIGUSR1 makes jwsd exit leaving its jobs running, but under the shipped unit
    (KillMode=mixed) systemd then kills what is left in the unit's cgroup, jobs included;
    the next jwsd says how each ended and keeps its output. Why KillMode=process is no way
    out on systemd 252 (the next start fails while jobs remain): docs/operations.md."""
    run(["systemctl", "start", "jwsd"], timeout=120)
    marker = f"34{uuid.uuid4().int % 10**6:06d}"
    job_id = jws("start", "-c", f"sh -c 'echo started; sleep {marker}'").strip()
    deadline = time.monotonic() + scaled(30)
    while not processes_with(f"sleep {marker}"):  # it has printed by then
        assert time.monotonic() < deadline, "the job never started its sleep"
        time.sleep(0.5)
    pid = show("MainPID")["MainPID"]
    # To jwsd alone: `systemctl kill` without --kill-who signals every process of the unit.
    run(["systemctl", "kill", "--kill-who=main", "-s", "USR1", "jwsd"])
    deadline = time.monotonic() + scaled(30)
    while show("ActiveState")["ActiveState"] != "inactive":
        assert time.monotonic() < deadline, show("ActiveState", "SubState")
        time.sleep(0.5)
    assert show("Result", "ExecMainStatus") == {"Result": "success", "ExecMainStatus": "0"}
    journal = run(["journalctl", "-u", "jwsd", "--no-pager", "-n", "30"]).stdout
    assert "shutting down: leaving 1 running job running" in journal, journal
    assert re.search(r"Killing process \d+ \(sleep\) with signal SIGKILL", journal), journal
    assert processes_with(f"sleep {marker}") == []
    run(["systemctl", "start", "jwsd"], timeout=120)
    assert show("MainPID")["MainPID"] != pid
    # Killed with its supervisor, it left no exit status: lost, with a reason, output kept.
    status = json.loads(jws("status", "-j", job_id, "--json"))
    assert (status["status"], status["outcome"]) == ("Terminated", "lost"), status
    assert "supervisor" in status["outcome_reason"], status
    assert jws("output", "-j", job_id) == "started\n"


def _server_serial() -> int:
    return server_serial(ADDR, CONFIG / "tls", "alex", timeout=scaled(10))


def test_reload_puts_a_new_certificate_in_force_and_refuses_a_broken_users_file(
    unit: None,
) -> None:
    """`systemctl reload` (ExecReload=, SIGHUP): a new server certificate is in force
    without a restart; a broken users file is refused and the old one stays. On
    systemd 252 `systemctl reload` returns 0 in both cases, possibly before jwsd has
    reloaded (docs/operations.md), so the test waits for jwsd's own word."""
    run(["systemctl", "start", "jwsd"], timeout=120)
    pid = show("MainPID")["MainPID"]
    fresh = TestPKI()  # a new server CA and certificate; the client CA stays
    tls_dir = CONFIG / "tls"
    fresh.server_ca.cert_pem.write_to_path(str(tls_dir / "server_ca_cert.pem"))
    fresh.server_cert.cert_chain_pems[0].write_to_path(str(tls_dir / "server_cert.pem"))
    fresh.server_cert.private_key_pem.write_to_path(str(tls_dir / "server_key.pem"))
    serial = x509_serial(fresh.server_cert.cert_chain_pems[0].bytes())
    assert run(["systemctl", "reload", "jwsd"], timeout=120).returncode == 0
    wait_for_journal(pid, "got SIGHUP: reloaded")
    assert _server_serial() == serial
    assert show("StatusText", "MainPID") == {"StatusText": f"serving on {ADDR}", "MainPID": pid}
    assert jws("health").strip() == "SERVING"

    users = CONFIG / "users.toml"
    kept = users.read_text()
    users.write_text('[users]\nadmin = "admin"\n[users\n')  # alex out, were it taken
    try:
        reloaded = run(["systemctl", "reload", "jwsd"], check=False, timeout=120)
        # 252 takes a reload's result from ExecReload= (kill) alone: 0, though jwsd refused it.
        assert reloaded.returncode == 0, reloaded
        line = wait_for_journal(pid, "reload refused")
        assert f"the users file {users} is not valid TOML" in line, line
        status = show("StatusText")["StatusText"]
        assert status.startswith(f"serving on {ADDR}; the last reload was refused: the users file")
        assert jws("list", user="alex") is not None  # the old users file is in force
        assert show("MainPID")["MainPID"] == pid
    finally:
        users.write_text(kept)  # for any test after this one


def x509_serial(pem: bytes) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).serial_number


def wait_for_journal(pid: str, text: str) -> str:
    """The first journal line of jwsd `pid` holding `text`, once there is one."""
    deadline = time.monotonic() + scaled(30)
    while True:
        journal = run(["journalctl", "-u", "jwsd", "--no-pager", f"_PID={pid}"]).stdout
        found = [line for line in journal.splitlines() if text in line]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {text!r} in the journal:\n{journal}"
        time.sleep(0.5)

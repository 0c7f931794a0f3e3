"""packaging/jwsd.service as shipped (ExecStart pointed at this checkout's jwsd by a
drop-in), under the machine's systemd: start returns once jwsd serves, jobs hold their
limits under the unit's hardening, each in a scope of its own (the systemd driver);
stop leaves no job and no scope behind; restart (an upgrade) and a crash of jwsd keep
every job running for the next jwsd."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker.sandbox.bwrap import HELPER_PROCESSES
from jobworker.sandbox.cgroups.systemd_bus import scope_name, slice_name
from tests.support.certs import TestPKI, server_serial
from tests.support.timing import scaled
from tests.system.conftest import BIN, ROOT, processes_with, require_systemd, run

# Under CPU emulation an image build alone takes minutes: past the suite-wide 300 s.
pytestmark = [pytest.mark.system, pytest.mark.timeout(1800)]

UNIT = Path("/etc/systemd/system/jwsd.service")
DROP_IN = Path("/run/systemd/system/jwsd.service.d/test.conf")
DROP_IN_UPGRADE = DROP_IN.with_name("upgrade.conf")
UPGRADE_DIR = Path("/opt/jobworker-upgrade")
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
    # Each job in a scope of its own in its owner's slice, outside jwsd's unit.
    job_cgroup = scope_dir("alex", job_id) / "job"
    assert (service_cgroup() / "cgroup.procs").read_text().split() == [show("MainPID")["MainPID"]]
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
    assert job_scopes() == [], job_scopes()
    state = show("Result", "ExecMainStatus")
    # jwsd itself ended it all within the grace (not systemd's SIGKILL at TimeoutStopSec).
    assert state == {"Result": "success", "ExecMainStatus": "0"}, state
    assert elapsed < 30, elapsed
    journal = run(["journalctl", "-u", "jwsd", "--no-pager", f"_PID={pid}"]).stdout
    assert "shutting down: stopping 2 running jobs" in journal, journal.splitlines()


def test_restart_with_another_build_keeps_every_job(unit: None) -> None:
    """The upgrade: another build of jwsd installed (a copy of the checkout with another
    version string, first on the new jwsd's path), then `systemctl restart jwsd`: the
    old jwsd leaves its jobs running in their scopes, the new one takes them over."""
    run(["systemctl", "start", "jwsd"], timeout=120)
    before = show("MainPID")["MainPID"]
    marker = f"32{uuid.uuid4().int % 10**6:06d}"
    job_id = jws("start", "-c", f"sh -c 'echo before; sleep {marker}; echo after'").strip()
    wait_for_processes(f"sleep {marker}")
    upgraded = UPGRADE_DIR  # not under /tmp: the unit's PrivateTmp=yes hides it
    shutil.rmtree(upgraded, ignore_errors=True)
    shutil.copytree(ROOT / "jobworker", upgraded / "jobworker")
    init = upgraded / "jobworker" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9+upgrade.'))
    DROP_IN_UPGRADE.write_text(f"[Service]\nEnvironment=PYTHONPATH={upgraded}\n")
    try:
        run(["systemctl", "daemon-reload"])
        run(["systemctl", "restart", "jwsd"], timeout=120)
        after = show("MainPID")["MainPID"]
        assert after != before
        assert "jwsd 9.9.9+upgrade." in wait_for_journal(after, "listening on")
        journal = run(["journalctl", "-u", "jwsd", "--no-pager", f"_PID={before}"]).stdout
        assert "systemd is restarting jwsd" in journal, journal
        assert "leaving 1 running job running" in journal, journal
        assert processes_with(f"sleep {marker}") != []
        status = json.loads(jws("status", "-j", job_id, "--json"))
        assert status["status"] == "Active", status
        assert scope_dir("alex", job_id).is_dir()
        jws("stop", "-j", job_id)
    finally:
        DROP_IN_UPGRADE.unlink()
        shutil.rmtree(upgraded)
        run(["systemctl", "daemon-reload"])


def test_jwsd_killed_is_restarted_and_every_job_and_follower_goes_on(unit: None) -> None:
    """SIGKILL of jwsd (a crash, the OOM killer): systemd restarts it (Restart=on-failure),
    KillMode=mixed kills nothing of the jobs (they are in their scopes), the new jwsd
    takes all 3 over, and a follower gets every byte once."""
    run(["systemctl", "start", "jwsd"], timeout=120)
    before = show("MainPID")["MainPID"]
    marker = f"34{uuid.uuid4().int % 10**6:06d}"
    # Long enough to outlive jwsd's restart under an emulated CPU (~20 s there).
    lines = 90
    counter = f"i=0; while [ $i -lt {lines} ]; do echo line $i; i=$((i+1)); sleep 1; done"
    ids = [jws("start", "-c", f"sh -c 'sleep {marker}'").strip() for _ in range(2)]
    ids.append(jws("start", "-c", f"sh -c '{counter}'").strip())
    wait_for_processes(f"sleep {marker}")
    argv = [str(BIN / "jws"), "output", "-u", "alex", "--addr", ADDR,
            "--tls-dir", str(CONFIG / "tls"), "-j", ids[2]]  # fmt: skip
    # Unbuffered: the first line is read alone, and communicate() gets all the rest.
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    ) as follower:
        # Killed only once the follower is reading: its first connection must have been
        # made (jws takes seconds to start on the VM's CPU), so what follows is a reconnect.
        assert follower.stdout is not None
        first = follower.stdout.readline()
        run(["systemctl", "kill", "--kill-who=main", "-s", "KILL", "jwsd"])
        deadline = time.monotonic() + scaled(60)
        while (
            show("MainPID")["MainPID"] in {before, "0"}
            or jws("health", check=False).strip() != "SERVING"
        ):
            assert time.monotonic() < deadline, show("ActiveState", "SubState", "MainPID")
            time.sleep(0.5)
        out, err = follower.communicate(timeout=scaled(60))
        out = first + out
    assert follower.returncode == 0, err
    assert out.decode() == "".join(f"line {i}\n" for i in range(lines)), (out, err)
    for job_id in ids[:2]:
        status = json.loads(jws("status", "-j", job_id, "--json"))
        assert status["status"] == "Active", status
    assert len(processes_with(f"sleep {marker}")) >= 2
    journal = run(["journalctl", "-u", "jwsd", "--no-pager", "-n", "80"]).stdout
    assert "took over 3 running jobs" in journal, journal
    for job_id in ids[:2]:
        jws("stop", "-j", job_id)


def wait_for_processes(marker: str) -> None:
    deadline = time.monotonic() + scaled(30)
    while not processes_with(marker):  # the job has printed by then
        assert time.monotonic() < deadline, "the job never started its sleep"
        time.sleep(0.5)


def scope_dir(owner: str, job_id: str) -> Path:
    return Path("/sys/fs/cgroup/jobworker.slice") / slice_name(owner) / scope_name(owner, job_id)


def job_scopes() -> list[str]:
    listed = run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "jobworker-*.scope"]
    )
    return listed.stdout.split()


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

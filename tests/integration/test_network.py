"""Network modes on the real kernel, without the internet: the test builds its own
remote host (a network namespace on a veth pair, 198.51.100.0/24, a route from the
host), with a TCP echo, a UDP echo and a DNS name served there by a tiny resolver
of the test's own, and checks what an outbound job reaches, what a loopback-only
job reaches, and what no job reaches (the host's loopback, 169.254.169.254, a
denied range, another job's listener, its own namespace's configuration).

Every test here needs root, pasta (Debian's passt), ip and ping.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from jobworker.errors import AccessDeniedError, InvalidRequestError
from jobworker.jobs.tracker import JobTracker
from jobworker.model import JobSpec, NetworkMode, Outcome
from jobworker.sandbox.hostview import JobBind
from tests.conftest import require_root
from tests.support.cgroupfs import cgroup_pids
from tests.support.names import unique_name
from tests.support.tracking import run_to_end, running_tracker
from tests.support.waiting import eventually

pytestmark = pytest.mark.root

HOST_SIDE = "198.51.100.1"
REMOTE = "198.51.100.2"
DENIED = "198.51.100.3"
METADATA = "169.254.169.254"
REMOTE_NAME = "remote.test"
ECHO_PORT = 7007

#: The remote host's services: a TCP echo and a UDP echo on ECHO_PORT, and a DNS
#: responder on port 53 that answers A queries for REMOTE_NAME, on every address of
#: its namespace; it exits after `limit` seconds whatever happens.
SERVER = textwrap.dedent(
    """
    import socket, struct, sys, threading, time
    name, address, limit = sys.argv[1].encode(), socket.inet_aton(sys.argv[2]), float(sys.argv[3])
    def tcp():
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", %(port)d)); s.listen(16)
        while True:
            c, _ = s.accept(); c.settimeout(5)
            try: c.sendall(c.recv(4096))
            except OSError: pass
            c.close()
    def udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", %(port)d))
        while True:
            data, peer = s.recvfrom(4096); s.sendto(data, peer)
    def dns():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 53))
        while True:
            q, peer = s.recvfrom(512)
            if len(q) < 17: continue
            end = q.index(b"\\0", 12) + 5
            labels, i = [], 12
            while q[i]: labels.append(q[i + 1:i + 1 + q[i]]); i += 1 + q[i]
            qtype = q[i + 1:i + 3]
            found = b".".join(labels).lower() == name and qtype == b"\\0\\1"
            header = q[:2] + (b"\\x81\\x80" if found else b"\\x81\\x83") + b"\\0\\1" + (b"\\0\\1" if found else b"\\0\\0") + b"\\0\\0\\0\\0"
            answer = b"\\xc0\\x0c\\0\\1\\0\\1\\0\\0\\0\\x3c\\0\\4" + address if found else b""
            s.sendto(header + q[12:end] + answer, peer)
    for f in (tcp, udp, dns): threading.Thread(target=f, daemon=True).start()
    print("ready", flush=True); time.sleep(limit)
    """
) % {"port": ECHO_PORT}


@attrs.frozen
class RemoteHost:
    namespace: str
    resolv_conf: Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def remote_host(tmp_path: Path) -> Iterator[RemoteHost]:
    """A fake remote host: network namespace NS, a veth pair (the host's end
    198.51.100.1, the remote's 198.51.100.2 and .3, plus 169.254.169.254 routed
    there from the host), its services (`SERVER`), and a resolv.conf naming it."""
    require_root()
    for tool in ("pasta", "ip", "ping"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (./dev installs passt, iproute2, iputils-ping)")
    name = "jwt" + unique_name()[-8:]
    host_end, remote_end = f"{name}h", f"{name}r"
    _ip("netns", "add", name)
    server = None
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", remote_end)
        _ip("link", "set", remote_end, "netns", name)
        _ip("addr", "add", f"{HOST_SIDE}/24", "dev", host_end)
        _ip("link", "set", host_end, "up")
        ns = ("-n", name)
        _ip(*ns, "addr", "add", f"{REMOTE}/24", "dev", remote_end)
        _ip(*ns, "addr", "add", f"{DENIED}/24", "dev", remote_end)
        _ip(*ns, "addr", "add", f"{METADATA}/32", "dev", remote_end)
        _ip(*ns, "link", "set", remote_end, "up")
        _ip(*ns, "link", "set", "lo", "up")
        _ip(*ns, "route", "add", f"{HOST_SIDE}/32", "dev", remote_end)
        _ip("route", "add", f"{METADATA}/32", "via", REMOTE, "dev", host_end)
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", SERVER, REMOTE_NAME, REMOTE, "300"],
            stdout=subprocess.PIPE,
        )
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        resolv = tmp_path / "resolv.conf"
        resolv.write_text(f"nameserver {REMOTE}\n")
        resolv.chmod(0o644)
        tmp_path.chmod(0o755)
        yield RemoteHost(name, resolv)
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
            assert server.stdout is not None
            server.stdout.close()
        subprocess.run(["ip", "route", "del", f"{METADATA}/32"], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def host_pings() -> Iterator[None]:
    """The host's ping_group_range with group 0 (pasta's) in it for the test, put
    back after: jwsd itself never changes it."""
    path = Path("/proc/sys/net/ipv4/ping_group_range")
    before = path.read_text()
    path.write_text("0 0")
    try:
        yield
    finally:
        path.write_text(before)


def py(script: str, network: NetworkMode | None = NetworkMode.OUTBOUND) -> JobSpec:
    return JobSpec(argv=("python3", "-c", textwrap.dedent(script)), network=network)


def sh(script: str, network: NetworkMode | None = NetworkMode.OUTBOUND) -> JobSpec:
    return JobSpec(argv=("sh", "-c", script), network=network)


def tcp_to(
    address: str, port: int = ECHO_PORT, network: NetworkMode = NetworkMode.OUTBOUND
) -> JobSpec:
    script = (
        "import socket\n"
        "try:\n"
        f"    s = socket.create_connection(({address!r}, {port}), timeout=5)\n"
        "    s.sendall(b'tcp-hello'); print(s.recv(100).decode())\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    return py(script, network)


async def tracker_for(tmp_path: Path, remote: RemoteHost, **config: object):  # type: ignore[no-untyped-def]
    return running_tracker(
        tmp_path / "data",
        job_binds=(JobBind.parse(f"{remote.resolv_conf}:/etc/resolv.conf"),),
        network_deny=(ipaddress.ip_network(f"{DENIED}/32"),),
        **config,
    )


async def test_an_outbound_job_reaches_the_remote_host_by_name_and_address(
    tmp_path: Path, remote_host: RemoteHost, host_pings: None
) -> None:
    async with await tracker_for(tmp_path, remote_host) as tracker:
        out, st = await run_to_end(tracker, tcp_to(REMOTE))
        assert out == b"tcp-hello\n" and st.exit_code == 0
        assert st.spec.network is NetworkMode.OUTBOUND
        out, _ = await run_to_end(tracker, tcp_to(REMOTE_NAME))
        assert out == b"tcp-hello\n"
        udp = py(
            f"""
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
            s.sendto(b"udp-hello", ({REMOTE_NAME!r}, {ECHO_PORT})); print(s.recv(100).decode())
            """
        )
        out, _ = await run_to_end(tracker, udp)
        assert out == b"udp-hello\n"
        out, st = await run_to_end(tracker, sh(f"ping -c 3 -W 5 {REMOTE_NAME}"))
        assert st.exit_code == 0, out
        assert out.count(b"bytes from " + REMOTE.encode()) == 3


async def test_no_job_reaches_what_it_must_not(tmp_path: Path, remote_host: RemoteHost) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    async with await tracker_for(tmp_path, remote_host) as tracker:
        # The host's loopback (jwsd's port is one of its listeners), by its own
        # address and by the namespace's gateway (pasta maps none of it).
        out, _ = await run_to_end(tracker, tcp_to("127.0.0.1", port))
        assert out.startswith(b"refused"), out
        gateway = sh(
            "gw=$(ip -4 route show default | cut -d' ' -f3); "
            f"python3 -c \"import socket,sys\ntry: socket.create_connection((sys.argv[1], {port}), timeout=3); print('reached')\nexcept OSError as e: print('refused', e.errno)\" \"$gw\""
        )
        out, _ = await run_to_end(tracker, gateway)
        assert out.startswith(b"refused"), out
        # Link-local (cloud metadata), routed to the remote host, and the denied range.
        for address in (METADATA, DENIED):
            out, _ = await run_to_end(tracker, tcp_to(address))
            assert out == b"refused 13\n", (address, out)  # EACCES: a prohibit route
        # A loopback-only job reaches nothing outside.
        out, st = await run_to_end(tracker, tcp_to(REMOTE, network=NetworkMode.NONE))
        assert out.startswith(b"refused") and st.spec.network is NetworkMode.NONE
    listener.close()


async def test_a_job_cannot_reach_another_users_jobs_listener(
    tmp_path: Path, remote_host: RemoteHost
) -> None:
    async with await tracker_for(tmp_path, remote_host) as tracker:
        server = await tracker.start(
            "betty",
            py(
                f"""
                import socket, time
                s = socket.socket(); s.bind(("0.0.0.0", {ECHO_PORT})); s.listen(4)
                u = socket.socket(socket.AF_UNIX); u.bind("\\0jobworker-test"); u.listen(4)
                print("listening", flush=True); time.sleep(30)
                """
            ),
        )
        await eventually(
            lambda: tracker.status("betty", server.job_id).output_size > 0,
            timeout=10,
            what="listening",
        )
        out, _ = await run_to_end(tracker, tcp_to("127.0.0.1"))
        assert out.startswith(b"refused"), out
        unix = py(
            """
            import socket
            u = socket.socket(socket.AF_UNIX)
            try: u.connect("\\0jobworker-test"); print("reached")
            except OSError as exc: print("refused", exc.errno)
            """
        )
        out, _ = await run_to_end(tracker, unix)
        assert out.startswith(b"refused"), out
        await tracker.stop("betty", server.job_id, grace=0)


async def test_a_job_cannot_change_its_own_namespace(
    tmp_path: Path, remote_host: RemoteHost
) -> None:
    async with await tracker_for(tmp_path, remote_host) as tracker:
        for command in (
            "ip route del default",
            "ip addr add 10.9.9.9/32 dev lo",
            "ip link set eth0 down || ip link set lo down",
            "echo '0 0' > /proc/sys/net/ipv4/ping_group_range",
        ):
            out, st = await run_to_end(tracker, sh(command))
            assert st.exit_code != 0, (command, out)
        out, _ = await run_to_end(tracker, tcp_to(REMOTE))
        assert out == b"tcp-hello\n"


async def test_ping_works_with_loopback_only_and_raw_sockets_stay_refused(
    tmp_path: Path,
) -> None:
    async with running_tracker(tmp_path / "data", network_default=NetworkMode.NONE) as tracker:
        out, st = await run_to_end(tracker, JobSpec(argv=("ping", "-c", "3", "127.0.0.1")))
        assert st.exit_code == 0, out
        assert out.count(b"bytes from 127.0.0.1") == 3
        raw = py(
            """
            import socket
            try: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print("raw")
            except PermissionError: print("refused")
            """,
            network=None,
        )
        out, _ = await run_to_end(tracker, raw)
        assert out == b"refused\n"


async def test_modes_are_checked_before_any_work(tmp_path: Path) -> None:
    async with running_tracker(tmp_path / "data") as tracker:
        with pytest.raises(AccessDeniedError, match="allowed: none, outbound"):
            await tracker.start("alex", sh("true", network=NetworkMode.HOST))
    with pytest.raises(InvalidRequestError, match="the modes are none, outbound, host"):
        NetworkMode.parse("bridge")


async def test_nothing_of_an_outbound_job_outlives_it(
    tmp_path: Path, remote_host: RemoteHost
) -> None:
    async with await tracker_for(tmp_path, remote_host) as tracker:
        st = await tracker.start("alex", sh("echo up; sleep 30"))
        await _until_running(tracker, st.job_id)
        pastas = _pastas_in(tracker, st.job_id)
        await tracker.stop("alex", st.job_id, grace=0)
        assert _alive(pastas) == []
        assert tracker.status("alex", st.job_id).outcome is Outcome.STOPPED


async def test_the_next_tracker_sweeps_the_pasta_of_a_job_that_ended_while_none_ran(
    tmp_path: Path, remote_host: RemoteHost
) -> None:
    cgroup_name = unique_name()
    async with await tracker_for(
        tmp_path, remote_host, check_records=False, cgroup_name=cgroup_name
    ) as tracker:
        st = await tracker.start("alex", sh("echo up; sleep 1"))
        await _until_running(tracker, st.job_id)
        pastas = _pastas_in(tracker, st.job_id)
        tracker.leave_running()
    # No tracker runs while the job ends; its pasta stays, holding the namespace.
    with trio.fail_after(10):
        while os.path.exists(f"/proc/{_command_pid(tmp_path, st.job_id)}"):
            await trio.sleep(0.1)
    assert _alive(pastas) == pastas
    async with await tracker_for(tmp_path, remote_host, cgroup_name=cgroup_name):
        assert _alive(pastas) == []


async def _until_running(tracker: JobTracker, job_id: str) -> None:
    """Until the job's command runs (its network is set up: pasta's parent has gone)."""
    await eventually(
        lambda: tracker.status("alex", job_id).output_size > 0, timeout=10, what="the command"
    )
    assert len(_pastas_in(tracker, job_id)) == 1


def _pastas_in(tracker: JobTracker, job_id: str) -> list[int]:
    """The pasta processes in the job's cgroups."""
    found = []
    for pid in cgroup_pids(tracker.config.cgroup_name, job_id):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith(("pasta", "passt")):
                found.append(pid)
        except OSError:
            pass
    return found


def _alive(pids: list[int]) -> list[int]:
    """Those of `pids` that run (a zombie waits for its reaper, init: it is gone)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _command_pid(tmp_path: Path, job_id: str) -> int:
    import json

    status = tmp_path / "data" / "jobs" / job_id / "status.json"
    for line in status.read_text().splitlines():
        data = json.loads(line)
        if "child-pid" in data:
            return int(data["child-pid"])
    raise AssertionError("no child-pid")

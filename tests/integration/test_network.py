"""Network modes on the real kernel, without the internet: the test builds its own
remote host (a network namespace on a veth pair, 198.51.100.0/24, a route from the
host), with a TCP echo, a UDP echo and a DNS name served there by a tiny resolver
of the test's own, and checks what an outbound job reaches, what a loopback-only
job reaches, and what no job reaches (the host's loopback, 169.254.169.254, a
denied range, another job's listener, its own namespace's configuration).

Every test here needs root, pasta (Debian's passt), ip and ping.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from jobworker.errors import AccessDeniedError, InvalidRequestError, StartFailedError
from jobworker.jobs.tracker import JobTracker
from jobworker.model import JobSpec, Limits, NetworkMode, Outcome
from jobworker.sandbox.hostview import JobBind
from jobworker.sandbox.network import DNS_FORWARD_ADDRESS
from tests.support.cgroupfs import cgroup_pids
from tests.support.names import unique_name
from tests.support.remote_host import (
    DENIED,
    ECHO_PORT,
    METADATA,
    REMOTE,
    REMOTE_NAME,
    SERVER,
    RemoteHost,
)
from tests.support.tracking import run_to_end, running_tracker
from tests.support.waiting import eventually

pytestmark = pytest.mark.root


def py(script: str, network: NetworkMode | None = NetworkMode.OUTBOUND) -> JobSpec:
    return JobSpec(argv=("python3", "-c", textwrap.dedent(script)), network=network)


def sh(
    script: str, network: NetworkMode | None = NetworkMode.OUTBOUND, limits: Limits | None = None
) -> JobSpec:
    return JobSpec(argv=("sh", "-c", script), network=network, limits=limits or Limits())


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


def tracker_for(
    tmp_path: Path, remote: RemoteHost, **config: object
) -> contextlib.AbstractAsyncContextManager[JobTracker]:
    """A tracker whose jobs resolve through the remote host's resolver and may not
    reach DENIED."""
    return running_tracker(
        tmp_path / "data",
        job_binds=(JobBind.parse(f"{remote.resolv_conf}:/etc/resolv.conf"),),
        network_deny=(ipaddress.ip_network(f"{DENIED}/32"),),
        **config,
    )


async def test_an_outbound_job_reaches_the_remote_host_by_name_and_address(
    tmp_path: Path, remote_host: RemoteHost, host_pings: None
) -> None:
    async with tracker_for(tmp_path, remote_host) as tracker:
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
    async with tracker_for(tmp_path, remote_host) as tracker:
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
    async with tracker_for(tmp_path, remote_host) as tracker:
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
    async with tracker_for(tmp_path, remote_host) as tracker:
        for command in (
            "ip route del default",
            "ip addr add 10.9.9.9/32 dev lo",
            "ip link set eth0 down || ip link set lo down",
            "echo '0 0' > /proc/sys/net/ipv4/ping_group_range",
            "nft add table inet jobworker_test",
        ):
            out, st = await run_to_end(tracker, sh(command))
            assert st.exit_code != 0, (command, out)
            assert b"not found" not in out, (command, out)  # refused, not missing
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


@pytest.mark.hierarchy_independent  # refused before any work: no cgroup, no namespace
async def test_modes_are_checked_before_any_work(tmp_path: Path) -> None:
    async with running_tracker(tmp_path / "data") as tracker:
        with pytest.raises(AccessDeniedError, match="allowed: none, outbound"):
            await tracker.start("alex", sh("true", network=NetworkMode.HOST))
    with pytest.raises(InvalidRequestError, match="the modes are none, outbound, host"):
        NetworkMode.parse("bridge")


async def test_nothing_of_an_outbound_job_outlives_it(
    tmp_path: Path, remote_host: RemoteHost
) -> None:
    """pasta runs in the job's cgroups: it goes when the job is stopped, and when the
    job ends by itself."""
    async with tracker_for(tmp_path, remote_host) as tracker:
        job_id, pastas = await _outbound_job_and_its_pasta(tracker)
        await tracker.stop("alex", job_id, grace=0)
        assert _alive(pastas) == []
        assert tracker.status("alex", job_id).outcome is Outcome.STOPPED
        job_id, pastas = await _outbound_job_and_its_pasta(tracker, "echo up; sleep 0.5")
        await tracker.wait("alex", job_id)
        assert _alive(pastas) == []


async def test_the_shutdown_ends_an_outbound_jobs_pasta(
    tmp_path: Path, remote_host: RemoteHost
) -> None:
    async with tracker_for(tmp_path, remote_host) as tracker:
        _, pastas = await _outbound_job_and_its_pasta(tracker)
    assert _alive(pastas) == []


async def test_the_next_tracker_sweeps_the_pasta_of_a_job_that_ended_while_none_ran(
    tmp_path: Path, remote_host: RemoteHost
) -> None:
    cgroup_name = unique_name()
    async with tracker_for(
        tmp_path, remote_host, check_records=False, cgroup_name=cgroup_name
    ) as tracker:
        job_id, pastas = await _outbound_job_and_its_pasta(tracker, "echo up; sleep 1")
        tracker.leave_running()
    # No tracker runs while the job ends; its pasta stays, holding the namespace.
    with trio.fail_after(10):
        while os.path.exists(f"/proc/{_command_pid(tmp_path, job_id)}"):
            await trio.sleep(0.1)
    assert _alive(pastas) == pastas
    async with tracker_for(tmp_path, remote_host, cgroup_name=cgroup_name):
        assert _alive(pastas) == []


async def test_pasta_takes_none_of_the_memory_or_stack_a_job_asked_for(
    tmp_path: Path, remote_host: RemoteHost, host_pings: None
) -> None:
    """pasta keeps ~30 MiB resident in the job's cgroups, and crashes (SIGSEGV) on a
    stack under 4 MiB: a job that asks for 12 MiB of memory, started by a jwsd whose
    own stack limit is 1 MiB, still reaches the remote host (pasta's share is added
    to the cgroup's limit; pasta gets its own stack)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, hard))
    try:
        async with tracker_for(tmp_path, remote_host) as tracker:
            spec = sh(f"ping -c 1 -W 5 {REMOTE}", limits=Limits(memory=12 << 20))
            out, st = await run_to_end(tracker, spec)
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))
    assert st.exit_code == 0 and b"bytes from " + REMOTE.encode() in out, out
    assert st.spec.limits.memory == 12 << 20  # the job's own, as it asked


async def _outbound_job_and_its_pasta(
    tracker: JobTracker, script: str = "echo up; sleep 30"
) -> tuple[str, list[int]]:
    """An outbound job of alex's running `script` (which prints first), once its command
    runs (its network is set up: pasta's parent has gone), and its one pasta's pid."""
    job_id = (await tracker.start("alex", sh(script))).job_id
    await eventually(
        lambda: tracker.status("alex", job_id).output_size > 0, timeout=10, what="the command"
    )
    pastas = _pastas_in(tracker, job_id)
    assert len(pastas) == 1
    return job_id, pastas


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
    status = tmp_path / "data" / "jobs" / job_id / "status.json"
    for line in status.read_text().splitlines():
        data = json.loads(line)
        if "child-pid" in data:
            return int(data["child-pid"])
    raise AssertionError("no child-pid")


def test_a_loopback_resolver_on_the_host_is_reached_through_pastas_forwarder(
    tmp_path: Path, remote_host: RemoteHost
) -> None:
    """The host's resolv.conf names 127.0.0.53 (a private mount namespace's, with the
    test's resolver there): the job sees pasta's forwarder instead, and resolves."""
    host_resolv = tmp_path / "host-resolv.conf"
    host_resolv.write_text("nameserver 127.0.0.53\noptions edns0\n")
    resolver = subprocess.Popen(
        [sys.executable, "-c", SERVER, REMOTE_NAME, REMOTE, "120", "127.0.0.53"],
        stdout=subprocess.PIPE,
    )
    try:
        assert resolver.stdout is not None and resolver.stdout.readline() == b"ready\n"
        script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(host_resolv), sys.executable, "-m", "tests.integration._loopback_resolver_job",
             str(tmp_path / "data")],
            capture_output=True, check=False, timeout=120,
        )  # fmt: skip
    finally:
        resolver.kill()
        resolver.wait(10)
        assert resolver.stdout is not None
        resolver.stdout.close()
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        f"nameserver {DNS_FORWARD_ADDRESS}",
        "options edns0",
        "by-name",
    ], result.stdout.decode()


@pytest.mark.hierarchy_independent  # refused before any work: no cgroup, no namespace
async def test_a_host_without_pasta_refuses_outbound_with_the_reason_and_says_so_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Never another mode instead: an outbound request fails naming what is missing,
    and jwsd said so once when it started; loopback-only jobs still run."""
    which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, **kw: None if name == "pasta" else which(name, **kw)
    )
    async with running_tracker(tmp_path / "data", network_default=NetworkMode.OUTBOUND) as tracker:
        said = [r.getMessage() for r in caplog.records if "refused on this host" in r.getMessage()]
        assert said == [
            "network mode outbound is refused on this host: pasta (Debian's passt) and "
            "prlimit (util-linux) are not installed on this host"
        ]
        with pytest.raises(StartFailedError, match="network mode outbound is not available: pasta"):
            await tracker.start("alex", JobSpec(argv=("true",)))
        assert tracker.list("alex") == []
        _, st = await run_to_end(tracker, sh("true", network=NetworkMode.NONE))
        assert st.exit_code == 0

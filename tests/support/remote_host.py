"""A fake remote host for the network tests, without the internet: a network
namespace on a veth pair with addresses from a documentation range
(198.51.100.0/24), a route from the host, a TCP echo, a UDP echo and a DNS name
served there by a tiny resolver of the test's own, and a resolv.conf naming it
(a job sees it through `--job-bind FILE:/etc/resolv.conf`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from jobworker.sandbox.network import has_default_route
from tests.conftest import require_root
from tests.support.names import unique_name

HOST_SIDE = "198.51.100.1"
REMOTE = "198.51.100.2"
DENIED = "198.51.100.3"
METADATA = "169.254.169.254"
REMOTE_NAME = "remote.test"
ECHO_PORT = 7007

#: The remote host's services: a TCP echo and a UDP echo on ECHO_PORT, and a DNS
#: responder on port 53 that answers A queries for REMOTE_NAME, on every address of
#: its namespace (or the one address given after `limit`); it exits after `limit`
#: seconds whatever happens. Run as `python -c SERVER NAME ADDRESS LIMIT [BIND]`.
SERVER = textwrap.dedent(
    """
    import socket, struct, sys, threading, time
    name, address, limit = sys.argv[1].encode(), socket.inet_aton(sys.argv[2]), float(sys.argv[3])
    bind = sys.argv[4] if len(sys.argv) > 4 else "0.0.0.0"
    def tcp():
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind, %(port)d)); s.listen(16)
        while True:
            c, _ = s.accept(); c.settimeout(5)
            try: c.sendall(c.recv(4096))
            except OSError: pass
            c.close()
    def udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((bind, %(port)d))
        while True:
            data, peer = s.recvfrom(4096); s.sendto(data, peer)
    def dns():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((bind, 53))
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
    there from the host, and the host's default route where it has none), its
    services (`SERVER`), and a resolv.conf naming it."""
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
        if not has_default_route():
            # A host with no network but loopback (CI's VM): pasta copies the host's
            # default route and refuses to start without one, so the remote host
            # stands in for the internet, for the test's duration.
            _ip("route", "add", "default", "via", REMOTE, "dev", host_end)
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

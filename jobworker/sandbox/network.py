"""A job's network: the modes, and the set-up of the job's own network namespace.

* `none`: the namespace bubblewrap made, loopback only.
* `outbound`: the same namespace, plus a tap device served by pasta (Debian's
  `passt`): the job's TCP, UDP and ICMP echo leave through pasta's sockets on the
  host, so the job reaches what the host reaches, but its own namespace holds no
  route to the host's loopback (pasta's `--no-map-gw`, no port forwarding either
  way), the link-local range (cloud metadata) nor the operator's denied ranges
  (`prohibit` routes: the job gets EACCES), and the job has no capability there to
  change any of it.
* `host`: the host's namespace (bubblewrap's `--share-net`), for operators who opt in.

The set-up runs after bubblewrap has built the sandbox and before the command
exists (`launch`'s release step, off StartJob's critical path): one `nsenter`
as root into the job's namespace writes `net.ipv4.ping_group_range` (ICMP echo
sockets for every group there: `ping` works as on a modern distribution, raw
sockets stay refused) and the routes; pasta attaches to the namespace through a
descriptor (it cannot open /proc/PID/ns of the job user's processes once it has
dropped its capabilities) and runs inside the job's cgroups, through the same
trampoline as the sandbox: it dies with the job's cgroup (stop, end, or the next
jwsd's sweep of what a crash left), counts against its limits, and nothing of the
job's network outlives it.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from jobworker.errors import StartFailedError
from jobworker.model import NetworkMode

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Where cloud metadata services hand out credentials: never reachable from a job.
LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")

#: The groups that may open ICMP echo sockets in a job's own namespace: all of them
#: (the kernel's whole range; only the job's own are mapped there anyway).
PING_GROUP_RANGE = "0 2147483647"

#: How long the namespace's set-up (nsenter, pasta) may take before the job fails.
SETUP_TIMEOUT = 30.0

#: How many processes pasta adds to a job's cgroup while it starts (its parent
#: forks the daemon, then exits); one stays while the job runs.
PASTA_PROCESSES = 2

#: The memory pasta holds in a job's cgroups, added to the job's memory limit as the
#: pids above are: it keeps about 30 MiB of buffers resident (measured with Debian
#: 12's passt), and its sockets' buffers are charged there too. Without it a job
#: that asks for 12 MiB would see pasta killed before its command ran.
PASTA_MEMORY = 40 << 20

#: The stack pasta gets, whatever jwsd's own limit is: it keeps large buffers on
#: its stack and crashes (SIGSEGV) under 4 MiB.
PASTA_STACK = 8 << 20

#: How much of a failed set-up's error output is reported.
MAX_ERROR_OUTPUT = 2048

#: The most ranges `--network-deny` may list: each is a route every outbound job's
#: set-up adds (one `ip` command), before its command runs.
MAX_DENIED = 256

#: The address in the job's namespace where pasta answers DNS queries, forwarding
#: them to the host's first resolver (a loopback one included): in the
#: benchmarking range (RFC 2544), which no real service uses, outside the
#: link-local range a job may not reach.
DNS_FORWARD_ADDRESS = "198.18.0.53"


def parse_modes(text: str) -> frozenset[NetworkMode]:
    """A comma-separated list of modes (`jwsd --network-allow`); InvalidRequestError
    naming the modes."""
    return frozenset(NetworkMode.parse(word.strip()) for word in text.split(",") if word.strip())


def parse_deny(text: str) -> tuple[IPNetwork, ...]:
    """A comma-separated list of at most `MAX_DENIED` CIDRs (`jwsd --network-deny`);
    ValueError naming the bad one."""
    words = [word for word in (w.strip() for w in text.split(",")) if word]
    if len(words) > MAX_DENIED:
        raise ValueError(f"{len(words)} ranges given; at most {MAX_DENIED} are allowed")
    networks = []
    for word in words:
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise ValueError(f"{word[:60]!r} is not an address range (CIDR)") from None
    return tuple(networks)


@attrs.frozen
class NetworkTools:
    """The host programs a job's network set-up runs; a missing one is None."""

    nsenter: str | None
    ip: str | None
    pasta: str | None
    prlimit: str | None = None
    proc_net: Path = Path("/proc/net")
    #: Whether jwsd may enter a job's network namespace (setns takes CAP_SYS_ADMIN).
    can_enter: bool = True

    @classmethod
    def find(cls) -> NetworkTools:
        path = "/usr/sbin:/usr/bin:/sbin:/bin"
        return cls(
            nsenter=shutil.which("nsenter", path=path),
            ip=shutil.which("ip", path=path),
            pasta=shutil.which("pasta", path=path),
            prlimit=shutil.which("prlimit", path=path),
            can_enter=has_cap_sys_admin(),
        )

    def why_unavailable(self, mode: NetworkMode) -> str | None:
        """Why this host cannot give a job `mode`, or None when it can. Reads two small
        files of /proc/net for the outbound mode: cheap enough for every start."""
        if mode is NetworkMode.HOST:
            return None
        if self.nsenter is None or self.ip is None:
            return "nsenter (util-linux) and ip (iproute2) are not installed on this host"
        if mode is NetworkMode.OUTBOUND:
            if not self.can_enter:
                return "jwsd lacks CAP_SYS_ADMIN, which entering a job's network namespace takes"
            if self.pasta is None or self.prlimit is None:
                return (
                    "pasta (Debian's passt) and prlimit (util-linux) are not installed on this host"
                )
            if not has_default_route(self.proc_net):
                # pasta copies the addresses and routes of the interface that holds the
                # host's default route, and refuses to start without one.
                return "this host has no default route (pasta needs one to copy)"
        return None


def has_default_route(proc_net: Path = Path("/proc/net")) -> bool:
    """Whether jwsd's network namespace has a default route, IPv4 or IPv6, that is up,
    not a reject route and not on loopback (`/proc/net/route`, `/proc/net/ipv6_route`:
    the kernel's "unreachable" IPv6 default on lo is one of those)."""
    up, reject = 0x0001, 0x0200  # RTF_UP, RTF_REJECT
    routes = []  # (interface, flags) of every default route
    # Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    for fields in _table(proc_net / "route")[1:]:
        if len(fields) > 7 and fields[1] == fields[7] == "00000000":
            routes.append((fields[0], fields[3]))
    # destination, its prefix length, source, its length, next hop, metric, refs, use, flags, iface
    for fields in _table(proc_net / "ipv6_route"):
        if len(fields) == 10 and fields[0] == "0" * 32 and fields[1] == "00":
            routes.append((fields[9], fields[8]))
    for interface, flags in routes:
        try:
            bits = int(flags, 16)
        except ValueError:
            continue
        if interface != "lo" and bits & up and not bits & reject:
            return True
    return False


def _table(path: Path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines()]
    except OSError:
        return []


def has_cap_sys_admin(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process's effective capabilities hold CAP_SYS_ADMIN (`CapEff`)."""
    cap_sys_admin = 21
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap_sys_admin & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def host_pings_through_pasta() -> bool:
    """Whether the host's `net.ipv4.ping_group_range` includes group 0 (pasta runs as
    root): pasta forwards a job's ICMP echo through the host's echo sockets."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ping_group_range").read_text().split())
    except (OSError, ValueError):
        return False
    return low <= 0 <= high


def namespace_script(deny: Sequence[IPNetwork], outbound: bool) -> str:
    """The shell script nsenter runs as root in the job's namespace: ICMP echo
    sockets for its groups, and (outbound) the routes that refuse what a job must not
    reach. `$1`: the ip program."""
    lines = [f'echo "{PING_GROUP_RANGE}" > /proc/sys/net/ipv4/ping_group_range']
    if outbound:
        for network in (LINK_LOCAL, *deny):
            family = "-6" if network.version == 6 else "-4"
            lines.append(f'"$1" {family} route add prohibit {network}')
    return " && ".join(lines)


def pasta_argv(tools: NetworkTools, netns_fd: int) -> list[str]:
    """pasta, configuring the job's namespace (`--config-net`: address, route, MTU as
    the host's) through the descriptor `netns_fd` (inherited), as root (`--runas 0`:
    as `nobody` it may not join it), without joining the job's user namespace,
    with no port forwarded either way and no gateway mapped to the host's loopback;
    under prlimit, for a stack of `PASTA_STACK` whatever jwsd's is."""
    assert tools.pasta is not None and tools.prlimit is not None
    return [
        tools.prlimit, f"--stack={PASTA_STACK}", "--",
        tools.pasta,
        "--quiet",
        "--config-net",
        "--runas", "0",
        "--netns-only",
        "--netns", f"/proc/self/fd/{netns_fd}",
        "--no-netns-quit",
        "--no-map-gw",
        "--dns-forward", DNS_FORWARD_ADDRESS,
        "-t", "none", "-u", "none", "-T", "none", "-U", "none",
    ]  # fmt: skip


def resolv_conf(host: Path = Path("/etc/resolv.conf")) -> bytes | None:
    """The job's resolv.conf where the host's points at a loopback resolver (such as
    systemd-resolved's 127.0.0.53), which is the job's own loopback in its namespace:
    the host's lines with the nameservers replaced by pasta's DNS forwarder. None: the
    host's file serves as it is."""
    try:
        lines = host.read_text().splitlines()
    except OSError:
        return None
    servers = [
        line.split()[1]
        for line in lines
        if line.split()[:1] == ["nameserver"] and len(line.split()) > 1
    ]
    if not servers or not _is_loopback(servers[0]):
        return None
    # The first nameserver's line becomes the forwarder's (pasta forwards to the
    # host's first); the others go: they are loopback ones, or ones pasta reaches anyway.
    ours, replaced = [], False
    for line in lines:
        if line.split()[:1] == ["nameserver"]:
            if not replaced:
                ours.append(f"nameserver {DNS_FORWARD_ADDRESS}")
                replaced = True
            continue
        ours.append(line)
    return "\n".join([*ours, ""]).encode()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def set_up(
    tools: NetworkTools,
    mode: NetworkMode,
    command_pid: int,
    *,
    trampoline: Sequence[str],
    deny: Sequence[IPNetwork] = (),
    within: float = SETUP_TIMEOUT,
) -> None:
    """Configure the network namespace of the sandbox whose init is `command_pid`
    (see the module's docstring). trampoline: the command prefix that enters the
    job's cgroups (`bwrap.TRAMPOLINE` with its cgroup.procs files) for pasta.
    Raises StartFailedError with what failed."""
    if mode is NetworkMode.HOST:
        return
    assert tools.nsenter is not None and tools.ip is not None
    try:
        netns = os.open(f"/proc/{command_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:  # the sandbox went first (killed, or a stop)
        raise StartFailedError(f"the job's sandbox is gone: {exc.strerror}") from None
    try:
        with trio.move_on_after(within) as waiting:
            script = namespace_script(deny, mode is NetworkMode.OUTBOUND)
            await _run(
                [
                    tools.nsenter,
                    f"--net=/proc/self/fd/{netns}",
                    "--",
                    "/bin/sh",
                    "-c",
                    script,
                    "sh",
                    tools.ip,
                ],
                netns,
                "the job's network namespace",
            )
            if mode is NetworkMode.OUTBOUND:
                await _run([*trampoline, *pasta_argv(tools, netns)], netns, "pasta")
        if waiting.cancelled_caught:
            raise StartFailedError(f"the job's network was not set up within {within:g} s")
    finally:
        os.close(netns)


async def _run(argv: list[str], fd: int, what: str) -> None:
    result = await trio.run_process(
        argv,
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        capture_stderr=True,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )
    if result.returncode != 0:
        text = result.stderr[:MAX_ERROR_OUTPUT].decode(errors="replace").strip()
        raise StartFailedError(
            f"cannot set up {what}: {text or f'exit status {result.returncode}'}"
        )


__all__ = [
    "LINK_LOCAL",
    "NetworkTools",
    "has_cap_sys_admin",
    "has_default_route",
    "host_pings_through_pasta",
    "parse_deny",
    "parse_modes",
    "resolv_conf",
    "set_up",
]

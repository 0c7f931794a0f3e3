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

#: How much of a failed set-up's error output is reported.
MAX_ERROR_OUTPUT = 2048

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
    """A comma-separated list of CIDRs (`jwsd --network-deny`); ValueError naming the bad one."""
    networks = []
    for word in filter(None, (w.strip() for w in text.split(","))):
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

    @classmethod
    def find(cls) -> NetworkTools:
        path = "/usr/sbin:/usr/bin:/sbin:/bin"
        return cls(
            nsenter=shutil.which("nsenter", path=path),
            ip=shutil.which("ip", path=path),
            pasta=shutil.which("pasta", path=path),
        )

    def missing_for(self, mode: NetworkMode) -> str | None:
        """Why this host cannot give a job `mode`, or None when it can."""
        if mode is NetworkMode.HOST:
            return None
        if self.nsenter is None or self.ip is None:
            return "nsenter (util-linux) and ip (iproute2) are not installed on this host"
        if mode is NetworkMode.OUTBOUND and self.pasta is None:
            return "pasta is not installed on this host (Debian's passt package)"
        return None


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


def pasta_argv(pasta: str, netns_fd: int) -> list[str]:
    """pasta, configuring the job's namespace (`--config-net`: address, route, MTU as
    the host's) through the descriptor `netns_fd` (inherited), as root (`--runas 0`:
    as `nobody` it may not join it), without joining the job's user namespace,
    with no port forwarded either way and no gateway mapped to the host's loopback."""
    return [
        pasta,
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
    netns = os.open(f"/proc/{command_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
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
                assert tools.pasta is not None
                await _run([*trampoline, *pasta_argv(tools.pasta, netns)], netns, "pasta")
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
    "host_pings_through_pasta",
    "parse_deny",
    "parse_modes",
    "resolv_conf",
    "set_up",
]

"""The network modes' vocabulary and policy, without a host: parsing, the allowed
modes, the job's resolv.conf, the namespace script."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from jobworker.errors import AccessDeniedError, InvalidRequestError
from jobworker.jobs import policy
from jobworker.jobs.config import TrackerConfig
from jobworker.model import JobSpec, NetworkMode
from jobworker.sandbox import network
from jobworker.server.convert import spec_from_request
from jobworker.v1 import jobworker_pb2 as pb


def test_an_unknown_mode_is_invalid_and_the_message_lists_the_modes() -> None:
    with pytest.raises(InvalidRequestError, match="the modes are none, outbound, host"):
        spec_from_request(pb.StartJobRequest(cmd="true", network="bridge"))
    with pytest.raises(InvalidRequestError, match="the modes are"):
        spec_from_request(pb.StartJobRequest(cmd="true", network="x" * 10_000))


def test_the_request_names_its_mode_or_leaves_it_to_the_server() -> None:
    assert spec_from_request(pb.StartJobRequest(cmd="true")).network is None
    assert (
        spec_from_request(pb.StartJobRequest(cmd="true", network="none")).network
        is NetworkMode.NONE
    )
    assert (
        spec_from_request(pb.StartJobRequest(cmd="true", host_network=True)).network
        is NetworkMode.HOST
    )


def test_the_default_is_outbound_and_host_is_an_opt_in() -> None:
    config = TrackerConfig()
    assert policy.network_of(config, JobSpec(argv=("true",))) is NetworkMode.OUTBOUND
    with pytest.raises(AccessDeniedError, match="allowed: none, outbound"):
        policy.network_of(config, JobSpec(argv=("true",), network=NetworkMode.HOST))
    opted = TrackerConfig(allow_host_network=True)
    assert policy.network_of(opted, JobSpec(argv=("true",), network="host")) is NetworkMode.HOST
    closed = TrackerConfig(network_allow=frozenset({NetworkMode.NONE}))
    with pytest.raises(AccessDeniedError, match="allowed: none$"):
        policy.network_of(closed, JobSpec(argv=("true",)))


def test_jwsds_lists_parse_or_say_which_word_is_wrong() -> None:
    assert network.parse_modes("none, outbound") == {NetworkMode.NONE, NetworkMode.OUTBOUND}
    with pytest.raises(InvalidRequestError, match="'bridge'"):
        network.parse_modes("none,bridge")
    assert network.parse_deny("10.0.0.0/8, fd00::/8") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        network.parse_deny("10.0.0.0/33")


def test_the_namespace_script_refuses_link_local_and_the_denied_ranges() -> None:
    script = network.namespace_script([ipaddress.ip_network("10.1.0.0/16")], outbound=True)
    assert "route add prohibit 169.254.0.0/16" in script
    assert '"$1" -4 route add prohibit 10.1.0.0/16' in script
    assert "ping_group_range" in network.namespace_script([], outbound=False)
    assert "route" not in network.namespace_script([], outbound=False)


def test_a_loopback_resolver_is_replaced_by_pastas_forwarder(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example\nnameserver 127.0.0.53\nnameserver ::1\noptions edns0\n")
    assert network.resolv_conf(resolv) == (
        f"search example\nnameserver {network.DNS_FORWARD_ADDRESS}\noptions edns0\n".encode()
    )
    resolv.write_text("nameserver 10.0.0.2\n")
    assert network.resolv_conf(resolv) is None
    assert network.resolv_conf(tmp_path / "missing") is None


ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
#: The kernel's own IPv6 "unreachable" default on lo, in every namespace.
V6_REJECT = (
    "0" * 32 + " 00 " + "0" * 32 + " 00 " + "0" * 32 + " ffffffff 00000001 00000000 00200200 lo\n"
)


def _proc_net(tmp_path: Path, route: str, ipv6_route: str) -> network.NetworkTools:
    (tmp_path / "route").write_text(ROUTE_HEADER + route)
    (tmp_path / "ipv6_route").write_text(ipv6_route)
    return network.NetworkTools(nsenter="/n", ip="/i", pasta="/p", prlimit="/l", proc_net=tmp_path)


def test_outbound_is_unavailable_without_a_default_route_and_says_so(tmp_path: Path) -> None:
    """pasta refuses to start on a host with no default route ("External interface not
    usable"): such a host refuses outbound requests up front, with the reason, rather
    than failing each job once it has started (exit 125)."""
    lan_only = "veth0\t0064330A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    tools = _proc_net(tmp_path, lan_only, V6_REJECT)
    assert tools.why_unavailable(NetworkMode.OUTBOUND) == (
        "this host has no default route (pasta needs one to copy)"
    )
    assert tools.why_unavailable(NetworkMode.NONE) is None
    default_v4 = "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    assert _proc_net(tmp_path, default_v4, V6_REJECT).why_unavailable(NetworkMode.OUTBOUND) is None
    default_v6 = (
        "0" * 32
        + " 00 "
        + "0" * 32
        + " 00 fd"
        + "0" * 29
        + "1 00000400 00000002 00000000 00000003 eth0\n"
    )
    assert _proc_net(tmp_path, lan_only, default_v6).why_unavailable(NetworkMode.OUTBOUND) is None
    missing = network.NetworkTools(nsenter="/n", ip="/i", pasta=None, prlimit="/l")
    assert "passt" in (missing.why_unavailable(NetworkMode.OUTBOUND) or "")

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

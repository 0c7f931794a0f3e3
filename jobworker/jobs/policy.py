"""What the server allows a job: the limits it gets (the request's, over the
defaults, under the maxima), the running quota, the network mode. Pure functions of
the tracker's config and the request, checked before any work."""

from __future__ import annotations

import logging

import attrs

from jobworker import limits as limits_table
from jobworker.errors import InvalidRequestError, NotAllowedError, QuotaExceededError
from jobworker.jobs.config import TrackerConfig
from jobworker.model import JobSpec, Limits, NetworkMode
from jobworker.sandbox.network import NetworkTools, host_pings_through_pasta
from jobworker.units import counted

log = logging.getLogger("jobworker.jobs.tracker")  # the start-up lines name the tracker


def check_running_quota(config: TrackerConfig, running: int) -> None:
    """Raise QuotaExceededError when an owner who runs `running` jobs may not start
    another (`max_running_per_user`)."""
    if config.max_running_per_user is not None and running >= config.max_running_per_user:
        raise QuotaExceededError(
            f"you already run {counted(running, 'job')}, this server's limit per user; "
            "start more once some have ended (or stop some)"
        )


def allowed_networks(config: TrackerConfig) -> frozenset[NetworkMode]:
    """The network modes a request may ask for."""
    allowed = set(config.network_allow)
    if config.allow_host_network:
        allowed.add(NetworkMode.HOST)
    return frozenset(allowed)


def network_of(config: TrackerConfig, spec: JobSpec) -> NetworkMode:
    """The network mode a job gets: the one it asks for, else the server's default;
    NotAllowedError (PERMISSION_DENIED) naming the allowed ones for a mode this
    server does not allow."""
    mode = spec.network or config.network_default
    allowed = allowed_networks(config)
    if mode not in allowed:
        names = ", ".join(sorted(allowed)) or "none at all"
        hint = " (jwsd --allow-host-network)" if mode is NetworkMode.HOST else ""
        raise NotAllowedError(
            f"this server does not allow jobs the network mode {mode.value}{hint}; allowed: {names}"
        )
    return mode


def effective_limits(config: TrackerConfig, asked: Limits) -> Limits:
    """The limits a job gets: what it asked for, over the server's defaults, every one
    at most the server's maximum (the output limit's is `max_output`); an unset limit
    with a maximum takes the maximum. Raises InvalidRequestError for a value over its
    maximum, or one the host cannot apply (`limits.check_host`)."""
    ceilings = config.max_limits
    if ceilings.output is None and config.max_output is not None:
        ceilings = attrs.evolve(ceilings, output=config.max_output)
    # A default above the maximum gives way to it: only what a request asks for
    # itself can be refused as too much.
    defaults = Limits.of(
        {
            kind: _smaller(config.default_limits.value(kind), ceilings.value(kind))
            for kind in limits_table.KINDS
        }
    )
    limits = asked.merged_over(defaults)
    for kind in limits_table.KINDS:
        value, ceiling = limits.value(kind), ceilings.value(kind)
        if ceiling is not None and (value is None or value > ceiling):
            if value is None:
                limits = limits.replace(kind, ceiling)
            else:
                raise InvalidRequestError(
                    f"{kind.label} limit {kind.unit.show(value)} is above this server's "
                    f"maximum of {kind.unit.show(ceiling)}"
                )
    limits_table.check_host(limits)
    return limits


def _smaller(default: float | None, ceiling: float | None) -> float | None:
    """The default, lowered to the ceiling when both are set."""
    if default is None or ceiling is None:
        return default
    return min(default, ceiling)


__all__ = ["allowed_networks", "check_running_quota", "effective_limits", "network_of"]


def say_network_limits(config: TrackerConfig, tools: NetworkTools) -> None:
    """Say once, at start-up, which allowed network modes this host cannot give
    (their requests are refused), that loopback-only jobs get no ping without
    CAP_SYS_ADMIN, and that outbound jobs' ping gets no answers while the host's
    ping_group_range leaves out pasta's group: jwsd never widens a host setting itself."""
    allowed = allowed_networks(config)
    for mode in sorted(allowed):
        why = tools.why_unavailable(mode)
        if why is not None:
            log.warning("network mode %s is refused on this host: %s", mode.value, why)
    if NetworkMode.NONE in allowed and not tools.can_enter:
        log.warning(
            "loopback-only jobs get no ICMP echo sockets (ping): jwsd lacks "
            "CAP_SYS_ADMIN, which entering their network namespace takes"
        )
    if NetworkMode.OUTBOUND in allowed and not host_pings_through_pasta():
        log.warning(
            "outbound jobs' ICMP echo (ping) gets no replies: the host's "
            "net.ipv4.ping_group_range leaves out group 0, pasta's; to allow it: "
            "sysctl -w net.ipv4.ping_group_range='0 0' (see docs/operations.md)"
        )

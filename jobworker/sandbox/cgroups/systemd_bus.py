"""What the systemd driver asks systemd (PID 1) over D-Bus, with jeepney.

Why jeepney: pure Python, maintained, no C library or GLib main loop, and it has
trio I/O (`jeepney.io.trio`) besides blocking I/O (`jeepney.io.blocking`, for the
start-up checks and clean-up, which run before anything is served).

Every call is bounded (`BUS_TIMEOUT`: systemd under load can take seconds to
answer; runc raised its wait from 1 s to 30 s for the same reason), and each
operation opens a connection of its own: nothing is held between jobs, and a bus
that never answers costs one start, never the daemon.

Unit names follow systemd-escape's rules (`escape`): an owner name becomes one
part of a slice name (`jobworker-<owner>.slice`, under `jobworker.slice`) and of
its jobs' scope names (`jobworker-<owner>-<job id>.scope`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import trio
from jeepney import DBusAddress, DBusErrorResponse, MatchRule, message_bus, new_method_call
from jeepney.io import blocking as bus_blocking
from jeepney.io import trio as bus_trio
from jeepney.wrappers import unwrap_msg

from jobworker.errors import SetupError

#: How long one operation with systemd may take (connect, ask, wait for its job).
BUS_TIMEOUT = 30.0
#: The system bus (a test passes the address of a bus of its own).
SYSTEM_BUS = "SYSTEM"
#: The slice every job's owner slice is under.
TOP_SLICE = "jobworker.slice"
#: Unit names are at most this long (systemd's UNIT_NAME_MAX).
UNIT_NAME_MAX = 255

_MANAGER = DBusAddress(
    "/org/freedesktop/systemd1",
    bus_name="org.freedesktop.systemd1",
    interface="org.freedesktop.systemd1.Manager",
)
_UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
_NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


class ScopeError(Exception):
    """systemd did not make a job's scope: it refused, failed or did not answer in time."""


def escape(text: str) -> str:
    """`systemd-escape TEXT`: "/" becomes "-", every byte outside [A-Za-z0-9:_.]
    (and a leading ".") becomes \\xNN."""
    out = []
    for index, byte in enumerate(text.encode()):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif char in _ALLOWED and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def owner_part(owner: str) -> str:
    """The owner's part of unit names: escaped, or for a name too long for a unit
    name, "\\x5f" and a hash (escape never writes \\x5f: "_" stays as it is)."""
    escaped = escape(owner)
    if len(escaped) <= 100:
        return escaped
    return "\\x5f" + hashlib.sha256(owner.encode()).hexdigest()[:32]


def slice_name(owner: str) -> str:
    return f"jobworker-{owner_part(owner)}.slice"


def scope_name(owner: str, job_id: str) -> str:
    return f"jobworker-{owner_part(owner)}-{job_id}.scope"


def _call(method: str, signature: str | None = None, body: tuple[object, ...] = ()) -> object:
    return new_method_call(_MANAGER, method, signature, body)


async def start_scope(
    name: str,
    *,
    slice_: str,
    description: str,
    pids: list[int],
    bus: str = SYSTEM_BUS,
    # A timeout parameter, not a cancel scope: running out is an error (ScopeError).
    timeout: float = BUS_TIMEOUT,  # noqa: ASYNC109
) -> None:
    """Have systemd make the transient scope `name` in `slice_` holding `pids`, with
    its cgroup delegated to us, and return once its start job is done. Raises
    ScopeError when systemd refuses it, its job fails, or it all takes longer than
    `timeout`; the caller then kills the pids and calls `stop_scope`."""
    properties = [
        ("Description", ("s", description)),
        ("Slice", ("s", slice_)),
        ("PIDs", ("au", pids)),
        ("Delegate", ("b", True)),
        # A scope that failed goes at once, as one that ended: nothing is left behind.
        ("CollectMode", ("s", "inactive-or-failed")),
    ]
    with trio.move_on_after(timeout) as waiting:
        try:
            async with bus_trio.open_dbus_router(bus) as router:
                # Subscribed before the call: the job's end cannot come unseen.
                rule = MatchRule(
                    type="signal",
                    sender=_MANAGER.bus_name,
                    interface=_MANAGER.interface,
                    member="JobRemoved",
                    path=_MANAGER.object_path,
                )
                rule.add_arg_condition(2, name)
                with router.filter(rule, bufsize=16) as removed:
                    await router.send_and_get_reply(message_bus.AddMatch(rule))
                    await _checked(router, _call("Subscribe"))
                    call = _call(
                        "StartTransientUnit", "ssa(sv)a(sa(sv))", (name, "fail", properties, [])
                    )
                    try:
                        (job,) = await _checked(router, call)
                    except DBusErrorResponse as exc:
                        if exc.name != _UNIT_EXISTS:
                            raise
                        # A failed scope of that name left from a crash: reset, then again.
                        await _checked(router, _call("ResetFailedUnit", "s", (name,)))
                        (job,) = await _checked(router, call)
                    while True:
                        signal = await removed.receive()
                        _id, path, _unit, result = signal.body
                        if path == job:
                            break
        except DBusErrorResponse as exc:
            raise ScopeError(
                f"systemd refused the job's scope {name}: {exc.name}: {exc.data}"
            ) from exc
        except (OSError, EOFError, bus_trio.RouterClosed) as exc:
            raise ScopeError(f"cannot reach systemd on the bus: {exc}") from exc
    if waiting.cancelled_caught:
        raise ScopeError(f"systemd did not create the job's scope within {timeout:g} s")
    if result != "done":
        raise ScopeError(
            f"systemd could not start the job's scope {name}: its job ended {result!r}"
        )


async def stop_scope(
    name: str,
    *,
    bus: str = SYSTEM_BUS,
    timeout: float = BUS_TIMEOUT,  # noqa: ASYNC109 (a bound of its own, within a shielded clean-up)
) -> None:
    """Stop the scope `name` (its processes are killed) and forget it if it failed;
    a unit already gone is fine. Bounded by `timeout`; errors are the caller's to log."""
    with trio.move_on_after(timeout):
        async with bus_trio.open_dbus_router(bus) as router:
            for method, body in (("StopUnit", (name, "replace")), ("ResetFailedUnit", (name,))):
                try:
                    await _checked(router, _call(method, "ss" if len(body) == 2 else "s", body))
                except DBusErrorResponse as exc:
                    if exc.name not in {_NO_SUCH_UNIT, "org.freedesktop.DBus.Error.InvalidArgs"}:
                        raise


async def _checked(router: bus_trio.DBusRouter, message: object) -> tuple[object, ...]:
    reply = await router.send_and_get_reply(message)
    body: tuple[object, ...] = unwrap_msg(reply)
    return body


# ---- blocking, for start-up and shutdown --------------------------------------------------


def available(bus: str = SYSTEM_BUS, timeout: float = 5.0) -> str | None:
    """None when systemd is PID 1 and answers on the bus; else why not (one line)."""
    if not os.path.isdir("/run/systemd/system"):
        return "systemd is not PID 1 here (no /run/systemd/system)"
    try:
        with bus_blocking.open_dbus_connection(bus, auth_timeout=timeout) as conn:
            reply = conn.send_and_get_reply(
                new_method_call(
                    _MANAGER.with_interface("org.freedesktop.DBus.Properties"),
                    "Get",
                    "ss",
                    (_MANAGER.interface, "Version"),
                ),
                timeout=timeout,
            )
            unwrap_msg(reply)
    except (OSError, EOFError, TimeoutError, DBusErrorResponse) as exc:
        return f"systemd does not answer on the system bus ({exc or type(exc).__name__})"
    return None


def reset_failed_scopes(bus: str = SYSTEM_BUS, timeout: float = 5.0) -> list[str]:
    """ResetFailedUnit of every failed jobworker scope (a crash's leftovers); their names."""
    try:
        with bus_blocking.open_dbus_connection(bus, auth_timeout=timeout) as conn:
            reply = conn.send_and_get_reply(
                _call("ListUnitsByPatterns", "asas", (["failed"], ["jobworker-*.scope"])),
                timeout=timeout,
            )
            (units,) = unwrap_msg(reply)
            names = [unit[0] for unit in units]
            for name in names:
                conn.send_and_get_reply(_call("ResetFailedUnit", "s", (name,)), timeout=timeout)
    except (OSError, EOFError, TimeoutError, DBusErrorResponse) as exc:
        raise SetupError(f"cannot reset the failed job scopes over D-Bus: {exc}") from exc
    return names


def restart_queued(bus: str = SYSTEM_BUS, timeout: float = 5.0) -> bool:
    """Whether systemd is restarting this process's own unit (`systemctl restart`):
    its unit has a job of type "restart" (or "try-restart", "reload-or-restart"...).
    False when it cannot tell (no unit, no bus): the caller's safe default."""
    try:
        with bus_blocking.open_dbus_connection(bus, auth_timeout=timeout) as conn:

            def ask(
                address: DBusAddress, method: str, signature: str, body: tuple[object, ...]
            ) -> Any:
                reply = conn.send_and_get_reply(
                    new_method_call(address, method, signature, body), timeout=timeout
                )
                return unwrap_msg(reply)

            (unit,) = ask(_MANAGER, "GetUnitByPID", "u", (os.getpid(),))
            props = DBusAddress(
                unit, bus_name=_MANAGER.bus_name, interface="org.freedesktop.DBus.Properties"
            )
            ((_sig, (job_id, job_path)),) = ask(
                props, "Get", "ss", ("org.freedesktop.systemd1.Unit", "Job")
            )
            if job_id == 0:
                return False
            job = DBusAddress(
                job_path, bus_name=_MANAGER.bus_name, interface="org.freedesktop.DBus.Properties"
            )
            ((_sig, job_type),) = ask(job, "Get", "ss", ("org.freedesktop.systemd1.Job", "JobType"))
    except (OSError, EOFError, TimeoutError, DBusErrorResponse, ValueError):
        return False
    return "restart" in str(job_type)


__all__ = [
    "BUS_TIMEOUT",
    "SYSTEM_BUS",
    "TOP_SLICE",
    "ScopeError",
    "available",
    "escape",
    "reset_failed_scopes",
    "restart_queued",
    "scope_name",
    "slice_name",
    "start_scope",
    "stop_scope",
]

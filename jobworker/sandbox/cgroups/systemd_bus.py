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

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import trio
from jeepney import (
    DBusAddress,
    DBusErrorResponse,
    HeaderFields,
    MatchRule,
    MessageType,
    message_bus,
    new_method_call,
)
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
            async with _Conversation.open(bus) as bus_:
                # Subscribed before the call: the job's end cannot come unseen.
                rule = MatchRule(
                    type="signal",
                    interface=_MANAGER.interface,
                    member="JobRemoved",
                    path=_MANAGER.object_path,
                )
                rule.add_arg_condition(2, name)
                bus_.rule = rule
                await bus_.call(message_bus.AddMatch(rule))
                await bus_.call(_call("Subscribe"))
                call = _call(
                    "StartTransientUnit", "ssa(sv)a(sa(sv))", (name, "fail", properties, [])
                )
                try:
                    (job,) = await bus_.call(call)
                except DBusErrorResponse as exc:
                    if exc.name != _UNIT_EXISTS:
                        raise
                    # A failed scope of that name left from a crash: reset, then again.
                    await bus_.call(_call("ResetFailedUnit", "s", (name,)))
                    (job,) = await bus_.call(call)
                while True:
                    _id, path, _unit, result = (await bus_.signal()).body
                    if path == job:
                        break
        except DBusErrorResponse as exc:
            raise ScopeError(
                f"systemd refused the job's scope {name}: {exc.name}: {exc.data}"
            ) from exc
        except (OSError, EOFError, trio.EndOfChannel, trio.BrokenResourceError) as exc:
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
        async with _Conversation.open(bus) as bus_:
            for method, body in (("StopUnit", (name, "replace")), ("ResetFailedUnit", (name,))):
                try:
                    await bus_.call(_call(method, "ss" if len(body) == 2 else "s", body))
                except DBusErrorResponse as exc:
                    if exc.name != _NO_SUCH_UNIT and "not loaded" not in str(exc.data):
                        raise


class _Conversation:
    """One connection, used by one task in turn: a call and its reply, the signals
    that match `rule` kept meanwhile (the bus sends only those: AddMatch)."""

    def __init__(self, conn: bus_trio.DBusConnection) -> None:
        self.conn = conn
        self.rule: MatchRule | None = None
        self.signals: list[Any] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, bus: str) -> AsyncIterator[_Conversation]:
        conn = await bus_trio.open_dbus_connection(bus)
        try:
            yield cls(conn)
        finally:
            conn.socket.close()  # no checkpoint: the clean-up cannot be cut short

    async def call(self, message: Any) -> tuple[Any, ...]:
        serial = next(self.conn.outgoing_serial)
        await self.conn.send(message, serial=serial)
        while True:
            reply = await self._receive()
            if reply is not None and reply.header.fields.get(HeaderFields.reply_serial) == serial:
                body: tuple[Any, ...] = unwrap_msg(reply)
                return body

    async def signal(self) -> Any:
        while not self.signals:
            await self._receive()
        return self.signals.pop(0)

    async def _receive(self) -> Any:
        """The next message, or None for a signal (kept when it matches `rule`)."""
        message = await self.conn.receive()
        if message.header.message_type is MessageType.signal:
            if self.rule is not None and self.rule.matches(message):
                self.signals.append(message)
            return None
        return message


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

"""What the systemd driver asks systemd (PID 1) over D-Bus, with jeepney.

Why jeepney: pure Python, maintained, no C library or GLib main loop, and it has
trio I/O (`jeepney.io.trio`) besides blocking I/O (`jeepney.io.blocking`, for the
start-up checks and clean-up, which run before anything is served).

Every call is bounded (`BUS_TIMEOUT`: systemd under load can take seconds to
answer; runc raised its wait from 1 s to 30 s for the same reason), and every start
and stop goes over one long-lived connection (`Bus`): a bus that never answers
costs one start, never the daemon.

Unit names follow systemd-escape's rules (`escape`): an owner name becomes one
part of a slice name (`jobworker-<owner>.slice`, under `jobworker.slice`) and of
its jobs' scope names (`jobworker-<owner>-<job id>.scope`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import attrs
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
from jeepney.auth import BEGIN, AuthenticationError, Authenticator
from jeepney.bus import get_bus
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
#: systemd's Peer interface: a Ping is a round trip that asks systemd nothing.
_PEER = _MANAGER.with_interface("org.freedesktop.DBus.Peer")
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


@attrs.define(eq=False)
class Bus:
    """jwsd's one connection to systemd on the bus, shared by every start and stop of
    a job; made on first use, and again after it breaks (dbus-daemon or systemd
    restarted). Not thread-safe: one trio run uses it.

    No task of its own reads the connection: a caller waiting for its reply (or its
    job's end) takes `_receiving` and reads one message at a time, handing each to
    whoever waits for it, until its own has come (trio.Lock is fair: waiters take
    turns). A connection per start would cost a socket, a handshake and a Hello with
    dbus-daemon each time; one long-lived connection costs one round trip per call.

    `close` (sync, idempotent) closes the connection.
    """

    address: str = SYSTEM_BUS
    _conn: bus_trio.DBusConnection | None = attrs.field(default=None, init=False)
    _connecting: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _receiving: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    #: Replies by serial, for the serials a caller still waits for.
    _replies: dict[int, Any] = attrs.field(factory=dict, init=False)
    _awaited: set[int] = attrs.field(factory=set, init=False)
    #: JobRemoved (job path, result) by unit, for the units a start watches.
    _removed: dict[str, list[tuple[str, str]]] = attrs.field(factory=dict, init=False)
    #: The jobs systemd queued on each running job's scope that jwsd did not ask for
    #: (`watch`): an operator's `systemctl stop`.
    _foreign: dict[str, set[str]] = attrs.field(factory=dict, init=False)
    _own: dict[str, set[str]] = attrs.field(factory=dict, init=False)

    def watch(self, unit: str) -> None:
        """Note every job systemd queues on `unit` from now on (`stopped_outside`),
        once connected (`connect`); `unwatch` forgets it."""
        self._foreign.setdefault(unit, set())
        self._own.setdefault(unit, set())

    def unwatch(self, unit: str) -> None:
        self._foreign.pop(unit, None)
        self._own.pop(unit, None)

    async def stopped_outside(self, unit: str, timeout: float = BUS_TIMEOUT) -> bool:  # noqa: ASYNC109
        """Whether systemd queued a job on the watched `unit` that jwsd did not ask for
        (`systemctl stop` of the scope, a shutdown of the host). Asked once the job's
        processes are gone: systemd queued that job before it signalled them, and the
        bus delivers its signals in order, so the reply to a Ping comes after the
        JobNew. False when the bus cannot tell within `timeout`."""
        with trio.move_on_after(timeout):
            try:
                await self.call("Ping", None, (), address=_PEER)
            except (ScopeError, DBusErrorResponse):
                return False
        return bool(self._foreign.get(unit))

    async def connect(self) -> None:
        """Connect now (else the first call does). Raises ScopeError."""
        await self._connected()

    async def start_scope(
        self,
        name: str,
        *,
        slice_: str,
        description: str,
        pids: list[int],
        # A timeout parameter, not a cancel scope: running out is an error (ScopeError).
        timeout: float = BUS_TIMEOUT,  # noqa: ASYNC109
    ) -> None:
        """Have systemd make the transient scope `name` in `slice_` holding `pids`,
        with its cgroup delegated to us, and return once its start job is done. Raises
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
        args: tuple[object, ...] = (name, "fail", properties, [])
        # Watched before the call: the job's end cannot come unseen, even before the reply.
        self._removed[name] = []
        result = None
        try:
            with trio.move_on_after(timeout):
                try:
                    try:
                        (job,) = await self.call("StartTransientUnit", "ssa(sv)a(sa(sv))", args)
                    except DBusErrorResponse as exc:
                        if exc.name != _UNIT_EXISTS:
                            raise
                        # A failed scope of that name left from a crash: reset, then again.
                        await self.call("ResetFailedUnit", "s", (name,))
                        (job,) = await self.call("StartTransientUnit", "ssa(sv)a(sa(sv))", args)
                    self._own.setdefault(name, set()).add(job)
                    self._foreign.get(name, set()).discard(job)
                    removed = self._removed[name]
                    await self._receive_until(lambda: any(path == job for path, _ in removed))
                    result = next(ended for path, ended in removed if path == job)
                except DBusErrorResponse as exc:
                    raise ScopeError(
                        f"systemd refused the job's scope {name}: {exc.name}: {exc.data}"
                    ) from exc
        finally:
            del self._removed[name]
        if result is None:
            raise ScopeError(f"systemd did not create the job's scope within {timeout:g} s")
        if result != "done":
            raise ScopeError(
                f"systemd could not start the job's scope {name}: its job ended {result!r}"
            )

    async def stop_scope(
        self,
        name: str,
        *,
        timeout: float = BUS_TIMEOUT,  # noqa: ASYNC109 (a bound of its own, within a shielded clean-up)
    ) -> None:
        """Stop the scope `name` (its processes are killed) and forget it if it failed;
        a unit already gone is fine. Bounded by `timeout`; errors (ScopeError,
        DBusErrorResponse) are the caller's to log."""
        with trio.move_on_after(timeout):
            for method, signature, body in (
                ("StopUnit", "ss", (name, "replace")),
                ("ResetFailedUnit", "s", (name,)),
            ):
                try:
                    await self.call(method, signature, body)
                except DBusErrorResponse as exc:
                    if exc.name != _NO_SUCH_UNIT and "not loaded" not in str(exc.data):
                        raise

    async def call(
        self,
        method: str,
        signature: str | None,
        body: tuple[object, ...],
        *,
        address: DBusAddress = _MANAGER,
    ) -> Any:
        """`method` of systemd's Manager (or `address`) with `body`: its reply's body. Raises DBusErrorResponse
        (systemd's refusal) or ScopeError (the bus cannot be reached or broke). Not
        bounded itself: the callers' own deadlines bound it."""
        for attempt in (1, 2):
            conn = await self._connected()
            serial = next(conn.outgoing_serial)
            # Awaited before it is sent: another task may read the reply at send's checkpoint.
            self._awaited.add(serial)
            try:
                message = new_method_call(address, method, signature, body)
                await conn.send(message, serial=serial)
                break
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The bus hung up while the connection was idle (dbus-daemon restarted):
                # the call never left, so it goes once more on a new connection.
                self._awaited.discard(serial)
                self._drop(conn)
                if attempt == 2:
                    raise ScopeError(f"cannot reach systemd on the bus: {exc}") from exc
            except BaseException:
                self._awaited.discard(serial)
                raise
        try:
            await self._receive_until(lambda: serial in self._replies, conn)
            reply = self._replies.pop(serial)
        finally:
            self._awaited.discard(serial)
            self._replies.pop(serial, None)
        return unwrap_msg(reply)

    def close(self) -> None:
        if self._conn is not None:
            self._drop(self._conn)

    async def _connected(self) -> bus_trio.DBusConnection:
        async with self._connecting:
            if self._conn is None:
                self._conn = await _connect(self.address)
            return self._conn

    async def _receive_until(
        self, done: Callable[[], bool], conn: bus_trio.DBusConnection | None = None
    ) -> None:
        """Read the connection, handing out what comes, until `done()`. Raises
        ScopeError when the connection (`conn`: the one the call went out on) breaks."""
        conn = conn or self._conn
        while not done():
            async with self._receiving:
                if done():
                    return
                current = self._conn
                if conn is not current or current is None:
                    raise ScopeError("the connection to systemd on the bus broke; try again")
                try:
                    message = await current.receive()
                except (OSError, trio.EndOfChannel, trio.BrokenResourceError) as exc:
                    self._drop(current)
                    raise ScopeError(f"the connection to systemd on the bus broke: {exc}") from exc
                self._hand_out(message)

    def _hand_out(self, message: Any) -> None:
        """Keep `message` for whoever waits for it; drop it if nobody does."""
        header = message.header
        if header.message_type is MessageType.signal:
            member = header.fields.get(HeaderFields.member)
            if member == "JobRemoved":
                _id, path, unit, result = message.body
                if unit in self._removed:
                    self._removed[unit].append((path, result))
            elif member == "JobNew":
                _id, path, unit = message.body
                if unit in self._foreign and path not in self._own[unit]:
                    self._foreign[unit].add(path)
            return
        serial = header.fields.get(HeaderFields.reply_serial)
        if serial in self._awaited:
            self._replies[serial] = message

    def _drop(self, conn: bus_trio.DBusConnection) -> None:
        conn.socket.close()  # no checkpoint: safe in any clean-up
        if self._conn is conn:
            self._conn = None


async def _connect(address: str) -> bus_trio.DBusConnection:
    """A connection to the bus at `address`, authenticated, named (Hello), subscribed
    to systemd's JobRemoved signals. jeepney's own `open_dbus_connection` is not used:
    cancelled half-way, it leaves its socket open. Raises ScopeError."""
    try:
        stream = await trio.open_unix_socket(get_bus(address))
    except OSError as exc:
        raise ScopeError(f"cannot reach systemd on the bus: {exc}") from exc
    conn = bus_trio.DBusConnection(stream.socket)
    try:
        # Linux: the bus checks our credentials with SO_PEERCRED; the NUL byte starts it.
        await stream.send_all(b"\0")
        authenticator = Authenticator(inc_null_byte=False)
        for line in authenticator:
            await stream.send_all(line)
            data = await stream.receive_some()
            if not data:
                raise EOFError("the bus hung up while authenticating")
            authenticator.feed(data)
        await stream.send_all(BEGIN)
        for message in (
            message_bus.Hello(),
            message_bus.AddMatch(_job_signals("JobRemoved")),
            message_bus.AddMatch(_job_signals("JobNew")),
            _call("Subscribe"),
        ):
            serial = next(conn.outgoing_serial)
            await conn.send(message, serial=serial)
            while True:
                reply = await conn.receive()
                if reply.header.fields.get(HeaderFields.reply_serial) == serial:
                    unwrap_msg(reply)
                    break
    except (
        OSError,
        EOFError,
        AuthenticationError,
        DBusErrorResponse,
        trio.EndOfChannel,
        trio.BrokenResourceError,
    ) as exc:
        stream.socket.close()
        raise ScopeError(f"cannot reach systemd on the bus: {exc}") from exc
    except BaseException:
        stream.socket.close()  # no checkpoint: nothing is left open, even when cancelled
        raise
    return conn


def _job_signals(member: str) -> MatchRule:
    """Every `member` signal (JobNew, JobRemoved) of systemd's, on jwsd's connection:
    `Bus` keeps those of the units it watches (a match per unit would cost two more
    round trips per start)."""
    return MatchRule(
        type="signal", interface=_MANAGER.interface, member=member, path=_MANAGER.object_path
    )


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
    "Bus",
    "ScopeError",
    "available",
    "escape",
    "reset_failed_scopes",
    "restart_queued",
    "scope_name",
    "slice_name",
]

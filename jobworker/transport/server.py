"""`RpcServer`: purerpc services over mutual TLS, with cancellation that holds up.

purerpc 0.8.0's `Server` binds every interface with SO_REUSEPORT, never cancels
a handler whose client went away, leaves sockets open at shutdown (so clients
hang), logs every rejected handshake with a traceback, and sends any handler
exception to the client as CANCELLED with its repr. This module keeps purerpc's
wire code (`GRPCProtoSocket`, its call helpers, `Service`) and replaces the
accept loop and the per-request dispatch:

- one listener on exactly `host`, no SO_REUSEPORT: a port in use is an error;
- the TLS handshake per connection, bounded in time and in how many run at
  once (accepting waits for a free slot); a rejected one is one WARNING log
  line, no traceback;
- at most `max_connections_per_peer` connections per identity (the client
  certificate's name; its address when it has none): the next one is closed
  right after its handshake;
- a connection with no RPC open for `idle_timeout` seconds is closed;
- `current_peer` set from the verified client certificate before the first
  request of a connection is read, so every RPC task of it inherits it;
- a nursery per connection and a `trio.CancelScope` per RPC: an RST_STREAM from
  the client cancels that RPC, the loss of the connection cancels all of them;
- whatever a handler (or the decoding of its request) raises becomes a status
  in one place, `jobworker.transport.status`: a `purerpc.RpcFailedError` keeps
  its own, an undecodable request is INVALID_ARGUMENT, anything unexpected is
  logged with its traceback and sent as INTERNAL "internal error";
- shutdown: `stop_accepting()`, `shutdown(grace)`, or cancelling `serve()`;
  every connection is then cancelled and its socket closed, so clients see
  UNAVAILABLE at once;
- `wait_writable()`: a streaming handler can wait until its client can take
  the next response before it produces it (backpressure up to the handler);
- `set_ssl_context()` and `current_rpc()`: a configuration reload gives new
  connections a new TLS context, and ends calls it no longer allows with a status.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
import ssl
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import anyio
import anyio.abc
import purerpc
import trio
from anyio import aclose_forcefully
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSAttribute, TLSStream
from purerpc.grpc_proto import GRPCProtoStream
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import RequestReceived
from purerpc.wrappers import (
    call_server_stream_stream,
    call_server_stream_unary,
    extract_message_from_singleton_stream,
    send_multiple_messages_server,
    send_single_message_server,
)

from jobworker.echo import bounded, quoted
from jobworker.errors import SetupError
from jobworker.tls import common_name
from jobworker.transport._wire import (
    CLOSE_DRAIN_TIMEOUT,
    DEFAULT_MAX_MESSAGE,
    HookedSocket,
    MalformedRequest,
    PacedStream,
    check_message_length,
    describe_transport_error,
)
from jobworker.transport.identity import Peer, current_peer, format_address
from jobworker.transport.status import status_for

log = logging.getLogger(__name__)

#: Called as on_handshake_error(address, exc) after a rejected handshake was logged.
HandshakeErrorHook = Callable[[str, BaseException], None]

#: How the handler of a call with a stream of requests is called (purerpc's own).
_STREAM_CALLERS = {
    purerpc.Cardinality.STREAM_UNARY: call_server_stream_unary,
    purerpc.Cardinality.STREAM_STREAM: call_server_stream_stream,
}
#: Seconds a call may take, after its HEADERS, to send its whole request message
#: (`jwsd --request-timeout`).
DEFAULT_REQUEST_TIMEOUT = 10.0

# accept() errors that mean "out of resources right now", not "the listener is broken"
# (the same list as trio's serve_listeners).
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

#: The stream of the RPC the current task serves (set per RPC task by `RpcServer`).
_current_stream: contextvars.ContextVar[PacedStream] = contextvars.ContextVar("rpc_stream")


#: The RPC the current task serves (set per RPC task by `RpcServer`).
_current_rpc: contextvars.ContextVar[RpcHandle] = contextvars.ContextVar("rpc_handle")


class RpcHandle:
    """One running RPC, which any task may end with a status (`current_rpc()` gives it)."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self._scope = scope
        self.ended_by: Exception | None = None

    def end(self, error: Exception) -> None:
        """Cancel the RPC's handler and answer it with `error`'s status (as
        `jobworker.transport.status` maps it) instead of a reset. The first call wins."""
        if self.ended_by is None:
            self.ended_by = error
            self._scope.cancel()


def current_rpc() -> RpcHandle | None:
    """In a handler (or a method wrapper): the handle of the RPC it serves; None outside one."""
    return _current_rpc.get(None)


async def wait_writable() -> None:
    """In a handler: return once the RPC's client can take another response without
    it queueing in this process (its flow-control window is open and the connection's
    send buffer has room). A streaming handler that waits here before it reads or
    builds each response holds nothing while its client is slow. Outside an RPC it
    returns at once.
    """
    stream = _current_stream.get(None)
    if stream is not None:
        await stream.wait_writable()


class _Counter:
    """A count that tasks can wait to see reach zero, or leave it (no polling)."""

    def __init__(self) -> None:
        self.value = 0
        self._zero = trio.Event()
        self._zero.set()
        self._nonzero = trio.Event()

    def up(self) -> None:
        if self.value == 0:
            self._zero = trio.Event()
            self._nonzero.set()
        self.value += 1

    def down(self) -> None:
        self.value -= 1
        if self.value == 0:
            self._zero.set()
            self._nonzero = trio.Event()

    async def wait_zero(self) -> None:
        await self._zero.wait()

    async def wait_nonzero(self) -> None:
        await self._nonzero.wait()


class _ServerSocket(HookedSocket):
    """A server-side connection: knows the cancel scope of each running RPC by stream id."""

    def __init__(self, config: GRPCConfiguration, stream: anyio.abc.ByteStream) -> None:
        super().__init__(config, stream)
        self.scopes: dict[int, trio.CancelScope] = {}
        self.reset_ids: set[int] = set()
        self.open_rpcs = _Counter()

    def stream_was_reset(self, stream_id: int, error_code: int) -> None:
        scope = self.scopes.get(stream_id)
        if scope is None:
            # Its RPC has ended; h2 will send nothing more for the stream: forget it.
            self.forget_stream(stream_id)
            return
        self.reset_ids.add(stream_id)
        scope.cancel()


class RpcServer:
    """Serves purerpc services on one TCP address with mutual TLS.

    `host` is the one address to bind (e.g. "127.0.0.1"; a name binds each
    address it resolves to); `port` 0 picks a free port, which `serve()`
    reports. `ssl_context` is a server context the caller configured
    completely (TLS 1.3, CA for client certificates, `verify_mode`, ALPN "h2"
    for grpcio clients). `max_message_length` bounds one message each way; the
    per-stream receive window is twice it, so one message always fits
    (ValueError if it is not positive or that window would exceed 2**31-1).
    `on_handshake_error(address, exc)` is called after each rejected TLS
    handshake is logged (None: only log). `handshake_timeout` bounds a
    handshake in seconds, and `max_handshakes` how many run at once.
    `max_connections_per_peer` bounds the connections one identity holds
    open (None: no bound); `idle_timeout` closes a connection that has had no
    RPC open for that many seconds (None: never). `request_timeout` bounds how
    long a call with one request message may take to send it, whole, after its
    HEADERS: past it that call alone ends with DEADLINE_EXCEEDED (None: no bound).
    `on_refused(reason)` is called for each connection refused or closed by the
    server: "handshake" (a failed TLS handshake), "quota" (its peer's connections at
    `max_connections_per_peer`), "idle" (closed by `idle_timeout`); None: only log.

    Run `serve()` in a nursery (`port = await nursery.start(server.serve)`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        max_message_length: int = DEFAULT_MAX_MESSAGE,
        on_handshake_error: HandshakeErrorHook | None = None,
        handshake_timeout: float = 10.0,
        max_handshakes: int = 256,
        max_connections_per_peer: int | None = None,
        idle_timeout: float | None = None,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self._on_refused = on_refused
        self.port = port
        self._ssl_context = ssl_context
        self._config = GRPCConfiguration(
            client_side=False, max_message_length=check_message_length(max_message_length)
        )
        self._on_handshake_error = on_handshake_error
        self._handshake_timeout = handshake_timeout
        self._handshakes = trio.Semaphore(max_handshakes)
        self._max_per_peer = max_connections_per_peer
        self._idle_timeout = idle_timeout
        self._request_timeout = request_timeout
        self._per_peer: dict[str, int] = {}
        self._services: dict[str, purerpc.Service] = {}
        self._connections = _Counter()
        self._rpcs = _Counter()
        self._accept_scope = trio.CancelScope()
        # One per connection, around its request loop: cancelling it closes the
        # connection gracefully (what was sent is flushed), unlike cancelling the task.
        self._request_loops: set[trio.CancelScope] = set()
        self._connections_scope: trio.CancelScope | None = None
        self._started = False
        self._stopped = trio.Event()

    def set_ssl_context(self, ssl_context: ssl.SSLContext) -> None:
        """Handshake every connection accepted from now on with `ssl_context` (a reload
        of the TLS files); connections already open keep the one they shook hands with."""
        self._ssl_context = ssl_context

    def add_service(self, service: purerpc.Service) -> None:
        """Serve `service` (e.g. `servicer.service`, or `wrap_methods(...)` of it) under its name.

        Raises ValueError if a service of that name was added already.
        """
        if service.name in self._services:
            raise ValueError(f"service {service.name!r} was added twice; add each service once")
        self._services[service.name] = service

    @property
    def connection_count(self) -> int:
        """Connections open right now (TLS handshake done)."""
        return self._connections.value

    @property
    def active_rpcs(self) -> int:
        """RPCs whose task is running right now."""
        return self._rpcs.value

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, then serve connections until cancelled or `shutdown()` ends it.

        Calls `task_status.started(port)` with the bound port once listening.
        Raises `SetupError` if the address cannot be bound (e.g. the port is in
        use) and RuntimeError if called twice. When it returns or is cancelled,
        the listener and every connection are closed; no task is left behind.
        """
        if self._started:
            raise RuntimeError("serve() was called twice; make a new RpcServer instead")
        self._started = True
        try:
            listener = await self._listen()
            async with trio.open_nursery() as connections:
                try:
                    self._connections_scope = connections.cancel_scope
                    task_status.started(self.port)
                    with self._accept_scope:
                        async with trio.open_nursery() as acceptors:
                            for one in listener.listeners:
                                acceptors.start_soon(self._accept_loop, one, connections)
                finally:
                    # Accepting stopped (or failed): close the door now, before the
                    # nursery waits for the open connections to finish.
                    with trio.CancelScope(shield=True):
                        await listener.aclose()
        finally:
            self._stopped.set()

    def stop_accepting(self) -> None:
        """Stop accepting connections and close the listening socket(s).

        Open connections and their RPCs go on; `serve()` returns when the last
        one has ended (or use `shutdown()` to bound that).
        """
        self._accept_scope.cancel()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, give running RPCs up to `grace` seconds to end, then cancel the rest.

        Returns when `serve()` has finished: every connection closed, every RPC
        task gone. Clients whose calls were cancelled see UNAVAILABLE.
        Does nothing if `serve()` never started.
        """
        if not self._started:
            return
        self.stop_accepting()
        with trio.move_on_after(grace):
            await self._rpcs.wait_zero()
        # Close every connection: RPCs still running now are cancelled, and what
        # the finished ones answered is flushed (for at most CLOSE_DRAIN_TIMEOUT).
        for loop in self._request_loops:
            loop.cancel()
        with trio.move_on_after(CLOSE_DRAIN_TIMEOUT + 1):
            await self._connections.wait_zero()
        if self._connections_scope is not None:
            self._connections_scope.cancel()
        await self._stopped.wait()

    async def wait_no_connections(self) -> None:
        """Return once no connection is open (at once if none is)."""
        await self._connections.wait_zero()

    async def wait_no_rpcs(self) -> None:
        """Return once no RPC is running (at once if none is)."""
        await self._rpcs.wait_zero()

    async def _listen(self) -> MultiListener[anyio.abc.SocketStream]:
        try:
            # reuse_port=False: a second server on the same port must fail, not
            # silently share it (purerpc's Server sets it).
            listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self.port, reuse_port=False
            )
        except OSError as exc:
            advice = (
                "another process listens there; stop it or choose another port"
                if exc.errno == errno.EADDRINUSE
                else "check the address and port"
            )
            reason = (exc.strerror or str(exc)).lower()
            raise SetupError(
                f"cannot listen on {self.host}:{self.port}: {reason}; {advice}"
            ) from exc
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        return listener

    async def _accept_loop(
        self, listener: anyio.abc.Listener[anyio.abc.SocketStream], connections: trio.Nursery
    ) -> None:
        # create_tcp_listener() makes one SocketListener per bound address.
        assert isinstance(listener, anyio.abc.SocketListener)
        while True:
            # A free handshake slot first: a flood of connections that never handshake
            # then waits in the kernel's backlog instead of costing fds and memory here.
            await self._handshakes.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._handshakes.release()
                log.warning("cannot accept a connection right now (%s); retrying", exc.strerror)
                await trio.sleep(0.1)
                continue
            except BaseException:
                self._handshakes.release()
                raise
            connections.start_soon(self._handle_connection, stream)

    async def _handle_connection(self, tcp: anyio.abc.SocketStream) -> None:
        """Handshake (holding the slot `_accept_loop` took), then serve the connection."""
        address = format_address(tcp.extra(anyio.abc.SocketAttribute.remote_address))
        try:
            with trio.fail_after(self._handshake_timeout):
                tls = await TLSStream.wrap(
                    tcp, server_side=True, ssl_context=self._ssl_context, standard_compatible=False
                )
        except (trio.TooSlowError, anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            self._handshakes.release()
            with trio.CancelScope(shield=True):
                await aclose_forcefully(tcp)
            self._handshake_failed(address, exc)
            return
        except BaseException:
            self._handshakes.release()
            with trio.CancelScope(shield=True):
                await aclose_forcefully(tcp)
            raise
        self._handshakes.release()

        certificate = tls.extra(TLSAttribute.peer_certificate)
        peer = Peer(
            common_name=common_name(certificate),
            address=address,
            certificate=tls.extra(TLSAttribute.peer_certificate_binary),
        )
        current_peer.set(peer)
        key = peer.common_name if peer.common_name is not None else address.rpartition(":")[0]
        held = self._per_peer.get(key, 0)
        if self._max_per_peer is not None and held >= self._max_per_peer:
            log.warning(
                "refused a connection from %s: %s holds %d connections already (the most allowed)",
                address,
                "its address" if peer.common_name is None else "its user",
                held,
            )
            self._refused("quota")
            with trio.CancelScope(shield=True):
                await aclose_forcefully(tls)
            return
        self._per_peer[key] = held + 1
        self._connections.up()
        try:
            await self._serve_connection(tls, address)
        finally:
            with trio.CancelScope(shield=True):
                await aclose_forcefully(tls)
            self._connections.down()
            self._per_peer[key] -= 1
            if not self._per_peer[key]:
                del self._per_peer[key]

    def _handshake_failed(self, address: str, exc: BaseException) -> None:
        reason = (
            f"no handshake within {self._handshake_timeout:g} s"
            if isinstance(exc, trio.TooSlowError)
            else describe_transport_error(exc)
        )
        log.warning("rejected tls connection from %s: %s", address, reason)
        self._refused("handshake")
        if self._on_handshake_error is not None:
            try:
                self._on_handshake_error(address, exc)
            except Exception:
                # A broken hook must not take the server down with it.
                log.exception("on_handshake_error hook failed")

    def _refused(self, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(reason)

    async def _serve_connection(self, tls: TLSStream, address: str) -> None:
        sock = _ServerSocket(self._config, tls)
        request_loop = trio.CancelScope()
        self._request_loops.add(request_loop)
        async with sock, trio.open_nursery() as rpcs:
            try:
                with request_loop:
                    if self._idle_timeout is not None:
                        rpcs.start_soon(self._close_when_idle, sock, request_loop, address)
                    async with aclosing(sock.listen()) as requests:
                        async for stream in requests:
                            scope = trio.CancelScope()
                            sock.scopes[stream.stream_id] = scope
                            sock.open_rpcs.up()
                            rpcs.start_soon(self._run_rpc, sock, stream, scope)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                pass  # the connection is gone: end its RPCs below
            except Exception as exc:
                # An HTTP/2 or gRPC protocol violation (e.g. a message over the size limit).
                log.warning("closing connection from %s: %s", address, bounded(str(exc)))
            finally:
                # Whatever ended the connection ends every RPC on it.
                self._request_loops.discard(request_loop)
                rpcs.cancel_scope.cancel()

    async def _close_when_idle(
        self, sock: _ServerSocket, request_loop: trio.CancelScope, address: str
    ) -> None:
        """Close the connection (gracefully: what was sent is flushed) once it has had no
        RPC open for `idle_timeout` seconds. Runs in the connection's RPC nursery."""
        assert self._idle_timeout is not None
        while True:
            await sock.open_rpcs.wait_zero()
            with trio.move_on_after(self._idle_timeout):
                await sock.open_rpcs.wait_nonzero()
                continue
            log.info("closing connection from %s: no call for %g s", address, self._idle_timeout)
            self._refused("idle")
            request_loop.cancel()
            return

    async def _run_rpc(
        self, sock: _ServerSocket, stream: GRPCProtoStream, scope: trio.CancelScope
    ) -> None:
        stream_id = stream.stream_id
        _current_stream.set(stream)
        handle = RpcHandle(scope)
        _current_rpc.set(handle)
        self._rpcs.up()
        try:
            with scope:
                await self._dispatch(stream)
            if handle.ended_by is not None and scope.cancelled_caught:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_DRAIN_TIMEOUT):
                    await _close(stream, status_for(handle.ended_by, "ended call"))
        except Exception as exc:
            # Failures outside the handler (the stream was reset or the connection
            # broke while we answered) concern this RPC only, never the connection.
            log.debug("rpc on stream %d ended early: %s", stream_id, exc)
        finally:
            del sock.scopes[stream_id]
            if stream_id in sock.reset_ids:
                # purerpc only forgets streams that close normally.
                sock.reset_ids.discard(stream_id)
                sock.forget_stream(stream_id)
            sock.open_rpcs.down()
            self._rpcs.down()

    async def _dispatch(self, stream: GRPCProtoStream) -> None:
        await stream.start_response()
        event = await stream.receive_event()
        if not isinstance(event, RequestReceived):
            await _close(stream, purerpc.Status(purerpc.StatusCode.INTERNAL, "expected headers"))
            return
        if isinstance(event, MalformedRequest):
            await _close(
                stream,
                purerpc.Status(
                    purerpc.StatusCode.UNIMPLEMENTED,
                    f"path {quoted(event.path)} names no method; call /<service>/<method>",
                ),
            )
            return
        service = self._services.get(event.service_name)
        method = None if service is None else service.methods.get(event.method_name)
        if method is None:
            what = f"method {quoted(event.service_name + '/' + event.method_name)}"
            await _close(
                stream,
                purerpc.Status(purerpc.StatusCode.UNIMPLEMENTED, f"{what} is not implemented here"),
            )
            return
        stream.expect_message_type(method.signature.request_type)
        handler = functools.partial(method.method_fn, request=event)
        cardinality = method.signature.cardinality
        try:
            if cardinality in _STREAM_CALLERS:
                await _STREAM_CALLERS[cardinality](handler, stream)
                return
            # One request message (and the end of the client's stream), then the handler:
            # purerpc's call_server_unary_* would wait for them for ever.
            with trio.move_on_after(_or_forever(self._request_timeout)) as waiting:
                request = await extract_message_from_singleton_stream(stream)
            if waiting.cancelled_caught:
                await _close(stream, _request_too_slow(self._request_timeout))
                return
            if cardinality is purerpc.Cardinality.UNARY_UNARY:
                await send_single_message_server(stream, await handler(request))
            else:
                await send_multiple_messages_server(stream, handler(request))
        except Exception as exc:
            status = status_for(exc, f"{event.service_name}/{event.method_name}")
            await _close(stream, status)


def _or_forever(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


def _request_too_slow(timeout: float | None) -> Any:
    """The status of a call whose request did not arrive in time.

    DEADLINE_EXCEEDED, not CANCELLED: a time limit ran out before the call could
    complete, which is what gRPC's DEADLINE_EXCEEDED says; CANCELLED says the
    caller (or the server, shutting down) gave the call up, which nobody did.
    """
    return purerpc.Status(
        purerpc.StatusCode.DEADLINE_EXCEEDED,
        f"the request message did not arrive within {timeout:g} s of the call's headers; "
        f"send it with them",
    )


async def _close(stream: GRPCProtoStream, status: Any) -> None:
    """End the RPC with `status`; if the stream or connection is already gone, there is nobody to tell."""
    try:
        await stream.close(status)
    except Exception as exc:
        log.debug("could not send status %s: %s", status, exc)

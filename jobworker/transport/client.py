"""`open_channel`: a purerpc client channel that never hangs and cleans up after itself.

purerpc 0.8.0's channel waits forever when the connection is lost (the server
shut down, crashed, or rejected our certificate after a TLS 1.3 handshake that
looked fine from here), never tells the server that a call was abandoned, and
ignores an RST_STREAM from the server. This channel:

- ends every pending call with `purerpc.UnavailableError` (an `RpcFailedError`
  with status UNAVAILABLE and a message saying why) when the connection is
  lost or the channel is closed, and fails new calls the same way;
- turns an RST_STREAM from the server into the matching gRPC status;
- sends RST_STREAM (CANCEL) for a call that is abandoned: the caller broke out
  of a response stream or was cancelled. Stubs wrapped by
  `transport.explicit_calls` say so themselves when they end (`abandon()`);
  for purerpc's own stubs, which never do, the channel notices when the call's
  stream object is garbage collected (CPython: at once, when the stub's
  generator or coroutine is closed or dropped). Either way use
  `contextlib.aclosing` on a response stream you may leave early;
- closes its socket on exit, after at most `_wire.CLOSE_DRAIN_TIMEOUT` seconds.

Every failure to connect (refused, unreachable, timed out, the TLS handshake
failed) raises `purerpc.UnavailableError` from `open_channel`, with a message
such as "cannot reach 127.0.0.1:50051: connection refused" for a person to read.
"""

from __future__ import annotations

import logging
import os
import ssl
import weakref
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import h2.errors
import h2.exceptions
import purerpc
import trio
from anyio import aclose_forcefully
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import MessageReceived, RequestReceived, ResponseEnded, WindowUpdated

from jobworker.errors import sole_exception
from jobworker.transport._wire import (
    DEFAULT_MAX_MESSAGE,
    TRANSPORT_ERRORS,
    ChannelBase,
    HookedSocket,
    SeamStream,
    check_message_length,
    describe_transport_error,
)

log = logging.getLogger(__name__)

# How gRPC maps an RST_STREAM error code to a status
# (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md#errors).
_RESET_STATUS = {
    h2.errors.ErrorCodes.REFUSED_STREAM: purerpc.StatusCode.UNAVAILABLE,
    h2.errors.ErrorCodes.CANCEL: purerpc.StatusCode.CANCELLED,
    h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: purerpc.StatusCode.RESOURCE_EXHAUSTED,
    h2.errors.ErrorCodes.INADEQUATE_SECURITY: purerpc.StatusCode.PERMISSION_DENIED,
}


class _Call:
    """What the channel must remember about one call after its stream object is gone."""

    __slots__ = ("ended", "released", "stream_id", "unacked")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        #: The call has its final status (trailers, a reset, or the connection's end).
        self.ended = False
        #: The caller is done with it (`abandon`, or its stream object was collected).
        self.released = False
        #: Bytes delivered to the stream but not yet handed back to the server as window.
        self.unacked = 0


class _ClientStream(SeamStream):
    call: _Call
    owner: _ClientSocket

    async def receive_event(self) -> Any:
        # (Not _receive: GRPCProtoStream calls GRPCStream._receive directly.)
        event = await super().receive_event()  # acknowledges a message's bytes
        if isinstance(event, MessageReceived):
            self.call.unacked -= event.flow_controlled_length
        return event

    def window_wait_ended(self) -> None:
        self.owner.raise_if_lost()

    def abandon(self) -> None:
        """The caller is done with this call: if it has not ended, cancel it on the
        server (RST_STREAM CANCEL); give back the window its unread bytes hold.
        Synchronous (safe in a `finally` under cancellation) and idempotent."""
        self.owner.release(self)


class _ClientSocket(HookedSocket):
    """The client side of a connection: tracks calls, fails them when the connection ends."""

    StreamClass = _ClientStream

    streams: MutableMapping[int, _ClientStream]

    def __init__(
        self, config: GRPCConfiguration, stream: anyio.abc.ByteStream, target: str
    ) -> None:
        # Weak: a stream nobody holds any more is an abandoned call (see _abandoned).
        super().__init__(config, stream, weak_streams=True)
        self._target = target
        self._lost: str | None = None
        self._token = trio.lowlevel.current_trio_token()

    # -- calls ------------------------------------------------------------------------------

    def raise_if_lost(self) -> None:
        """Raise `purerpc.UnavailableError` if the connection has ended."""
        if self._lost is not None:
            raise purerpc.UnavailableError(self._lost)

    async def start_request(self, *args: Any, **kwargs: Any) -> Any:
        self.raise_if_lost()
        return await super().start_request(*args, **kwargs)

    def stream_started(self, stream: SeamStream) -> None:
        assert isinstance(stream, _ClientStream)
        stream.call = _Call(stream.stream_id)
        finalizer = weakref.finalize(stream, self._abandoned, stream.call)
        finalizer.atexit = False

    def release(self, stream: _ClientStream) -> None:
        """`_ClientStream.abandon`: release `stream`'s call now, from the event loop."""
        if stream.call.released:
            return
        # Events still arriving for it are the abandoned call's: acknowledged, not queued.
        self.forget_stream(stream.stream_id)
        self._release(stream.call)

    def _abandoned(self, call: _Call) -> None:
        # The safety net for calls made through purerpc's own stubs, which never say
        # when they are done: the stream object was collected. A weakref callback may
        # run at any allocation; touch h2 only from the event loop.
        if call.released:
            return
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._release, call)

    def _release(self, call: _Call) -> None:
        """Give back the window a dead call held and, if it had not ended, cancel it on the server."""
        if call.released:
            return
        call.released = True
        try:
            self._release_now(call)
        except Exception:
            # From a run_sync_soon callback an escaping error would kill the run, and from
            # a caller's `finally` it would hide the error that ended the call.
            log.exception("could not release abandoned call on stream %d", call.stream_id)

    def _release_now(self, call: _Call) -> None:
        if self._lost is not None:
            return
        connection = self.connection
        if not call.ended:
            # H2Error: the stream is already closed on the h2 level.
            with suppress(h2.exceptions.H2Error):
                connection.reset_stream(call.stream_id, h2.errors.ErrorCodes.CANCEL)
        # Bytes the call received but never consumed still count against the
        # connection's window: without this, abandoned calls starve the connection.
        connection.acknowledge(call.unacked, call.stream_id)
        connection.forget_read_buffer(call.stream_id)
        self.wire.wake_writer()

    # -- reading ----------------------------------------------------------------------------

    async def read_loop(self) -> None:
        reason = "the server closed the connection"
        heard_from_server = False
        try:
            while True:
                try:
                    data = await self.wire.recv(self.receive_buffer_size)
                except anyio.EndOfStream:
                    if not heard_from_server:
                        # A server that accepted us sends its SETTINGS at once. Under
                        # TLS 1.3 it checks our certificate after our handshake ended,
                        # so a refusal looks like this from here.
                        reason = (
                            "the server closed the connection before speaking http/2; "
                            "it may have refused our client certificate"
                        )
                    break
                except TRANSPORT_ERRORS as exc:
                    reason = _loss_reason(exc)
                    break
                heard_from_server = True
                for event in self.connection.receive_data(data):
                    self._deliver(event)
                self.wire.wake_writer()
        except Exception as exc:
            reason = f"protocol error: {exc}"
        except BaseException:
            reason = "the channel was closed"
            raise
        finally:
            self._fail_all(reason)

    def _deliver(self, event: Any) -> None:
        if isinstance(event, WindowUpdated):
            waiting = (
                self.streams.values()
                if event.stream_id == 0
                else [self.streams.get(event.stream_id)]
            )
            for stream in list(waiting):
                if stream is not None:
                    stream.wake_senders()
            return
        if isinstance(event, RequestReceived):
            raise purerpc.ProtocolError("the server sent a request")
        stream = self.streams.get(event.stream_id)
        if stream is None:
            if isinstance(event, MessageReceived):
                # The call was abandoned; its bytes still count against the connection window.
                self.connection.acknowledge(event.flow_controlled_length, event.stream_id)
            return
        if isinstance(event, MessageReceived):
            stream.call.unacked += event.flow_controlled_length
        stream.deliver(event)
        if isinstance(event, ResponseEnded):
            stream.call.ended = True
            stream.remote_closed()

    def stream_was_reset(self, stream_id: int, error_code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.call.ended:
            return
        code = _RESET_STATUS.get(error_code, purerpc.StatusCode.INTERNAL)
        try:
            name = h2.errors.ErrorCodes(error_code).name
        except ValueError:
            name = str(error_code)
        message = f"the server reset the call (http/2 error {name.lower()})"
        self._end(stream, purerpc.Status(code, message))

    def transport_broke(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = f"lost the connection to {self._target}: {_loss_reason(exc)}"

    def _fail_all(self, reason: str) -> None:
        if self._lost is None:
            self._lost = f"lost the connection to {self._target}: {reason}"
        for stream in list(self.streams.values()):
            if not stream.call.ended:
                self._end(stream, purerpc.Status(purerpc.StatusCode.UNAVAILABLE, self._lost))
            # Wake senders waiting for window: they raise UNAVAILABLE.
            stream.wake_senders()

    @staticmethod
    def _end(stream: _ClientStream, status: Any) -> None:
        stream.call.ended = True
        stream.deliver(ResponseEnded(stream.stream_id, status))


def _loss_reason(exc: BaseException) -> str:
    reason = describe_transport_error(exc)
    if reason.startswith("tls error"):
        # Under TLS 1.3 the server checks our certificate after our side of the
        # handshake is done: its refusal arrives as an alert on the first read.
        return (
            f"the server refused the tls session ({reason}); check the client certificate and key"
        )
    return reason


class Channel(ChannelBase):
    """A purerpc channel (pass it to generated stubs and `purerpc.Client`) with the fixes above.

    Use `open_channel()`, or `async with Channel(...)`. Arguments as for `open_channel`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        max_message_length: int = DEFAULT_MAX_MESSAGE,
        connect_timeout: float = 10,
    ) -> None:
        super().__init__(host, port, ssl_context)
        self._server_hostname = server_hostname
        self._max_message_length = check_message_length(max_message_length)
        self._connect_timeout = connect_timeout

    @property
    def target(self) -> str:
        """ "host:port" as given."""
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> Channel:
        await super().__aenter__()
        return self

    async def open(self) -> None:
        stream = await self._connect()
        try:
            # Registered first, so it runs last: after purerpc's tasks have ended.
            self.push_async_callback(aclose_forcefully, stream)
            config = GRPCConfiguration(
                client_side=True, max_message_length=self._max_message_length
            )
            self.attach(await self.enter_async_context(_ClientSocket(config, stream, self.target)))
        except BaseException:
            await self.aclose()
            raise

    def unacknowledged_bytes(self) -> int:
        """Bytes the server sent on this connection that were never handed back to it
        as flow-control window (a diagnostic: calls abandoned with unread responses
        must not leave any behind). 0 before the channel is open."""
        socket = self.socket
        return 0 if socket is None else socket.connection.unacknowledged_bytes()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            return bool(await super().__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as group:
            # purerpc runs the body of the channel inside its task groups, and trio
            # wraps whatever leaves a nursery in an ExceptionGroup. When the only
            # thing in it is the body's own exception, let that one through as is.
            if exc is not None and sole_exception(group) is exc:
                return False
            raise

    async def _connect(self) -> anyio.abc.ByteStream:
        hostname = self._server_hostname or self.host
        try:
            with trio.fail_after(self._connect_timeout):
                return await anyio.connect_tcp(
                    self.host,
                    self.port,
                    ssl_context=self.ssl_context,
                    tls=True,
                    tls_hostname=hostname,
                    tls_standard_compatible=False,
                )
        except trio.TooSlowError:
            reason = f"no answer within {self._connect_timeout:g} s"
            raise purerpc.UnavailableError(f"cannot reach {self.target}: {reason}") from None
        except ssl.SSLError as exc:
            reason = describe_transport_error(exc)
            raise purerpc.UnavailableError(
                f"cannot reach {self.target}: the tls handshake failed ({reason}); "
                "check the server address, its certificate and the ca"
            ) from exc
        except anyio.EndOfStream:
            raise purerpc.UnavailableError(
                f"cannot reach {self.target}: the server closed the connection during the tls "
                "handshake; check that both sides allow the same tls version and certificates"
            ) from None
        except anyio.BrokenResourceError as exc:
            raise purerpc.UnavailableError(
                f"cannot reach {self.target}: the tls handshake failed "
                f"({describe_transport_error(exc)})"
            ) from exc
        except OSError as exc:
            raise purerpc.UnavailableError(
                f"cannot reach {self.target}: {_connect_reason(exc)}"
            ) from exc


def _connect_reason(exc: BaseException) -> str:
    # anyio tries every address and raises OSError("All connection attempts
    # failed") with the last attempt's error as its cause.
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[-1]
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno).lower()
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return describe_transport_error(exc)


@asynccontextmanager
async def open_channel(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
    max_message_length: int = DEFAULT_MAX_MESSAGE,
    connect_timeout: float = 10,
) -> AsyncIterator[Channel]:
    """Connect to a purerpc or grpcio server over TLS; close the connection on exit.

    `ssl_context` is a client context the caller configured (CA of the server,
    client certificate, TLS version; ALPN "h2" to talk to grpcio servers).
    `server_hostname` is the name to check the server certificate against
    (None: `host`). `max_message_length` bounds one message each way (the
    receive window per call is twice it). `connect_timeout` bounds the TCP
    connection and the TLS handshake, in seconds.

    Raises `purerpc.UnavailableError` if the server cannot be reached. Calls
    on the channel raise it when the connection is lost; see the module doc.
    """
    channel = Channel(
        host,
        port,
        ssl_context,
        server_hostname=server_hostname,
        max_message_length=max_message_length,
        connect_timeout=connect_timeout,
    )
    async with channel:
        yield channel

"""The seams: the one module of jobworker that touches purerpc's, h2's and anyio's
internals. Everything else in the transport uses the methods these classes add.

Each class below replaces one behaviour of purerpc 0.8.0 (docs/transport.md has the
whole story, with the hang and leak cases and their status codes):

- `ResetAwareConnection` (purerpc `GRPCConnection`, h2 `H2Connection`): purerpc turns
  an incoming RST_STREAM into nothing at all, so a server handler whose client went
  away lives on and a client call the server reset waits forever; this hands every
  reset to a hook. A request whose `:path` is not `/<service>/<method>` (purerpc
  raised, closing the connection with every other call on it) becomes a
  `MalformedRequest` for that stream alone. It also queues DATA frames without h2's four copies
  (`send_data_frame`: h2's own checks and state changes, by hand) and acknowledges
  bytes of streams h2 already forgot.
- `GuardedSocketWrapper` (purerpc `SocketWrapper`, anyio `TLSStream`): purerpc's
  writer lets a send error escape into the task group of the whole connection and
  drains its buffer on close with no time limit (a peer that stopped reading hangs
  the close); this writer reports a broken transport to a hook, closes the
  transport so the reader ends too, bounds the drain by `CLOSE_DRAIN_TIMEOUT`, and
  encrypts a batch piece by piece before one send.
- `SeamStream` / `PacedStream` (purerpc `GRPCStream`): the stream's internals as
  methods; every message waits for room in the connection's send buffer, and
  `EncodedMessage`s (responses built in wire form) go out uncopied.
- `HookedSocket` (purerpc `GRPCSocket`): a `GRPCProtoSocket` on all of the above,
  with hooks for resets, a broken transport, new streams and the reader loop.
- `ChannelBase` (purerpc `_Channel`): what purerpc's stubs read off a channel.
- `stream_fn_of` (purerpc `ClientStub`): how a stub starts its call, for the stubs
  of `calls` that end their calls explicitly.

`LIBRARY_INTERNALS` lists every private or undocumented name these rely on;
tests/unit/test_seams.py fails, naming it, when the installed library lacks one.
The versions are pinned exactly in pyproject.toml for this reason.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
import h2.events
import h2.exceptions
import trio
from anyio import aclose_forcefully
from anyio.streams.tls import TLSAttribute
from h2.connection import ConnectionInputs
from h2.stream import StreamInputs
from purerpc.client import _Channel
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpc_socket import SocketWrapper
from purerpc.grpclib.buffers import MessageReadBuffer
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import RequestReceived
from purerpc.grpclib.exceptions import MessageTooLargeError

#: Every private or undocumented name of purerpc 0.8.0, h2 3.2.0 and anyio 4.16.0 the
#: seams below use, by "module:Class" (methods, class attributes and the instance
#: attributes its methods set). Keep it in step with the code: a new private access
#: goes here, in this module, and nowhere else.
LIBRARY_INTERNALS: dict[str, tuple[str, ...]] = {
    # purerpc 0.8.0 (its last release)
    "purerpc.grpclib.connection:GRPCConnection": (
        "_stream_reset",  # overridden: report an RST_STREAM
        "_request_received",  # overridden: a malformed :path concerns its stream only
        "message_read_buffers",  # the partial message of a dead stream
        "h2_connection",
        "config",
    ),
    "purerpc.grpclib.buffers:MessageReadBuffer": (
        "_buffer",
        "_flow_controlled_length",
        "_messages",
    ),
    "purerpc.grpclib.buffers:ByteBuffer": ("_deque",),
    "purerpc.grpc_socket:SocketWrapper": (
        "_writer_thread",  # overridden: the guarded writer
        "_stream",
        "_grpc_connection",
        "_flush_event",
        "_running",
    ),
    "purerpc.grpc_socket:GRPCStream": (
        "_grpc_connection",
        "_socket",
        "_grpc_socket",
        "_incoming_events",
        "_flow_control_update_event",
        "_wait_flow_control_update",  # overridden: a hook after each wait
        "_close_remote",
    ),
    "purerpc.grpc_socket:GRPCSocket": (
        "_grpc_connection",  # replaced in __init__
        "_socket",  # replaced in __init__
        "_streams",
        "_stream_ctor",
        "_allocate_stream",  # overridden: a hook per new stream
        "_reader_thread",  # overridden: the client's reader
        "_receive_buffer_size",
    ),
    "purerpc.client:_Channel": ("_host", "_port", "_ssl_context", "_grpc_socket"),
    "purerpc.wrappers:ClientStub": ("_stream_fn",),  # a stub's call starter
    # h2 3.2.0 (what purerpc 0.8.0 requires)
    "h2.connection:H2Connection": (
        "_inbound_flow_control_window_manager",
        "state_machine",
        "streams",
    ),
    "h2.connection:ConnectionInputs": ("SEND_DATA",),
    "h2.stream:H2Stream": ("state_machine", "outbound_flow_control_window"),
    "h2.stream:StreamInputs": ("SEND_DATA",),
    "h2.windows:WindowManager": ("_bytes_processed", "max_window_size", "current_window_size"),
    # anyio 4.16.0
    "anyio.streams.tls:TLSStream": ("_flush_write_bio",),
}

#: Seconds a closing connection may spend writing what it still has buffered.
CLOSE_DRAIN_TIMEOUT = 2.0
#: Bytes a connection may hold in h2's send buffer before senders wait (see
#: `GuardedSocketWrapper.wait_room`).
PACING_LIMIT = 512 << 10

#: What a transport raises when the peer is gone or the socket was closed under us.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,  # ssl.SSLError (a TLS alert from the peer) is an OSError
)


#: The largest HTTP/2 flow-control window (RFC 9113, 6.9.1).
_MAX_WINDOW = 2**31 - 1
#: Every HTTP/2 window's size before SETTINGS change it (RFC 9113, 6.9.2).
_INITIAL_WINDOW = 65_535
#: gRPC's length prefix of every message: a compressed flag and the length.
_MESSAGE_PREFIX = struct.Struct(">?I")
#: An HTTP/2 frame header: length (high 16 bits, low 8 bits), type, flags, stream id.
_FRAME_HEADER = struct.Struct(">HBBBL")
#: Outgoing pieces at least this large are sent as they are; smaller ones are joined.
_SEND_ALONE = 16 << 10


#: The bound on one message each way when a caller gives none (the transport's own
#: default, for any service; jwsd and jobworker's client pass theirs:
#: `jobworker.model.MAX_SERVER_MESSAGE`, `MAX_CLIENT_MESSAGE`).
DEFAULT_MAX_MESSAGE = 16 << 20


def check_message_length(max_message_length: int) -> int:
    """Return `max_message_length` if purerpc can use it, else raise ValueError.

    purerpc sets each stream's receive window to twice the limit and returns
    window only per whole message, so one message plus its 5-byte header must
    fit in it (it always does at 2x), and 2x must be a legal HTTP/2 window.
    """
    if not 0 < max_message_length <= (_MAX_WINDOW // 2) - 5:
        raise ValueError(
            f"max_message_length {max_message_length} is out of range; "
            f"use 1 to {(_MAX_WINDOW // 2) - 5} bytes"
        )
    return max_message_length


def describe_transport_error(exc: BaseException) -> str:
    """A short lower-case reason for a transport failure, for log lines and status messages."""
    while isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError) and (
        exc.__cause__ is not None
    ):
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLError):
        return f"tls error: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    if isinstance(exc, anyio.EndOfStream):
        return "the peer closed the connection"
    if isinstance(exc, anyio.ClosedResourceError):
        return "the connection was closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class MalformedRequest(RequestReceived):  # type: ignore[misc]  # purerpc is untyped
    """The headers of a call whose `:path` is not `/<service>/<method>` (e.g. `/a/b/c`,
    `nope`): no service and no method; the server ends that stream (UNIMPLEMENTED).

    path: the `:path` as it came (a peer's text: quote it before showing it).
    """

    def __init__(self, stream_id: int, path: str) -> None:
        super().__init__(stream_id, "https", "", "", "application/grpc")
        self.path = path


def _well_formed_path(path: str) -> bool:
    """What purerpc's parser accepts without raising: a slash, then two names split by
    one slash (it unpacks `path[1:].split("/")` into two)."""
    return path.startswith("/") and path.count("/") == 2


class ResetAwareConnection(GRPCConnection):  # type: ignore[misc]  # purerpc is untyped
    """A `GRPCConnection` that reports each RST_STREAM it receives to the `on_reset` hook.

    `on_reset(stream_id, h2_error_code)` runs synchronously inside `receive_data`,
    on the reading task. It must not block.
    """

    #: The calls a peer may have open at once on one connection, as this side's
    #: SETTINGS_MAX_CONCURRENT_STREAMS says (purerpc's 65,536 would let one connection
    #: hold that many handlers; h2's own default, and grpc-go's, is 100). A peer that
    #: opens more breaks h2's protocol and loses the connection.
    MAX_CONCURRENT_STREAMS = 100

    def __init__(self, config: GRPCConfiguration, on_reset: Any) -> None:
        super().__init__(config)
        self._on_reset = on_reset
        # Frames waiting for the writer, in order (h2's own buffer comes after them).
        self._outgoing: list[bytes | bytearray | memoryview] = []
        self._outgoing_bytes = 0

    def _stream_reset(self, event: h2.events.StreamReset) -> list[Any]:
        self.forget_read_buffer(event.stream_id)
        self._on_reset(event.stream_id, int(event.error_code))
        return []

    def _request_received(self, event: h2.events.RequestReceived) -> list[Any]:
        # purerpc's parser raises ValueError or ProtocolError for such a path, inside
        # the connection's reader: the whole connection, every call on it, was lost.
        # (h2 has checked the pseudo-headers already: `:path` is there, once.)
        path = next((str(v) for k, v in event.headers if k == ":path"), "")
        if event.stream_ended or _well_formed_path(path):
            return super()._request_received(event)  # type: ignore[no-any-return]
        # A buffer as purerpc makes for every call: DATA that follows is read (and its
        # window given back), not answered with a reset.
        self.message_read_buffers[event.stream_id] = MessageReadBuffer(
            None, self.config.max_message_length
        )
        return [MalformedRequest(event.stream_id, path)]

    def send_data_frame(self, stream_id: int, parts: list[bytes | memoryview]) -> None:
        """h2's `send_data` for one DATA frame made of `parts` (no END_STREAM, no
        padding), queued for the writer as it is: `send_data` would copy every byte
        four times (frame body, header + body, the join of frames, h2's buffer).
        The checks and state changes are `send_data`'s own. What h2 queues itself
        (headers, window updates) goes out in order with these frames: see
        `take_outgoing`.
        """
        h2_connection = self.h2_connection
        size = sum(map(len, parts))
        window = h2_connection.local_flow_control_window(stream_id)  # raises for a closed stream
        if size > window:
            raise h2.exceptions.FlowControlError(
                f"Cannot send {size} bytes, flow control window is {window}."
            )
        if size > h2_connection.max_outbound_frame_size:
            raise h2.exceptions.FrameTooLargeError(
                f"Cannot send frame size {size}, max frame size is {h2_connection.max_outbound_frame_size}"
            )
        h2_connection.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream = h2_connection.streams[stream_id]
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        stream.outbound_flow_control_window -= size
        h2_connection.outbound_flow_control_window -= size
        # After whatever h2 queued before it: the 9-byte frame header (24-bit length,
        # type DATA (0), no flags, stream id), then the parts themselves, uncopied.
        self._take_h2_bytes()
        self._outgoing.append(
            _FRAME_HEADER.pack(size >> 8, size & 0xFF, 0, 0, stream_id & 0x7FFFFFFF)
        )
        self._outgoing.extend(parts)
        self._outgoing_bytes += _FRAME_HEADER.size + size

    def pending_bytes(self) -> int:
        """Bytes waiting for the writer: DATA frames queued here and h2's own buffer."""
        self._take_h2_bytes()
        return self._outgoing_bytes

    def take_outgoing(self) -> list[bytes | bytearray | memoryview]:
        """Everything waiting to be sent, in order, as pieces (large ones uncopied)."""
        self._take_h2_bytes()
        outgoing = self._outgoing
        self._outgoing, self._outgoing_bytes = [], 0
        return outgoing

    def _take_h2_bytes(self) -> None:
        # h2's public data_to_send() (as purerpc patches it: all of it, as bytes). What
        # goes through h2's buffer is small (headers, window updates, small requests):
        # its copy costs next to nothing, unlike the DATA frames queued above.
        data = self.h2_connection.data_to_send()
        if data:
            self._outgoing.append(data)
            self._outgoing_bytes += len(data)

    def forget_read_buffer(self, stream_id: int) -> None:
        """Drop the partial message buffered for a dead stream, giving its bytes back as window."""
        buffer = self.message_read_buffers.pop(stream_id, None)
        if buffer is not None:
            self.acknowledge(buffered_bytes(buffer), stream_id)

    def acknowledge(self, size: int, stream_id: int) -> None:
        """Hand `size` received bytes of `stream_id` back to the peer as flow-control window.

        h2 forgets closed streams after a while and then refuses to acknowledge
        their bytes even on the connection; open the connection's window by as much
        instead (h2's public `increment_flow_control_window`: one WINDOW_UPDATE now,
        where an acknowledgement might have waited to be batched).
        """
        if size <= 0:
            return
        h2_connection = self.h2_connection
        if stream_id in h2_connection.streams:
            h2_connection.acknowledge_received_data(size, stream_id)
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the connection is closing
            h2_connection.increment_flow_control_window(size)

    def unacknowledged_bytes(self) -> int:
        """Bytes received on this connection that were never handed back to the peer
        as window, neither acknowledged nor waiting in h2 to be (a diagnostic)."""
        manager = self.h2_connection._inbound_flow_control_window_manager
        return int(manager.max_window_size - manager.current_window_size - manager._bytes_processed)


def _coalesced(
    pieces: list[bytes | bytearray | memoryview],
) -> Iterator[bytes | bytearray | memoryview]:
    """`pieces` as sends: a large piece (a chunk of output) alone, as it is; runs of
    small ones (frame headers, h2's own frames) joined, so they cost one TLS record
    and one system call, not one each."""
    small: list[bytes | bytearray | memoryview] = []
    for piece in pieces:
        if len(piece) < _SEND_ALONE:
            small.append(piece)
            continue
        if small:
            yield b"".join(small)
            small = []
        yield piece
    if small:
        yield b"".join(small)


def buffered_bytes(buffer: Any) -> int:
    """Flow-controlled bytes held by a purerpc `MessageReadBuffer`: never acknowledged yet.

    (Its `ByteBuffer.flow_controlled_length` is not kept up to date, so add them up.)
    """
    held = sum(length for _, length in buffer._buffer._deque)
    held += buffer._flow_controlled_length or 0  # the header of a message begun
    held += sum(length for _, length in buffer._messages)
    return int(held)


class GuardedSocketWrapper(SocketWrapper):  # type: ignore[misc]  # purerpc is untyped
    """purerpc's socket wrapper with a writer that fails soft and drains for a bounded time.

    `on_broken(exc)` is called once, from the writer task, when a send fails;
    the transport is then closed forcefully so the reading side ends as well.
    """

    def __init__(self, grpc_connection: GRPCConnection, stream: Any, on_broken: Any) -> None:
        super().__init__(grpc_connection, stream)
        # The TLS object of an anyio TLSStream (public: TLSAttribute.ssl_object), to
        # encrypt into and decrypt from directly; None on a plain stream.
        self._tls: ssl.SSLObject | None = stream.extra(TLSAttribute.ssl_object, None)
        self._on_broken = on_broken
        self._drain_scope = trio.CancelScope()
        # Backpressure (`wait_room`): an event replaced each time a batch went out
        # (or set for good when the writer ended).
        self._sent = trio.Event()
        self._writer_ended = False

    async def __aenter__(self) -> GuardedSocketWrapper:
        await super().__aenter__()

        def bound_the_drain() -> None:
            # Runs before purerpc's own callback that tells the writer to finish.
            self._drain_scope.deadline = trio.current_time() + CLOSE_DRAIN_TIMEOUT

        self.callback(bound_the_drain)
        return self

    async def _writer_thread(self) -> None:
        try:
            with self._drain_scope:
                try:
                    await self._write_loop()
                except TRANSPORT_ERRORS as exc:
                    self._on_broken(exc)
                    await aclose_forcefully(self._stream)
                    return
            if self._drain_scope.cancelled_caught:
                # The peer stopped reading while we closed: drop what is left.
                await aclose_forcefully(self._stream)
        finally:
            self._writer_ended = True
            self._sent.set()

    async def _write_loop(self) -> None:
        """purerpc's writer loop, announcing each batch sent (for `wait_room`)."""
        connection: ResetAwareConnection = self._grpc_connection
        while True:
            pieces = connection.take_outgoing()
            if pieces:
                try:
                    await self._send_pieces(pieces)
                finally:
                    self._sent.set()
                    self._sent = trio.Event()
            elif self._running:
                flush_event: anyio.Event = self._flush_event  # type: ignore[has-type]  # set by purerpc
                await flush_event.wait()
                self._flush_event = anyio.Event()
            else:
                return

    async def _send_pieces(self, pieces: list[bytes | bytearray | memoryview]) -> None:
        """Encrypt every piece, then hand the whole batch to the kernel in one send.

        anyio's TLSStream.send() would make each piece a send of its own (a system
        call, and a pass through loopback TCP, per piece); joining the pieces first
        would copy every byte once more. Writing them into the TLS object one by one
        and flushing once does neither.
        """
        ssl_object = self._tls
        if ssl_object is None:
            await self._stream.send(b"".join(pieces))
            return
        for piece in _coalesced(pieces):
            ssl_object.write(piece)  # into a memory BIO: never waits
        # SEAM (anyio TLSStream._flush_write_bio, private): send what the TLS object
        # wrote into its memory BIO. anyio's public send() does write + flush per call.
        await self._stream._flush_write_bio()

    async def recv(self, buffer_size: int) -> bytes:
        """purerpc's `recv`, plus every further TLS record already received and
        decryptable, up to `buffer_size` bytes in all.

        anyio's TLSStream hands over one TLS record (at most 16 KiB) per call, and h2
        appends each piece to a partial frame by copying the whole partial frame: a
        256 KiB message arriving in 16 KiB pieces is copied ~8 times over, and h2's
        per-call work repeats 16 times. Draining what is already decryptable (no
        waiting) gives h2 a few large pieces instead.
        """
        data: bytes = await self._stream.receive(buffer_size)
        ssl_object = self._tls
        if ssl_object is None:
            return data
        parts, size = [data], len(data)
        while size < buffer_size:
            try:
                more = ssl_object.read(buffer_size - size)
            except ssl.SSLError:
                # SSLWantReadError: nothing more is here yet. Any other error: the next
                # receive() meets it again and reports it the usual way.
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
        return data if len(parts) == 1 else b"".join(parts)

    async def wait_room(self) -> None:
        """Backpressure for senders: return once fewer than PACING_LIMIT bytes wait
        for the writer. A stream that waits here before each message
        keeps what a connection queues in this process near PACING_LIMIT (plus the
        batch the writer is sending), however large the peers' flow-control windows
        and however many streams share the connection: a slow reader slows only its
        own streams, and memory stays bounded with many of them."""
        connection: ResetAwareConnection = self._grpc_connection
        while connection.pending_bytes() >= PACING_LIMIT and not self._writer_ended:
            await self._sent.wait()

    def wake_writer(self) -> None:
        """Make the writer send whatever h2 has buffered (the synchronous form of `flush`)."""
        self._flush_event.set()


class EncodedMessage:
    """A response already in its wire form: gRPC's 5-byte prefix, then `parts`, the
    protobuf encoding in pieces (e.g. a field tag and length, then a large bytes value
    as it is, never copied here).

    A streaming handler that yields these instead of protobuf objects spares every
    message a protobuf object and its copies (the field, the serialization, the
    prefix, and h2's framing): `PacedStream` queues the parts for the writer as they
    are, and TLS reads them in place when it encrypts them.
    """

    __slots__ = ("parts", "size")

    def __init__(self, parts: Iterable[bytes]) -> None:
        payload = list(parts)
        length = sum(map(len, payload))
        self.parts: list[bytes | memoryview] = [_MESSAGE_PREFIX.pack(False, length), *payload]
        self.size = _MESSAGE_PREFIX.size + length

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf name, for duck typing
        """The protobuf encoding alone (what a protobuf message would return)."""
        return b"".join(self.parts[1:])


class SeamStream(GRPCProtoStream):  # type: ignore[misc]  # purerpc is untyped
    """purerpc's stream, with the parts of its internals the transport uses as methods.

    SEAM (purerpc `GRPCStream`'s private attributes): the connection, the socket
    wrapper and the owning socket (`_grpc_connection`, `_socket`, `_grpc_socket`),
    the queue its events wait in (`_incoming_events`), its flow-control wake-up
    (`_flow_control_update_event`, `_wait_flow_control_update`) and its half-close
    (`_close_remote`). purerpc delivers events, wakes senders and closes streams
    itself only from its own reader loop, which the client replaces.
    """

    @property
    def connection(self) -> ResetAwareConnection:
        """The connection (h2 and purerpc's gRPC state) the stream belongs to."""
        return self._grpc_connection  # type: ignore[no-any-return]

    @property
    def wire(self) -> GuardedSocketWrapper:
        """The socket wrapper whose writer sends the stream's frames."""
        return self._socket  # type: ignore[no-any-return]

    @property
    def owner(self) -> HookedSocket:
        """The `HookedSocket` that made the stream."""
        return self._grpc_socket  # type: ignore[no-any-return]

    def deliver(self, event: Any) -> None:
        """Queue `event` for `receive_event` (the queue is unbounded: never waits)."""
        self._incoming_events[0].send_nowait(event)

    def wake_senders(self) -> None:
        """Wake a sender waiting for flow-control window (it re-checks the window)."""
        self._flow_control_update_event.set()

    def remote_closed(self) -> None:
        """The peer ended its side of the stream (purerpc forgets a stream closed both ways)."""
        self._close_remote()

    async def _wait_flow_control_update(self) -> None:
        # Overrides purerpc's wait for window (used by its own `_send` too) to add a hook.
        await super()._wait_flow_control_update()
        self.window_wait_ended()

    async def wait_window(self) -> None:
        """Wait until the peer may have opened the stream's window (or a sender was woken)."""
        await self._wait_flow_control_update()

    def window_wait_ended(self) -> None:
        """Called after every wait for window; may raise to fail the sender."""


class PacedStream(SeamStream):
    """A `GRPCProtoStream` whose every outgoing message first waits until the stream
    can take it, and which writes `EncodedMessage`s without copying them first."""

    async def send_message(self, message: Any) -> None:
        # GRPCProtoStream.send_message calls GRPCStream._send through super(), which
        # would skip an override of _send here: replace the entry point instead.
        if not isinstance(message, EncodedMessage):
            message = EncodedMessage([message.SerializeToString()])
        limit = self.connection.config.max_message_length
        if message.size - _MESSAGE_PREFIX.size > limit:
            raise MessageTooLargeError(
                f"Trying to send message larger than max: {message.size - _MESSAGE_PREFIX.size} > {limit}"
            )
        await self._send_parts(message.parts)

    async def wait_writable(self) -> None:
        """Return once the peer's flow-control window for this stream has room worth a
        message (`_window_open`) and the connection's send buffer has room
        (`GuardedSocketWrapper.wait_room`)."""
        while True:
            if not self._window_open():
                await self.wait_window()
                continue
            await self.wire.wait_room()
            if self._window_open():
                return

    def _window_open(self) -> bool:
        # A window of a few bytes would let a message be built only to wait, half
        # sent, for the peer to read: ask for 64 KiB, which every HTTP/2 window
        # reaches once the peer has read what it got (the protocol's initial window),
        # or for all of a smaller initial window the peer chose.
        h2_connection = self.connection.h2_connection
        window = h2_connection.local_flow_control_window(self.stream_id)
        wanted = min(_INITIAL_WINDOW, h2_connection.remote_settings.initial_window_size)
        return bool(window > 0 and window >= wanted)

    async def _send_parts(self, parts: list[bytes | memoryview]) -> None:
        # purerpc's GRPCStream._send, with a wait for room before each DATA frame (a
        # stream resuming after a flow-control wait must not skip the pacing), each
        # frame as large as the window allows.
        while parts:
            window = self.connection.flow_control_window(self.stream_id)
            if window <= 0:
                await self.wait_window()
                continue
            await self.wire.wait_room()
            window = self.connection.flow_control_window(self.stream_id)
            if window <= 0:
                continue
            frame, parts = _split(parts, window)
            self.connection.send_data_frame(self.stream_id, frame)
            self.wire.wake_writer()


def _split(
    parts: list[bytes | memoryview], limit: int
) -> tuple[list[bytes | memoryview], list[bytes | memoryview]]:
    """The first `limit` bytes of `parts`, and the rest (views, not copies)."""
    head: list[bytes | memoryview] = []
    for index, part in enumerate(parts):
        if len(part) > limit:
            view = memoryview(part)
            return [*head, view[:limit]], [view[limit:], *parts[index + 1 :]]
        head.append(part)
        limit -= len(part)
    return head, []


class HookedSocket(GRPCProtoSocket):  # type: ignore[misc]  # purerpc is untyped
    """A `GRPCProtoSocket` on `ResetAwareConnection` and `GuardedSocketWrapper`.

    Subclasses override the hooks `stream_was_reset`, `transport_broke`,
    `stream_started` and `read_loop`. `stream` is the anyio byte stream (TLS) the
    socket runs on; the caller closes it. Its streams are `StreamClass`
    (`PacedStream` unless a subclass says otherwise, always a `SeamStream`).
    `weak_streams`: keep the streams in a `weakref.WeakValueDictionary`, so that a
    stream nobody holds disappears from `streams` (the client's abandoned calls).

    SEAM (purerpc `GRPCSocket`'s private attributes and methods): the connection and
    wrapper it builds in `__init__` (`_grpc_connection`, `_socket`) are replaced; its
    stream table (`_streams`), stream factory (`_stream_ctor`, `_allocate_stream`),
    reader task (`_reader_thread`) and `_receive_buffer_size` are reached here only.
    """

    StreamClass = PacedStream

    def __init__(
        self, config: GRPCConfiguration, stream: anyio.abc.ByteStream, *, weak_streams: bool = False
    ) -> None:
        super().__init__(config, stream)
        # purerpc builds its own connection and wrapper in __init__; swap in ours
        # before anything has used them (nothing has: __aenter__ has not run).
        self._grpc_connection: ResetAwareConnection = ResetAwareConnection(
            config, self.stream_was_reset
        )
        self._socket = GuardedSocketWrapper(self._grpc_connection, stream, self.transport_broke)
        if weak_streams:
            self._streams: MutableMapping[int, SeamStream] = weakref.WeakValueDictionary()

    @property
    def connection(self) -> ResetAwareConnection:
        """The connection's h2 and gRPC state."""
        return self._grpc_connection

    @property
    def wire(self) -> GuardedSocketWrapper:
        """The socket wrapper: its writer task sends, `recv` reads."""
        return self._socket

    @property
    def streams(self) -> MutableMapping[int, SeamStream]:
        """The open streams by id (purerpc removes one once it is closed both ways)."""
        return self._streams

    @property
    def receive_buffer_size(self) -> int:
        """The most bytes one read of the transport asks for."""
        return int(self._receive_buffer_size)

    def forget_stream(self, stream_id: int) -> None:
        """Drop a stream purerpc would keep for ever (one that was reset, not closed)."""
        self._streams.pop(stream_id, None)

    def _allocate_stream(self, stream_id: int) -> SeamStream:
        stream: SeamStream = self._stream_ctor(stream_id)
        self._streams[stream_id] = stream
        self.stream_started(stream)
        return stream

    async def _reader_thread(self) -> None:
        await self.read_loop()

    async def read_loop(self) -> None:
        """The client's reader task (purerpc's own unless overridden)."""
        await super()._reader_thread()

    def stream_started(self, stream: SeamStream) -> None:
        """Called when a stream is made (a call started, or a request arrived)."""

    def stream_was_reset(self, stream_id: int, error_code: int) -> None:
        """Called when the peer resets `stream_id` with HTTP/2 `error_code`."""

    def transport_broke(self, exc: BaseException) -> None:
        """Called when a write to the transport failed with `exc`."""


class ChannelBase(_Channel):  # type: ignore[misc]  # purerpc is untyped
    """purerpc's client channel, which its `Client` and generated stubs take.

    SEAM (purerpc `_Channel`, private): `purerpc.Client` reads `_grpc_socket`,
    `_host` and `_port` off the channel it is given; `_ssl_context` is kept there.
    `_Channel.__aenter__` would connect by itself (no timeout, no host name, its
    own socket class): it is skipped, and a subclass connects in `open()`.
    """

    @property
    def host(self) -> str:
        return str(self._host)

    @property
    def port(self) -> int:
        return int(self._port)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self._ssl_context  # type: ignore[no-any-return]

    @property
    def socket(self) -> HookedSocket | None:
        """The connection's socket once `open()` attached it."""
        return self._grpc_socket

    def attach(self, socket: HookedSocket) -> None:
        """Make `socket` the one purerpc's stubs start their calls on."""
        self._grpc_socket = socket

    async def __aenter__(self) -> Any:
        await AsyncExitStack.__aenter__(self)
        await self.open()
        return self

    async def open(self) -> None:
        """Connect, and `attach` the socket (a subclass's job)."""
        raise NotImplementedError


def stream_fn_of(stub: Any) -> Callable[..., Awaitable[Any]]:
    """The function a purerpc stub method starts its call's stream with.

    SEAM (purerpc `ClientStub._stream_fn`, private): `calls.explicit_call` rebuilds
    a stub around it, so that the call ends explicitly.
    """
    return stub._stream_fn  # type: ignore[no-any-return]

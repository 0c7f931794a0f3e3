"""The seam on purerpc's `GRPCStream`: `SeamStream` and `PacedStream`, and the
`EncodedMessage`s they send uncopied.

`SeamStream` gives the stream's internals as methods; `PacedStream` makes every
message wait for room in the connection's send buffer
(`wrapper.GuardedSocketWrapper.wait_room`) and writes `EncodedMessage`s (responses
built in wire form) without copying them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from purerpc.grpc_proto import GRPCProtoStream
from purerpc.grpclib.exceptions import MessageTooLargeError

from jobworker.transport._wire.connection import ResetAwareConnection
from jobworker.transport._wire.wrapper import GuardedSocketWrapper

if TYPE_CHECKING:
    # Only for `SeamStream.owner`'s type: the socket module builds on this one.
    from jobworker.transport._wire.socket import HookedSocket

#: Every HTTP/2 window's size before SETTINGS change it (RFC 9113, 6.9.2).
_INITIAL_WINDOW = 65_535
#: gRPC's length prefix of every message: a compressed flag and the length.
_MESSAGE_PREFIX = struct.Struct(">?I")


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

"""The seam on purerpc's `GRPCConnection` and h2's `H2Connection`:
`ResetAwareConnection`.

purerpc turns an incoming RST_STREAM into nothing at all, so a server handler whose
client went away lives on and a client call the server reset waits forever; this
hands every reset to a hook. A request whose `:path` is not `/<service>/<method>`
(purerpc raised, closing the connection with every other call on it) becomes a
`MalformedRequest` for that stream alone. It also queues DATA frames without h2's
four copies (`send_data_frame`: h2's own checks and state changes, by hand) and
acknowledges bytes of streams h2 already forgot.

The connection is built by `socket.HookedSocket`; the writer of
`wrapper.GuardedSocketWrapper` takes what it queues.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import h2.events
import h2.exceptions
from h2.connection import ConnectionInputs
from h2.stream import StreamInputs
from purerpc.grpclib.buffers import MessageReadBuffer
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import RequestReceived

#: An HTTP/2 frame header: length (high 16 bits, low 8 bits), type, flags, stream id.
_FRAME_HEADER = struct.Struct(">HBBBL")


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


def buffered_bytes(buffer: Any) -> int:
    """Flow-controlled bytes held by a purerpc `MessageReadBuffer`: never acknowledged yet.

    (Its `ByteBuffer.flow_controlled_length` is not kept up to date, so add them up.)
    """
    held = sum(length for _, length in buffer._buffer._deque)
    held += buffer._flow_controlled_length or 0  # the header of a message begun
    held += sum(length for _, length in buffer._messages)
    return int(held)

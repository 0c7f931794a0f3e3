"""The seam on purerpc's `GRPCSocket`: `HookedSocket`, a `GRPCProtoSocket` on
`ResetAwareConnection`, `GuardedSocketWrapper` and `PacedStream`, with hooks for
resets, a broken transport, new streams and the reader loop.

The client's and the server's sockets are its subclasses (`transport.client`,
`transport.server`).
"""

from __future__ import annotations

import weakref
from collections.abc import MutableMapping

import anyio.abc
from purerpc.grpc_proto import GRPCProtoSocket
from purerpc.grpclib.config import GRPCConfiguration

from jobworker.transport._wire.connection import ResetAwareConnection
from jobworker.transport._wire.streams import PacedStream, SeamStream
from jobworker.transport._wire.wrapper import GuardedSocketWrapper


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

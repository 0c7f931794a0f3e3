"""The seam on purerpc's `SocketWrapper` and anyio's `TLSStream`: `GuardedSocketWrapper`.

purerpc's writer lets a send error escape into the task group of the whole
connection and drains its buffer on close with no time limit (a peer that stopped
reading hangs the close); this writer reports a broken transport to a hook, closes
the transport so the reader ends too, bounds the drain by `CLOSE_DRAIN_TIMEOUT`,
and encrypts a batch piece by piece before one send. Its `wait_room` is the
backpressure every outgoing message of `streams` waits on.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import anyio
import trio
from anyio import aclose_forcefully
from anyio.streams.tls import TLSAttribute
from purerpc.grpc_socket import SocketWrapper
from purerpc.grpclib.connection import GRPCConnection

from jobworker.transport._wire.connection import ResetAwareConnection
from jobworker.transport._wire.errors import TRANSPORT_ERRORS
from jobworker.transport._wire.limits import CLOSE_DRAIN_TIMEOUT, PACING_LIMIT

#: Outgoing pieces at least this large are sent as they are; smaller ones are joined.
_SEND_ALONE = 16 << 10


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

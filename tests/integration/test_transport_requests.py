"""Requests that purerpc's parser and call helpers mishandle, sent by a raw HTTP/2
client on one connection beside a well-formed call: a malformed `:path`, and HEADERS
with no request message after them. Each concerns its own stream; the connection and
every other call on it go on."""

from __future__ import annotations

import ssl
import struct
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import h2.config
import h2.connection
import h2.events
import pytest
import trio
from google.protobuf.wrappers_pb2 import StringValue

from tests.integration._echo_service import SERVICE_NAME
from tests.integration.test_transport import client_context, serving
from tests.support.certs import TestPKI

pytestmark = pytest.mark.hierarchy_independent

#: The status codes these tests expect, by number as they travel in grpc-status.
OK, DEADLINE_EXCEEDED, UNIMPLEMENTED = 0, 4, 12


@attrs.frozen
class Reply:
    status: int
    message: str
    body: bytes


@attrs.define(eq=False)
class RawClient:
    """One HTTP/2 connection over TLS, driven by hand: it sends what purerpc's client
    never would, and collects each stream's data and trailers."""

    tls: trio.SSLStream[trio.SocketStream]
    h2: h2.connection.H2Connection
    bodies: dict[int, bytearray] = attrs.Factory(dict)
    trailers: dict[int, dict[str, str]] = attrs.Factory(dict)
    ended: dict[int, trio.Event] = attrs.Factory(dict)
    lost: bool = False
    sending: trio.Lock = attrs.Factory(trio.Lock)

    async def flush(self) -> None:
        async with self.sending:  # the reader and the test both send
            if data := self.h2.data_to_send():
                await self.tls.send_all(data)

    async def call(self, path: str, request: bytes | None, *, end: bool = True) -> int:
        """Open a stream to `path`; send `request` as one gRPC message (None: none),
        and the end of the stream when `end`. Returns the stream id."""
        stream_id = self.h2.get_next_available_stream_id()
        self.ended[stream_id] = trio.Event()
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", path),
            (":authority", "localhost"),
            ("te", "trailers"),
            ("content-type", "application/grpc+proto"),
        ]
        self.h2.send_headers(stream_id, headers, end_stream=request is None and end)
        if request is not None:
            frame = struct.pack(">?I", False, len(request)) + request
            self.h2.send_data(stream_id, frame, end_stream=end)
        await self.flush()
        return stream_id

    async def reply(self, stream_id: int) -> Reply:
        await self.ended[stream_id].wait()
        trailers = self.trailers.get(stream_id, {})
        return Reply(
            int(trailers.get("grpc-status", "-1")),
            urllib.parse.unquote(trailers.get("grpc-message", "")),
            bytes(self.bodies.get(stream_id, b"")),
        )

    async def read(self) -> None:
        """Take the server's frames until the connection ends (`lost` is then set)."""
        try:
            while data := await self.tls.receive_some(65536):
                for event in self.h2.receive_data(data):
                    self._take(event)
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.lost = True
        for event in self.ended.values():
            event.set()

    def _take(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            # A trailers-only answer comes as the response's headers, with END_STREAM.
            self.trailers.setdefault(event.stream_id, {}).update(
                (str(k), str(v)) for k, v in event.headers
            )
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            self.ended[event.stream_id].set()


@asynccontextmanager
async def raw_connection(port: int, context: ssl.SSLContext) -> AsyncIterator[RawClient]:
    """A `RawClient` connected to 127.0.0.1:`port` with the client `context` (its
    certificate is the caller's identity), reading until the block ends."""
    context.set_alpn_protocols(["h2"])
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(tcp, context, server_hostname="localhost")
    await tls.do_handshake()
    # Outbound checks off: the point is to send what a correct client would not.
    config = h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False
    )
    client = RawClient(tls, h2.connection.H2Connection(config))
    client.h2.initiate_connection()
    await client.flush()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.read)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await tls.aclose()


def echo_request(text: str) -> bytes:
    return StringValue(value=text).SerializeToString()


def echoed(reply: Reply) -> str:
    assert reply.status == OK, reply
    value = StringValue()
    value.ParseFromString(reply.body[5:])
    return value.value


ECHO = f"/{SERVICE_NAME}/Echo"


@pytest.mark.parametrize("path", ["/a/b/c", "nope", f"/{SERVICE_NAME}/Echo/more", "/"])
async def test_a_malformed_path_is_unimplemented_for_its_stream_while_the_connection_goes_on(
    pki: TestPKI, path: str
) -> None:
    """purerpc's parser raised inside the connection's reader: the whole connection was
    closed, with every other call on it."""
    with trio.fail_after(10):
        async with (
            serving(pki) as served,
            raw_connection(served.port, client_context(pki, pki.client_cert("alice"))) as client,
        ):
            before = await client.call(ECHO, echo_request("before"))
            bad = await client.call(path, echo_request("x"))
            after = await client.call(ECHO, echo_request("after"))
            reply = await client.reply(bad)
            assert reply.status == UNIMPLEMENTED, reply
            assert "names no method" in reply.message
            assert echoed(await client.reply(before)) == "before"
            assert echoed(await client.reply(after)) == "after"
            assert echoed(await client.reply(await client.call(ECHO, echo_request("x")))) == "x"
            assert not client.lost


@pytest.mark.parametrize("body", ["none", "a message, no end of stream"])
async def test_headers_without_a_whole_request_end_that_stream_at_the_deadline_alone(
    pki: TestPKI, body: str
) -> None:
    """A call that sent HEADERS and no body (or its message and never the end of its
    stream) held its stream, and its handler's task, open for ever."""
    with trio.fail_after(10):
        async with (
            serving(pki, request_timeout=0.5) as served,
            raw_connection(served.port, client_context(pki, pki.client_cert("alice"))) as client,
        ):
            request = None if body == "none" else echo_request("x")
            silent = await client.call(ECHO, request, end=False)
            start = trio.current_time()
            # Another call on the same connection meanwhile is served at once.
            assert echoed(await client.reply(await client.call(ECHO, echo_request("a")))) == "a"
            reply = await client.reply(silent)
            waited = trio.current_time() - start
            assert reply.status == DEADLINE_EXCEEDED, reply
            assert "did not arrive within 0.5 s" in reply.message
            assert 0.4 < waited < 5, waited
            assert echoed(await client.reply(await client.call(ECHO, echo_request("b")))) == "b"
            assert not client.lost

"""A small purerpc service for the transport tests, built from protobuf's well-known types.

`make_service()` returns the service and a `Probe` that records what its
handlers saw. Run as a module, it is the client the kill test SIGKILLs:
`python -m tests.integration._echo_service HOST PORT CERT_DIR` opens a
`Forever` stream, prints "streaming" once the first message arrived, then waits.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import purerpc
import trio
import trio.testing
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

from jobworker.transport import EncodedMessage, current_identity, open_channel, wait_writable

SERVICE_NAME = "jobworker.test.Echo"
MIB = 1 << 20

SIGNATURES = {
    "Echo": purerpc.RPCSignature(purerpc.Cardinality.UNARY_UNARY, StringValue, StringValue),
    "WhoAmI": purerpc.RPCSignature(purerpc.Cardinality.UNARY_UNARY, StringValue, StringValue),
    "Fail": purerpc.RPCSignature(purerpc.Cardinality.UNARY_UNARY, StringValue, StringValue),
    "FailWith": purerpc.RPCSignature(purerpc.Cardinality.UNARY_UNARY, StringValue, StringValue),
    "Sleep": purerpc.RPCSignature(purerpc.Cardinality.UNARY_UNARY, Int64Value, Int64Value),
    "Forever": purerpc.RPCSignature(purerpc.Cardinality.UNARY_STREAM, StringValue, StringValue),
    "Blob": purerpc.RPCSignature(purerpc.Cardinality.UNARY_STREAM, Int64Value, BytesValue),
    "PacedBlob": purerpc.RPCSignature(purerpc.Cardinality.UNARY_STREAM, Int64Value, BytesValue),
}


def blob_chunk(index: int, size: int = MIB) -> bytes:
    """Message `index` of a Blob stream: every byte value, rotated so that messages differ."""
    pattern = bytes((index + i) % 256 for i in range(256))
    return (pattern * (size // 256 + 1))[:size]


@attrs.define(eq=False)
class Probe:
    """What the handlers saw; events let tests wait without polling."""

    started: trio.Event = attrs.field(factory=trio.Event)
    ended: trio.Event = attrs.field(factory=trio.Event)
    ended_at: float | None = None
    ended_by: str | None = None
    identities: list[tuple[str, str | None]] = attrs.field(factory=list)
    produced: int = 0  # PacedBlob messages built so far
    waiting_to_produce: bool = False  # PacedBlob is inside wait_writable()


def make_service() -> tuple[purerpc.Service, Probe]:
    probe = Probe()
    service = purerpc.Service(SERVICE_NAME)

    async def echo(message: StringValue) -> StringValue:
        return StringValue(value=message.value)

    async def who_am_i(message: StringValue, request: Any) -> StringValue:
        before = current_identity()
        # Every other connection's call runs until it blocks: the calls interleave.
        await trio.testing.wait_all_tasks_blocked()
        after = current_identity()
        assert before == after
        name = after.common_name if after is not None else None
        probe.identities.append((message.value, name))
        return StringValue(value=name or "")

    async def fail(message: StringValue) -> StringValue:
        raise RuntimeError(f"secret internal detail {message.value}")

    async def fail_with(message: StringValue) -> StringValue:
        code, _, text = message.value.partition(":")
        raise purerpc.RpcFailedError(purerpc.Status(purerpc.StatusCode[code], text))

    async def sleep(message: Int64Value) -> Int64Value:
        probe.started.set()
        await trio.sleep(message.value / 1000)  # the behaviour under test: a slow handler
        return Int64Value(value=message.value)

    async def forever(message: StringValue) -> AsyncIterator[StringValue]:
        probe.started.set()
        try:
            yield StringValue(value="started")
            await trio.sleep_forever()
        except BaseException as exc:
            probe.ended_at = trio.current_time()
            probe.ended_by = type(exc).__name__
            probe.ended.set()
            raise

    async def blob(message: Int64Value) -> AsyncIterator[BytesValue]:
        for index in range(message.value):
            yield BytesValue(value=blob_chunk(index))

    async def paced_blob(message: Int64Value) -> AsyncIterator[EncodedMessage]:
        # The way GetJobOutput streams: wait until the client can take more, then
        # build the message, already encoded.
        for index in range(message.value):
            probe.waiting_to_produce = True
            await wait_writable()
            probe.waiting_to_produce = False
            chunk = blob_chunk(index)
            probe.produced += 1
            yield EncodedMessage([BytesValue(value=chunk).SerializeToString()])

    for name, fn in [
        ("Echo", echo),
        ("WhoAmI", who_am_i),
        ("Fail", fail),
        ("FailWith", fail_with),
        ("Sleep", sleep),
        ("Forever", forever),
        ("Blob", blob),
        ("PacedBlob", paced_blob),
    ]:
        service.add_method(name, fn, SIGNATURES[name])
    return service, probe


def stub(channel: Any, method: str) -> Any:
    """A purerpc stub for `method` of the echo service on `channel`."""
    return purerpc.Client(SERVICE_NAME, channel).get_method_stub(method, SIGNATURES[method])


async def _stream_forever(host: str, port: int, cert_dir: Path) -> None:
    context = ssl.create_default_context(cafile=str(cert_dir / "ca.pem"))
    context.load_cert_chain(str(cert_dir / "client.pem"))
    async with open_channel(host, port, context, server_hostname="localhost") as channel:
        async for _ in stub(channel, "Forever")(StringValue(value="x")):
            print("streaming", flush=True)
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(_stream_forever, sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))

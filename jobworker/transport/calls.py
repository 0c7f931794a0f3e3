"""`explicit_calls`: generated purerpc stubs whose calls end explicitly, not by a finaliser.

purerpc's stubs (`ClientStubUnaryUnary`, `ClientStubUnaryStream`) create a call's
stream inside their coroutine or async generator and never say when they are done
with it, so a channel can only notice an abandoned call when the stream object is
garbage collected. The stubs here own the stream in a `try`/`finally` and call
`abandon()` on it when they end: when the response (or the error) arrived, when the
caller leaves a response stream (`aclose()`, e.g. through `contextlib.aclosing`), and
when the caller is cancelled. An unfinished call is then reset on the server at
once, whatever else still holds the stream.

    stub = explicit_calls(jobworker_grpc.JobWorkerServiceStub(channel))

Client-streaming and bidirectional methods keep purerpc's stubs (jobworker has none;
purerpc 0.8.0's bidirectional client is broken under trio, its issue #36).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from purerpc.grpclib.events import ResponseEnded
from purerpc.grpclib.exceptions import raise_status
from purerpc.wrappers import (
    ClientStubUnaryStream,
    ClientStubUnaryUnary,
    extract_message_from_singleton_stream,
    send_single_message_client,
)

from jobworker.transport._wire import stream_fn_of

StreamFn = Callable[..., Awaitable[Any]]
Stub = TypeVar("Stub")


class UnaryUnaryCall:
    """A unary call that abandons its stream explicitly when it ends (see the module doc)."""

    def __init__(self, stream_fn: StreamFn) -> None:
        self._stream_fn = stream_fn

    async def __call__(self, message: Any, *, metadata: Any = None) -> Any:
        stream = await self._stream_fn(metadata=metadata)
        try:
            await send_single_message_client(stream, message)
            return await extract_message_from_singleton_stream(stream)
        finally:
            stream.abandon()


class UnaryStreamCall:
    """A server-streaming call that abandons its stream explicitly when it ends or is
    left (see the module doc)."""

    def __init__(self, stream_fn: StreamFn) -> None:
        self._stream_fn = stream_fn

    async def __call__(self, message: Any, *, metadata: Any = None) -> AsyncIterator[Any]:
        stream = await self._stream_fn(metadata=metadata)
        try:
            await send_single_message_client(stream, message)
            # (Not purerpc's stream_to_async_iterator: a generator inside a generator
            # is one more thing to close.)
            while (response := await stream.receive_message()) is not None:
                yield response
            event = stream.end_stream_event
            if isinstance(event, ResponseEnded):
                raise_status(event.status)
        finally:
            stream.abandon()


def explicit_call(stub: Any) -> Any:
    """`stub` (one method of a purerpc stub on a `Channel`) as a call that ends
    explicitly; client-streaming and bidirectional stubs are returned unchanged."""
    if isinstance(stub, ClientStubUnaryUnary):
        return UnaryUnaryCall(stream_fn_of(stub))
    if isinstance(stub, ClientStubUnaryStream):
        return UnaryStreamCall(stream_fn_of(stub))
    return stub


def explicit_calls(stub: Stub) -> Stub:
    """`stub` (an instance of a generated purerpc stub class, on a `Channel`), with
    every unary and server-streaming method replaced by one that ends explicitly."""
    for name, method in list(vars(stub).items()):
        replaced = explicit_call(method)
        if replaced is not method:
            setattr(stub, name, replaced)
    return stub

"""`wrap_methods`: one wrapper around every method of a purerpc service ("interceptors").

purerpc has no interceptors. A purerpc `Service` is a name and a dict of
`BoundRPCMethod(method_fn, signature)`, and the server always calls
`method_fn(message, request=event)`; `wrap_methods` builds a new `Service`
whose functions enter the wrapper, then call the original one inside it.

The wrapper is called as `wrapper(method_name, call)` and returns an async
context manager (write it with `contextlib.asynccontextmanager`):

- entering it runs before the handler body: raise `purerpc.RpcFailedError`
  (e.g. `purerpc.UnauthenticatedError("...")`) to reject the call; the handler
  never runs;
- an exception from the handler is thrown into it: raise another one from it
  to map it (e.g. a `JobWorkerError` to the right `RpcFailedError`), or let it
  pass. It must not swallow one; a unary call whose wrapper did gets INTERNAL;
- leaving it ends the call (also when the client cancelled it: then a
  `trio.Cancelled` or `GeneratorExit` passes through), so it can time and log.

For a server-streaming method the context stays open while every response is
sent; the wrapper must not open a nursery or cancel scope around its `yield`
(the generator may be suspended inside it).

Any exception that is not an `RpcFailedError` after the wrapper reaches
`RpcServer`, which logs it with its traceback and sends INTERNAL
"internal error".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any

import attrs
import purerpc
from purerpc.grpclib.events import RequestReceived
from purerpc.server import BoundRPCMethod


@attrs.frozen
class MethodCall:
    """One incoming call, as a wrapper sees it.

    `message` is the request message (for a client-streaming method, the async
    iterator of request messages); `request` is purerpc's `RequestReceived`
    event: `custom_metadata`, `authority`, `timeout`. Who is calling is not
    here: ask `jobworker.transport.current_identity()` (metadata cannot fake it).
    """

    service_name: str
    method_name: str
    cardinality: purerpc.Cardinality
    message: Any
    request: RequestReceived

    @property
    def full_name(self) -> str:
        """ "/package.Service/Method", as on the wire."""
        return f"/{self.service_name}/{self.method_name}"


#: wrapper(method_name, call) -> an async context manager around the handler.
MethodWrapper = Callable[[str, MethodCall], AbstractAsyncContextManager[object]]

_STREAMING_RESPONSES = {purerpc.Cardinality.UNARY_STREAM, purerpc.Cardinality.STREAM_STREAM}


def wrap_methods(service: purerpc.Service, wrapper: MethodWrapper) -> purerpc.Service:
    """A new `purerpc.Service` of the same name whose every method runs inside `wrapper`.

    `service` is left unchanged. Wrapping a wrapped service nests the wrappers
    (the last one applied runs outermost).
    """
    wrapped = purerpc.Service(service.name)
    for method_name, bound in service.methods.items():
        wrapped.methods[method_name] = BoundRPCMethod(
            _wrap(service.name, method_name, bound, wrapper), bound.signature
        )
    return wrapped


def _wrap(
    service_name: str, method_name: str, bound: Any, wrapper: MethodWrapper
) -> Callable[..., Any]:
    method_fn = bound.method_fn
    cardinality = bound.signature.cardinality

    def describe(message: Any, request: RequestReceived) -> MethodCall:
        return MethodCall(service_name, method_name, cardinality, message, request)

    if cardinality in _STREAMING_RESPONSES:

        async def streaming(message: Any, request: RequestReceived) -> AsyncIterator[Any]:
            async with (
                wrapper(method_name, describe(message, request)),
                aclosing(method_fn(message, request=request)) as responses,
            ):
                async for response in responses:
                    yield response

        return streaming

    async def unary(message: Any, request: RequestReceived) -> Any:
        async with wrapper(method_name, describe(message, request)):
            return await method_fn(message, request=request)
        raise RuntimeError(
            f"the method wrapper swallowed an exception of {service_name}/{method_name}; "
            "a wrapper must re-raise or map exceptions, never suppress them"
        )

    return unary

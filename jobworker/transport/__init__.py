"""The RPC transport: purerpc over mutual TLS on trio, with the gaps of purerpc 0.8.0 closed.

- `RpcServer`: serves purerpc services on one address; identity from the client
  certificate; an RPC is cancelled when its client cancels or goes away;
  handler exceptions never leak; shutdown that never leaves clients hanging.
- `open_channel` / `Channel`: a client channel whose calls end with
  UNAVAILABLE instead of hanging, and that cancels abandoned calls.
- `explicit_calls` / `explicit_call`: generated stubs whose calls end (and cancel
  on the server when abandoned) explicitly, not when the stream is collected.
- `wrap_methods`: one wrapper around every method of a service (purerpc has no
  interceptors).
- `current_identity()` / `current_peer`: who is calling, inside a handler.
- `status_for` / `to_rpc_error` / `code_name`: the one mapping from exceptions to
  gRPC status codes.
- `wait_writable()` and `EncodedMessage`: for handlers that stream much data,
  backpressure before a response is built, and responses built in wire form.

docs/transport.md says what purerpc does on its own and what the seams in
`_wire` (the only package that touches library internals) change.
"""

from jobworker.transport._wire import EncodedMessage
from jobworker.transport.calls import explicit_call, explicit_calls
from jobworker.transport.client import Channel, open_channel
from jobworker.transport.identity import Peer, current_identity, current_peer
from jobworker.transport.methods import MethodCall, MethodWrapper, wrap_methods
from jobworker.transport.server import (
    HandshakeErrorHook,
    RpcHandle,
    RpcServer,
    current_rpc,
    wait_writable,
)
from jobworker.transport.status import INTERNAL_ERROR_MESSAGE, code_name, status_for, to_rpc_error

__all__ = [
    "INTERNAL_ERROR_MESSAGE",
    "Channel",
    "EncodedMessage",
    "HandshakeErrorHook",
    "MethodCall",
    "MethodWrapper",
    "Peer",
    "RpcHandle",
    "RpcServer",
    "code_name",
    "current_identity",
    "current_rpc",
    "current_peer",
    "explicit_call",
    "explicit_calls",
    "open_channel",
    "status_for",
    "to_rpc_error",
    "wait_writable",
    "wrap_methods",
]

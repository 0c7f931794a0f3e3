"""The seams: the one package of jobworker that touches purerpc's, h2's and anyio's
internals. Everything else in the transport uses the methods these classes add.

Each class here replaces one behaviour of purerpc 0.8.0 (docs/transport.md has the
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

The seams live in one module each (`connection`, `wrapper`, `streams`, `socket`,
`channel`; `limits` and `errors` hold the numbers and the failures they share);
the rest of the transport imports them from here.
"""

from __future__ import annotations

from jobworker.transport._wire.channel import ChannelBase, stream_fn_of
from jobworker.transport._wire.connection import MalformedRequest, ResetAwareConnection
from jobworker.transport._wire.errors import TRANSPORT_ERRORS, describe_transport_error
from jobworker.transport._wire.limits import (
    CLOSE_DRAIN_TIMEOUT,
    DEFAULT_MAX_MESSAGE,
    check_message_length,
)
from jobworker.transport._wire.socket import HookedSocket
from jobworker.transport._wire.streams import EncodedMessage, PacedStream, SeamStream
from jobworker.transport._wire.wrapper import GuardedSocketWrapper

__all__ = [
    "CLOSE_DRAIN_TIMEOUT",
    "DEFAULT_MAX_MESSAGE",
    "LIBRARY_INTERNALS",
    "TRANSPORT_ERRORS",
    "ChannelBase",
    "EncodedMessage",
    "GuardedSocketWrapper",
    "HookedSocket",
    "MalformedRequest",
    "PacedStream",
    "ResetAwareConnection",
    "SeamStream",
    "check_message_length",
    "describe_transport_error",
    "stream_fn_of",
]

#: Every private or undocumented name of purerpc 0.8.0, h2 3.2.0 and anyio 4.16.0 the
#: seams below use, by "module:Class" (methods, class attributes and the instance
#: attributes its methods set). Keep it in step with the code: a new private access
#: goes here, in this package, and nowhere else.
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

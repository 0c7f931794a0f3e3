"""Who is calling: the verified client certificate of the connection an RPC arrived on.

The server reads the peer certificate once, when it accepts a TLS connection,
and sets `current_peer` in that connection's task before it starts handling
requests. Trio gives every task a copy of its parent's context when it is
spawned, so every RPC task of the connection sees the same `Peer`, and no
other connection's. Nothing a client sends inside the HTTP/2 stream (metadata,
headers, messages) can change it: only the TLS handshake can.
"""

from __future__ import annotations

import contextvars

import attrs


@attrs.frozen
class Peer:
    """The far end of one accepted connection.

    `common_name` is the Common Name of the client certificate the TLS layer
    verified against the client CA, as `jobworker.tls.common_name` reads it
    (exactly one CN, and a valid user name); None when the connection carried
    no certificate (only possible with a context that does not require one) or
    the certificate names nobody unambiguously. `address` is "host:port" of the
    remote socket. `certificate` is that certificate in DER (None without one), for
    checking it again against a client CA loaded after the handshake (a reload).
    """

    common_name: str | None
    address: str
    certificate: bytes | None = None


#: The peer of the connection the current RPC arrived on; None outside an RPC.
current_peer: contextvars.ContextVar[Peer | None] = contextvars.ContextVar(
    "jobworker_current_peer", default=None
)


def current_identity() -> Peer | None:
    """The `Peer` of the RPC being handled by the calling task, or None outside an RPC."""
    return current_peer.get()


def format_address(address: object) -> str:
    """ "host:port" for a socket address tuple (IPv6 hosts in brackets), str() for anything else."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)

"""What a broken transport raises, and how it is told in log lines and statuses.

The writer of `wrapper` catches `TRANSPORT_ERRORS`; the client and the server say
why a connection ended with `describe_transport_error`.
"""

from __future__ import annotations

import ssl

import anyio

#: What a transport raises when the peer is gone or the socket was closed under us.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,  # ssl.SSLError (a TLS alert from the peer) is an OSError
)


def describe_transport_error(exc: BaseException) -> str:
    """A short lower-case reason for a transport failure, for log lines and status messages."""
    while isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError) and (
        exc.__cause__ is not None
    ):
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLError):
        return f"tls error: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    if isinstance(exc, anyio.EndOfStream):
        return "the peer closed the connection"
    if isinstance(exc, anyio.ClosedResourceError):
        return "the connection was closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__

"""`serve_metrics`: the Prometheus scrape endpoint, a tiny HTTP/1.1 server on trio.

`jwsd --metrics-addr HOST:PORT` runs it as a task of jwsd's nursery (no thread:
it ends with jwsd, and nothing of it can outlive a shutdown). It answers
`GET /metrics` with the text exposition of a `jobworker.metrics.Metrics` registry,
and every other request with 404 or 405; each connection carries one request and
is closed after the answer (`Connection: close`), as a scraper expects.

Plain HTTP with no authentication: meant for loopback, or a scraper on the host
(docs/operations.md says how to expose it further). Every client is hostile until
its request is read, so the request is bounded before any work: at most
`MAX_REQUEST` bytes of request line and headers, read within `REQUEST_TIMEOUT`
seconds, at most `MAX_CONNECTIONS` connections at once (one more is closed at
once); a body is never read.
"""

from __future__ import annotations

import errno
import logging

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from jobworker.errors import SetupError

log = logging.getLogger(__name__)

#: The most bytes of request line and headers read from one connection.
MAX_REQUEST = 8192
#: Seconds a client has to send its request, and then to take the answer.
REQUEST_TIMEOUT = 10.0
#: Connections served at once; one more is closed unanswered.
MAX_CONNECTIONS = 16
#: The one path served.
METRICS_PATH = "/metrics"


async def serve_metrics(
    host: str,
    port: int,
    registry: CollectorRegistry,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `registry` on HOST:PORT until cancelled; reports the bound port (port 0
    picks a free one) through `task_status`. Raises SetupError when the address
    cannot be bound."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        raise SetupError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
            + ("stop what listens there, or " if in_use else "")
            + "give another --metrics-addr"
        ) from exc
    bound = listeners[0].socket.getsockname()[1]
    slots = trio.Semaphore(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(stream)
            return
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await _answer(stream, registry)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the scraper went away: nothing to answer
        finally:
            slots.release()
            await trio.aclose_forcefully(stream)

    log.info("serving metrics on http://%s:%d%s", host, bound, METRICS_PATH)
    task_status.started(bound)
    await trio.serve_listeners(handle, listeners)


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    head = await _read_head(stream)
    if head is None:
        await _send(
            stream, 400, b"bad request: send one request line and headers of at most 8 KiB\n"
        )
        return
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        await _send(stream, 400, b"bad request: not an HTTP/1.x request line\n")
        return
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target != METRICS_PATH.encode():
        await _send(stream, 404, b"not found: the metrics are at /metrics\n")
        return
    if method not in (b"GET", b"HEAD"):
        await _send(stream, 405, b"method not allowed: use GET\n", extra=b"Allow: GET, HEAD\r\n")
        return
    # The collectors run here, on trio's thread: each is quick (jobworker.metrics).
    body = generate_latest(registry)
    await _send(stream, 200, body, content_type=CONTENT_TYPE_PLAIN_0_0_4, head=method == b"HEAD")


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request line and headers, up to the blank line; None past MAX_REQUEST or
    when the client closes before it."""
    received = bytearray()
    while b"\r\n\r\n" not in received:
        if len(received) >= MAX_REQUEST:
            return None
        chunk = await stream.receive_some(MAX_REQUEST - len(received))
        if not chunk:
            return None
        received += chunk
    return bytes(received[: received.index(b"\r\n\r\n")])


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


async def _send(
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: bytes = b"",
    head: bool = False,
) -> None:
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    ).encode() + extra
    await stream.send_all(header + b"\r\n" + (b"" if head else body))


__all__ = ["MAX_CONNECTIONS", "MAX_REQUEST", "METRICS_PATH", "REQUEST_TIMEOUT", "serve_metrics"]

"""The transport layer over real TLS sockets on 127.0.0.1: purerpc's gaps stay closed.

One test per row of the table in docs/transport.md ("what purerpc 0.8.0 does on its own")
and per promise of `jobworker.transport`. Every test runs under
`trio.fail_after`, so a hang is a failure, and `serving()` checks that the
server is back to its idle task count, with no connection and no RPC left,
and that no file descriptor outlives the server.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import grpc
import purerpc
import pytest
import trio
import trio.testing
import trustme
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

from jobworker.errors import SetupError
from jobworker.transport import (
    RpcServer,
    current_identity,
    explicit_call,
    open_channel,
    wrap_methods,
)
from tests.integration._echo_service import (
    MIB,
    SERVICE_NAME,
    Probe,
    blob_chunk,
    make_service,
    stub,
)
from tests.support.certs import TestPKI
from tests.support.leaks import fd_count, task_count
from tests.support.timing import scaled

ROOT = Path(__file__).resolve().parents[2]

# purerpc's response-stream stub iterates an inner async generator it never closes, so
# every stream left early makes trio warn when that generator is collected; under
# "error" the warning's traceback would keep the abandoned call's frames (and its
# stream) alive. The warning is about purerpc's code, not ours (see the report).
pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:Async generator 'purerpc\.wrappers\.[^']*' was garbage collected:ResourceWarning"
    ),
    pytest.mark.hierarchy_independent,
]
SERVER_LOGGER = "jobworker.transport.server"
STATUS_LOGGER = "jobworker.transport.status"


# -- certificates ---------------------------------------------------------------------------


def server_context(pki: TestPKI) -> ssl.SSLContext:
    return pki.server_context()


def client_context(pki: TestPKI, cert: trustme.LeafCert | None) -> ssl.SSLContext:
    return pki.client_context(cert)


@attrs.define(eq=False)
class Served:
    server: RpcServer
    port: int
    probe: Probe
    scope: trio.CancelScope
    stopped: trio.Event


@asynccontextmanager
async def serving(pki: TestPKI, *, check_fds: bool = True, **options: Any) -> AsyncIterator[Served]:
    """Run an RpcServer with the echo service on 127.0.0.1; check for leaks at the end.

    If the server is still running when the block ends, its connections must be
    gone, no RPC may run, and the task count must be what it was when the
    server had just started. After it stopped, no fd of it may remain.
    """
    service, probe = make_service()
    server = RpcServer("127.0.0.1", 0, server_context(pki), **options)
    server.add_service(service)
    fds = fd_count()
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def run(task_status: trio.TaskStatus[int]) -> None:
            try:
                with scope:
                    await server.serve(task_status=task_status)
            finally:
                stopped.set()

        port = await nursery.start(run)
        await trio.testing.wait_all_tasks_blocked()
        idle_tasks = task_count()
        served = Served(server, port, probe, scope, stopped)
        yield served
        if not stopped.is_set():
            with trio.fail_after(2):
                await server.wait_no_connections()
            assert server.active_rpcs == 0
            await trio.testing.wait_all_tasks_blocked()
            assert task_count() == idle_tasks, "tasks were left behind on the server"
        scope.cancel()
    if check_fds:
        assert fd_count() == fds, "file descriptors were left open"


def channel(pki: TestPKI, served: Served, cert: trustme.LeafCert | None, **options: Any) -> Any:
    return open_channel(
        "127.0.0.1",
        served.port,
        client_context(pki, cert),
        server_hostname="localhost",
        **options,
    )


# -- unary calls, errors, identity ----------------------------------------------------------


async def test_unary_call_round_trips(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            reply = await stub(ch, "Echo")(StringValue(value="héllo\x00"))
            assert reply.value == "héllo\x00"


async def test_plain_exception_reaches_client_as_internal_without_its_repr(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler bug is logged here with its traceback; the client learns only "internal error"."""
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            with pytest.raises(purerpc.RpcFailedError) as caught:
                await stub(ch, "Fail")(StringValue(value="xyzzy"))
            assert caught.value.status.status_code == purerpc.StatusCode.INTERNAL
            assert caught.value.status.status_message == "internal error"
            assert "xyzzy" not in str(caught.value)
            # The connection survives a failed call.
            assert (await stub(ch, "Echo")(StringValue(value="ok"))).value == "ok"
    logged = [r for r in caplog.records if r.name == STATUS_LOGGER and r.levelno >= logging.ERROR]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "xyzzy" in str(logged[0].exc_info[1])


@pytest.mark.parametrize(
    "code", ["NOT_FOUND", "PERMISSION_DENIED", "INVALID_ARGUMENT", "UNAUTHENTICATED"]
)
async def test_rpc_failed_error_passes_through_with_code_and_message(
    pki: TestPKI, code: str
) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            with pytest.raises(purerpc.RpcFailedError) as caught:
                await stub(ch, "FailWith")(StringValue(value=f"{code}:access denied, é"))
            assert caught.value.status.status_code == purerpc.StatusCode[code]
            assert caught.value.status.status_message == "access denied, é"


async def test_unknown_method_is_unimplemented(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            client = purerpc.Client(SERVICE_NAME, ch)
            missing = client.get_method_stub(
                "Missing",
                purerpc.RPCSignature(purerpc.Cardinality.UNARY_UNARY, StringValue, StringValue),
            )
            with pytest.raises(purerpc.RpcFailedError) as caught:
                await missing(StringValue(value="x"))
            assert caught.value.status.status_code == purerpc.StatusCode.UNIMPLEMENTED


async def test_each_connection_sees_its_own_certificate_cn_and_metadata_cannot_change_it(
    pki: TestPKI,
) -> None:
    with trio.fail_after(10):
        async with (
            serving(pki) as served,
            channel(pki, served, pki.client_cert("alice")) as alice,
            channel(pki, served, pki.client_cert("bob")) as bob,
        ):
            forged = (("x-common-name", "root"), ("common-name", "root"), ("user", "root"))

            async def calls(ch: Any, name: str) -> None:
                for i in range(20):
                    reply = await stub(ch, "WhoAmI")(
                        StringValue(value=f"{name}{i}"), metadata=forged
                    )
                    assert reply.value == name

            async with trio.open_nursery() as nursery:
                nursery.start_soon(calls, alice, "alice")
                nursery.start_soon(calls, bob, "bob")
            seen = served.probe.identities
            assert len(seen) == 40
            assert all(tag.startswith(name) for tag, name in seen if name is not None)
            assert {name for _, name in seen} == {"alice", "bob"}
        assert current_identity() is None  # outside any RPC


# -- the cancellation table -----------------------------------------------------------------


async def test_client_breaking_out_of_a_stream_cancels_the_handler_within_a_second(
    pki: TestPKI,
) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            responses = stub(ch, "Forever")(StringValue(value="x"))
            async with aclosing(responses):
                async for _ in responses:
                    left_at = trio.current_time()
                    break
            await served.probe.ended.wait()
            assert served.probe.ended_by == "Cancelled"
            assert served.probe.ended_at is not None
            assert served.probe.ended_at - left_at < 1.0
            with trio.fail_after(1):
                await served.server.wait_no_rpcs()


@pytest.mark.parametrize("how", ["left", "cancelled"])
async def test_explicit_calls_cancel_the_handler_with_no_help_from_the_garbage_collector(
    pki: TestPKI, how: str
) -> None:
    """Calls through `explicit_call` end on `aclose()` or cancellation themselves: the
    handler is cancelled while the test still holds every stream object of the
    channel (so no finaliser can fire)."""
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            held = []
            forever = explicit_call(stub(ch, "Forever"))
            with trio.CancelScope() as scope:
                responses = forever(StringValue(value="x"))
                async with aclosing(responses):
                    async for _ in responses:
                        held.extend(ch.socket.streams.values())
                        if how == "cancelled":
                            scope.cancel()
                            await trio.sleep_forever()
                        break
            assert held, "the call's stream was not found"
            with trio.fail_after(2):
                await served.probe.ended.wait()
            assert served.probe.ended_by == "Cancelled"
            with trio.fail_after(1):
                await served.server.wait_no_rpcs()
            assert ch.unacknowledged_bytes() == 0


async def test_stream_dropped_without_aclosing_still_cancels_the_handler(pki: TestPKI) -> None:
    """Without aclosing, the call is noticed when CPython frees it (at once, by refcount)."""
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            async for _ in stub(ch, "Forever")(StringValue(value="x")):
                left_at = trio.current_time()
                break
            await served.probe.ended.wait()
            assert served.probe.ended_at is not None
            assert served.probe.ended_at - left_at < 1.0


async def test_client_cancelled_while_waiting_on_a_stream_cancels_the_handler(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            with trio.move_on_after(0.2) as waited:
                responses = stub(ch, "Forever")(StringValue(value="x"))
                async with aclosing(responses):
                    async for _ in responses:
                        pass
            assert waited.cancelled_caught
            cancelled_at = trio.current_time()
            await served.probe.ended.wait()
            assert served.probe.ended_at is not None
            assert served.probe.ended_at - cancelled_at < 1.0
            # The channel is still good for other calls.
            assert (await stub(ch, "Echo")(StringValue(value="still"))).value == "still"


async def test_cancelled_unary_call_cancels_the_handler(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stub(ch, "Sleep"), Int64Value(value=60_000))
                await served.probe.started.wait()
                nursery.cancel_scope.cancel()
            with trio.fail_after(1):
                await served.server.wait_no_rpcs()


async def test_abandoned_streams_give_back_their_flow_control_window(pki: TestPKI) -> None:
    """Bytes an abandoned call received but never read are handed back to the server.

    Otherwise every abandoned big stream keeps up to 2 x max_message_length of the
    connection's 1 GiB window, and the connection stalls for good after ~32 of them.
    """
    # ~100 MiB through TLS in one Python process: seconds on an emulated CPU.
    with trio.fail_after(scaled(10)):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            for _ in range(3):
                responses = stub(ch, "Blob")(Int64Value(value=64))
                async with aclosing(responses):
                    async for _ in responses:
                        # The server fills the call's window (2 x 16 MiB of the 64) and waits.
                        await trio.testing.wait_all_tasks_blocked()
                        break
            with trio.fail_after(scaled(1)):
                await served.server.wait_no_rpcs()
            # The server wrote every DATA frame of those calls before this answer.
            assert (await stub(ch, "Echo")(StringValue(value="x"))).value == "x"
            assert ch.unacknowledged_bytes() == 0


async def test_killed_client_process_cancels_the_handler(pki: TestPKI, tmp_path: Path) -> None:
    pki.server_ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    pki.client_cert("alice").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "client.pem")
    )
    with trio.fail_after(20):
        async with serving(pki) as served:
            command = [sys.executable, "-m", "tests.integration._echo_service"]
            command += ["127.0.0.1", str(served.port), str(tmp_path)]
            process = await trio.lowlevel.open_process(command, cwd=ROOT, stdout=subprocess.PIPE)
            try:
                assert process.stdout is not None
                said = b""
                while not said.endswith(b"\n"):  # a pipe may deliver the line in pieces
                    piece = await process.stdout.receive_some(100)
                    assert piece, f"the client exited after saying {said!r}"
                    said += piece
                assert said == b"streaming\n"
                await served.probe.started.wait()
                assert served.server.connection_count == 1
                process.kill()
                killed_at = trio.current_time()
                await served.probe.ended.wait()
                assert served.probe.ended_at is not None
                assert served.probe.ended_at - killed_at < 1.0
            finally:
                process.kill()
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()


async def test_cancelling_serve_fails_a_waiting_stream_with_unavailable_at_once(
    pki: TestPKI,
) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            responses = stub(ch, "Forever")(StringValue(value="x"))
            async with aclosing(responses):
                await responses.__anext__()
                served.scope.cancel()
                stopped_at = trio.current_time()
                with pytest.raises(purerpc.RpcFailedError) as caught:
                    await responses.__anext__()
            assert trio.current_time() - stopped_at < 1.0
            assert caught.value.status.status_code == purerpc.StatusCode.UNAVAILABLE
            assert "lost the connection" in caught.value.status.status_message
            await served.stopped.wait()
            # New calls on the dead channel fail at once too.
            with pytest.raises(purerpc.RpcFailedError) as caught:
                await stub(ch, "Echo")(StringValue(value="x"))
            assert caught.value.status.status_code == purerpc.StatusCode.UNAVAILABLE


async def test_shutdown_lets_running_calls_finish_and_refuses_new_connections(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            async with trio.open_nursery() as nursery:
                results: list[int] = []

                async def slow_call() -> None:
                    results.append((await stub(ch, "Sleep")(Int64Value(value=300))).value)

                nursery.start_soon(slow_call)
                await served.probe.started.wait()
                nursery.start_soon(served.server.shutdown, 5.0)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(purerpc.RpcFailedError) as caught:
                    async with channel(pki, served, pki.client_cert("alice")):
                        pass
                assert "connection refused" in caught.value.status.status_message
            assert results == [300]
            assert served.stopped.is_set()


async def test_shutdown_grace_is_bounded(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            responses = stub(ch, "Forever")(StringValue(value="x"))
            async with aclosing(responses):
                await responses.__anext__()
                started = trio.current_time()
                await served.server.shutdown(0.2)
                assert 0.2 <= trio.current_time() - started < 1.0
                with pytest.raises(purerpc.RpcFailedError) as caught:
                    await responses.__anext__()
                assert caught.value.status.status_code == purerpc.StatusCode.UNAVAILABLE


# -- TLS rejections -------------------------------------------------------------------------


def rejection_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SERVER_LOGGER]


@pytest.mark.parametrize("who", ["no certificate", "rogue ca"])
async def test_client_whose_certificate_is_refused_gets_unavailable_and_server_logs_one_line(
    pki: TestPKI, caplog: pytest.LogCaptureFixture, who: str
) -> None:
    """Under TLS 1.3 the client's handshake "succeeds" before the server refuses it: no hang."""
    rejected = trio.Event()
    refused: list[str] = []
    cert = None if who == "no certificate" else pki.client_cert("alice", rogue=True)
    with trio.fail_after(10):
        async with serving(
            pki, on_handshake_error=lambda *_: rejected.set(), on_refused=refused.append
        ) as served:
            with pytest.raises(purerpc.RpcFailedError) as caught:
                async with channel(pki, served, cert) as ch:
                    await stub(ch, "Echo")(StringValue(value="x"))
            assert caught.value.status.status_code == purerpc.StatusCode.UNAVAILABLE
            assert "certificate" in caught.value.status.status_message
            await rejected.wait()
    assert refused == ["handshake"]  # counted once (jobworker_connections_refused_total)
    lines = rejection_lines(caplog)
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert lines[0].exc_info is None
    assert lines[0].getMessage().startswith("rejected tls connection from 127.0.0.1:")


async def test_tls_12_client_is_refused_with_unavailable(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    rejected = trio.Event()
    context = client_context(pki, pki.client_cert("alice"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with trio.fail_after(10):
        async with serving(pki, on_handshake_error=lambda *_: rejected.set()) as served:
            with pytest.raises(purerpc.RpcFailedError) as caught:
                async with open_channel(
                    "127.0.0.1", served.port, context, server_hostname="localhost"
                ):
                    pass
            assert caught.value.status.status_code == purerpc.StatusCode.UNAVAILABLE
            assert "tls handshake" in caught.value.status.status_message
            await rejected.wait()
    lines = rejection_lines(caplog)
    assert len(lines) == 1
    assert lines[0].exc_info is None


async def test_client_that_never_handshakes_is_dropped_after_the_timeout(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    rejected = trio.Event()
    with trio.fail_after(10):
        async with serving(
            pki, handshake_timeout=0.2, on_handshake_error=lambda *_: rejected.set()
        ) as served:
            silent = await trio.open_tcp_stream("127.0.0.1", served.port)
            async with silent:
                await rejected.wait()
                assert await silent.receive_some() == b""  # the server closed it
    lines = rejection_lines(caplog)
    assert len(lines) == 1
    assert "no handshake within 0.2 s" in lines[0].getMessage()


async def test_connection_refused_is_unavailable_with_a_clear_message(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served:
            port = served.port
            served.scope.cancel()
            await served.stopped.wait()
        with pytest.raises(purerpc.RpcFailedError) as caught:
            async with open_channel(
                "127.0.0.1", port, client_context(pki, pki.client_cert("alice"))
            ):
                pass
        assert caught.value.status.status_code == purerpc.StatusCode.UNAVAILABLE
        assert caught.value.status.status_message == (
            f"cannot reach 127.0.0.1:{port}: connection refused"
        )


# -- binding --------------------------------------------------------------------------------


async def test_port_in_use_is_a_clear_setup_error(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with serving(pki) as served:
            second = RpcServer("127.0.0.1", served.port, server_context(pki))
            with pytest.raises(SetupError, match="address already in use"):
                await second.serve()


async def test_server_binds_only_the_given_host(pki: TestPKI) -> None:
    """Bound to 127.0.0.1, the port is closed on 127.0.0.2 (also loopback): no wildcard bind."""
    with trio.fail_after(10):
        async with serving(pki) as served:
            with pytest.raises(OSError, match="refused|failed"):
                await trio.open_tcp_stream("127.0.0.2", served.port)
            with pytest.raises(purerpc.RpcFailedError, match="connection refused"):
                async with open_channel(
                    "127.0.0.2", served.port, client_context(pki, pki.client_cert("alice"))
                ):
                    pass


# -- payloads -------------------------------------------------------------------------------


async def test_64_mib_stream_of_1_mib_messages_round_trips_exactly(pki: TestPKI) -> None:
    """Every byte value, in order; the window (2 x the message limit) always holds a message."""
    limit = MIB + 1024
    with trio.fail_after(30):
        async with (
            serving(pki, max_message_length=limit) as served,
            channel(pki, served, pki.client_cert("alice"), max_message_length=limit) as ch,
        ):
            index = 0
            async for message in stub(ch, "Blob")(Int64Value(value=64)):
                assert message.value == blob_chunk(index)
                index += 1
            assert index == 64


async def test_every_outgoing_message_waits_for_room_on_its_connection(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backpressure: each message a handler sends first waits for room in the connection's
    send buffer (purerpc's own send path would queue up to the peer's whole window; an
    override of `_send` was once bypassed by purerpc's `super()` call)."""
    from jobworker.transport import _wire

    waits = 0
    original = _wire.GuardedSocketWrapper.wait_room

    async def counting(self: _wire.GuardedSocketWrapper) -> None:
        nonlocal waits
        waits += 1
        await original(self)

    monkeypatch.setattr(_wire.GuardedSocketWrapper, "wait_room", counting)
    with trio.fail_after(30):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            received = [message.value async for message in stub(ch, "Blob")(Int64Value(value=8))]
    assert received == [blob_chunk(i) for i in range(8)]
    assert waits >= 8


@asynccontextmanager
async def paced_blob(pki: TestPKI, count: int) -> AsyncIterator[tuple[Served, Any]]:
    """A server, and a PacedBlob stream of `count` 1 MiB messages from it, on a channel
    whose 2-message window bounds what can be in flight."""
    limit = MIB + 1024
    async with (
        serving(pki, max_message_length=limit) as served,
        channel(pki, served, pki.client_cert("alice"), max_message_length=limit) as ch,
        aclosing(stub(ch, "PacedBlob")(Int64Value(value=count))) as messages,
    ):
        yield served, messages


async def test_a_handler_waiting_for_a_slow_client_holds_no_message(pki: TestPKI) -> None:
    """`wait_writable()` blocks a streaming handler while its client reads nothing, so it
    builds no message it cannot send (what keeps 1,000 stalled followers from holding
    1,000 chunks); its `EncodedMessage`s arrive as the protobuf messages they encode."""
    with trio.fail_after(30):
        async with paced_blob(pki, 32) as (served, messages):
            first = await anext(messages)
            assert first.value == blob_chunk(0)
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)
            # Parked before building the next message, not holding one in send:
            assert served.probe.waiting_to_produce
            # one read + the 2 MiB window + the connection's 512 KiB buffer, at most
            assert served.probe.produced <= 4
            received = [first.value] + [message.value async for message in messages]
    assert received == [blob_chunk(i) for i in range(32)]
    assert served.probe.produced == 32


async def test_a_client_leaving_while_the_handler_waits_to_write_cancels_it(pki: TestPKI) -> None:
    """The handler parked in `wait_writable()` (its client stopped reading) is cancelled
    as soon as the client abandons the stream; nothing is left on the server."""
    with trio.fail_after(30):
        async with paced_blob(pki, 1000) as (served, messages):
            await anext(messages)
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)
            assert served.probe.waiting_to_produce
            await messages.aclose()
            with trio.fail_after(1):
                await served.server.wait_no_rpcs()
            assert served.probe.produced < 10


async def test_message_over_the_limit_fails_the_call_not_the_server(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with (
            serving(pki) as served,
            channel(pki, served, pki.client_cert("alice"), max_message_length=MIB // 2) as ch,
        ):
            with pytest.raises(purerpc.RpcFailedError):
                async for _ in stub(ch, "Blob")(Int64Value(value=1)):
                    pass
        # A new channel still works.
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            assert (await stub(ch, "Echo")(StringValue(value="x"))).value == "x"


@pytest.mark.parametrize("length", [0, -1, 2**30])
def test_message_limits_whose_window_is_not_a_legal_http2_window_are_refused(
    pki: TestPKI, length: int
) -> None:
    with pytest.raises(ValueError, match="max_message_length"):
        RpcServer("127.0.0.1", 0, server_context(pki), max_message_length=length)


# -- wrap_methods ---------------------------------------------------------------------------


async def test_wrapper_rejects_before_the_handler_runs_and_sees_every_call(pki: TestPKI) -> None:
    seen: list[tuple[str, str]] = []

    @asynccontextmanager_wrapper
    async def wrapper(method_name: str, call: Any) -> AsyncIterator[None]:
        if call.request.custom_metadata and ("deny", "yes") in call.request.custom_metadata:
            raise purerpc.PermissionDeniedError("access denied")
        try:
            yield
        except RuntimeError as exc:
            seen.append((method_name, "mapped"))
            raise purerpc.FailedPreconditionError("mapped") from exc
        else:
            seen.append((method_name, "ok"))

    service, probe = make_service()
    server = RpcServer("127.0.0.1", 0, server_context(pki))
    server.add_service(wrap_methods(service, wrapper))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            async with open_channel(
                "127.0.0.1",
                port,
                client_context(pki, pki.client_cert("alice")),
                server_hostname="localhost",
            ) as ch:
                assert (await stub(ch, "Echo")(StringValue(value="a"))).value == "a"
                with pytest.raises(purerpc.RpcFailedError) as caught:
                    await stub(ch, "Sleep")(Int64Value(value=1), metadata=(("deny", "yes"),))
                assert caught.value.status.status_code == purerpc.StatusCode.PERMISSION_DENIED
                assert not probe.started.is_set()  # the handler body never ran
                with pytest.raises(purerpc.RpcFailedError) as caught:
                    await stub(ch, "Fail")(StringValue(value="a"))
                assert caught.value.status.status_code == purerpc.StatusCode.FAILED_PRECONDITION
                with pytest.raises(purerpc.RpcFailedError) as caught:
                    async for _ in stub(ch, "Forever")(
                        StringValue(value="a"), metadata=(("deny", "yes"),)
                    ):
                        pass
                assert caught.value.status.status_code == purerpc.StatusCode.PERMISSION_DENIED
                assert not probe.started.is_set()
                count = 0
                async for _ in stub(ch, "Blob")(Int64Value(value=2)):
                    count += 1
                assert count == 2
            nursery.cancel_scope.cancel()
    assert seen == [("Echo", "ok"), ("Fail", "mapped"), ("Blob", "ok")]


def asynccontextmanager_wrapper(fn: Any) -> Any:
    return asynccontextmanager(fn)


# -- grpcio interop -------------------------------------------------------------------------


@attrs.frozen
class GrpcClient:
    """A stock grpcio client, used from worker threads."""

    channel: grpc.Channel

    def unary(self, method: str, request: Any, response_type: Any) -> Any:
        call = self.channel.unary_unary(
            f"/{SERVICE_NAME}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return call(request, timeout=10)

    def stream(self, method: str, request: Any, response_type: Any) -> Any:
        call = self.channel.unary_stream(
            f"/{SERVICE_NAME}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return call(request, timeout=10)


def grpc_client(pki: TestPKI, port: int) -> Iterator[GrpcClient]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.server_ca.cert_pem.bytes(),
        private_key=pki.client_cert("alice").private_key_pem.bytes(),
        certificate_chain=pki.client_cert("alice").cert_chain_pems[0].bytes(),
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    try:
        yield GrpcClient(channel)
    finally:
        channel.close()


async def test_grpcio_client_gets_the_same_results_and_status_codes(pki: TestPKI) -> None:
    def run(port: int) -> list[Any]:
        results: list[Any] = []
        for client in grpc_client(pki, port):
            results.append(client.unary("Echo", StringValue(value="héllo"), StringValue).value)
            results.append(client.unary("WhoAmI", StringValue(value="g"), StringValue).value)
            for method, arg in [("Fail", "xyzzy"), ("FailWith", "NOT_FOUND:no job with id 'x'")]:
                try:
                    client.unary(method, StringValue(value=arg), StringValue)
                except grpc.RpcError as exc:
                    results.append((exc.code().name, exc.details()))
        return results

    with trio.fail_after(20):
        async with serving(pki, check_fds=False) as served:
            results = await trio.to_thread.run_sync(run, served.port)
    assert results == [
        "héllo",
        "alice",
        ("INTERNAL", "internal error"),
        ("NOT_FOUND", "no job with id 'x'"),
    ]


async def test_grpcio_client_reads_encoded_messages_in_its_own_frames_and_windows(
    pki: TestPKI,
) -> None:
    """grpcio (C-core) chooses other frame sizes and windows than purerpc: every
    `EncodedMessage` still arrives whole, in order, however it was split into frames."""

    def run(port: int) -> list[bytes]:
        for client in grpc_client(pki, port):
            return [m.value for m in client.stream("PacedBlob", Int64Value(value=24), BytesValue)]
        raise AssertionError("no client")

    with trio.fail_after(30):
        async with serving(pki, check_fds=False) as served:
            received = await trio.to_thread.run_sync(run, served.port)
    assert received == [blob_chunk(i) for i in range(24)]


async def test_grpcio_client_cancelling_a_stream_cancels_the_handler(pki: TestPKI) -> None:
    # check_fds=False: grpcio keeps process-wide polling fds after its channel closes.
    first = threading.Event()
    cancelled_at: list[float] = []
    token = trio.lowlevel.current_trio_token()

    def run(port: int) -> None:
        for client in grpc_client(pki, port):
            call = client.stream("Forever", StringValue(value="x"), StringValue)
            assert next(call).value == "started"
            first.set()
            cancelled_at.append(trio.from_thread.run_sync(trio.current_time, trio_token=token))
            call.cancel()

    with trio.fail_after(20):
        async with serving(pki, check_fds=False) as served:
            await trio.to_thread.run_sync(run, served.port)
            await served.probe.ended.wait()
            assert served.probe.ended_at is not None
            assert served.probe.ended_at - cancelled_at[0] < 1.0
    assert first.is_set()

"""What one peer can hold of the server: handshakes in flight, connections per
identity, and connections kept open without a call. Each test is the attack, made
with real TLS connections against a real `RpcServer`."""

from __future__ import annotations

import logging
from contextlib import aclosing

import purerpc
import pytest
import trio
import trio.testing
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from tests.integration._echo_service import stub
from tests.integration.test_transport import channel, serving
from tests.support.certs import TestPKI
from tests.support.leaks import fd_count

pytestmark = pytest.mark.hierarchy_independent

SERVER_LOGGER = "jobworker.transport.server"


async def test_a_connection_without_a_call_is_closed_after_the_idle_timeout(pki: TestPKI) -> None:
    """A client with a valid certificate that handshakes, then sends nothing, must not hold
    an fd forever; its closing is counted as an idle refusal."""
    refused: list[str] = []
    with trio.fail_after(10):
        async with (
            serving(pki, idle_timeout=0.3, on_refused=refused.append) as served,
            channel(pki, served, pki.client_cert("alice")) as ch,
        ):
            assert (await stub(ch, "Echo")(StringValue(value="hi"))).value == "hi"
            assert served.server.connection_count == 1
            started = trio.current_time()
            await served.server.wait_no_connections()
            assert trio.current_time() - started >= 0.25
    assert refused == ["idle"]


async def test_a_long_call_is_not_idle(pki: TestPKI) -> None:
    """Only a connection with no call open is idle: a call lasting longer than the timeout
    completes, and the connection closes only once it has been idle for the timeout."""
    with trio.fail_after(10):
        async with (
            serving(pki, idle_timeout=0.3) as served,
            channel(pki, served, pki.client_cert("alice")) as ch,
        ):
            assert (await stub(ch, "Sleep")(Int64Value(value=900))).value == 900
            assert served.server.connection_count == 1
            await served.server.wait_no_connections()


async def test_connections_per_identity_are_capped_and_others_are_unaffected(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    refused: list[str] = []
    with trio.fail_after(10):
        async with (
            serving(pki, max_connections_per_peer=2, on_refused=refused.append) as served,
            channel(pki, served, pki.client_cert("alice")) as first,
            channel(pki, served, pki.client_cert("alice")) as second,
        ):
            for ch in (first, second):
                assert (await stub(ch, "Echo")(StringValue(value="ok"))).value == "ok"
            async with channel(pki, served, pki.client_cert("alice")) as third:
                with pytest.raises(purerpc.RpcFailedError) as caught:
                    await stub(third, "Echo")(StringValue(value="one too many"))
                assert caught.value.status.status_code == purerpc.StatusCode.UNAVAILABLE
            async with channel(pki, served, pki.client_cert("bob")) as other_user:
                assert (await stub(other_user, "Echo")(StringValue(value="b"))).value == "b"
    refusals = [
        r.getMessage()
        for r in caplog.records
        if r.name == SERVER_LOGGER and "refused" in r.getMessage()
    ]
    assert len(refusals) == 1 and "holds 2 connections already" in refusals[0], refusals
    assert refused == ["quota"]


async def test_a_closed_connection_frees_its_identitys_slot(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with serving(pki, max_connections_per_peer=1) as served:
            for _ in range(3):
                async with channel(pki, served, pki.client_cert("alice")) as ch:
                    assert (await stub(ch, "Echo")(StringValue(value="x"))).value == "x"
                await served.server.wait_no_connections()


async def test_a_flood_of_silent_connections_costs_the_server_only_its_handshake_slots(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    """21,000 raw connections that never handshake once took jwsd to 16k fds: the server
    accepts only as many as it has handshake slots; the rest wait in the kernel's backlog,
    and a real client is served once the silent ones time out."""
    caplog.set_level(logging.ERROR, logger=SERVER_LOGGER)  # 50 rejection lines are noise here
    silent_count, slots = 20, 4
    with trio.fail_after(20):
        async with serving(pki, max_handshakes=slots, handshake_timeout=0.5) as served:
            fds = fd_count()
            silent = [
                await trio.open_tcp_stream("127.0.0.1", served.port) for _ in range(silent_count)
            ]
            await trio.testing.wait_all_tasks_blocked()
            # Our own client sockets are silent_count; the server holds at most `slots` more.
            assert fd_count() - fds <= silent_count + slots
            async with channel(pki, served, pki.client_cert("alice")) as ch:
                assert (await stub(ch, "Echo")(StringValue(value="served"))).value == "served"
            for stream in silent:
                await stream.aclose()


async def test_one_connection_holds_at_most_a_hundred_calls_at_once(pki: TestPKI) -> None:
    """purerpc advertises 65,536 concurrent streams; the server says 100, and a client that
    opens more than that loses the call (its h2 refuses to open it), not the server its
    memory."""
    with trio.fail_after(20):
        async with serving(pki) as served, channel(pki, served, pki.client_cert("alice")) as ch:
            forever = stub(ch, "Forever")
            opened = 0
            failed: list[BaseException] = []

            async def hold(task_status: trio.TaskStatus[None]) -> None:
                nonlocal opened
                try:
                    async with aclosing(forever(StringValue(value="x"))) as replies:
                        async for _ in replies:
                            opened += 1
                            task_status.started()
                            await trio.sleep_forever()
                except Exception as exc:
                    failed.append(exc)
                    task_status.started()

            async with trio.open_nursery() as nursery:
                for _ in range(101):
                    await nursery.start(hold)
                assert opened == 100 and len(failed) == 1, (opened, failed)
                nursery.cancel_scope.cancel()

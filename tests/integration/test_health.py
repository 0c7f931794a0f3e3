"""The standard grpc.health.v1 service of jwsd (in-process, loopback, throwaway CAs):
who may ask, what it answers, and what a watcher sees when shutdown begins."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import purerpc
import pytest
import trio

from jobworker.client import Credentials, connect
from jobworker.errors import JobNotFoundError, UnauthenticatedError
from jobworker.model import NetworkMode
from jobworker.server.daemon import DaemonConfig, serve
from jobworker.transport import open_channel
from jobworker.v1 import health_grpc
from jobworker.v1 import health_pb2 as hpb
from tests.conftest import require_root
from tests.integration.test_service import rpc_status
from tests.support.certs import TestPKI
from tests.support.daemon import Daemon, DaemonFiles
from tests.support.names import unique_name

pytestmark = [pytest.mark.root, pytest.mark.hierarchy_independent]

Code = purerpc.StatusCode
Status = hpb.HealthCheckResponse.ServingStatus


@pytest.fixture
async def daemon(tmp_path: Path, pki: TestPKI) -> AsyncIterator[Daemon]:
    """jwsd with a users file that knows alex only; mallory's certificate is from the same CA."""
    files = DaemonFiles.write(tmp_path, pki, users={"alex": "user"}, certs=["alex", "mallory"])
    async with files.serving() as daemon:
        yield daemon


async def test_check_reports_serving_for_the_server_and_the_api(daemon: Daemon) -> None:
    async with daemon.connect("alex") as client:
        with trio.fail_after(5):
            assert await client.health("") == "SERVING"
            assert await client.health("jobworker.v1.JobWorkerService") == "SERVING"
            with pytest.raises(JobNotFoundError) as info:
                await client.health("no.such.Service")
    assert rpc_status(info.value).status_code is Code.NOT_FOUND


async def test_a_certificate_missing_from_the_users_file_still_gets_health(
    daemon: Daemon,
) -> None:
    async with daemon.connect("mallory") as client:
        with trio.fail_after(5):
            assert await client.health() == "SERVING"
            # ...and nothing else: the API still refuses the name.
            with pytest.raises(UnauthenticatedError) as info:
                await client.list()
    assert rpc_status(info.value).status_code is Code.UNAUTHENTICATED


async def test_without_a_client_certificate_the_handshake_fails(daemon: Daemon) -> None:
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(daemon.tls_dir / "server_ca_cert.pem")
    )
    context.set_alpn_protocols(["h2"])
    with pytest.raises(purerpc.RpcFailedError) as info:
        await _check_with(daemon, context)
    assert info.value.status.status_code is Code.UNAVAILABLE
    assert "handshake" in info.value.status.status_message or "certificate" in (
        info.value.status.status_message
    ), info.value.status


async def _check_with(daemon: Daemon, context: ssl.SSLContext) -> object:
    async with open_channel(
        "127.0.0.1", daemon.port, context, server_hostname="localhost"
    ) as channel:
        with trio.fail_after(5):
            return await health_grpc.HealthStub(channel).Check(hpb.HealthCheckRequest())


async def test_watch_sees_not_serving_when_shutdown_starts_and_then_ends(
    tmp_path: Path, pki: TestPKI
) -> None:
    require_root()
    tls_dir = pki.write_tls_dir(tmp_path / "tls", ["alex"])
    config = DaemonConfig.of(
        tls_dir=tls_dir,
        port=0,
        data_dir=tmp_path / "data",
        stop_grace=1.0,
        drain_timeout=30.0,  # a watcher that held up the drain would show in the elapsed time
        cgroup_name=unique_name(),
        network_default=NetworkMode.NONE,
    )
    shutdown = trio.Event()
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, config, shutdown)
        async with connect(
            ("127.0.0.1", port), Credentials(tls_dir, "alex"), server_hostname="localhost"
        ) as client:
            # A job that ignores SIGTERM keeps the shutdown going for the stop grace.
            await client.start(args=["sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
            responses = client.health_stub.Watch(hpb.HealthCheckRequest(service=""))
            unknown = client.health_stub.Watch(hpb.HealthCheckRequest(service="nope"))
            with trio.fail_after(10):
                async with contextlib.aclosing(unknown) as stream:
                    async for response in stream:
                        assert Status.Name(response.status) == "SERVICE_UNKNOWN"
                        break
                async with contextlib.aclosing(responses) as stream:
                    async for response in stream:
                        seen.append(Status.Name(response.status))
                        if len(seen) == 1:
                            started = trio.current_time()
                            shutdown.set()
                        else:
                            # A Check on a connection made before the shutdown says so
                            # too (the API's calls get UNAVAILABLE by now).
                            checked = await client.health()
                ended = trio.current_time()
    assert seen == ["SERVING", "NOT_SERVING"]
    assert checked == "NOT_SERVING"
    # The stream ended once the jobs had stopped, well before the drain timeout.
    assert ended - started < 10

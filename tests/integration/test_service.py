"""jwsd in-process on loopback, with throwaway CAs: TLS, identity, owners, error
codes, concurrency, hang-ups and shutdown, through real gRPC calls."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ssl
import time
from pathlib import Path

import purerpc
import pytest
import trio
import trustme

from jobworker.client import Credentials, JobWorkerClient, connect, error_for
from jobworker.errors import CannotReachError, JobWorkerError
from jobworker.model import JobState, Limits, NetworkMode, Outcome
from jobworker.server.daemon import DaemonConfig, serve
from jobworker.transport import open_channel
from jobworker.v1 import jobworker_grpc
from jobworker.v1 import jobworker_pb2 as pb
from tests.conftest import require_root
from tests.support.certs import TestPKI
from tests.support.cgroupfs import cgroups_named
from tests.support.daemon import Daemon, DaemonFiles
from tests.support.leaks import LeakCheck, child_pids, task_count
from tests.support.names import unique_name
from tests.support.timing import scaled
from tests.support.waiting import eventually

pytestmark = [pytest.mark.root, pytest.mark.hierarchy_independent]

Code = purerpc.StatusCode


def rpc_status(exc: BaseException) -> purerpc.Status:
    """The status a call ended with: of a raw stub's RpcFailedError, or of the one the
    client's error was mapped from (its cause), which must say the same."""
    if isinstance(exc, purerpc.RpcFailedError):
        return exc.status
    assert isinstance(exc, JobWorkerError), exc
    cause = exc.__cause__
    assert isinstance(cause, purerpc.RpcFailedError), exc
    assert str(exc) == (cause.status.status_message or cause.status.status_code.name.lower())
    return cause.status


async def expect_code(code: purerpc.StatusCode, call: object, match: str = "") -> str:
    """The message of the error `call` raises with `code`: the client's, of the kind for
    `code` (a call of `JobWorkerClient`), or a raw stub's RpcFailedError."""
    with pytest.raises((JobWorkerError, purerpc.RpcFailedError)) as info:
        await call  # type: ignore[misc]
    status = rpc_status(info.value)
    assert status.status_code is code, status
    if isinstance(info.value, JobWorkerError):
        assert isinstance(info.value, type(error_for(status)))
    assert match in (status.status_message or "")
    return str(status.status_message)


async def read_all(client: JobWorkerClient, job_id: str, offset: int = 0) -> bytes:
    out = bytearray()
    async with contextlib.aclosing(client.output(job_id, offset)) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


# ---- TLS and identity ------------------------------------------------------------------


def _client_context(
    daemon: Daemon, *, cert: trustme.LeafCert | None, tls12: bool = False
) -> ssl.SSLContext:
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(daemon.tls_dir / "server_ca_cert.pem")
    )
    context.set_alpn_protocols(["h2"])
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        cert.configure_cert(context)
    return context


async def _list_with(daemon: Daemon, context: ssl.SSLContext) -> object:
    async with open_channel(
        "127.0.0.1", daemon.port, context, server_hostname="localhost"
    ) as channel:
        stub = jobworker_grpc.JobWorkerServiceStub(channel)
        with trio.fail_after(5):
            return await stub.ListJobs(pb.ListJobsRequest())


@pytest.mark.parametrize("case", ["no certificate", "another CA", "expired", "tls 1.2"])
async def test_untrusted_clients_are_refused_without_hanging(daemon: Daemon, case: str) -> None:
    cert = {
        "no certificate": None,
        "another CA": daemon.pki.client_cert("alex", rogue=True),
        "expired": daemon.pki.client_ca.issue_cert(
            common_name="alex",
            not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
            not_after=datetime.datetime(2020, 2, 1, tzinfo=datetime.UTC),
        ),
        "tls 1.2": daemon.pki.client_ca.issue_cert(common_name="alex"),
    }[case]
    context = _client_context(daemon, cert=cert, tls12=case == "tls 1.2")
    with pytest.raises(purerpc.RpcFailedError) as info:
        await _list_with(daemon, context)
    assert info.value.status.status_code is Code.UNAVAILABLE
    # The daemon still serves good clients afterwards.
    async with daemon.connect("alex") as client:
        assert await client.list() == []


async def test_a_name_missing_from_the_users_file_is_unauthenticated(daemon: Daemon) -> None:
    async with daemon.connect("mallory") as client:
        await expect_code(Code.UNAUTHENTICATED, client.list(), "unknown user 'mallory'")
        await expect_code(Code.UNAUTHENTICATED, client.start(cmd="true"))
        await expect_code(Code.UNAUTHENTICATED, read_all(client, "some-job"))
    async with daemon.connect("alex") as client:
        assert await client.list() == []  # nothing was started for mallory or anyone


async def test_metadata_cannot_change_who_is_calling(daemon: Daemon) -> None:
    async with daemon.connect("alex") as alex:
        job = await alex.start(args=["sleep", "30"])
        async with daemon.connect("betty") as betty:
            for metadata in [(("user", "alex"),), (("x-user", "alex"), ("authorization", "alex"))]:
                await expect_code(
                    Code.PERMISSION_DENIED,
                    betty.stub.GetJobStatus(
                        pb.GetJobStatusRequest(job_id=job.job_id), metadata=metadata
                    ),
                    "access denied",
                )
        await alex.stop(job.job_id, 0)


# ---- owners ----------------------------------------------------------------------------


async def test_only_owners_and_admins_reach_a_job(daemon: Daemon) -> None:
    async with (
        daemon.connect("alex") as alex,
        daemon.connect("betty") as betty,
        daemon.connect("admin") as admin,
    ):
        job = await alex.start(cmd="sh -c 'echo hello; sleep 30'")
        assert job.state is JobState.ACTIVE
        assert job.owner == "alex"
        message = await expect_code(Code.PERMISSION_DENIED, betty.status(job.job_id))
        assert message == "access denied"
        await expect_code(Code.PERMISSION_DENIED, betty.stop(job.job_id), "access denied")
        await expect_code(Code.PERMISSION_DENIED, read_all(betty, job.job_id), "access denied")
        betty_job = await betty.start(args=["true"])
        assert [j.job_id for j in await alex.list()] == [job.job_id]
        assert [j.job_id for j in await betty.list()] == [betty_job.job_id]
        assert {j.job_id for j in await admin.list()} == {job.job_id, betty_job.job_id}
        assert (await admin.status(job.job_id)).owner == "alex"
        stopped = await admin.stop(job.job_id, 0)
        assert stopped.state is JobState.TERMINATED
        assert stopped.stopped_by_user
        assert await read_all(alex, job.job_id) == b"hello\n"


# ---- errors: each bad request gets its code and message -------------------------------------


async def test_bad_requests_get_their_documented_code(daemon: Daemon) -> None:
    async with daemon.connect("alex") as client:
        stub = client.stub
        await expect_code(Code.INVALID_ARGUMENT, client.start(cmd=""), "empty command")
        await expect_code(
            Code.INVALID_ARGUMENT, client.start(cmd="echo 'open"), "no closing quotation"
        )
        await expect_code(
            Code.INVALID_ARGUMENT, client.start(cmd="echo", args=["echo"]), "not both"
        )
        await expect_code(Code.INVALID_ARGUMENT, client.start(args=["a\0b"]), "NUL")
        # Limits no `model.Limits` can hold (the client refuses them before sending):
        # the server refuses them too, whoever sends them.
        for limits, what in [
            (pb.Limits(memory_bytes=-1), "memory limit"),
            (pb.Limits(cpu=0), "cpu limit"),
            (pb.Limits(pids=0), "pids limit"),
        ]:
            request = pb.StartJobRequest(cmd="true", limits=limits)
            await expect_code(Code.INVALID_ARGUMENT, stub.StartJob(request), what)
        await expect_code(
            Code.PERMISSION_DENIED,
            client.start(cmd="true", network="host"),
            "allowed: none, outbound",
        )
        await expect_code(
            Code.INVALID_ARGUMENT, client.start(cmd="true", network="bridge"), "the modes are"
        )
        await expect_code(
            Code.INVALID_ARGUMENT, client.start(cmd="true", workdir="relative"), "absolute path"
        )
        await expect_code(
            Code.FAILED_PRECONDITION, client.start(cmd="no-such-program-xyz"), "not found in PATH"
        )
        await expect_code(
            Code.NOT_FOUND, client.status("no-such-job"), "no job of yours is named 'no-such-job'"
        )
        await expect_code(Code.NOT_FOUND, client.stop("no-such-job"), "no job of yours is named")
        await expect_code(
            Code.NOT_FOUND, read_all(client, "no-such-job"), "no job of yours is named"
        )
        await expect_code(
            Code.INVALID_ARGUMENT, stub.GetJobStatus(pb.GetJobStatusRequest()), "job_id is required"
        )
        # Names and labels (issue 22), checked by jwsd whoever sends them.
        for request, what in [
            (pb.StartJobRequest(cmd="true", name="a b"), "bad job name 'a b'"),
            (
                pb.StartJobRequest(cmd="true", name="5f0c1a2b-0000-4000-8000-000000000000"),
                "reads as a job id",
            ),
            (pb.StartJobRequest(cmd="true", labels={"bad key": "v"}), "bad label key"),
            (pb.StartJobRequest(cmd="true", labels={"k": "v" * 64}), "bad label value"),
            (
                pb.StartJobRequest(cmd="true", labels={f"k{n}": "" for n in range(33)}),
                "33 labels given; at most 32",
            ),
        ]:
            await expect_code(Code.INVALID_ARGUMENT, stub.StartJob(request), what)
        for listing, what in [
            (pb.ListJobsRequest(labels={"-k": "v"}), "bad label key"),
            (pb.ListJobsRequest(state="done"), "state must be 'active' or 'ended'"),
            (pb.ListJobsRequest(created_after=time.time() + 3600), "in the future"),
        ]:
            await expect_code(Code.INVALID_ARGUMENT, stub.ListJobs(listing), what)
        await expect_code(Code.PERMISSION_DENIED, stub.ListJobs(pb.ListJobsRequest(owner="betty")))
        job = await client.start(args=["true"], name="one")
        await expect_code(
            Code.INVALID_ARGUMENT,
            client.start(args=["true"], name="one"),
            "already have a job named 'one'",
        )
        await expect_code(Code.INVALID_ARGUMENT, read_all(client, job.job_id, offset=-1), "offset")
        await expect_code(Code.INVALID_ARGUMENT, client.stop(job.job_id, grace=-1), "grace period")
        # Nothing changed: only the one good job exists.
        assert [j.job_id for j in await client.list()] == [job.job_id]


async def test_status_reports_how_a_job_ended(daemon: Daemon) -> None:
    async with daemon.connect("alex") as client:
        job = await client.start(
            args=["sh", "-c", "exit 3"], limits=Limits(memory=64 << 20, cpu=0.5)
        )
        await read_all(client, job.job_id)
        status = await client.status(job.job_id)
        assert status.state is JobState.TERMINATED
        assert status.outcome is Outcome.EXITED
        assert status.exit_code == 3
        assert status.signal is None
        assert status.spec.limits.memory == 64 << 20
        assert status.spec.limits.cpu == 0.5
        assert status.ended_at is not None and status.started_at is not None
        assert status.ended_at >= status.started_at >= status.created_at
        assert status.spec.argv == ("sh", "-c", "exit 3")
        killed = await client.start(args=["sh", "-c", "kill -9 $$"])
        await read_all(client, killed.job_id)
        status = await client.status(killed.job_id)
        assert (status.exit_code, status.signal, status.signal_name) == (137, 9, "SIGKILL")


# ---- concurrency, hang-ups, shutdown ---------------------------------------------------------


async def test_fifty_clients_at_once_get_exact_streams_and_leave_nothing(daemon: Daemon) -> None:
    async with LeakCheck():
        results: list[bool] = []

        async def one_client(i: int) -> None:
            async with daemon.connect("alex" if i % 2 else "betty") as client:
                script = f"head -c {100_000 + i} /dev/urandom | tee /dev/stderr | sha256sum >&2"
                job = await client.start(args=["sh", "-c", script])
                out = await read_all(client, job.job_id)
                payload, digest = out[: 100_000 + i], out[100_000 + i :]
                results.append(hashlib.sha256(payload).hexdigest() == digest.split()[0].decode())
                long_job = await client.start(args=["sleep", "30"])
                stopped = await client.stop(long_job.job_id, 0)
                assert stopped.state is JobState.TERMINATED

        with trio.fail_after(scaled(60)):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(one_client, i)
        assert results == [True] * 50


@pytest.mark.parametrize("noisy", [False, True], ids=["silent job", "noisy job"])
async def test_a_follower_that_hangs_up_is_gone_from_the_server_within_a_second(
    daemon: Daemon, noisy: bool
) -> None:
    async with daemon.connect("alex") as client:
        script = "yes" if noisy else "sleep 60"
        job = await client.start(args=["sh", "-c", script])
        await trio.testing.wait_all_tasks_blocked()
        baseline = task_count()
        async with daemon.connect("alex") as follower:
            with trio.move_on_after(0.3):
                await read_all(follower, job.job_id)
        await eventually(
            lambda: task_count() <= baseline, timeout=1, what="the follower's tasks end"
        )
        await client.stop(job.job_id, 0)


async def test_shutdown_ends_every_stream_and_job(tmp_path: Path, pki: TestPKI) -> None:
    require_root()
    tls_dir = pki.write_tls_dir(tmp_path / "tls", ["alex"])
    name = unique_name()
    config = DaemonConfig.of(
        tls_dir=tls_dir,
        port=0,
        data_dir=tmp_path / "data",
        stop_grace=0.5,
        cgroup_name=name,
        network_default=NetworkMode.NONE,
    )
    shutdown = trio.Event()
    children = child_pids()
    streams_ended: list[bytes] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, config, shutdown)
        async with connect(
            ("127.0.0.1", port), Credentials(tls_dir, "alex"), server_hostname="localhost"
        ) as client:
            jobs = [
                await client.start(args=["sh", "-c", "echo started; exec sleep 1000"]),
                await client.start(
                    args=["sh", "-c", "trap '' TERM; echo started; while :; do sleep 1; done"]
                ),
            ]

            async def follow(job_id: str, task_status: trio.TaskStatus[None]) -> None:
                out = bytearray()
                async with contextlib.aclosing(client.output(job_id)) as chunks:
                    async for chunk in chunks:
                        if not out:
                            task_status.started()  # it follows: the stream is open
                        out += chunk
                streams_ended.append(bytes(out))

            async with trio.open_nursery() as followers:
                for job in jobs:
                    await followers.start(follow, job.job_id)
                t0 = time.monotonic()
                shutdown.set()
        elapsed = time.monotonic() - t0
    assert elapsed < 0.5 + 3, f"shutdown took {elapsed:.1f} s"
    assert streams_ended == [b"started\n", b"started\n"]
    assert child_pids() == children
    assert not cgroups_named(name)
    # After shutdown, nothing listens any more.
    with pytest.raises(CannotReachError) as info:
        async with connect(
            ("127.0.0.1", port), Credentials(tls_dir, "alex"), server_hostname="localhost"
        ) as client:
            await client.list()
    assert rpc_status(info.value).status_code is Code.UNAVAILABLE


async def test_the_daemon_refuses_to_start_with_expired_or_missing_certificates(
    tmp_path: Path, pki: TestPKI
) -> None:
    require_root()
    from jobworker.errors import SetupError

    tls_dir = pki.write_tls_dir(tmp_path / "tls", [])
    config = DaemonConfig.of(
        tls_dir=tls_dir, port=0, data_dir=tmp_path / "data", cgroup_name="jobworker-test-unused"
    )
    expired = pki.server_ca.issue_cert(
        "localhost",
        not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2020, 2, 1, tzinfo=datetime.UTC),
    )
    expired.cert_chain_pems[0].write_to_path(str(tls_dir / "server_cert.pem"))
    with pytest.raises(SetupError, match="expired"):
        await serve(config, trio.Event())
    (tls_dir / "server_cert.pem").unlink()
    with pytest.raises(SetupError, match="server_cert.pem"):
        await serve(config, trio.Event())
    assert not (tmp_path / "data").exists()


# ---- interop: a stock grpcio client --------------------------------------------------------


def _grpcio_session(port: int, tls_dir: Path, user: str, other_job: str) -> dict[str, object]:
    """A stock grpcio (C-core) client: start, stream, status, and two errors. Runs in a thread."""
    import grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "server_ca_cert.pem").read_bytes(),
        private_key=(tls_dir / user / "client_key.pem").read_bytes(),
        certificate_chain=(tls_dir / user / "client_cert.pem").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:

        def unary(method: str, response: type) -> object:
            return channel.unary_unary(
                f"/jobworker.v1.JobWorkerService/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response.FromString,  # type: ignore[attr-defined]
            )

        started = unary("StartJob", pb.StartJobResponse)(
            pb.StartJobRequest(cmd="printf 'grpc\\0io'"), timeout=10
        )  # type: ignore[operator]
        stream = channel.unary_stream(
            "/jobworker.v1.JobWorkerService/GetJobOutput",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.GetJobOutputResponse.FromString,
        )
        output = b"".join(
            r.output_msg for r in stream(pb.GetJobOutputRequest(job_id=started.job_id), timeout=10)
        )
        status = unary("GetJobStatus", pb.GetJobStatusResponse)(
            pb.GetJobStatusRequest(job_id=started.job_id), timeout=10
        )  # type: ignore[operator]
        codes = {}
        for name, job_id in [("missing", "no-such-job"), ("other", other_job)]:
            try:
                unary("GetJobStatus", pb.GetJobStatusResponse)(
                    pb.GetJobStatusRequest(job_id=job_id), timeout=10
                )  # type: ignore[operator]
            except grpc.RpcError as exc:
                codes[name] = (exc.code().name, exc.details())
        return {"output": output, "status": status, "codes": codes}


async def test_a_stock_grpcio_client_gets_the_same_results_and_codes(daemon: Daemon) -> None:
    async with daemon.connect("betty") as betty:
        bettys = await betty.start(args=["sleep", "30"])
        result = await trio.to_thread.run_sync(
            _grpcio_session, daemon.port, daemon.tls_dir, "alex", bettys.job_id
        )
        await betty.stop(bettys.job_id, 0)
    assert result["output"] == b"grpc\0io"
    status = result["status"]
    assert status.status == "Terminated"  # type: ignore[attr-defined]
    assert status.exit_code == 0  # type: ignore[attr-defined]
    assert result["codes"] == {
        "missing": ("NOT_FOUND", "no job of yours is named 'no-such-job'"),
        "other": ("PERMISSION_DENIED", "access denied"),
    }


# ---- what one user can hold ----------------------------------------------------------------


async def test_a_user_holds_neither_more_connections_than_the_cap_nor_idle_ones_forever(
    tmp_path: Path, pki: TestPKI
) -> None:
    """Any user could hold fds up to jwsd's limit: connections that handshake and then send
    nothing were never timed out, and one user's count was not bounded."""
    files = DaemonFiles.write(tmp_path, pki, users=None, certs=["alex", "betty"])
    async with files.serving(idle_timeout=0.5, max_connections_per_user=2) as daemon:
        with trio.fail_after(20):
            async with daemon.connect("alex") as first, daemon.connect("alex") as second:
                assert await first.list() == await second.list() == []
                async with daemon.connect("alex") as third:
                    await expect_code(Code.UNAVAILABLE, third.list())
                async with daemon.connect("betty") as betty:
                    assert await betty.list() == []
            async with daemon.connect("alex") as idle:
                assert await idle.list() == []
                await trio.sleep(1.5)  # the behaviour under test: idle past the timeout
                await expect_code(Code.UNAVAILABLE, idle.list())

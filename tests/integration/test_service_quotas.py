"""Quotas and RemoveJob through jwsd's real gRPC service (in-process, real mutual TLS),
called the way a user with a valid certificate would."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import purerpc
import pytest

from jobworker.client import JobWorkerClient
from jobworker.model import JobState, JobStatus, Limits
from tests.integration.test_service import expect_code, read_all
from tests.support.certs import TestPKI
from tests.support.daemon import Daemon, DaemonFiles

pytestmark = pytest.mark.root

Code = purerpc.StatusCode

StartDaemon = Callable[..., contextlib.AbstractAsyncContextManager[Daemon]]


@pytest.fixture
def start_daemon(tmp_path: Path, pki: TestPKI) -> StartDaemon:
    """A factory: jwsd with the given DaemonConfig fields, for the block's duration."""
    return DaemonFiles.write(tmp_path, pki).serving


async def wait_terminated(client: JobWorkerClient, job_id: str) -> JobStatus:
    """The job's status once its output has ended: then it is Terminated."""
    await read_all(client, job_id)
    status = await client.status(job_id)
    assert status.state is JobState.TERMINATED
    return status


async def test_remove_is_for_owners_and_admins_of_ended_jobs_and_then_not_found(
    start_daemon: StartDaemon,
) -> None:
    async with (
        start_daemon() as daemon,
        daemon.connect("alex") as alex,
        daemon.connect("betty") as betty,
        daemon.connect("admin") as admin,
    ):
        running = await alex.start(args=["sleep", "60"])
        await expect_code(Code.FAILED_PRECONDITION, alex.remove(running.job_id), "still running")
        await alex.stop(running.job_id, 0)
        await expect_code(Code.PERMISSION_DENIED, betty.remove(running.job_id), "access denied")
        await alex.remove(running.job_id)
        await expect_code(Code.NOT_FOUND, alex.status(running.job_id))
        await expect_code(Code.NOT_FOUND, read_all(alex, running.job_id))
        await expect_code(Code.NOT_FOUND, alex.remove(running.job_id))
        await expect_code(Code.INVALID_ARGUMENT, alex.remove(""))
        assert not (daemon.config.jobs.data_dir / "jobs" / running.job_id).exists()
        # An admin removes anybody's job.
        done = await betty.start(args=["echo", "hi"])
        await wait_terminated(betty, done.job_id)
        await admin.remove(done.job_id)
        assert [job.job_id for job in await betty.list()] == []


async def test_the_running_quota_is_resource_exhausted_and_frees_up_when_a_job_ends(
    start_daemon: StartDaemon,
) -> None:
    async with (
        start_daemon(max_running_per_user=2) as daemon,
        daemon.connect("alex") as alex,
        daemon.connect("betty") as betty,
    ):
        first = await alex.start(args=["sleep", "60"])
        await alex.start(args=["sleep", "60"])
        message = await expect_code(Code.RESOURCE_EXHAUSTED, alex.start(args=["true"]))
        assert "limit per user" in message
        await betty.start(args=["true"])  # betty's quota is her own
        await alex.stop(first.job_id, 0)
        await alex.start(args=["true"])


async def test_status_says_output_was_cut_at_the_limit_and_how_much_is_on_disk(
    start_daemon: StartDaemon,
) -> None:
    async with start_daemon(max_output=1 << 20) as daemon, daemon.connect("alex") as alex:
        await expect_code(
            Code.INVALID_ARGUMENT,
            alex.start(args=["yes"], limits=Limits(output=2 << 20)),
            "above this server's maximum",
        )
        job = await alex.start(args=["yes"], limits=Limits(output=300_000))
        assert job.spec.limits.output == 300_000
        out = await read_all(alex, job.job_id)
        status = await wait_terminated(alex, job.job_id)
        assert out == b"y\n" * 150_000
        assert status.output_truncated is not None and "output limit" in status.output_truncated
        assert status.output_size == status.output_disk_bytes == 300_000
        assert status.signal_name == "SIGPIPE"
        # A job that asks for nothing gets the server's cap, and says so.
        job = await alex.start(args=["sh", "-c", "echo small"])
        status = await wait_terminated(alex, job.job_id)
        assert status.spec.limits.output == 1 << 20 and status.output_truncated is None

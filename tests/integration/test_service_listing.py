"""ListJobs through jwsd's real gRPC service (in-process, real mutual TLS): pages
that always fit what a client accepts, tokens checked, page sizes bounded, and the
per-user bound on record bytes that keeps jobs.db bounded."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import purerpc
import pytest

from jobworker.model import MAX_PAGE_SIZE
from jobworker.v1 import jobworker_pb2 as pb
from tests.integration.test_service import expect_code
from tests.integration.test_service_quotas import wait_terminated
from tests.support.certs import TestPKI
from tests.support.daemon import Daemon, DaemonFiles

pytestmark = [pytest.mark.root, pytest.mark.hierarchy_independent]

Code = purerpc.StatusCode

StartDaemon = Callable[..., contextlib.AbstractAsyncContextManager[Daemon]]

#: About 960 KB of argv: the red team's job.
BIG_ARGV = ["true", *["x" * 120_000] * 8]


@pytest.fixture
def start_daemon(tmp_path: Path, pki: TestPKI) -> StartDaemon:
    return DaemonFiles.write(tmp_path, pki).serving


async def test_jobs_with_megabyte_argvs_list_cut_and_status_gives_them_whole(
    start_daemon: StartDaemon,
) -> None:
    """Two jobs of ~960 KB argv each used to make every listing larger than a client
    accepts; now each is listed cut (and marked so), and its status has it all."""
    async with (
        start_daemon() as daemon,
        daemon.connect("betty") as betty,
        daemon.connect("admin") as admin,
    ):
        ids = [(await betty.start(args=BIG_ARGV)).job_id for _ in range(2)]
        small = await betty.start(args=["true", "short"])
        for client in (betty, admin):
            listed = await client.list()
            assert [job.job_id for job in listed] == [*ids, small.job_id]
            assert [job.argv_cut for job in listed] == [True, True, False]
            assert listed[0].spec.argv[0] == "true" and listed[2].spec.argv == ("true", "short")
        assert (await betty.status(ids[0])).spec.argv == tuple(BIG_ARGV)


async def test_pages_follow_tokens_to_every_job_once(start_daemon: StartDaemon) -> None:
    async with start_daemon() as daemon, daemon.connect("alex") as alex:
        ids = [(await alex.start(args=["true"])).job_id for _ in range(7)]
        for job_id in ids:
            await wait_terminated(alex, job_id)
        first = await alex.stub.ListJobs(pb.ListJobsRequest(page_size=3))
        assert len(first.jobs) == 3 and first.next_page_token
        assert [job.job_id for job in await alex.list(page_size=3)] == ids
        assert [job.job_id async for job in alex.jobs(page_size=1)] == ids
        assert [job.job_id for job in await alex.list(page_size=MAX_PAGE_SIZE)] == ids


@pytest.mark.parametrize("size", [0, -1, MAX_PAGE_SIZE + 1])
async def test_a_page_size_out_of_bounds_is_invalid_argument(
    start_daemon: StartDaemon, size: int
) -> None:
    async with start_daemon() as daemon, daemon.connect("alex") as alex:
        await expect_code(Code.INVALID_ARGUMENT, alex.list(page_size=size), "page_size must be")


@pytest.mark.parametrize("token", ["garbage", "A" * 34, "\u00e9" * 34, "=" * 100_000])
async def test_a_page_token_the_server_did_not_make_is_invalid_argument(
    start_daemon: StartDaemon, token: str
) -> None:
    async with start_daemon() as daemon, daemon.connect("alex") as alex:
        await alex.start(args=["true"])
        message = await expect_code(
            Code.INVALID_ARGUMENT,
            alex.stub.ListJobs(pb.ListJobsRequest(page_token=token)),
            "page_token is not one this server made",
        )
        assert token[:20] not in message  # nothing of it echoed


async def test_record_bytes_per_user_are_bounded_and_freed_by_removing_jobs(
    start_daemon: StartDaemon,
) -> None:
    """A user's records (running and kept) hold at most max_record_bytes_per_user:
    the next start is RESOURCE_EXHAUSTED saying what to remove, another user is not
    affected, and removing a job makes room."""
    async with (
        start_daemon(max_record_bytes_per_user=3 << 20) as daemon,
        daemon.connect("betty") as betty,
        daemon.connect("alex") as alex,
    ):
        ids = [(await betty.start(args=BIG_ARGV)).job_id for _ in range(3)]
        await expect_code(Code.RESOURCE_EXHAUSTED, betty.start(args=BIG_ARGV), "jws rm")
        await alex.start(args=BIG_ARGV)
        await wait_terminated(betty, ids[0])
        await betty.remove(ids[0])
        await betty.start(args=BIG_ARGV)

"""jwsd's job cgroup tree removed under it while it runs (as root, on the host's real
cgroupfs): it says so in its log, reports NOT_SERVING, rebuilds the tree and starts
jobs again, instead of failing every start with "internal error" while SERVING."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
import trio

from jobworker.v1 import health_pb2 as hpb
from tests.support.cgroupfs import cgroups_named
from tests.support.daemon import Daemon
from tests.support.timing import scaled
from tests.support.waiting import terminated

pytestmark = pytest.mark.root

Status = hpb.HealthCheckResponse.ServingStatus
CGROUPS_LOGGER = "jobworker.cgroups"


def remove_tree(name: str) -> list[Path]:
    """rmdir the job parent in every hierarchy, as an operator's clean-up script would
    (it can: with no job running they are empty)."""
    parents = cgroups_named(name)
    assert parents, "the daemon has no job parent"
    for parent in parents:
        parent.rmdir()
    return parents


async def run_a_job(daemon: Daemon) -> None:
    async with daemon.connect("alex") as client:
        job = await client.start(args=["true"])
        status = await terminated(client, job.job_id, timeout=scaled(20))
        assert status.exit_code == 0, status


async def test_a_removed_tree_is_not_serving_until_rebuilt_then_jobs_start_again(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=CGROUPS_LOGGER)
    seen: list[str] = []
    async with daemon.connect("alex") as client:
        watch = client.health_stub.Watch(hpb.HealthCheckRequest(service=""))
        with trio.fail_after(scaled(20)):
            async with contextlib.aclosing(watch) as stream:
                async for response in stream:
                    seen.append(Status.Name(response.status))
                    if len(seen) == 1:
                        parents = remove_tree(daemon.config.jobs.cgroup_name)
                    elif len(seen) == 3:
                        break
    # No start came: the daemon's own check found it (cgroupfs has no event for it).
    assert seen == ["SERVING", "NOT_SERVING", "SERVING"]
    assert all(parent.is_dir() for parent in parents)
    lines = [r.getMessage() for r in caplog.records if r.name == CGROUPS_LOGGER]
    assert len(lines) == 2, lines
    assert "was removed while jwsd runs" in lines[0] and "rebuilt" in lines[1]
    await run_a_job(daemon)


async def test_a_start_right_after_the_tree_is_removed_rebuilds_it_and_runs(
    daemon: Daemon,
) -> None:
    """The start does not wait for the daemon's timer: it checks the tree first."""
    remove_tree(daemon.config.jobs.cgroup_name)
    with trio.fail_after(scaled(30)):
        await run_a_job(daemon)
        async with daemon.connect("alex") as client:
            assert await client.health() == "SERVING"

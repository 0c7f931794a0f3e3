"""Driving a real `JobTracker` in the integration tests, in one place: a tracker on a
data dir of the test's, with a cgroup parent of its own; a job run to its end, its
output whole and its final status."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jobworker.jobs.config import TrackerConfig
from jobworker.jobs.tracker import JobTracker
from jobworker.model import JobSpec, JobState, JobStatus, NetworkMode
from tests.conftest import require_root
from tests.support.names import unique_name
from tests.support.records import assert_only_records_left


@contextlib.asynccontextmanager
async def running_tracker(
    data_dir: Path, *, check_records: bool = True, stop_grace: float = 2.0, **config: Any
) -> AsyncIterator[JobTracker]:
    """A running `JobTracker` on `data_dir` (needs root: skips, or fails under
    JOBWORKER_REQUIRE_ROOT=1), under a fresh cgroup name, whose jobs get loopback only
    unless they ask (`network_default` "none": the network is what few tests are
    about); `config` sets any other `TrackerConfig` field. Once it has exited, only
    the job records may be left in the data dir (`check_records=False` for a test
    that leaves more on purpose)."""
    require_root()
    defaults = {"cgroup_name": unique_name(), "network_default": NetworkMode.NONE}
    async with JobTracker(
        TrackerConfig(data_dir=data_dir, stop_grace=stop_grace, **{**defaults, **config})
    ) as tracker:
        yield tracker
    if check_records:
        assert_only_records_left(data_dir)


async def run_to_end(
    tracker: JobTracker, spec: JobSpec, owner: str = "alex"
) -> tuple[bytes, JobStatus]:
    """Start `spec` for `owner`, read every byte of its output (from a subscription), and
    return it with the job's status, which must then be Terminated."""
    status = await tracker.start(owner, spec)
    out = bytearray()
    async with tracker.subscribe(owner, status.job_id) as chunks:
        async for chunk in chunks:
            out += chunk
    final = tracker.status(owner, status.job_id)
    assert final.state is JobState.TERMINATED
    return bytes(out), final

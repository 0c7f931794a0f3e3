"""A job's status survives the trip through the API: what the server sends from a
`JobStatus` the client reads back as the same `JobStatus`, but for what the API
does not carry (environment, working directory, the OOM kill count)."""

from __future__ import annotations

import attrs

from jobworker.messages import status_from_proto, status_to_proto
from jobworker.model import JobSpec, JobState, JobStatus, Limits, NetworkMode, Outcome, Usage


def test_a_status_read_back_from_the_wire_is_the_one_sent() -> None:
    sent = JobStatus(
        job_id="4cca9dfe-5693-4e63-b15d-701d36c7de92",
        owner="alex",
        spec=JobSpec(argv=("sh", "-c", "exit 3"), limits=Limits(cpu=0.5, memory=64 << 20)),
        state=JobState.TERMINATED,
        created_at=100.0,
        started_at=100.5,
        ended_at=102.0,
        outcome=Outcome.OOM_KILLED,
        exit_code=137,
        signal=9,
        usage=Usage(cpu_ns=12_345, peak_memory=64 << 20, oom_kills=1),
        output_size=2048,
        output_disk_bytes=1024,
        output_truncated="the output limit of 2048 bytes was reached",
        workdir_bytes=4096,
    )
    assert status_from_proto(status_to_proto(sent)) == sent
    running = attrs.evolve(
        sent,
        state=JobState.ACTIVE,
        ended_at=None,
        outcome=None,
        exit_code=None,
        signal=None,
        usage=Usage(),
        output_truncated=None,
        spec=JobSpec(argv=("true",), env={"A": "1"}, workdir="/tmp", network=NetworkMode.HOST),
    )
    assert status_from_proto(status_to_proto(running)) == attrs.evolve(
        running, spec=JobSpec(argv=("true",), network=NetworkMode.HOST)
    )

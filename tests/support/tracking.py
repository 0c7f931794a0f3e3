"""Driving a real `JobTracker` in the integration tests: a job run to its end, its
output whole and its final status, in one place."""

from __future__ import annotations

from jobworker.jobs.tracker import JobTracker
from jobworker.model import JobSpec, JobState, JobStatus


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

"""Waiting for a condition that offers no event to wait on, in one place.

Tests wait for events (`trio.Event`, a chunk of output, `wait_all_tasks_blocked`)
wherever the code under test offers one. What happens outside this process (a
process of a job exiting, the kernel moving a pid between cgroups, a child being
reaped) offers none we can block on, so it is polled here, under a deadline that
turns a hang into a failure that names the condition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from jobworker.model import JobState, JobStatus

if TYPE_CHECKING:
    from jobworker.client import JobWorkerClient

#: Seconds between two looks at an outside condition.
POLL_INTERVAL = 0.01


async def eventually(
    condition: Callable[[], object],
    *,
    timeout: float,  # noqa: ASYNC109 - the deadline is part of the check, named in its failure
    what: str,
) -> None:
    """Return once `condition()` is true; fail (TooSlowError naming `what`) after `timeout` s."""
    try:
        with trio.fail_after(timeout):
            while not condition():
                # Polling an outside state (processes, the kernel): there is no event to await.
                await trio.sleep(POLL_INTERVAL)
    except trio.TooSlowError:
        raise trio.TooSlowError(f"not within {timeout:g} s: {what}") from None


def eventually_blocking(condition: Callable[[], object], *, timeout: float, what: str) -> None:
    """`eventually` for tests outside trio (they drive other processes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g} s: {what}")
        # Polling an outside state (processes, the kernel): there is no event to await.
        time.sleep(POLL_INTERVAL)


async def terminated(
    client: JobWorkerClient,
    job_id: str,
    *,
    timeout: float,  # noqa: ASYNC109 - the deadline is part of the check, named in its failure
) -> JobStatus:
    """The job's status once it is Terminated, for a test that does not follow the
    job's output (the end of the output is the API's event for it: the job is
    Terminated once its stream has ended). Polled."""
    status = await client.status(job_id)
    try:
        with trio.fail_after(timeout):
            while status.state is not JobState.TERMINATED:
                await trio.sleep(POLL_INTERVAL)
                status = await client.status(job_id)
    except trio.TooSlowError:
        raise trio.TooSlowError(f"not within {timeout:g} s: job {job_id} terminated") from None
    return status

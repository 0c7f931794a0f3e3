"""Named fault points: the moments where a crash of jwsd is hardest to recover from,
named so that a test can kill jwsd exactly there (tests/e2e/test_crash.py).

`reach(name)` marks a point in the code. With `JOBWORKER_FAULT_POINT=NAME` in
jwsd's environment, the first time execution reaches the point NAME the process
SIGKILLs itself: no clean-up, no finally block, no flush, as the OOM killer or a
power cut would leave things. Without the variable (always, outside tests) a
point costs one comparison. Only whoever starts jwsd sets its environment, so
this gives no one a power they did not have.

The points, in a job's life (see docs/architecture.md, "State on disk"):
"""

from __future__ import annotations

import os
import signal
import sys

#: Every point, and what is on disk when jwsd dies there.
POINTS: dict[str, str] = {
    "start.cgroup-made": "a job's cgroup and dir exist; its record may not, nothing runs yet",
    "start.launched": "the job runs and its first record is written; the caller has no answer",
    "stop.recorded": "a stop is recorded; no signal has been sent",
    "job.exited": "the job's supervisor has exited; its record still says Active",
    "finish.cleaned": "the job's cgroup and work dir are gone; its record still says Active",
    "finish.recorded": "how the job ended is written; nobody has been told",
    "forget.unrecorded": "a removed job's record is deleted; its output and dir remain",
    "call.audited": "a call's audit record is written; its answer has not left",
}

__doc__ += "".join(f"\n* `{name}`: {what}." for name, what in POINTS.items())

_ARMED = os.environ.get("JOBWORKER_FAULT_POINT", "")


def check_environment() -> None:
    """Raise ValueError when JOBWORKER_FAULT_POINT names no point (a typo would
    otherwise arm nothing, and a crash test would silently test nothing)."""
    if _ARMED and _ARMED not in POINTS:
        raise ValueError(
            f"JOBWORKER_FAULT_POINT={_ARMED} names no fault point; use one of {', '.join(POINTS)}"
        )


def reach(name: str) -> None:
    """Execution is at fault point `name`: die here if the environment says so."""
    assert name in POINTS, name
    if name == _ARMED:
        print(f"jwsd: fault point {name}: killing myself", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

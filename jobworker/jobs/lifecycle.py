"""A job's lifecycle, sans I/O: the phases and the one table of moves between them,
how a job's end becomes its outcome, and the restart reconcile table as code.

Everything that affects a job's phase lives here, as h11's `_state.py` has it for
HTTP: the tracker tells a `Lifecycle` what happened (`Event`), and the table says
where that leads; an event the table does not list for the phase raises
BadStateError, so a bug cannot resurrect a terminated job or report an end before
a start. Nothing here does I/O or knows of trio, the sandbox or the store, so
every row is tested in memory (tests/unit/test_lifecycle.py).

    STARTING ──launched──▶ ACTIVE ──stop──▶ STOPPING
       │                     │                 │
       │ start failed        │ exited          │ exited
       ▼                     ▼                 ▼
    DISCARDED            FINISHING ◀───────────┘
                             │ recorded (the terminal record is on disk)
                             ▼
                         TERMINATED

The API shows three of the seed's states (`Phase.state`): STARTING is Pending;
ACTIVE, STOPPING and FINISHING are Active (the command, or its clean-up, still
runs); TERMINATED and DISCARDED are Terminated. A DISCARDED job is dropped from
the tracker at once: a start that failed leaves nothing.

Phases replace what were flags beside a three-state machine: a stop asked for
(STOPPING, and its `StopCause`), a time limit's stop (`StopCause.TIME_LIMIT`),
a terminal record being written (FINISHING: no other write of the job's record
may follow it).
"""

from __future__ import annotations

import enum
import signal
from typing import Final

import attrs

from jobworker.errors import BadStateError
from jobworker.model import JobState, Outcome, shell_status


class Phase(enum.Enum):
    """Where a job is in its life; `state` is what the API says of it."""

    STARTING = "starting"  # accepted; its cgroup and sandbox are being made
    ACTIVE = "active"  # its command runs
    STOPPING = "stopping"  # a stop was asked for: SIGTERM, the grace period, SIGKILL
    FINISHING = "finishing"  # its supervisor has exited: clean-up, then the terminal record
    TERMINATED = "terminated"  # its end is on disk, and everyone may learn of it
    DISCARDED = "discarded"  # its start failed; nothing of it is left

    @property
    def state(self) -> JobState:
        return _STATE[self]

    @property
    def ended(self) -> bool:
        """Whether the job has ended for good (nothing will change it any more)."""
        return self in (Phase.TERMINATED, Phase.DISCARDED)


_STATE: Final = {
    Phase.STARTING: JobState.PENDING,
    Phase.ACTIVE: JobState.ACTIVE,
    Phase.STOPPING: JobState.ACTIVE,
    Phase.FINISHING: JobState.ACTIVE,
    Phase.TERMINATED: JobState.TERMINATED,
    Phase.DISCARDED: JobState.TERMINATED,
}


class Event(enum.Enum):
    """What can happen to a job."""

    LAUNCHED = "launched"  # its command runs (the sandbox said it is ready)
    START_FAILED = "start failed"  # its start failed or was cancelled half-way
    STOP = "stop"  # a stop was asked for (a user, its time limit, shutdown)
    EXITED = "exited"  # its supervisor (bubblewrap) has exited
    RECORDED = "recorded"  # its terminal record is written (or could not be, and that is said)


class StopCause(enum.Enum):
    """Who asked for a stop; it decides the outcome of the job it ends."""

    USER = "user"  # StopJob, or jwsd's shutdown: outcome "stopped"
    TIME_LIMIT = "time limit"  # the job ran past `Limits.timeout`: outcome "timed-out"


#: The one table of moves: (phase, event) → the next phase. A pair that is not here
#: is a bug in the caller (BadStateError). A stop of a job whose supervisor has
#: already exited changes nothing: it ended by itself, and its outcome says so.
TRANSITIONS: Final[dict[tuple[Phase, Event], Phase]] = {
    (Phase.STARTING, Event.LAUNCHED): Phase.ACTIVE,
    (Phase.STARTING, Event.START_FAILED): Phase.DISCARDED,
    (Phase.ACTIVE, Event.STOP): Phase.STOPPING,
    (Phase.ACTIVE, Event.EXITED): Phase.FINISHING,
    (Phase.STOPPING, Event.STOP): Phase.STOPPING,
    (Phase.STOPPING, Event.EXITED): Phase.FINISHING,
    (Phase.FINISHING, Event.STOP): Phase.FINISHING,
    (Phase.FINISHING, Event.RECORDED): Phase.TERMINATED,
    (Phase.TERMINATED, Event.STOP): Phase.TERMINATED,
}


@attrs.define
class Lifecycle:
    """One job's phase, and the cause of the stop that ends it (if one did).

    `handle` is the only way to change them. Restored jobs start in the phase the
    reconcile table gives them (`for_restored`)."""

    phase: Phase = Phase.STARTING
    stop_cause: StopCause | None = None

    def handle(self, event: Event, *, cause: StopCause | None = None) -> bool:
        """Move on `event` (a STOP with its `cause`); return whether the phase changed.

        The first stop's cause is the one kept: a user's stop that comes after the time
        limit's does not turn "timed-out" into "stopped", nor the other way round.
        Raises BadStateError for an event the table does not allow in this phase."""
        try:
            new = TRANSITIONS[self.phase, event]
        except KeyError:
            raise BadStateError(
                f"a job cannot handle {event.value!r} while {self.phase.value}"
            ) from None
        if event is Event.STOP:
            if cause is None:
                raise ValueError("a stop needs its cause")
            if self.phase is Phase.ACTIVE:
                self.stop_cause = cause
        changed = new is not self.phase
        self.phase = new
        return changed

    @classmethod
    def for_restored(cls, decision: Decision) -> Lifecycle:
        """The lifecycle of a job the reconcile table decided on after a restart."""
        if isinstance(decision, TakeOver):
            if decision.stop is None:
                return cls(Phase.ACTIVE)
            return cls(Phase.STOPPING, decision.stop)
        return cls(Phase.TERMINATED)


# ---- how a job's end becomes its outcome -------------------------------------------


def outcome(
    *, exit_code: int, signum: int | None, oom_kills: int, stop: StopCause | None
) -> Outcome:
    """How a job ended: OOM-killed when the OOM killer struck in its cgroup and it did
    not exit 0 (a child killed at the limit whose parent went on is no OOM end);
    else stopped or timed out when a stop was asked for before it ended; else
    killed by a signal; else exited."""
    if oom_kills and exit_code != 0:
        return Outcome.OOM_KILLED
    if stop is StopCause.TIME_LIMIT:
        return Outcome.TIMED_OUT
    if stop is StopCause.USER:
        return Outcome.STOPPED
    if signum is not None:
        return Outcome.SIGNALED
    return Outcome.EXITED


def stop_cause(stop_requested: bool, timed_out: bool) -> StopCause | None:
    """The stop cause a record's two fields stand for."""
    if not stop_requested:
        return None
    return StopCause.TIME_LIMIT if timed_out else StopCause.USER


# ---- the reconcile table -------------------------------------------------------------


@attrs.frozen
class HostView:
    """What the host shows of a job whose record says it had not ended, when a new jwsd
    starts (the sandbox reads it: `jobworker.sandbox`).

    supervisor_running: its supervisor (bubblewrap: the recorded pid with the recorded
        start time, or for a job recorded while starting, the parent of the sandbox
        init named in its status file) still runs, in the job's cgroup.
    sandbox_started: bubblewrap's status file names the sandbox's init: the sandbox
        was built (the command may have run).
    exit_code: the exit code bubblewrap wrote to its status file (None: it wrote none,
        because it was killed, or had not got that far).
    oom_kills: OOM kills counted in the job's cgroup, if it was still there.
    """

    supervisor_running: bool
    sandbox_started: bool = False
    exit_code: int | None = None
    oom_kills: int = 0


@attrs.frozen
class Keep:
    """A Terminated record: shown as it was. output_lost: its job dir is gone, so its
    status says its output is lost."""

    output_lost: bool = False


@attrs.frozen
class TakeOver:
    """Its supervisor still runs: the job is taken over, Active, as if jwsd had never
    left. stop: a stop that was recorded before jwsd died (and maybe never signalled):
    it is carried out (SIGTERM, the grace, SIGKILL)."""

    stop: StopCause | None = None


@attrs.frozen
class EndedWhileAway:
    """It ended while no jwsd ran: Terminated exactly as it would have been."""

    exit_code: int
    signal: int | None
    outcome: Outcome


@attrs.frozen
class Lost:
    """It is gone without an exit status: Terminated, outcome lost, for this reason."""

    reason: str


Decision = Keep | TakeOver | EndedWhileAway | Lost

LOST_STARTING: Final = "jwsd stopped while the job was starting; its output until then is kept"
LOST_SUPERVISOR: Final = (
    "the job's supervisor (bubblewrap) was gone, without an exit status, when jwsd "
    "started again; its output until then is kept"
)


def reconcile(
    state: JobState,
    *,
    stop: StopCause | None,
    job_dir_exists: bool,
    host: HostView | None,
) -> Decision:
    """The reconcile table (docs/architecture.md, "State on disk"): what becomes of a
    recorded job when jwsd starts, from its record (`state`, the `stop` recorded for
    it) and what the host shows of it (`host`; not looked at for a Terminated record,
    None there).

    | record               | the host shows                         | decision        |
    | Terminated           | its job dir                            | Keep            |
    | Terminated           | no job dir                             | Keep, output lost |
    | Active or Pending    | supervisor running                     | TakeOver        |
    | Active, stop recorded| supervisor running                     | TakeOver(stop)  |
    | Active or Pending    | supervisor gone, an exit code          | EndedWhileAway  |
    | Active, stop recorded| supervisor gone, no exit code          | EndedWhileAway (SIGKILL, stopped) |
    | Active or Pending    | gone, no exit code, OOM kills          | EndedWhileAway (SIGKILL, OOM) |
    | Pending              | nothing, the sandbox never started     | Lost (while starting) |
    | Active or Pending    | gone, no exit code, nothing else       | Lost (supervisor gone) |

    A stop or the OOM killer SIGKILLs bubblewrap with the rest of the cgroup before it
    can write an exit code: that is how such a job ended."""
    if state is JobState.TERMINATED:
        return Keep(output_lost=not job_dir_exists)
    if host is None:
        raise ValueError("a job that had not ended needs what the host shows of it")
    if host.supervisor_running:
        return TakeOver(stop=stop)
    code: int | None = host.exit_code
    if code is None and (stop is not None or host.oom_kills):
        code = -signal.SIGKILL
    if code is None:
        starting = state is JobState.PENDING and not host.sandbox_started
        return Lost(LOST_STARTING if starting else LOST_SUPERVISOR)
    exit_code, signum = shell_status(code)
    return EndedWhileAway(
        exit_code=exit_code,
        signal=signum,
        outcome=outcome(exit_code=exit_code, signum=signum, oom_kills=host.oom_kills, stop=stop),
    )


__all__ = [
    "TRANSITIONS",
    "Decision",
    "EndedWhileAway",
    "Event",
    "HostView",
    "Keep",
    "Lifecycle",
    "Lost",
    "Phase",
    "StopCause",
    "TakeOver",
    "outcome",
    "reconcile",
    "stop_cause",
]

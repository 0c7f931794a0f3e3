"""The job lifecycle in memory: the table of moves, the outcome rules, and every row
of the restart reconcile table (docs/architecture.md, "State on disk"), without root."""

from __future__ import annotations

import signal

import pytest

from jobworker.errors import BadStateError
from jobworker.jobs.lifecycle import (
    LOST_STARTING,
    LOST_SUPERVISOR,
    TRANSITIONS,
    EndedWhileAway,
    Event,
    HostView,
    Keep,
    Lifecycle,
    Lost,
    Phase,
    StopCause,
    TakeOver,
    outcome,
    reconcile,
    stop_cause,
)
from jobworker.model import JobState, Outcome, shell_status

# ---- the table of moves ----------------------------------------------------------------


def test_a_job_that_runs_and_exits_goes_through_every_phase_once() -> None:
    life = Lifecycle()
    assert life.phase is Phase.STARTING and life.phase.state is JobState.PENDING
    for event, phase in [
        (Event.LAUNCHED, Phase.ACTIVE),
        (Event.EXITED, Phase.FINISHING),
        (Event.RECORDED, Phase.TERMINATED),
    ]:
        assert life.handle(event)
        assert life.phase is phase
    assert life.phase.state is JobState.TERMINATED and life.phase.ended
    assert life.stop_cause is None


def test_a_stopped_job_is_active_until_its_end_is_recorded() -> None:
    life = Lifecycle()
    life.handle(Event.LAUNCHED)
    assert life.handle(Event.STOP, cause=StopCause.USER)
    assert life.phase is Phase.STOPPING and life.phase.state is JobState.ACTIVE
    life.handle(Event.EXITED)
    assert life.phase is Phase.FINISHING and life.phase.state is JobState.ACTIVE
    life.handle(Event.RECORDED)
    assert (life.phase, life.stop_cause) == (Phase.TERMINATED, StopCause.USER)


def test_the_first_stops_cause_is_kept() -> None:
    """A user's stop after the time limit's does not make a timed-out job "stopped"."""
    life = Lifecycle(Phase.ACTIVE)
    life.handle(Event.STOP, cause=StopCause.TIME_LIMIT)
    assert not life.handle(Event.STOP, cause=StopCause.USER)
    assert life.stop_cause is StopCause.TIME_LIMIT


@pytest.mark.parametrize("phase", [Phase.FINISHING, Phase.TERMINATED])
def test_a_stop_after_the_job_ended_by_itself_changes_nothing(phase: Phase) -> None:
    life = Lifecycle(phase)
    assert not life.handle(Event.STOP, cause=StopCause.USER)
    assert (life.phase, life.stop_cause) == (phase, None)


def test_a_failed_start_is_discarded_and_shown_terminated() -> None:
    life = Lifecycle()
    life.handle(Event.START_FAILED)
    assert life.phase is Phase.DISCARDED and life.phase.ended
    assert life.phase.state is JobState.TERMINATED


ILLEGAL = [
    (phase, event) for phase in Phase for event in Event if (phase, event) not in TRANSITIONS
]


@pytest.mark.parametrize(("phase", "event"), ILLEGAL, ids=lambda v: v.value)
def test_every_move_the_table_does_not_list_raises(phase: Phase, event: Event) -> None:
    life = Lifecycle(phase)
    with pytest.raises(BadStateError, match=f"while {phase.value}"):
        life.handle(event, cause=StopCause.USER)
    assert life.phase is phase


def test_nothing_leaves_an_ended_phase_but_a_harmless_stop() -> None:
    for (phase, _event), new in TRANSITIONS.items():
        if phase.ended:
            assert new is phase
    assert not [pair for pair in TRANSITIONS if pair[0] is Phase.DISCARDED]


def test_the_api_state_only_moves_forward() -> None:
    """Pending, then Active, then Terminated: no move of the table goes back."""
    order = [JobState.PENDING, JobState.ACTIVE, JobState.TERMINATED]
    for (phase, _event), new in TRANSITIONS.items():
        assert order.index(new.state) >= order.index(phase.state), (phase, new)


def test_a_stop_needs_its_cause() -> None:
    with pytest.raises(ValueError, match="cause"):
        Lifecycle(Phase.ACTIVE).handle(Event.STOP)


def test_restored_jobs_start_where_the_reconcile_table_puts_them() -> None:
    assert Lifecycle.for_restored(TakeOver()) == Lifecycle(Phase.ACTIVE)
    assert Lifecycle.for_restored(TakeOver(StopCause.USER)) == Lifecycle(
        Phase.STOPPING, StopCause.USER
    )
    for decision in (Keep(), Lost("x"), EndedWhileAway(0, None, Outcome.EXITED)):
        assert Lifecycle.for_restored(decision).phase is Phase.TERMINATED


# ---- outcome rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, (0, None)),
        (3, (3, None)),
        (-9, (137, 9)),
        (-15, (143, 15)),
        (137, (137, 9)),
        (128, (128, None)),
        (192, (192, 64)),
        (193, (193, None)),
    ],
)
def test_exit_status_in_shell_terms(code: int, expected: tuple[int, int | None]) -> None:
    assert shell_status(code) == expected


@pytest.mark.parametrize(
    ("exit_code", "signum", "oom_kills", "stop", "expected"),
    [
        (0, None, 0, None, Outcome.EXITED),
        (3, None, 0, None, Outcome.EXITED),
        (143, 15, 0, None, Outcome.SIGNALED),
        (137, 9, 1, None, Outcome.OOM_KILLED),
        (137, 9, 1, StopCause.USER, Outcome.OOM_KILLED),
        (0, None, 1, None, Outcome.EXITED),  # a child was OOM-killed; the job went on
        (143, 15, 0, StopCause.USER, Outcome.STOPPED),
        (0, None, 0, StopCause.USER, Outcome.STOPPED),
        (143, 15, 0, StopCause.TIME_LIMIT, Outcome.TIMED_OUT),
    ],
)
def test_outcome_rules(
    exit_code: int, signum: int | None, oom_kills: int, stop: StopCause | None, expected: Outcome
) -> None:
    assert outcome(exit_code=exit_code, signum=signum, oom_kills=oom_kills, stop=stop) is expected


def test_a_records_stop_fields_name_the_cause() -> None:
    assert stop_cause(False, False) is None
    assert stop_cause(True, False) is StopCause.USER
    assert stop_cause(True, True) is StopCause.TIME_LIMIT


# ---- the reconcile table, row by row ---------------------------------------------------

RUNNING = HostView(supervisor_running=True, sandbox_started=True)


def test_row_terminated_is_shown_as_it_was() -> None:
    decision = reconcile(JobState.TERMINATED, stop=None, job_dir_exists=True, host=None)
    assert decision == Keep(output_lost=False)


def test_row_terminated_with_its_job_dir_gone_says_the_output_is_lost() -> None:
    decision = reconcile(JobState.TERMINATED, stop=None, job_dir_exists=False, host=None)
    assert decision == Keep(output_lost=True)


@pytest.mark.parametrize("state", [JobState.ACTIVE, JobState.PENDING])
def test_row_running_supervisor_is_taken_over(state: JobState) -> None:
    """Pending too: jwsd died between the start's response and the record naming
    bubblewrap, found as the parent of the status file's child-pid."""
    assert reconcile(state, stop=None, job_dir_exists=True, host=RUNNING) == TakeOver()


@pytest.mark.parametrize("cause", list(StopCause))
def test_row_a_recorded_stop_of_a_running_job_is_carried_out(cause: StopCause) -> None:
    decision = reconcile(JobState.ACTIVE, stop=cause, job_dir_exists=True, host=RUNNING)
    assert decision == TakeOver(stop=cause)


@pytest.mark.parametrize(
    ("code", "exit_code", "signum", "expected"),
    [(0, 0, None, Outcome.EXITED), (3, 3, None, Outcome.EXITED), (143, 143, 15, Outcome.SIGNALED)],
)
def test_row_gone_with_an_exit_code_ended_exactly_as_it_would_have(
    code: int, exit_code: int, signum: int | None, expected: Outcome
) -> None:
    host = HostView(supervisor_running=False, sandbox_started=True, exit_code=code)
    decision = reconcile(JobState.ACTIVE, stop=None, job_dir_exists=True, host=host)
    assert decision == EndedWhileAway(exit_code, signum, expected)


def test_row_gone_with_an_exit_code_after_a_recorded_stop_is_stopped() -> None:
    host = HostView(supervisor_running=False, sandbox_started=True, exit_code=143)
    decision = reconcile(JobState.ACTIVE, stop=StopCause.USER, job_dir_exists=True, host=host)
    assert decision == EndedWhileAway(143, 15, Outcome.STOPPED)


@pytest.mark.parametrize(
    ("cause", "expected"),
    [(StopCause.USER, Outcome.STOPPED), (StopCause.TIME_LIMIT, Outcome.TIMED_OUT)],
)
def test_row_gone_without_an_exit_code_after_a_recorded_stop_was_killed_by_it(
    cause: StopCause, expected: Outcome
) -> None:
    """The stop SIGKILLs bubblewrap with the rest of the cgroup before it writes a code."""
    host = HostView(supervisor_running=False, sandbox_started=True)
    decision = reconcile(JobState.ACTIVE, stop=cause, job_dir_exists=True, host=host)
    assert decision == EndedWhileAway(128 + signal.SIGKILL, signal.SIGKILL, expected)


def test_row_gone_without_an_exit_code_with_oom_kills_was_oom_killed() -> None:
    host = HostView(supervisor_running=False, sandbox_started=True, oom_kills=1)
    decision = reconcile(JobState.ACTIVE, stop=None, job_dir_exists=True, host=host)
    assert decision == EndedWhileAway(137, 9, Outcome.OOM_KILLED)


def test_row_gone_without_an_exit_code_is_lost() -> None:
    host = HostView(supervisor_running=False, sandbox_started=True)
    decision = reconcile(JobState.ACTIVE, stop=None, job_dir_exists=True, host=host)
    assert decision == Lost(LOST_SUPERVISOR)


def test_row_pending_with_nothing_running_is_lost_while_starting() -> None:
    host = HostView(supervisor_running=False, sandbox_started=False)
    decision = reconcile(JobState.PENDING, stop=None, job_dir_exists=True, host=host)
    assert decision == Lost(LOST_STARTING)
    assert "while the job was starting" in LOST_STARTING


def test_row_pending_whose_sandbox_started_and_went_is_lost_with_its_supervisor() -> None:
    host = HostView(supervisor_running=False, sandbox_started=True)
    decision = reconcile(JobState.PENDING, stop=None, job_dir_exists=True, host=host)
    assert decision == Lost(LOST_SUPERVISOR)


def test_a_job_that_had_not_ended_needs_what_the_host_shows() -> None:
    with pytest.raises(ValueError, match="what the host shows"):
        reconcile(JobState.ACTIVE, stop=None, job_dir_exists=True, host=None)

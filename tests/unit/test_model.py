"""Requests validate themselves: bad input raises a clear error before anything happens."""

from __future__ import annotations

import os

import pytest

from jobworker.errors import InvalidRequestError, JobNotFoundError
from jobworker.limits import MAX_BYTES, check_host
from jobworker.model import (
    MAX_ARG_BYTES,
    MAX_ARGS,
    MAX_COMMAND_BYTES,
    MAX_ENV,
    MAX_ENV_NAME_BYTES,
    MAX_WORKDIR_BYTES,
    JobSpec,
    JobState,
    JobStatus,
    Limits,
    Outcome,
    check_job_id,
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu": 0}, "positive number of cores"),
        ({"cpu": -1}, "positive number of cores"),
        ({"cpu": float("nan")}, "positive number of cores"),
        ({"cpu": float("inf")}, "positive number of cores"),
        ({"cpu": 0.001}, "below the minimum"),
        ({"memory": -5}, "at least"),
        ({"memory": 1024}, "at least"),
        ({"memory": MAX_BYTES + 1}, "absurd"),
        ({"io_read_bps": 0}, "at least"),
        ({"io_write_bps": -1}, "at least"),
        ({"pids": 0}, "between 1 and"),
        ({"pids": 10**9}, "between 1 and"),
    ],
)
def test_absurd_limits_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_more_cores_than_the_host_has_are_a_valid_limit_the_server_refuses() -> None:
    """A client reads a status of a host with more cores than its own; the server,
    which runs the job, refuses what its own host cannot give."""
    more = Limits(cpu=(os.cpu_count() or 1) + 1)
    with pytest.raises(InvalidRequestError, match="more than this host"):
        check_host(more)
    check_host(Limits(cpu=1))


def test_limits_merge_fills_only_unset_fields() -> None:
    merged = Limits(cpu=0.5).merged_over(Limits(cpu=1, memory=64 << 20, pids=10))
    assert merged == Limits(cpu=0.5, memory=64 << 20, pids=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"argv": []}, "empty command"),
        ({"argv": [""]}, "empty command"),
        ({"argv": ["echo", "a\0b"]}, "NUL"),
        ({"argv": ["env"], "env": {"A=B": "x"}}, "bad environment variable"),
        ({"argv": ["env"], "env": {"": "x"}}, "bad environment variable"),
        ({"argv": ["env"], "env": {"A": "x\0"}}, "NUL byte in its value"),
        ({"argv": ["ls"], "workdir": "relative/dir"}, "absolute path"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        JobSpec(**kwargs)  # type: ignore[arg-type]


def test_status_names_the_signal_and_oom() -> None:
    status = JobStatus(
        job_id="x",
        owner="alex",
        spec=JobSpec(argv=["true"]),
        state=JobState.TERMINATED,
        created_at=0.0,
        outcome=Outcome.OOM_KILLED,
        exit_code=137,
        signal=9,
    )
    assert status.signal_name == "SIGKILL"
    assert status.oom_killed


MIB = 1 << 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"argv": ["true"] * (MAX_ARGS + 1)}, f"at most {MAX_ARGS}"),
        ({"argv": ["echo", "x" * (MAX_ARG_BYTES + 1)]}, f"longer than {MAX_ARG_BYTES} bytes"),
        ({"argv": ["echo", "é" * (MAX_ARG_BYTES // 2 + 1)]}, "longer than"),
        ({"argv": ["echo"] + ["x" * (100 << 10)] * 11}, f"at most {MAX_COMMAND_BYTES}"),
        ({"argv": ["env"], "env": {f"V{i}": "" for i in range(MAX_ENV + 1)}}, f"at most {MAX_ENV}"),
        ({"argv": ["env"], "env": {"K" * (MAX_ENV_NAME_BYTES + 1): ""}}, "names must be 1 to"),
        ({"argv": ["env"], "env": {"K": "v" * MAX_ARG_BYTES}}, "longer than"),
        (
            {"argv": ["env"], "env": {f"V{i}": "v" * (100 << 10) for i in range(11)}},
            "at most",
        ),
        ({"argv": ["ls"], "workdir": "/" + "d" * MAX_WORKDIR_BYTES}, "longer than 4095"),
    ],
)
def test_every_size_and_count_is_bounded(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message) as caught:
        JobSpec(**kwargs)  # type: ignore[arg-type]
    assert len(str(caught.value)) < 300  # the value is echoed short


def test_specs_at_the_bounds_are_accepted() -> None:
    JobSpec(
        argv=["echo", "x" * MAX_ARG_BYTES, *["a"] * (MAX_ARGS - 2)],
        env={f"V{i}": "1" for i in range(MAX_ENV)},
        workdir="/" + "d" * (MAX_WORKDIR_BYTES - 1),
    )


def test_a_job_id_is_a_canonical_uuid() -> None:
    job_id = "4cca9dfe-5693-4e63-b15d-701d36c7de92"
    assert check_job_id(job_id) == job_id
    with pytest.raises(InvalidRequestError, match="job_id is required"):
        check_job_id("")
    for bad in [job_id.upper(), job_id + "0", "x" * MIB, "no-such-job", job_id[:-1] + "\n"]:
        with pytest.raises(JobNotFoundError) as caught:
            check_job_id(bad)
        assert len(str(caught.value)) < 100 and "\n" not in str(caught.value)


def test_stopped_by_user_is_the_stopped_outcome_in_one_place() -> None:
    """`stopped_by_user` is derived from `outcome`, never set beside it: the two cannot disagree."""

    def ended(outcome: Outcome) -> JobStatus:
        return JobStatus(
            job_id="x",
            owner="alex",
            spec=JobSpec(argv=["true"]),
            state=JobState.TERMINATED,
            created_at=0.0,
            outcome=outcome,
        )

    assert ended(Outcome.STOPPED).stopped_by_user
    assert not ended(Outcome.SIGNALED).stopped_by_user
    with pytest.raises(TypeError):
        JobStatus(  # type: ignore[call-arg]
            job_id="x",
            owner="alex",
            spec=JobSpec(argv=["true"]),
            state=JobState.TERMINATED,
            created_at=0.0,
            stopped_by_user=True,
        )


def test_outcomes_are_only_those_the_tracker_sets() -> None:
    """No outcome is declared that nothing sets ("lost": the tracker's restore;
    "timed-out": a job's time limit)."""
    assert {outcome.value for outcome in Outcome} == {
        "exited",
        "signaled",
        "oom-killed",
        "stopped",
        "timed-out",
        "lost",
    }

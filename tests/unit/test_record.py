"""JobRecord: the one form of a job's data, in memory and on disk."""

from __future__ import annotations

import json

from jobworker.jobs.lifecycle import StopCause
from jobworker.jobs.record import JobRecord
from jobworker.model import JobSpec, JobState, Limits, NetworkMode, Outcome, Usage


def test_a_new_record_keeps_the_environments_names_never_its_values() -> None:
    spec = JobSpec(argv=("env",), env={"API_TOKEN": "supersecret"}, limits=Limits(pids=8))
    record = JobRecord.new("id", "alex", spec, created_at=1.0)
    assert record.env_keys == ("API_TOKEN",)
    assert "supersecret" not in record.to_json()
    assert record.state is JobState.PENDING
    assert record.spec == JobSpec(argv=("env",), limits=Limits(pids=8), network=NetworkMode.NONE)


def test_a_record_keeps_its_network_mode_and_reads_the_older_host_network_flag() -> None:
    spec = JobSpec(argv=("true",), network=NetworkMode.OUTBOUND)
    record = JobRecord.new("id", "alex", spec, created_at=1.0)
    assert JobRecord.from_json(record.to_json()).network is NetworkMode.OUTBOUND
    older = json.loads(record.to_json())
    del older["network"]
    older["host_network"] = True
    assert JobRecord.from_json(json.dumps(older)).network is NetworkMode.HOST
    del older["host_network"]
    assert JobRecord.from_json(json.dumps(older)).network is NetworkMode.NONE


def test_a_record_round_trips_through_its_json_with_its_types() -> None:
    record = JobRecord(
        job_id="id",
        owner="alex",
        argv=("sh", "-c", "exit 3"),
        state=JobState.TERMINATED,
        created_at=1.0,
        limits=Limits(cpu=0.5, memory=64 << 20),
        outcome=Outcome.EXITED,
        exit_code=3,
        cgroups=("/sys/fs/cgroup/pids/x",),
    )
    text = record.to_json()
    assert json.loads(text)["state"] == "Terminated"
    assert json.loads(text)["limits"]["memory"] == 64 << 20
    again = JobRecord.from_json(text)
    assert again == record
    assert again.outcome is Outcome.EXITED and again.limits == Limits(cpu=0.5, memory=64 << 20)


def test_a_record_from_a_newer_jobworker_ignores_fields_it_does_not_know() -> None:
    text = JobRecord(job_id="i", owner="o", argv=("x",), state="Active", created_at=0.0).to_json()
    data = json.loads(text) | {"field_of_the_future": 1}
    assert JobRecord.from_json(json.dumps(data)).state is JobState.ACTIVE


def test_the_stop_fields_name_its_cause() -> None:
    record = JobRecord(job_id="i", owner="o", argv=("x",), state="Active", created_at=0.0)
    assert record.stop is None
    assert record.with_stop(StopCause.TIME_LIMIT).stop is StopCause.TIME_LIMIT
    assert record.with_stop(StopCause.USER).stop is StopCause.USER


def test_status_takes_live_readings_over_the_recorded_ones() -> None:
    record = JobRecord(
        job_id="i", owner="o", argv=("x",), state="Active", created_at=0.0, output_size=5
    ).with_usage(Usage(cpu_ns=1, peak_memory=2, oom_kills=0))
    assert record.status().usage == Usage(1, 2, 0)
    assert record.status().output_size == 5
    live = record.status(usage=Usage(9, 9, 0), output_size=7, output_disk_bytes=7)
    assert (live.usage, live.output_size, live.state) == (Usage(9, 9, 0), 7, JobState.ACTIVE)


def test_the_host_uid_round_trips_and_a_record_from_before_host_uids_has_none() -> None:
    """A record names the host uid its job runs as; one written before jobs had host
    uids (no such field) loads, with None (the job user's own uid)."""
    spec = JobSpec(argv=("true",))
    record = JobRecord.new("id", "alex", spec, created_at=1.0, host_uid=1879048192)
    assert JobRecord.from_json(record.to_json()).host_uid == 1879048192
    old = json.loads(record.to_json())
    del old["host_uid"]
    assert JobRecord.from_json(json.dumps(old)).host_uid is None

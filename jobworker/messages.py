"""Between the API's protobuf messages and jobworker's model, both ways: the limits
(field by field, from the vocabulary's table in `jobworker.limits`) and job
snapshots. The server sends `status_to_proto` of a tracker's `JobStatus`; the
client turns what it receives back into a `JobStatus` with `status_from_proto`,
so that neither `jws` nor a library user handles protobuf messages.

The API reports a job's argv and limits but not its environment, working
directory or network: a `JobStatus` read from the wire has those at their
defaults (`None`, `None`, `False`); and it says whether the OOM killer struck,
not how often (`usage.oom_kills` is 1 or 0).
"""

from __future__ import annotations

import attrs

from jobworker.errors import InvalidRequestError
from jobworker.limits import KINDS
from jobworker.model import JobSpec, JobState, JobStatus, Limits, NetworkMode, Outcome, Usage
from jobworker.v1 import jobworker_pb2 as pb

#: What a status says when output was not all kept and the server gave no reason.
UNKNOWN_TRUNCATION = "output was not all kept"


def limits_from_proto(message: pb.Limits) -> Limits:
    """The Limits a message sets (an absent field: no limit); raises InvalidRequestError."""
    return Limits.of(
        {kind: getattr(message, kind.proto) for kind in KINDS if message.HasField(kind.proto)}
    )


def limits_to_proto(limits: Limits) -> pb.Limits:
    """`limits` as the API's message (no limit: the field absent)."""
    message = pb.Limits()
    for kind in KINDS:
        if (value := limits.value(kind)) is not None:
            setattr(message, kind.proto, value)
    return message


def status_to_proto(status: JobStatus) -> pb.GetJobStatusResponse:
    """A job snapshot as the API reports it."""
    message = pb.GetJobStatusResponse(
        status=status.state.value,
        job_id=status.job_id,
        owner=status.owner,
        args=status.spec.argv,
        limits=limits_to_proto(status.spec.limits),
        outcome=status.outcome.value if status.outcome else "",
        oom_killed=status.oom_killed,
        stopped_by_user=status.stopped_by_user,
        created_at=status.created_at,
        cpu_time_ns=status.usage.cpu_ns,
        peak_memory_bytes=status.usage.peak_memory,
        output_bytes=status.output_size,
        signal_name=status.signal_name or "",
        output_truncated=status.output_truncated is not None,
        output_truncated_reason=status.output_truncated or "",
        output_disk_bytes=status.output_disk_bytes,
        workdir_bytes=status.workdir_bytes,
        outcome_reason=status.outcome_reason or "",
        network=status.spec.network.value if status.spec.network else "",
        name=status.spec.name or "",
        labels=dict(status.spec.labels),
    )
    if status.exit_code is not None:
        message.exit_code = status.exit_code
    if status.signal is not None:
        message.signal = status.signal
    if status.started_at is not None:
        message.started_at = status.started_at
    if status.ended_at is not None:
        message.ended_at = status.ended_at
    return message


def status_from_proto(message: pb.GetJobStatusResponse) -> JobStatus:
    """The JobStatus a GetJobStatusResponse reports (see the module docstring for
    what the API leaves out); raises InvalidRequestError for values no server sends."""

    def optional(name: str) -> float | None:
        value: float | None = getattr(message, name) if message.HasField(name) else None
        return value

    exit_code, signal = optional("exit_code"), optional("signal")
    return JobStatus(
        job_id=message.job_id,
        owner=message.owner,
        spec=JobSpec(
            argv=tuple(message.args),
            limits=limits_from_proto(message.limits),
            network=_known_network(message.network),
            name=message.name or None,
            labels=dict(message.labels),
        ),
        state=JobState(message.status),
        created_at=message.created_at,
        started_at=optional("started_at"),
        ended_at=optional("ended_at"),
        outcome=Outcome(message.outcome) if message.outcome else None,
        exit_code=None if exit_code is None else int(exit_code),
        signal=None if signal is None else int(signal),
        usage=Usage(
            cpu_ns=message.cpu_time_ns,
            peak_memory=message.peak_memory_bytes,
            oom_kills=int(message.oom_killed),
        ),
        output_size=message.output_bytes,
        output_disk_bytes=message.output_disk_bytes,
        output_truncated=(message.output_truncated_reason or UNKNOWN_TRUNCATION)
        if message.output_truncated
        else None,
        workdir_bytes=message.workdir_bytes,
        outcome_reason=message.outcome_reason or None,
    )


def listed_from_proto(message: pb.ListJobsResponse) -> list[JobStatus]:
    """The jobs of one ListJobs page, each marked `argv_cut` when the server cut its
    argv; raises InvalidRequestError for values no server sends."""
    if message.args_cut and len(message.args_cut) != len(message.jobs):
        raise InvalidRequestError(
            f"the server sent {len(message.args_cut)} args_cut flags for {len(message.jobs)} jobs"
        )
    cut = list(message.args_cut) or [False] * len(message.jobs)
    return [
        attrs.evolve(status_from_proto(job), argv_cut=True) if was_cut else status_from_proto(job)
        for job, was_cut in zip(message.jobs, cut, strict=True)
    ]


def _known_network(text: str) -> NetworkMode | None:
    """The mode a status names; None when it names none, or one this client does not know."""
    try:
        return NetworkMode(text) if text else None
    except ValueError:
        return None


def varint(value: int) -> bytes:
    """`value` (0 <= value < 2**64) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

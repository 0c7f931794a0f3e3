"""`JobRecord`: one job's data, the one form of it the daemon keeps: in memory while
jwsd runs, and as JSON in the store (`jobworker.jobs.store`) across its restarts.

It holds what status and list show and what taking a running job over needs;
`status()` turns it, with the readings only a running job has (live usage, output
size), into the `JobStatus` the API returns. A record is immutable: the tracker
replaces a job's record with an evolved one (`attrs.evolve`) in one step between
awaits, so a reader never sees it half-updated.

Environment values are never kept (they often hold secrets): only the names of
the variables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from jobworker.jobs.lifecycle import StopCause
from jobworker.model import JobSpec, JobState, JobStatus, Limits, NetworkMode, Outcome, Usage
from jobworker.naming import Labels
from jobworker.sandbox import Processes


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _to_labels(value: Iterable[Iterable[str]]) -> Labels:
    """Labels as records keep them: checked when the job started, so not again here."""
    pairs = (tuple(pair) for pair in value)
    return tuple((key, text) for key, text in pairs)


def _to_limits(value: Limits | Mapping[str, Any]) -> Limits:
    return value if isinstance(value, Limits) else Limits(**value)


def _to_outcome(value: Outcome | str | None) -> Outcome | None:
    return None if value is None else Outcome(value)


@attrs.frozen
class JobRecord:
    """One job.

    The fields mirror `JobStatus` (its spec flattened: argv, env_keys, workdir,
    network, limits) plus:
    outcome_reason: why a job ended the way it did when its outcome alone does not
        say (a job lost across a restart, a terminal record that could not be written).
    stop_requested: a stop was asked for (its outcome is then "stopped").
    timed_out: that stop was the job's time limit's (its outcome is then "timed-out").
    output_size / output_truncated: the output kept, and why it was cut (or lost).
    supervisor_pid / supervisor_start: the process that holds the job (bubblewrap)
        and its start time in clock ticks since boot (/proc/PID/stat field 22),
        which tells it apart from a later process that reused the pid.
    command_pid: the host pid of the sandbox's init (the command's process group).
    copier_pid / copier_start: the process that copies the job's output into its file.
    cgroups: the job's cgroup directories, one per hierarchy.
    host_uid: the host uid (and gid) the job's processes run as, its owner's
        (`jobworker.jobs.uids`); None in records from before jobs had one (they ran
        as the job user's own uid).
    name / labels: the job's name (None: none) and labels, as its spec had them.
    """

    job_id: str
    owner: str
    argv: tuple[str, ...] = attrs.field(converter=_strings)
    state: JobState = attrs.field(converter=JobState)
    created_at: float
    env_keys: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    workdir: str | None = None
    network: NetworkMode = attrs.field(default=NetworkMode.NONE, converter=NetworkMode)
    limits: Limits = attrs.field(factory=Limits, converter=_to_limits)
    started_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = attrs.field(default=None, converter=_to_outcome)
    outcome_reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    stop_requested: bool = False
    timed_out: bool = False
    cpu_ns: int = 0
    peak_memory: int = 0
    oom_kills: int = 0
    output_size: int = 0
    output_truncated: str | None = None
    workdir_bytes: int = 0
    supervisor_pid: int | None = None
    supervisor_start: int | None = None
    command_pid: int | None = None
    copier_pid: int | None = None
    copier_start: int | None = None
    cgroups: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    host_uid: int | None = None
    name: str | None = None
    labels: Labels = attrs.field(default=(), converter=_to_labels)

    @classmethod
    def new(
        cls, job_id: str, owner: str, spec: JobSpec, created_at: float, host_uid: int | None = None
    ) -> JobRecord:
        """The Pending record of a job about to start (the names of its environment
        variables only), running as `host_uid` on the host."""
        return cls(
            job_id=job_id,
            owner=owner,
            argv=spec.argv,
            state=JobState.PENDING,
            created_at=created_at,
            env_keys=tuple(spec.env or ()),
            workdir=spec.workdir,
            network=spec.network or NetworkMode.NONE,
            limits=spec.limits,
            host_uid=host_uid,
            name=spec.name,
            labels=spec.labels,
        )

    @property
    def spec(self) -> JobSpec:
        """What the job runs, as the API shows it (no environment)."""
        return JobSpec(
            argv=self.argv,
            workdir=self.workdir,
            limits=self.limits,
            network=self.network,
            name=self.name,
            labels=self.labels,
        )

    @property
    def usage(self) -> Usage:
        """The last usage recorded (the final one once the job has ended)."""
        return Usage(self.cpu_ns, self.peak_memory, self.oom_kills)

    @property
    def stop(self) -> StopCause | None:
        """The cause of the stop asked for, if one was."""
        if not self.stop_requested:
            return None
        return StopCause.TIME_LIMIT if self.timed_out else StopCause.USER

    @property
    def processes(self) -> Processes:
        """The processes that hold the job, as recorded (what taking it over needs)."""
        return Processes(
            supervisor_pid=self.supervisor_pid,
            supervisor_start=self.supervisor_start,
            command_pid=self.command_pid,
            copier_pid=self.copier_pid,
            copier_start=self.copier_start,
        )

    def with_processes(self, processes: Processes, cgroups: Iterable[object]) -> JobRecord:
        """The record naming these processes and cgroup directories."""
        return attrs.evolve(
            self,
            supervisor_pid=processes.supervisor_pid,
            supervisor_start=processes.supervisor_start,
            command_pid=processes.command_pid,
            copier_pid=processes.copier_pid,
            copier_start=processes.copier_start,
            cgroups=tuple(map(str, cgroups)),
        )

    def with_usage(self, usage: Usage) -> JobRecord:
        return attrs.evolve(
            self, cpu_ns=usage.cpu_ns, peak_memory=usage.peak_memory, oom_kills=usage.oom_kills
        )

    def with_stop(self, cause: StopCause | None) -> JobRecord:
        return attrs.evolve(
            self, stop_requested=cause is not None, timed_out=cause is StopCause.TIME_LIMIT
        )

    def status(
        self,
        *,
        spec: JobSpec | None = None,
        argv_cut: bool = False,
        usage: Usage | None = None,
        output_size: int | None = None,
        output_disk_bytes: int | None = None,
        output_truncated: str | None = None,
        workdir_bytes: int | None = None,
    ) -> JobStatus:
        """The job as the API reports it; each reading given (a running job's live ones)
        takes the place of the one recorded. spec: the job's `spec` (which checks the
        whole argv again when built: a caller that asks often passes its own), or
        its listed form with `argv_cut`."""
        return JobStatus(
            job_id=self.job_id,
            owner=self.owner,
            spec=self.spec if spec is None else spec,
            argv_cut=argv_cut,
            state=self.state,
            created_at=self.created_at,
            started_at=self.started_at,
            ended_at=self.ended_at,
            outcome=self.outcome,
            exit_code=self.exit_code,
            signal=self.signal,
            usage=self.usage if usage is None else usage,
            output_size=self.output_size if output_size is None else output_size,
            output_disk_bytes=self.output_size if output_disk_bytes is None else output_disk_bytes,
            output_truncated=output_truncated
            if output_truncated is not None
            else self.output_truncated,
            workdir_bytes=self.workdir_bytes if workdir_bytes is None else workdir_bytes,
            outcome_reason=self.outcome_reason,
        )

    def to_json(self) -> str:
        data = attrs.asdict(self, recurse=False)
        data["limits"] = attrs.asdict(self.limits)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> JobRecord:
        """Raises ValueError (or TypeError) for a record that is not one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a job record must be a JSON object")
        known = attrs.fields_dict(cls)
        if data.get("host_network") and "network" not in data:  # a record before the modes
            data["network"] = NetworkMode.HOST.value
        # Fields a newer minor version added are ignored; a missing one takes its default.
        return cls(**{key: value for key, value in data.items() if key in known})


__all__ = ["JobRecord"]

"""How `jws` shows jobs to people (text) and to scripts (JSON), from `model.JobStatus`.

Much of a status is the user's own (the command, reasons that quote it) and may
hold terminal controls: every text field goes through `jobworker.echo.shown` (a
newline in a command shows as `\n`, never as a new table row), and JSON escapes
every non-ASCII character (`as_json`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Any

from jobworker.echo import shown
from jobworker.limits import KINDS, limits_text
from jobworker.model import AuditRecord, JobState, JobStatus, Outcome
from jobworker.units import format_duration, format_size


def status_dict(job: JobStatus) -> dict[str, Any]:
    """A job's status as plain JSON-able data, under the API's field names (absent
    optional fields are null)."""
    return {
        "job_id": job.job_id,
        "name": job.name,
        "labels": dict(job.spec.labels),
        "status": job.state.value,
        "owner": job.owner,
        "args": list(job.spec.argv),
        "args_cut": job.argv_cut,
        "outcome": job.outcome.value if job.outcome else None,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "signal_name": job.signal_name,
        "oom_killed": job.oom_killed,
        "stopped_by_user": job.stopped_by_user,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "cpu_time_ns": job.usage.cpu_ns,
        "peak_memory_bytes": job.usage.peak_memory,
        "output_bytes": job.output_size,
        "output_truncated": job.output_truncated is not None,
        "output_truncated_reason": job.output_truncated,
        "output_disk_bytes": job.output_disk_bytes,
        "workdir_bytes": job.workdir_bytes,
        "outcome_reason": job.outcome_reason,
        "limits": {kind.proto: job.spec.limits.value(kind) for kind in KINDS},
        "network": job.spec.network.value if job.spec.network else None,
    }


def audit_dict(record: AuditRecord) -> dict[str, Any]:
    """An audit record as plain JSON-able data, under the API's field names."""
    return {
        "id": record.id,
        "time": record.time,
        "user": record.user,
        "common_name": record.common_name,
        "serial": record.serial,
        "fingerprint_sha256": record.fingerprint_sha256,
        "peer": record.peer,
        "method": record.method,
        "job_id": record.job_id,
        "code": record.code,
        "detail": record.detail,
    }


def audit_text(records: list[AuditRecord]) -> str:
    """One line per record, oldest first: UTC time, method, code, then key=value fields
    (each text escaped: a record holds what a caller sent)."""
    lines = []
    for record in reversed(records):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.time))
        fields = [
            f"user={record.user}",
            f"cn={record.common_name}",
            f"peer={record.peer}",
            f"job={record.job_id}",
            f"serial={record.serial or '-'}",
            f"sha256={record.fingerprint_sha256[:16] or '-'}",
        ]
        if record.detail:
            fields.append(json.dumps(record.detail, ensure_ascii=True, separators=(",", ":")))
        lines.append(shown(f"{when} {record.method} {record.code} " + " ".join(fields)))
    return "\n".join(lines)


def as_json(data: object) -> str:
    """`data` as indented JSON with every character outside printable ASCII escaped
    (\u001b, \u007f, \u009b, \u202e): `json.dumps(ensure_ascii=False)` would let
    DEL, the C1 controls and the bidirectional ones through raw to a terminal."""
    return json.dumps(data, indent=2, ensure_ascii=True)


def headline(job: JobStatus) -> str:
    """The state's word first, then how it ended: "Terminated (exit code 3)"."""
    if job.state is not JobState.TERMINATED:
        return str(job.state.value)
    parts = []
    if job.oom_killed:
        parts.append("OOM-killed at its memory limit")
    elif job.stopped_by_user:
        parts.append("stopped")
    elif job.outcome is Outcome.TIMED_OUT:
        timeout = job.spec.limits.timeout
        parts.append(f"timed out after {format_duration(timeout)}" if timeout else "timed out")
    elif job.outcome is Outcome.LOST:
        parts.append("lost")
    if job.signal is not None:
        parts.append(f"killed by {job.signal_name}")
    if job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    return shown(f"Terminated ({', '.join(parts)})" if parts else "Terminated")


def status_text(job: JobStatus, *, now: float | None = None) -> str:
    """The `jws status` text: the headline, then one `name  value` line per detail."""
    now = time.time() if now is None else now
    rows = [
        ("job", job.job_id),
        ("owner", job.owner),
        ("command", shlex.join(job.spec.argv)),
    ]
    if job.name is not None:
        rows.insert(1, ("name", job.name))
    if job.spec.labels:
        rows.append(("labels", labels_text(job)))
    if job.started_at is not None:
        rows.append(("started", _when(job.started_at, now)))
    if job.ended_at is not None and job.started_at is not None:
        ran = job.ended_at - job.started_at
        rows.append(("ended", f"{_when(job.ended_at, now)}, ran {_duration(ran)}"))
    elif job.ended_at is not None:
        rows.append(("ended", f"{_when(job.ended_at, now)}, never started"))
    if job.outcome_reason:
        rows.append(("reason", job.outcome_reason))
    rows.append(("limits", limits_text(job.spec.limits)))
    if job.spec.network is not None:
        rows.append(("network", job.spec.network.value))
    rows.append(
        (
            "usage",
            f"cpu {job.usage.cpu_ns / 1e9:.2f} s, peak memory {format_size(job.usage.peak_memory)}, "
            f"output {format_size(job.output_size)}",
        )
    )
    rows.append(
        (
            "disk",
            f"output {format_size(job.output_disk_bytes)}, work dir {format_size(job.workdir_bytes)}",
        )
    )
    if job.output_truncated is not None:
        rows.append(("truncated", job.output_truncated))
    width = max(len(name) for name, _ in rows)
    return "\n".join(
        [headline(job)] + [f"  {name:<{width}}  {shown(value)}" for name, value in rows]
    )


#: The COMMAND column's width where there is no terminal to fit (a pipe, a file).
COMMAND_WIDTH = 60


def command_width() -> int:
    """How wide COMMAND may be: what is left of the terminal's width once the other
    columns (about 75 characters) are there, at least 20; COMMAND_WIDTH off a terminal."""
    import shutil

    if not sys.stdout.isatty():
        return COMMAND_WIDTH
    return max(shutil.get_terminal_size().columns - 75, 20)


def table(
    jobs: list[JobStatus],
    *,
    now: float | None = None,
    command_width: int | None = COMMAND_WIDTH,
    owners: bool = False,
) -> str:
    """The `jws list` table: one job a line, oldest first. command_width: where a
    command is cut ("..."), None for as jwsd listed it; owners: an OWNER column
    (a listing with other users' jobs in it, an admin's)."""
    now = time.time() if now is None else now
    rows: list[tuple[str, ...]] = [
        ("JOB ID", "OWNER", "NAME", "STATUS", "EXIT", "STARTED", "COMMAND")
    ]
    for job in jobs:
        exit_text = str(job.exit_code) if job.exit_code is not None else "-"
        started = _ago(now - job.started_at) if job.started_at is not None else "-"
        command = shown(shlex.join(job.spec.argv))
        if job.argv_cut:  # the listing cut it: say so, as the table's own cut does
            command += "..."
        if command_width is not None and len(command) > command_width:
            command = command[: command_width - 3] + "..."
        rows.append(
            (
                shown(job.job_id),
                shown(job.owner),
                shown(job.name or "-"),
                shown(job.state.value),
                exit_text,
                started,
                command,
            )
        )
    if not owners:
        rows = [row[:1] + row[2:] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]
        for row in rows
    )


def labels_text(job: JobStatus) -> str:
    """The job's labels as `jws start --label` takes them: "team=infra tier=web"."""
    return " ".join(f"{key}={value}" for key, value in job.spec.labels)


def _when(timestamp: float, now: float) -> str:
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(timestamp))} ({_ago(now - timestamp)})"
    )


def _ago(seconds: float) -> str:
    return f"{_duration(seconds)} ago"


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"

"""How `jws` shows jobs to people (text) and to scripts (JSON)."""

from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING, Any

from jobworker.cli.units import format_size

if TYPE_CHECKING:  # imported lazily at run time: `jws --help` stays quick
    from jobworker.v1.jobworker_pb2 import GetJobStatusResponse, Limits


def status_dict(job: GetJobStatusResponse) -> dict[str, Any]:
    """A GetJobStatusResponse as plain JSON-able data (absent optional fields are null)."""

    def optional(name: str) -> Any:
        return getattr(job, name) if job.HasField(name) else None

    limits = {
        name: getattr(job.limits, name) if job.limits.HasField(name) else None
        for name in ("cpu", "memory_bytes", "io_read_bps", "io_write_bps", "pids", "output_bytes")
    }
    return {
        "job_id": job.job_id,
        "status": job.status,
        "owner": job.owner,
        "args": list(job.args),
        "outcome": job.outcome or None,
        "exit_code": optional("exit_code"),
        "signal": optional("signal"),
        "signal_name": job.signal_name or None,
        "oom_killed": job.oom_killed,
        "stopped_by_user": job.stopped_by_user,
        "created_at": job.created_at,
        "started_at": optional("started_at"),
        "ended_at": optional("ended_at"),
        "cpu_time_ns": job.cpu_time_ns,
        "peak_memory_bytes": job.peak_memory_bytes,
        "output_bytes": job.output_bytes,
        "output_truncated": job.output_truncated,
        "output_truncated_reason": job.output_truncated_reason or None,
        "output_disk_bytes": job.output_disk_bytes,
        "workdir_bytes": job.workdir_bytes,
        "limits": limits,
    }


def headline(job: GetJobStatusResponse) -> str:
    """The state's word first, then how it ended: "Terminated (exit code 3)"."""
    if job.status != "Terminated":
        return str(job.status)
    parts = []
    if job.oom_killed:
        parts.append("OOM-killed at its memory limit")
    elif job.stopped_by_user:
        parts.append("stopped")
    if job.HasField("signal"):
        parts.append(f"killed by {job.signal_name or job.signal}")
    if job.HasField("exit_code"):
        parts.append(f"exit code {job.exit_code}")
    return f"Terminated ({', '.join(parts)})" if parts else "Terminated"


def status_text(job: GetJobStatusResponse, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [
        ("job", job.job_id),
        ("owner", job.owner),
        ("command", shlex.join(job.args)),
    ]
    if job.HasField("started_at"):
        rows.append(("started", _when(job.started_at, now)))
    if job.HasField("ended_at"):
        rows.append(
            ("ended", f"{_when(job.ended_at, now)}, ran {_duration(job.ended_at - job.started_at)}")
        )
    rows.append(("limits", limits_text(job.limits)))
    rows.append(
        (
            "usage",
            f"cpu {job.cpu_time_ns / 1e9:.2f} s, peak memory {format_size(job.peak_memory_bytes)}, "
            f"output {format_size(job.output_bytes)}",
        )
    )
    rows.append(
        (
            "disk",
            f"output {format_size(job.output_disk_bytes)}, work dir {format_size(job.workdir_bytes)}",
        )
    )
    if job.output_truncated:
        rows.append(("truncated", job.output_truncated_reason or "output was not all kept"))
    width = max(len(name) for name, _ in rows)
    return "\n".join([headline(job)] + [f"  {name:<{width}}  {value}" for name, value in rows])


def limits_text(limits: Limits) -> str:
    parts = []
    if limits.HasField("cpu"):
        parts.append(f"cpu {limits.cpu:g}")
    if limits.HasField("memory_bytes"):
        parts.append(f"memory {format_size(limits.memory_bytes)}")
    if limits.HasField("io_read_bps"):
        parts.append(f"io read {format_size(limits.io_read_bps)}/s")
    if limits.HasField("io_write_bps"):
        parts.append(f"io write {format_size(limits.io_write_bps)}/s")
    if limits.HasField("pids"):
        parts.append(f"pids {limits.pids}")
    if limits.HasField("output_bytes"):
        parts.append(f"output {format_size(limits.output_bytes)}")
    return ", ".join(parts) or "none"


def table(jobs: list[GetJobStatusResponse], *, now: float | None = None) -> str:
    """The `jws list` table: one job a line, oldest first."""
    now = time.time() if now is None else now
    rows = [("JOB ID", "STATUS", "EXIT", "STARTED", "COMMAND")]
    for job in jobs:
        exit_text = str(job.exit_code) if job.HasField("exit_code") else "-"
        started = _ago(now - job.started_at) if job.HasField("started_at") else "-"
        command = shlex.join(job.args)
        rows.append(
            (
                job.job_id,
                job.status,
                exit_text,
                started,
                command if len(command) <= 60 else command[:57] + "...",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    )


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

"""Who a process is on the host, as the kernel says (/proc/PID/status)."""

from __future__ import annotations

from pathlib import Path


def host_ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of process `pid`, in the host's user namespace."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return int(fields["Uid"][0]), int(fields["Gid"][0])

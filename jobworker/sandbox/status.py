"""Bubblewrap's status file (`--json-status-fd`): one JSON object a line, the
sandbox init's host pid ({"child-pid": N}) as the sandbox is built, then the
exit code ({"exit-code": N}) when it ends; and the exit status in shell terms.

The readers take the fd bubblewrap writes (read with pread: its offset is
bubblewrap's too), or the file's path (after a restart of the daemon).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from jobworker.model import shell_status


def _status_lines(status_file: int) -> list[object]:
    """Every whole JSON line of bubblewrap's status file (read with pread: the fd's
    offset is bubblewrap's too)."""
    data = b""
    while chunk := os.pread(status_file, 65536, len(data)):
        data += chunk
    lines: list[object] = []
    for line in data.split(b"\n")[:-1]:  # the last one is not whole yet (or empty)
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def read_child_pid(status_file: int) -> int | None:
    """The sandbox init's host pid from bubblewrap's first status line,
    {"child-pid": N, ...}: written before the sandbox is set up, so it is there once
    the ready line came. None when it is not (bubblewrap failed)."""
    for record in _status_lines(status_file):
        if isinstance(record, dict) and "child-pid" in record:
            return int(record["child-pid"])
    return None


def read_exit_code(status_file: int) -> int | None:
    """The {"exit-code": N} of bubblewrap's status file, or None when bubblewrap
    died before writing it (killed)."""
    for record in _status_lines(status_file):
        if isinstance(record, dict) and "exit-code" in record:
            return int(record["exit-code"])
    return None


def child_pid_in(path: Path) -> int | None:
    """`read_child_pid` of the status file at `path`; None when it cannot be read."""
    return _read_at(path, read_child_pid)


def exit_code_in(path: Path) -> int | None:
    """`read_exit_code` of the status file at `path`; None when it cannot be read."""
    return _read_at(path, read_exit_code)


def written_at(path: Path) -> float | None:
    """When bubblewrap last wrote the status file at `path` (its mtime: the sandbox's
    start, then its end); None when it cannot be read."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _read_at(path: Path, read: Callable[[int], int | None]) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return read(fd)
    finally:
        os.close(fd)


def exit_status(returncode: int, reported: int | None) -> tuple[int, int | None]:
    """(exit_code, signal) in shell terms from the outer process's return code and
    bubblewrap's reported exit code. A negative return code means the outer process
    itself was killed by that signal; a code above 128 means signal code-128."""
    return shell_status(reported if reported is not None else returncode)


__all__ = [
    "child_pid_in",
    "exit_code_in",
    "exit_status",
    "read_child_pid",
    "read_exit_code",
    "written_at",
]

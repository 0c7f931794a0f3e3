"""Counting what a piece of code leaves behind: trio tasks, file descriptors, child
processes; and finding a process by its command line."""

from __future__ import annotations

import contextlib
import os
from types import TracebackType

import trio
import trio.testing

from tests.support.timing import scaled
from tests.support.waiting import eventually


def task_count() -> int:
    """Every live task under the root task."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    return walk(trio.lowlevel.current_root_task())


def fd_count() -> int:
    """File descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def processes_running(*argv: str) -> list[int]:
    """The pids of live processes whose command line starts with `argv` (e.g.
    ("sleep", "1234567890"): a unique duration names a test's process)."""
    wanted = [arg.encode() for arg in argv]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        if cmdline[: len(wanted)] == wanted:
            found.append(int(entry))
    return found


def child_pids() -> set[int]:
    """The pids whose parent is this process (zombies included)."""
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.add(int(entry))
    return found


class LeakCheck:
    """`async with LeakCheck():` fails if the block leaves more tasks, fds or child
    processes than it found. Counts settle first: trio gets a chance to reap."""

    def __init__(self, *, tasks: bool = True, fds: bool = True, processes: bool = True) -> None:
        self.check_tasks, self.check_fds, self.check_processes = tasks, fds, processes

    async def __aenter__(self) -> LeakCheck:
        await trio.testing.wait_all_tasks_blocked()
        self.tasks, self.fds, self.children = task_count(), fd_count(), child_pids()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            return
        # Exiting processes are reaped and their tasks end on their own time.
        with contextlib.suppress(trio.TooSlowError):
            # Clean-up after many jobs (cgroups, mounts, dirs) is CPU work: scaled.
            await eventually(lambda: not self.problems(), timeout=scaled(5), what="leaks settle")
        problems = self.problems()
        assert not problems, "; ".join(problems)

    def problems(self) -> list[str]:
        found = []
        if self.check_tasks and task_count() > self.tasks:
            found.append(f"tasks: {self.tasks} before, {task_count()} after")
        if self.check_fds and fd_count() > self.fds:
            found.append(f"fds: {self.fds} before, {fd_count()} after")
        if self.check_processes and child_pids() - self.children:
            found.append(f"child processes left: {sorted(child_pids() - self.children)}")
        return found

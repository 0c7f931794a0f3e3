"""Cgroup v1: one directory per job in each of the cpu, cpuacct, memory, blkio, pids
and freezer hierarchies (some hosts co-mount a few of them; a shared hierarchy
gets one directory).

Control files are written inline; see `base` for why that is fine.
Kernel docs: Documentation/admin-guide/cgroup-v1/ (memory.rst, freezer-subsystem.rst,
blkio-controller.rst, pids.rst) and scheduler/sched-bwc.rst for the cpu quota.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Mapping
from pathlib import Path

import attrs

from jobworker.errors import SetupError
from jobworker.limits import CPU, IO_READ, IO_WRITE, MEMORY, PIDS
from jobworker.model import Limits, Usage
from jobworker.sandbox.cgroups import base

#: The v1 controllers a job is placed under.
CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer")
#: The CFS period the cpu quota is a share of (the kernel's default, 100 ms).
CPU_PERIOD_US = 100_000


@attrs.define(eq=False)
class V1JobCgroup(base.JobCgroup):
    """A job's cgroup in each v1 hierarchy.

    dirs: the job's directory per controller (co-mounted controllers share one).
    rmdir: how a directory is removed (`os.rmdir`; a fake cgroupfs passes its own).
    """

    name: str
    dirs: Mapping[str, Path]
    rmdir: base.Rmdir = os.rmdir
    procs_files: tuple[Path, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.procs_files = tuple(d / "cgroup.procs" for d in self.directories())

    def directories(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(self.dirs[c] for c in CONTROLLERS))

    def kill_all(self) -> None:
        """Freeze the job (so nothing forks or exits while its pids are read), SIGKILL
        every pid, then thaw: the killed tasks only die once thawed."""
        state = self.dirs["freezer"] / "freezer.state"
        frozen = False
        if state.parent.is_dir():
            base.write_value(state, "FROZEN")
            frozen = True
        try:
            base.kill_until_empty(self.pids)
        finally:
            if frozen and state.parent.is_dir():
                base.write_value(state, "THAWED")

    def usage(self) -> Usage:
        memory = self.dirs["memory"]
        return Usage(
            cpu_ns=base.read_int(self.dirs["cpuacct"] / "cpuacct.usage"),
            peak_memory=base.read_int(memory / "memory.max_usage_in_bytes"),
            oom_kills=base.read_keyed(memory / "memory.oom_control", "oom_kill"),
        )


@attrs.define(eq=False)
class V1Driver(base.CgroupDriver):
    """Job cgroups under `parents`, the job parent directory per v1 controller.

    Build it with `V1Driver.open`, which creates the parents.
    rmdir: how a directory is removed (`os.rmdir`; a fake cgroupfs passes its own).
    """

    parents: Mapping[str, Path]
    rmdir: base.Rmdir = os.rmdir
    version: int = attrs.field(default=1, init=False)
    parent: Path = attrs.field(init=False)

    lock_fds: dict[Path, int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.parent = self.parents["memory"]
        self.lock_fds = base.lock_parents(self._distinct_parents())

    @classmethod
    def open(cls, own: Mapping[str, Path], name: str, rmdir: base.Rmdir = os.rmdir) -> V1Driver:
        """Create `<own>/<name>` in each hierarchy (existing ones are reused) and lock
        each of them for this daemon alone.

        own: the daemon's own cgroup directory per controller in CONTROLLERS.
        Raises SetupError when a directory cannot be created, or another daemon
        holds one of them (the directories this call made are then removed).
        """
        parents = {c: own[c] / name for c in CONTROLLERS}
        made = []
        try:
            for directory in dict.fromkeys(parents.values()):
                if not directory.is_dir():
                    made.append(directory)
                _mkdir(directory)
            return cls(parents, rmdir)
        except BaseException:
            for directory in reversed(made):  # empty: nothing was started in them
                with contextlib.suppress(SetupError):
                    base.try_rmdir(directory, rmdir)
            raise

    def _distinct_parents(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(self.parents[c] for c in CONTROLLERS))

    def parent_dirs(self) -> tuple[Path, ...]:
        return self._distinct_parents()

    def rebuild(self) -> None:
        for directory in base.unheld(self.lock_fds, self._distinct_parents()):
            _mkdir(directory)
            base.relock(self.lock_fds, directory)

    def create(
        self,
        job_id: str,
        limits: Limits,
        io_device: tuple[int, int] | None,
        owner: str | None = None,
    ) -> V1JobCgroup:
        base.check_job_id(job_id)
        base.check_io_device(limits, io_device)
        self.ensure_tree()
        parents = dict(self.parents)
        if owner is not None:
            parents = {c: p / base.owner_group(owner) for c, p in parents.items()}
            for directory in dict.fromkeys(parents.values()):
                _mkdir(directory)
        cgroup = V1JobCgroup(job_id, {c: p / job_id for c, p in parents.items()}, self.rmdir)
        made: list[Path] = []
        try:
            for directory in cgroup.directories():
                base.make_dir(directory)
                made.append(directory)
                _inherit_cpuset(directory)
            self._write_limits(cgroup, limits, io_device)
        except BaseException:
            # Nothing runs in the new cgroups yet, so they can go at once.
            for directory in reversed(made):
                with contextlib.suppress(SetupError):
                    base.try_rmdir(directory, self.rmdir)
            raise
        return cgroup

    def _write_limits(
        self, cgroup: V1JobCgroup, limits: Limits, io_device: tuple[int, int] | None
    ) -> None:
        dirs = cgroup.dirs
        if limits.cpu is not None:
            base.write_value(dirs["cpu"] / "cpu.cfs_period_us", CPU_PERIOD_US)
            quota = round(limits.cpu * CPU_PERIOD_US)
            base.write_value(dirs["cpu"] / "cpu.cfs_quota_us", quota, what=CPU.what)
        if limits.memory is not None:
            memory = dirs["memory"]
            base.write_value(memory / "memory.limit_in_bytes", limits.memory, what=MEMORY.what)
            # memsw is memory + swap: the same value means no swap at all. It only
            # exists with swap accounting on; its presence in the parent says so (a
            # fresh cgroup has the same files).
            if (self.parents["memory"] / "memory.memsw.limit_in_bytes").exists():
                base.write_value(
                    memory / "memory.memsw.limit_in_bytes", limits.memory, what=MEMORY.what
                )
        if io_device is not None:
            major, minor = io_device
            for limit, direction in [(IO_READ, "read"), (IO_WRITE, "write")]:
                if (bps := limits.value(limit)) is not None:
                    base.write_value(
                        dirs["blkio"] / f"blkio.throttle.{direction}_bps_device",
                        f"{major}:{minor} {bps}",
                        what=limit.what,
                    )
        if limits.pids is not None:
            base.write_value(dirs["pids"] / "pids.max", limits.pids, what=PIDS.what)

    def attach(self, job_id: str, owner: str | None = None) -> V1JobCgroup | None:
        base.check_job_id(job_id)
        parents = dict(self.parents)
        if owner is not None:
            parents = {c: p / base.owner_group(owner) for c, p in parents.items()}
        cgroup = V1JobCgroup(job_id, {c: p / job_id for c, p in parents.items()}, self.rmdir)
        return cgroup if all(d.is_dir() for d in cgroup.directories()) else None

    def cleanup_stale(self, keep: Collection[str] = ()) -> list[str]:
        names = []
        for group in self._stale_groups():
            parents = {c: p / group for c, p in self.parents.items()} if group else self.parents
            jobs = sorted(
                {e.name for p in dict.fromkeys(parents.values()) if p.is_dir() for e in _subdirs(p)}
            )
            for name in jobs:
                if not group and name.startswith(base.OWNER_GROUP_PREFIX) or name in keep:
                    continue
                stale = V1JobCgroup(name, {c: p / name for c, p in parents.items()}, self.rmdir)
                stale.kill_all()
                stale.remove_blocking()  # and the owner group it empties
                names.append(name)
            if group:  # an owner group with no job left (busy: it has one)
                for directory in dict.fromkeys(parents.values()):
                    with contextlib.suppress(SetupError):
                        base.try_rmdir(directory, self.rmdir)
        return names

    def _stale_groups(self) -> list[str]:
        """ "" (jobs right under the parents), then each owner group's name."""
        groups = {
            entry.name
            for p in self._distinct_parents()
            if p.is_dir()
            for entry in _subdirs(p)
            if entry.name.startswith(base.OWNER_GROUP_PREFIX)
        }
        return ["", *sorted(groups)]

    def close(self) -> None:
        for directory in self._distinct_parents():
            with contextlib.suppress(OSError):
                self.rmdir(directory)
        base.unlock_all(self.lock_fds)


def _mkdir(directory: Path) -> None:
    """mkdir one cgroup unless it exists, ready for tasks (cpuset)."""
    base.ensure_dir(directory)
    _inherit_cpuset(directory)


def _subdirs(directory: Path) -> list[Path]:
    return [entry for entry in directory.iterdir() if entry.is_dir()]


def _inherit_cpuset(directory: Path) -> None:
    """A hierarchy that carries cpuset starts new cgroups with no cpus and no memory
    nodes, and refuses tasks until they are set: copy the parent's."""
    for file in ["cpuset.cpus", "cpuset.mems"]:
        if (directory / file).exists() and not base.read_text(directory / file).strip():
            base.write_value(directory / file, base.read_text(directory.parent / file).strip())

"""Cgroup v2: one unified hierarchy. jwsd is given a delegated subtree (its own
cgroup: a systemd service with `Delegate=yes`, a container's cgroup, or a parent
the operator names) and lays it out as the kernel's rules and systemd's
delegation document ("Control Group APIs and Delegation") ask:

    <subtree>/                   controllers enabled in cgroup.subtree_control
    <subtree>/jwsd/              jwsd itself
    <subtree>/init/              every other process that was in <subtree> (a
                                 container's init, a wrapper script, a test runner)
    <subtree>/<name>/                       the job parent, controllers enabled again
    <subtree>/<name>/user-<owner>/          one group per owner (`base.owner_group`),
                                            controllers enabled again
    <subtree>/<name>/user-<owner>/<job_id>/ one leaf per job

The "no internal processes" rule (a non-root cgroup that holds processes cannot
hand controllers to its children) is why every process leaves `<subtree>` first,
as moby's dind entrypoint does. A process that joins `<subtree>` between the
moves and the enabling write (an `exec` into the container) makes the write fail
with EBUSY: the moves are then repeated. Nothing outside `<subtree>` is written.

Control files are written inline; see `base` for why that is fine.
Kernel doc: Documentation/admin-guide/cgroup-v2.rst.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Collection
from pathlib import Path

import attrs

from jobworker.errors import SetupError
from jobworker.limits import CPU, MEMORY, PIDS
from jobworker.model import Limits, Usage
from jobworker.sandbox.cgroups import base

#: The controllers jobs need, as cgroup.controllers names them.
CONTROLLERS = ("cpu", "memory", "io", "pids")
#: The leaf the daemon moves itself into so that its own cgroup can delegate controllers.
DAEMON_LEAF = "jwsd"
#: The leaf every other process found in the subtree is moved into.
OTHERS_LEAF = "init"
#: How often the moves are repeated while processes keep joining the subtree.
TAKE_OVER_ATTEMPTS = 20
#: The CFS period the cpu quota is a share of (the kernel's default, 100 ms).
CPU_PERIOD_US = 100_000


@attrs.define(eq=False)
class V2JobCgroup(base.JobCgroup):
    """A job's cgroup: one directory.

    rmdir: how a directory is removed (`os.rmdir`; a fake cgroupfs passes its own).
    """

    name: str
    path: Path
    rmdir: base.Rmdir = os.rmdir
    procs_files: tuple[Path, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.procs_files = (self.path / "cgroup.procs",)

    def directories(self) -> tuple[Path, ...]:
        return (self.path,)

    def kill_all(self) -> None:
        """Write 1 to cgroup.kill (Linux 5.14+), which SIGKILLs every task in the
        cgroup, forks in flight included. Older kernels: freeze, SIGKILL each pid,
        thaw (v2 lets a fatal signal through to a frozen task)."""
        if not self.path.is_dir():
            return
        try:
            self._kill_all()
        except SetupError:
            # Gone meanwhile, so empty: systemd removes the tree of a scope whose last
            # process has exited (the systemd driver's), and a vanished cgroup.kill
            # sent us to the freezer's files, as gone.
            if self.path.is_dir():
                raise

    def _kill_all(self) -> None:
        kill = self.path / "cgroup.kill"
        if kill.exists():
            base.write_value(kill, 1)
            return
        freeze = self.path / "cgroup.freeze"
        base.write_value(freeze, 1)
        try:
            base.kill_until_empty(self.pids)
        finally:
            if self.path.is_dir():
                base.write_value(freeze, 0)

    def usage(self) -> Usage:
        peak = self.path / "memory.peak"  # Linux 5.19+; before it only the current value
        return Usage(
            cpu_ns=base.read_keyed(self.path / "cpu.stat", "usage_usec") * 1000,
            peak_memory=base.read_int(peak if peak.exists() else self.path / "memory.current"),
            oom_kills=base.read_keyed(self.path / "memory.events", "oom_kill"),
        )


@attrs.define(eq=False)
class V2Driver(base.CgroupDriver):
    """Job cgroups under `parent` (`<subtree>/<name>`). Build it with `V2Driver.open`.

    rmdir: how a directory is removed (`os.rmdir`; a fake cgroupfs passes its own).
    """

    parent: Path
    rmdir: base.Rmdir = os.rmdir
    enable: str = ""  # "+cpu +memory ...": what each owner group hands down
    version: int = attrs.field(default=2, init=False)
    lock_fds: dict[Path, int] = attrs.field(init=False)  # one entry

    def __attrs_post_init__(self) -> None:
        self.lock_fds = base.lock_parents([self.parent])

    def parent_dirs(self) -> tuple[Path, ...]:
        return (self.parent,)

    def rebuild(self) -> None:
        if base.unheld(self.lock_fds, [self.parent]):
            base.ensure_dir(self.parent)
            if self.enable:
                _enable(self.parent, self.enable)
            base.relock(self.lock_fds, self.parent)

    @classmethod
    def open(
        cls,
        subtree: Path,
        name: str,
        rmdir: base.Rmdir = os.rmdir,
        *,
        controllers: tuple[str, ...] = CONTROLLERS,
    ) -> V2Driver:
        """Take over the delegated cgroup `subtree` and make the job parent
        `<subtree>/<name>` with `controllers` enabled for the jobs below it.

        Every process in `subtree` is moved to a leaf first (jwsd to `jwsd`, the
        others to `init`); the root cgroup, exempt from the rule, keeps its own.
        The driver then claims the parent for this daemon alone (`base.lock_parent`).

        subtree: the cgroup directory jwsd may write in (not its jwsd leaf).
        controllers: the controllers to enable; () for a hierarchy without any
            (then only unlimited jobs can be created).
        Raises SetupError naming a missing controller, or saying why the
        controllers cannot be enabled.
        """
        available = set(base.read_text(subtree / "cgroup.controllers").split())
        missing = [c for c in controllers if c not in available]
        if missing:
            raise SetupError(
                f"cgroup {subtree} lacks the {' '.join(missing)} controller(s); enable them in "
                f"its parent's cgroup.subtree_control (with systemd: Delegate=yes in jwsd's "
                f"service, or a delegated --cgroup-parent)"
            )
        enable = " ".join(f"+{c}" for c in controllers)
        # The root cgroup (which has no cgroup.type) is exempt from the rule.
        if (subtree / "cgroup.type").exists():
            _take_over(subtree, enable)
        elif enable:
            _enable(subtree, enable)
        parent = subtree / name
        base.ensure_dir(parent)
        if enable:
            _enable(parent, enable)
        return cls(parent, rmdir, enable)

    def create(
        self,
        job_id: str,
        limits: Limits,
        io_device: tuple[int, int] | None,
        owner: str | None = None,
    ) -> V2JobCgroup:
        base.check_job_id(job_id)
        base.check_io_device(limits, io_device)
        self.ensure_tree()
        parent = self.parent
        if owner is not None:
            parent = self.parent / base.owner_group(owner)
            base.ensure_dir(parent)
            if self.enable:  # again each time: a crash may have left it without
                _enable(parent, self.enable)
        cgroup = V2JobCgroup(job_id, parent / job_id, self.rmdir)
        base.make_dir(cgroup.path)
        try:
            write_limits(
                cgroup.path, limits, io_device, no_swap=(self.parent / "memory.swap.max").exists()
            )
        except BaseException:
            # Nothing runs in the new cgroup yet, so it can go at once.
            with contextlib.suppress(SetupError):
                base.try_rmdir(cgroup.path, self.rmdir)
            raise
        return cgroup

    def attach(self, job_id: str, owner: str | None = None) -> V2JobCgroup | None:
        base.check_job_id(job_id)
        parent = self.parent if owner is None else self.parent / base.owner_group(owner)
        cgroup = V2JobCgroup(job_id, parent / job_id, self.rmdir)
        return cgroup if cgroup.path.is_dir() else None

    def cleanup_stale(self, keep: Collection[str] = ()) -> list[str]:
        if not self.parent.is_dir():  # removed already (close()): nothing is left in it
            return []
        names = []
        for entry in sorted(e for e in self.parent.iterdir() if e.is_dir()):
            if not entry.name.startswith(base.OWNER_GROUP_PREFIX):
                entries = [entry]  # a job directly under the parent
            else:
                entries = sorted(e for e in entry.iterdir() if e.is_dir())
            for directory in entries:
                if directory.name in keep:
                    continue
                stale = V2JobCgroup(directory.name, directory, self.rmdir)
                stale.kill_all()
                stale.remove_blocking()  # and an owner group it empties
                names.append(directory.name)
            with contextlib.suppress(SetupError):  # busy: it has a job taken over
                base.try_rmdir(entry, self.rmdir)  # an owner group with no job left
        return names

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.rmdir(self.parent)
        base.unlock_all(self.lock_fds)


def write_limits(
    path: Path, limits: Limits, io_device: tuple[int, int] | None, *, no_swap: bool
) -> None:
    """Write `limits` into the cgroup `path` (None fields: none). no_swap: also
    memory.swap.max 0 with a memory limit (present only with swap accounting; the
    caller knows from the parent, which has the same files a fresh cgroup gets)."""
    if limits.cpu is not None:
        quota = round(limits.cpu * CPU_PERIOD_US)
        base.write_value(path / "cpu.max", f"{quota} {CPU_PERIOD_US}", what=CPU.what)
    if limits.memory is not None:
        base.write_value(path / "memory.max", limits.memory, what=MEMORY.what)
        if no_swap:
            base.write_value(path / "memory.swap.max", 0, what=f"{MEMORY.what} (no swap)")
    if io_device is not None and limits.has_io:
        major, minor = io_device
        rates = [
            f"{key}={bps}"
            for key, bps in [("rbps", limits.io_read_bps), ("wbps", limits.io_write_bps)]
            if bps is not None
        ]
        base.write_value(path / "io.max", f"{major}:{minor} {' '.join(rates)}", what="io limit")
    if limits.pids is not None:
        base.write_value(path / "pids.max", limits.pids, what=PIDS.what)


def _take_over(subtree: Path, enable: str) -> None:
    """Move every process out of `subtree` into its leaves, then enable the
    controllers in it; repeat while processes keep joining (EBUSY)."""
    for _ in range(TAKE_OVER_ATTEMPTS):
        for pid in base.read_pids(subtree / "cgroup.procs"):
            leaf = subtree / (DAEMON_LEAF if pid == os.getpid() else OTHERS_LEAF)
            base.ensure_dir(leaf)  # only when a process needs it: an empty subtree gets no leaves
            _move(pid, leaf)
        if not enable or _try_enable(subtree, enable):
            return
    raise SetupError(
        f"cannot enable {enable} in {subtree}: processes kept joining it while jwsd moved "
        f"them to {subtree / OTHERS_LEAF}; start jwsd when nothing else is starting there"
    )


def _move(pid: int, leaf: Path) -> None:
    try:
        base.write_value(leaf / "cgroup.procs", pid)
    except SetupError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.ESRCH:
            return  # exited meanwhile
        raise


def _try_enable(cgroup: Path, enable: str) -> bool:
    """Write `enable` to cgroup.subtree_control: False when processes are still in
    `cgroup` (EBUSY), True once written."""
    try:
        base.write_value(cgroup / "cgroup.subtree_control", enable)
    except SetupError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
            return False
        raise
    return True


def _enable(cgroup: Path, enable: str) -> None:
    if not _try_enable(cgroup, enable):
        raise SetupError(
            f"cannot enable {enable} in {cgroup}: processes are in it; jwsd needs it empty"
        )

"""Cgroup v2: one unified hierarchy; jobs live in `<own>/<name>/<job_id>`, where
`<own>` is the daemon's own cgroup.

The "no internal processes" rule (a non-root cgroup that holds processes cannot
hand controllers to its children) means the daemon first moves itself into a
leaf `<own>/jwsd`, then enables the controllers in `<own>` and `<own>/<name>`.

Control files are written inline; see `base` for why that is fine.
Kernel doc: Documentation/admin-guide/cgroup-v2.rst.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import attrs

from jobworker.errors import SetupError
from jobworker.model import Limits, Usage
from jobworker.sandbox.cgroups import base

#: The controllers jobs need, as cgroup.controllers names them.
CONTROLLERS = ("cpu", "memory", "io", "pids")
#: The leaf the daemon moves itself into so that its own cgroup can delegate controllers.
DAEMON_LEAF = "jwsd"
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
    """Job cgroups under `parent` (`<own>/<name>`). Build it with `V2Driver.open`.

    rmdir: how a directory is removed (`os.rmdir`; a fake cgroupfs passes its own).
    """

    parent: Path
    rmdir: base.Rmdir = os.rmdir
    version: int = attrs.field(default=2, init=False)

    @classmethod
    def open(
        cls,
        own: Path,
        name: str,
        rmdir: base.Rmdir = os.rmdir,
        *,
        controllers: tuple[str, ...] = CONTROLLERS,
    ) -> V2Driver:
        """Make `<own>/<name>` and delegate `controllers` to it, moving the daemon
        into the leaf `<own>/jwsd` first when `own` holds processes.

        own: the daemon's own cgroup directory (not its jwsd leaf).
        controllers: the controllers to enable; () for a hierarchy without any
            (then only unlimited jobs can be created).
        Raises SetupError naming a missing controller, or saying why the
        controllers cannot be enabled.
        """
        available = set(base.read_text(own / "cgroup.controllers").split())
        missing = [c for c in controllers if c not in available]
        if missing:
            raise SetupError(
                f"cgroup {own} lacks the {' '.join(missing)} controller(s); enable them in "
                f"its parent's cgroup.subtree_control (or delegate them to jwsd's service)"
            )
        # The root cgroup (which has no cgroup.type) is exempt from the rule.
        if (own / "cgroup.type").exists() and base.read_pids(own / "cgroup.procs"):
            leaf = own / DAEMON_LEAF
            _mkdir(leaf)
            base.write_value(leaf / "cgroup.procs", os.getpid())
        parent = own / name
        enable = " ".join(f"+{c}" for c in controllers)
        if enable:
            _enable(own, enable)
        _mkdir(parent)
        if enable:
            _enable(parent, enable)
        return cls(parent, rmdir)

    def create(self, job_id: str, limits: Limits, io_device: tuple[int, int] | None) -> V2JobCgroup:
        base.check_job_id(job_id)
        base.check_io_device(limits, io_device)
        cgroup = V2JobCgroup(job_id, self.parent / job_id, self.rmdir)
        base.make_dir(cgroup.path)
        try:
            self._write_limits(cgroup.path, limits, io_device)
        except BaseException:
            # Nothing runs in the new cgroup yet, so it can go at once.
            with contextlib.suppress(SetupError):
                base.try_rmdir(cgroup.path, self.rmdir)
            raise
        return cgroup

    def _write_limits(self, path: Path, limits: Limits, io_device: tuple[int, int] | None) -> None:
        if limits.cpu is not None:
            quota = round(limits.cpu * CPU_PERIOD_US)
            base.write_value(path / "cpu.max", f"{quota} {CPU_PERIOD_US}", what="cpu limit")
        if limits.memory is not None:
            base.write_value(path / "memory.max", limits.memory, what="memory limit")
            # Present only with swap accounting; the parent has the same files a fresh
            # cgroup gets, so its presence there says so.
            if (self.parent / "memory.swap.max").exists():
                base.write_value(path / "memory.swap.max", 0, what="memory limit (no swap)")
        if io_device is not None and limits.has_io:
            major, minor = io_device
            rates = [
                f"{key}={bps}"
                for key, bps in [("rbps", limits.io_read_bps), ("wbps", limits.io_write_bps)]
                if bps is not None
            ]
            base.write_value(path / "io.max", f"{major}:{minor} {' '.join(rates)}", what="io limit")
        if limits.pids is not None:
            base.write_value(path / "pids.max", limits.pids, what="pids limit")

    def cleanup_stale(self) -> list[str]:
        names = sorted(e.name for e in self.parent.iterdir() if e.is_dir())
        for name in names:
            stale = V2JobCgroup(name, self.parent / name, self.rmdir)
            stale.kill_all()
            stale.remove_blocking()
        return names

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.rmdir(self.parent)


def _mkdir(directory: Path) -> None:
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise SetupError(
            f"cannot create cgroup {directory}: {exc.strerror}; jwsd must run as root"
        ) from exc


def _enable(cgroup: Path, enable: str) -> None:
    file = cgroup / "cgroup.subtree_control"
    try:
        base.write_value(file, enable)
    except SetupError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
            raise SetupError(
                f"cannot enable {enable} in {cgroup}: other processes share jwsd's cgroup; "
                f"run jwsd in a cgroup of its own (a systemd service, or the container's "
                f"main process)"
            ) from exc
        raise

"""The systemd cgroup driver: each job in a transient scope unit of its own, outside
jwsd's unit, so that no KillMode of jwsd's and no restart of it touches a job
(what runc's and crun's systemd drivers and podman/conmon do). Cgroup v2 only.

    jobworker.slice/                                  (systemd's)
      jobworker-<owner>.slice/                        one per owner: owners share the CPU evenly
        jobworker-<owner>-<job id>.scope/             Delegate=yes: ours to divide
          job/                                        the job's limits; bubblewrap and the job
          copier/                                     the output copier
          keep/                                       the keeper: holds the scope until jwsd
                                                      has read the job's end (below)

A start (`SystemdJobCgroup.place`): the trampoline and the copier are forked in
jwsd's cgroup, the trampoline held on its stdin before it does anything (see
`bwrap.GATE`); systemd makes the scope with both pids in it (`systemd_bus.Bus.start_scope`,
waiting for its job's end); jwsd moves them to their leaves, enables the controllers
in the scope and writes the job's limits in `job/` (the cgroupfs driver's own code);
only then is the trampoline let go. So no process of the job runs outside its
scope or its limits. A scope whose last process has gone is removed by systemd
(CollectMode=inactive-or-failed: a failed one too), its whole tree with it.

That removal races with jwsd reading how the job ended: an OOM-killed job's
`job/memory.events` went with its scope before jwsd read it, and the job was
reported signalled, not OOM-killed. So each scope also holds a keeper, a `sleep`
in a leaf of its own (`keep/`, outside the job's limits), that jwsd kills only in
`remove`, once it has read the job's last usage. A jwsd that dies meanwhile
leaves the keeper holding the scope: the next jwsd reads the job's end from it,
then removes it, as the cgroupfs driver's job cgroups wait for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path

import attrs
import trio

from jobworker.errors import SetupError, StartFailedError
from jobworker.model import Limits
from jobworker.sandbox.bwrap import HELPER_ENV
from jobworker.sandbox.cgroups import base, systemd_bus, v2

log = logging.getLogger("jobworker.cgroups")

#: The leaves in each scope.
JOB_LEAF = "job"
COPIER_LEAF = "copier"
KEEP_LEAF = "keep"
#: What the keeper runs: a process that waits, and costs nothing meanwhile.
KEEPER_ARGV = ("sleep", "infinity")


@attrs.define(eq=False)
class SystemdJobCgroup(v2.V2JobCgroup):
    """A job's cgroup, `<scope>/job` (`path`), in its scope `unit`; made by `place`."""

    unit: str = ""
    slice_: str = ""
    owner: str = ""
    limits: Limits = attrs.Factory(Limits)
    io_device: tuple[int, int] | None = None
    bus: systemd_bus.Bus = attrs.Factory(systemd_bus.Bus)
    bus_timeout: float = systemd_bus.BUS_TIMEOUT
    no_swap: bool = False
    placed: bool = False
    keeper: trio.Process | None = None

    #: The trampoline waits for `place` before it enters its cgroup.
    holds_start = True

    @property
    def scope_dir(self) -> Path:
        return self.path.parent

    async def place(self, supervisor: int, copier: int) -> None:
        """Make the job's scope with the held `supervisor` and `copier` in it, their
        leaves, and the job's limits. Raises StartFailedError (systemd refused, or did
        not answer within the bound) or what writing the limits raises; the caller
        then kills both and `remove`s (which stops the scope)."""
        self.bus.watch(self.unit)  # from before its start job: every later job is foreign
        self.keeper = await _start_keeper()
        try:
            await self.bus.start_scope(
                self.unit,
                slice_=self.slice_,
                description=f"jobworker job {self.name} of {self.owner}",
                pids=[supervisor, copier, self.keeper.pid],
                timeout=self.bus_timeout,
            )
        except systemd_bus.ScopeError as exc:
            raise StartFailedError(str(exc)) from exc
        self.placed = True
        scope = self.scope_dir
        copier_leaf, keep_leaf = scope / COPIER_LEAF, scope / KEEP_LEAF
        base.make_dir(self.path)
        base.make_dir(copier_leaf)
        base.make_dir(keep_leaf)
        base.write_value(keep_leaf / "cgroup.procs", self.keeper.pid)
        base.write_value(copier_leaf / "cgroup.procs", copier)
        base.write_value(self.path / "cgroup.procs", supervisor)
        enable = " ".join(f"+{c}" for c in v2.CONTROLLERS)
        base.write_value(scope / "cgroup.subtree_control", enable)
        v2.write_limits(self.path, self.limits, self.io_device, no_swap=self.no_swap)

    async def stopped_outside(self) -> str | None:
        if await self.bus.stopped_outside(self.unit, timeout=min(self.bus_timeout, 5.0)):
            return f"stopped outside jobworker: systemd stopped its scope {self.unit}"
        return None

    async def remove(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Remove the leaves (the job's processes are gone), the keeper's last: then
        the scope goes by itself (systemd sees it empty), or, after a start that
        failed, is stopped here."""
        await super().remove(timeout)
        deadline = trio.current_time() + timeout
        copier_leaf, keep_leaf = self.scope_dir / COPIER_LEAF, self.scope_dir / KEEP_LEAF
        # Polled as in `JobCgroup.remove`: the copier is leaving; rmdir has no event.
        while not self._try_rmdir(copier_leaf) and trio.current_time() < deadline:  # noqa: ASYNC110
            await trio.sleep(0.01)
        # The job's end has been read (`RunningJob.finish` reads the usage first): let
        # the scope go. The keeper is ours to reap, unless an earlier jwsd started it.
        if keep_leaf.is_dir():
            with contextlib.suppress(SetupError):
                base.write_value(keep_leaf / "cgroup.kill", 1)
        if self.keeper is not None:
            self.keeper.kill()
            with trio.move_on_after(max(deadline - trio.current_time(), 0.1)):
                await self.keeper.wait()
        while not self._try_rmdir(keep_leaf) and trio.current_time() < deadline:  # noqa: ASYNC110
            await trio.sleep(0.01)
        if not self.placed or self.scope_dir.is_dir():
            try:
                await self.bus.stop_scope(self.unit, timeout=self.bus_timeout)
            except Exception:
                log.exception("job %s: cannot stop its scope %s", self.name, self.unit)
        self.bus.unwatch(self.unit)


async def _start_keeper() -> trio.Process:
    """A new keeper process (see the module docstring), in jwsd's cgroup until
    systemd moves it into the scope; in a session of its own, as the job's processes."""
    program = shutil.which(KEEPER_ARGV[0], path=HELPER_ENV["PATH"])
    if program is None:
        raise StartFailedError("sleep is not installed on this host (coreutils); install it")
    return await trio.lowlevel.open_process(
        [program, *KEEPER_ARGV[1:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(HELPER_ENV),
        cwd="/",
        start_new_session=True,
    )


@attrs.define(eq=False)
class SystemdDriver(base.CgroupDriver):
    """Jobs in scopes under `jobworker.slice` (`root`: the cgroup2 mount). Nothing is
    made until a job starts; no lock: systemd refuses a second scope of a name. Every
    job's start and stop goes over one connection (`connection`, made on the first
    start; `close` closes it). `bus`: the bus's address (a test's own bus)."""

    root: Path = Path("/sys/fs/cgroup")
    bus: str = systemd_bus.SYSTEM_BUS
    bus_timeout: float = systemd_bus.BUS_TIMEOUT
    rmdir: base.Rmdir = os.rmdir
    version: int = attrs.field(default=2, init=False)
    parent: Path = attrs.field(init=False)
    lock_fds: dict[Path, int] = attrs.field(init=False, factory=dict)
    connection: systemd_bus.Bus = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.parent = self.root / systemd_bus.TOP_SLICE
        self.connection = systemd_bus.Bus(self.bus)

    def parent_dirs(self) -> tuple[Path, ...]:
        return ()  # systemd's: it makes them again itself

    def rebuild(self) -> None:
        pass

    def _cgroup(self, job_id: str, owner: str) -> SystemdJobCgroup:
        slice_ = systemd_bus.slice_name(owner)
        unit = systemd_bus.scope_name(owner, job_id)
        return SystemdJobCgroup(
            job_id,
            self.parent / slice_ / unit / JOB_LEAF,
            unit=unit,
            slice_=slice_,
            owner=owner,
            bus=self.connection,
            bus_timeout=self.bus_timeout,
        )

    def create(
        self,
        job_id: str,
        limits: Limits,
        io_device: tuple[int, int] | None,
        owner: str | None = None,
    ) -> SystemdJobCgroup:
        base.check_job_id(job_id)
        base.check_io_device(limits, io_device)
        cgroup = self._cgroup(job_id, owner or "")
        cgroup.limits, cgroup.io_device = limits, io_device
        # The root cgroup has no memory.swap.max; system.slice has it with swap accounting.
        cgroup.no_swap = (self.root / "system.slice" / "memory.swap.max").exists()
        return cgroup

    def attach(self, job_id: str, owner: str | None = None) -> SystemdJobCgroup | None:
        base.check_job_id(job_id)
        cgroup = self._cgroup(job_id, owner or "")
        cgroup.placed = True
        if not cgroup.path.is_dir():
            return None
        self.connection.watch(cgroup.unit)
        return cgroup

    async def connect(self) -> None:
        """Connect to the bus now, so that an operator's stop of a scope taken over is
        seen (`SystemdJobCgroup.stopped_outside`); a failure is logged (the next start
        connects)."""
        with trio.move_on_after(self.bus_timeout) as waiting:
            try:
                await self.connection.connect()
            except systemd_bus.ScopeError as exc:
                log.warning("cannot connect to systemd on the bus yet: %s", exc)
        if waiting.cancelled_caught:
            log.warning("cannot connect to systemd on the bus within %g s", self.bus_timeout)

    def cleanup_stale(self, keep: Collection[str] = ()) -> list[str]:
        """Kill what runs in each scope no running job claims (systemd then removes
        the scope), and reset the failed ones a crash left."""
        names = []
        scopes = sorted(self.parent.glob("jobworker-*.slice/jobworker-*.scope"))
        for scope in scopes:
            job_id = scope.name.removesuffix(".scope").split("-", 2)[-1]
            if job_id in keep:
                continue
            with contextlib.suppress(SetupError):
                base.write_value(scope / "cgroup.kill", 1)
            base.wait_for_exit(_all_pids(scope), 5.0)
            for leaf in (JOB_LEAF, COPIER_LEAF, KEEP_LEAF):
                with contextlib.suppress(SetupError):
                    base.try_rmdir(scope / leaf, self.rmdir)
            names.append(job_id)
        failed = systemd_bus.reset_failed_scopes(self.bus)
        if failed:
            log.warning("reset %d failed job scopes: %s", len(failed), " ".join(failed))
        return names

    def restarting(self) -> bool:
        return systemd_bus.restart_queued(self.bus)

    def close(self) -> None:
        self.connection.close()


def _all_pids(cgroup: Path) -> list[int]:
    pids: list[int] = []
    for procs in cgroup.rglob("cgroup.procs"):
        pids.extend(base.read_pids(procs))
    return pids


__all__ = ["SystemdDriver", "SystemdJobCgroup"]

"""Finding the host's cgroups: which version, where its hierarchies are mounted, and
the daemon's own cgroup in each, read from /proc/self/mountinfo and /proc/self/cgroup.

The paths are parameters so tests can point them at a fake cgroupfs in a temp dir.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

from jobworker.errors import SetupError
from jobworker.sandbox.cgroups import base, systemd, systemd_bus, v1, v2


@attrs.frozen
class Mount:
    """One cgroup mount from mountinfo.

    root: the cgroup (path in its hierarchy) shown at mount_point; "/" unless
        a container bind-mounted a subtree.
    controllers: the v1 controllers (and name=...) of the hierarchy; empty for cgroup2.
    """

    mount_point: Path
    root: str
    fstype: str
    controllers: frozenset[str]


def detect(
    *,
    name: str = "jobworker",
    subtree: str | None = None,
    root: Path = Path("/sys/fs/cgroup"),
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
    rmdir: base.Rmdir = os.rmdir,
) -> base.CgroupDriver:
    """Pick the cgroup driver for this host and create the job parent.

    v2 when `root` is a cgroup2 mount; else v1 when cpu, cpuacct, memory, blkio,
    pids and freezer are mounted under `root` (a hybrid host, with cgroup2 on
    root/unified, uses v1). The job parent is `<subtree>/<name>` in each hierarchy
    used, where the subtree is the daemon's own cgroup unless `subtree` names one.
    On v2 the daemon's own cgroup is taken over (see `v2`); a daemon found in a
    leaf an earlier take-over made (`jwsd` or `init`) uses the subtree above it.

    name: the job parent's name, a plain directory name.
    subtree: a cgroup path (as /proc/self/cgroup writes them, e.g.
        "/jobworker.slice"; created when missing) to use instead of the daemon's
        own cgroup: for a daemon started from a shell, whose own cgroup (a
        session scope) is not its to divide.
    rmdir: how a directory is removed (`os.rmdir`; a fake cgroupfs passes its own).
    Raises SetupError saying what is missing: no cgroup filesystem, a controller,
    the daemon's cgroup, or the permission (root) to create the parent.
    """
    if not name or name in {".", ".."} or "/" in name or "\0" in name:
        raise SetupError(f"bad cgroup name {name!r}: use a plain directory name")
    if subtree is not None and (not subtree.startswith("/") or ".." in subtree.split("/")):
        raise SetupError(f"bad cgroup parent {subtree!r}: use an absolute cgroup path")
    mounts = read_mounts(mountinfo)
    own = read_own_cgroups(proc_self_cgroup)
    unified = [m for m in mounts if m.fstype == "cgroup2" and m.mount_point == root]
    if unified:
        if subtree is not None:
            return v2.V2Driver.open(_make_subtree(unified[0], subtree), name, rmdir)
        if "" not in own:
            raise SetupError(f"{proc_self_cgroup} has no cgroup2 line (0::/path)")
        own_dir = _in_mount(unified[0], own[""])
        if own_dir.name in {v2.DAEMON_LEAF, v2.OTHERS_LEAF} and _delegates(own_dir.parent):
            # An earlier take-over (this process's, or the parent process's) made the leaf.
            own_dir = own_dir.parent
        return v2.V2Driver.open(own_dir, name, rmdir)
    legacy = [m for m in mounts if m.fstype == "cgroup" and m.mount_point.is_relative_to(root)]
    if not legacy:
        raise SetupError(
            f"no cgroup filesystem is mounted at {root}; mount cgroup2 there (or the v1 "
            f"controllers under it) and run jwsd as root"
        )
    own_dirs: dict[str, Path] = {}
    missing = []
    for controller in v1.CONTROLLERS:
        mount = next((m for m in legacy if controller in m.controllers), None)
        if mount is None:
            missing.append(controller)
            continue
        if subtree is not None:
            own_dirs[controller] = _make_subtree(mount, subtree)
            continue
        if controller not in own:
            raise SetupError(f"{proc_self_cgroup} lists no {controller} cgroup for jwsd")
        own_dirs[controller] = _in_mount(mount, own[controller])
    if missing:
        raise SetupError(
            f"the cgroup v1 controller(s) {' '.join(missing)} are not mounted under {root}; "
            f"mount them (mount -t cgroup -o NAME cgroup {root}/NAME) or use cgroup v2"
        )
    return v1.V1Driver.open(own_dirs, name, rmdir)


#: The choices of `jwsd --cgroup-driver`.
DRIVERS = ("auto", "systemd", "cgroupfs")


def pick(
    kind: str,
    *,
    name: str = "jobworker",
    subtree: str | None = None,
    root: Path = Path("/sys/fs/cgroup"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
) -> base.CgroupDriver:
    """The cgroup driver `kind` names (`DRIVERS`), its `chosen` saying which and why.

    auto: systemd's (a scope per job, `cgroups.systemd`) when systemd is PID 1, answers
    on the system bus and the hierarchy is unified, and no `subtree` is named; else
    the cgroupfs driver (`detect`), with the reason. systemd: that driver or
    SetupError saying why not. cgroupfs: `detect`'s, as before there was a choice.
    """
    if kind not in DRIVERS:
        raise SetupError(f"bad cgroup driver {kind!r}: use one of {', '.join(DRIVERS)}")
    reason = None
    if kind != "cgroupfs":
        reason = _systemd_unusable(root, mountinfo, subtree)
        if reason is None:
            driver: base.CgroupDriver = systemd.SystemdDriver(root)
            driver.chosen = "systemd (a scope per job in jobworker.slice" + (
                "; auto: systemd is PID 1 and answers on the system bus)" if kind == "auto" else ")"
            )
            return driver
        if kind == "systemd":
            raise SetupError(f"cannot use the systemd cgroup driver: {reason}")
    driver = detect(name=name, subtree=subtree, root=root, mountinfo=mountinfo)
    driver.chosen = f"cgroupfs (v{driver.version} under {driver.parent}" + (
        f"; auto: {reason})" if reason else ")"
    )
    return driver


def _systemd_unusable(root: Path, mountinfo: Path, subtree: str | None) -> str | None:
    """Why the systemd driver cannot be used here, or None."""
    if subtree is not None:
        return "--cgroup-parent names the cgroup to divide"
    if not any(m.fstype == "cgroup2" and m.mount_point == root for m in read_mounts(mountinfo)):
        return f"{root} is not the unified cgroup2 hierarchy (v1 or hybrid): the systemd driver needs it"
    return systemd_bus.available()


def read_mounts(mountinfo: Path) -> list[Mount]:
    """The cgroup and cgroup2 mounts in a mountinfo file (see proc(5))."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as exc:
        raise SetupError(f"cannot read {mountinfo}: {exc.strerror}") from exc
    mounts = []
    for line in lines:
        # id parent maj:min root mount-point options [optional fields...] - fstype source super-options
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        fstype = after[0]
        if fstype not in {"cgroup", "cgroup2"}:
            continue
        controllers = frozenset(after[2].split(",")) if fstype == "cgroup" else frozenset()
        mounts.append(Mount(Path(_unescape(fields[4])), _unescape(fields[3]), fstype, controllers))
    return mounts


def read_own_cgroups(proc_self_cgroup: Path) -> dict[str, str]:
    """The daemon's cgroup path per v1 controller, and under "" the cgroup2 one."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError as exc:
        raise SetupError(f"cannot read {proc_self_cgroup}: {exc.strerror}") from exc
    own: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _in_mount(mount: Mount, cgroup: str) -> Path:
    """Where cgroup path `cgroup` of the mount's hierarchy appears in the file system."""
    root = mount.root.rstrip("/")
    if cgroup != root and not cgroup.startswith(root + "/"):
        raise SetupError(
            f"jwsd's cgroup {cgroup} is outside the part of its hierarchy mounted at "
            f"{mount.mount_point} ({mount.root}); mount the whole hierarchy"
        )
    return mount.mount_point / cgroup[len(root) :].lstrip("/")


def _make_subtree(mount: Mount, cgroup: str) -> Path:
    """The configured subtree `cgroup` in the mount, created (with its parents) when missing."""
    directory = _in_mount(mount, cgroup)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(
            f"cannot create cgroup {directory}: {exc.strerror}; jwsd must run as root"
        ) from exc
    return directory


def _delegates(cgroup: Path) -> bool:
    """Whether `cgroup` hands any controller down (its cgroup.subtree_control is not empty)."""
    try:
        return bool(base.read_text(cgroup / "cgroup.subtree_control").split())
    except SetupError:
        return False


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

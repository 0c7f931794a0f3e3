"""The job's view of the host: an allow-list, built once at jwsd's start-up.

A job sees, read-only, the directories programs need (`ALLOWED`: /usr, the
/bin, /sbin and /lib* that merged-/usr hosts keep as symlinks into it, which
stay symlinks, /etc, /opt), plus what the operator adds with `jwsd --job-bind`;
nothing else of the host. Not /run or /var/run (the host's unix sockets: the
system bus, journald's socket, any root listener's 0666 socket: `connect()`
works on a read-only mount), /var (its /var/tmp is a symlink to the job's own
/tmp), /home, /root, /mnt, /media, /srv, the data dir, nor any host procfs or
sysfs: /proc is the sandbox's own, and there is no /sys at all (bubblewrap
cannot mount a fresh sysfs, and the host's names every cgroup, device and
network interface; glibc and Python count CPUs without it).

bubblewrap 0.8's `--ro-bind` is recursive: binding /usr also brings every
filesystem mounted below it (a chroot's /proc under /opt, a fuse mount, a
socket bind-mounted into /etc). So `HostView.build` reads /proc/self/mountinfo
and covers each submount of a bound directory with an empty read-only tmpfs (a
directory) or /dev/null (a socket, a device, a file of a pseudo filesystem);
only a regular file of an ordinary filesystem is kept (a container's
/etc/hosts and /etc/resolv.conf are such bind mounts). It also covers the
secrets of /etc (`SECRETS`) the job user could read, which a well-kept host
has none of (Debian's shadow files are 0640 root:shadow, ssh host keys 0600).

The same view decides the program lookup (`program.resolve_program`): `hidden`
and `visible` say what the job cannot and can see, so a start request learns
nothing about the host the job could not learn itself. A mount made after
jwsd's start is not covered until the next start of jwsd (docs/security.md).
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

import attrs

from jobworker.errors import SetupError
from jobworker.sandbox.bwrap import JobUser
from jobworker.sandbox.program import permits

log = logging.getLogger(__name__)

#: The host directories every job sees read-only, when the host has them.
ALLOWED = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")

#: Files and directories of /etc that hold secrets: covered when the job user can read them.
SECRETS = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssh/ssh_host_*_key",
    "/etc/ssl/private",
)

#: Filesystems whose files are views of the kernel's state, never kept under a bound directory.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "proc",
        "sysfs",
        "debugfs",
        "tracefs",
        "securityfs",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "efivarfs",
        "pstore",
        "fusectl",
        "binfmt_misc",
        "devpts",
        "devtmpfs",
        "mqueue",
        "nsfs",
    }
)

#: Where a job's own filesystems go: an operator's bind may not land there.
SANDBOX_OWN = ("/proc", "/dev", "/tmp")


@attrs.frozen
class Mount:
    """One line of /proc/self/mountinfo: where a filesystem is mounted and its type."""

    mount_point: str
    fstype: str


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a /proc/self/mountinfo text, in its order (parents first).
    Mount points are unescaped (the kernel writes a space as \\040)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        point = _unescape(fields[4])
        mounts.append(Mount(mount_point=point, fstype=_unescape(fields[separator + 1])))
    return mounts


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    return os.fsdecode(field.encode("latin-1").decode("unicode_escape").encode("latin-1"))


@attrs.frozen
class JobBind:
    """An operator's `jwsd --job-bind SRC[:DST][:ro|rw]`: host path SRC shown to every
    job at DST (default: SRC), read-only unless `writable`."""

    source: PurePosixPath
    target: PurePosixPath
    writable: bool = False

    @classmethod
    def parse(cls, text: str) -> JobBind:
        """Parse and check one `--job-bind` value; raises SetupError (one line) when it
        is not two absolute paths and a mode, or SRC does not exist."""
        parts = text.split(":")
        writable = False
        if len(parts) > 1 and parts[-1] in ("ro", "rw"):
            writable = parts.pop() == "rw"
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise SetupError(
                f"--job-bind {text!r} is not SRC[:DST][:ro|rw] (paths without ':'); "
                "e.g. --job-bind /srv/data:/data:ro"
            )
        source, target = PurePosixPath(parts[0]), PurePosixPath(parts[-1])
        for path in (source, target):
            if not path.is_absolute() or ".." in path.parts:
                raise SetupError(
                    f"--job-bind {text!r}: {path} must be an absolute path without '..'"
                )
        if target == PurePosixPath("/") or any(target.is_relative_to(own) for own in SANDBOX_OWN):
            raise SetupError(
                f"--job-bind {text!r}: {target} is the sandbox's own; pick a target outside / , "
                f"{', '.join(SANDBOX_OWN)}"
            )
        if not os.path.exists(source):
            raise SetupError(f"--job-bind {text!r}: {source} does not exist on this host")
        return cls(source=source, target=target, writable=writable)


@attrs.frozen
class HostView:
    """What of the host a job sees (see the module docstring).

    options: the bubblewrap options that build it, before the sandbox's own
        /proc, /dev and /tmp (see `bwrap.spawn_argv`).
    hidden, visible: for the program lookup: a path is hidden when the deepest
        of these that contains it is a hidden one ("/" is hidden).
    """

    options: tuple[str, ...]
    hidden: tuple[PurePosixPath, ...]
    visible: tuple[PurePosixPath, ...]

    @classmethod
    def build(
        cls,
        *,
        can_read: Callable[[str], bool],
        data_dir: Path,
        binds: Sequence[JobBind] = (),
        mountinfo: str | None = None,
        root: str = "/",
    ) -> HostView:
        """The view for jobs run by a user who `can_read(path)` (see `readable_by`).

        data_dir: an operator's bind may neither contain it nor be inside it.
        mountinfo: the text of /proc/self/mountinfo (None: read it now).
        root: where the host's root is (tests build views of a fake tree).
        Raises SetupError naming a --job-bind that would show the data dir or a
        host procfs or sysfs.
        """
        if mountinfo is None:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        mounts = parse_mountinfo(mountinfo)
        builder = _Builder(mounts, root)
        for name in ALLOWED:
            builder.allow(PurePosixPath(name))
        for secret in _existing(root, SECRETS):
            if can_read(secret):
                builder.cover(PurePosixPath(secret), reason="a secret the job user can read")
        data = PurePosixPath(data_dir)
        for bind in binds:
            if bind.source.is_relative_to(data) or data.is_relative_to(bind.source):
                raise SetupError(
                    f"--job-bind {bind.source}: it overlaps the data dir {data_dir} (other jobs' "
                    "files); bind a directory outside it"
                )
            fstype = _mount_of(mounts, bind.source).fstype
            if fstype in ("proc", "sysfs"):
                raise SetupError(
                    f"--job-bind {bind.source}: it is on the host's {fstype}, which a job must "
                    "not see; bind something else"
                )
            builder.bind(bind.source, bind.target, writable=bind.writable)
        # Programs expect a writable /var/tmp: the job's own size-limited /tmp.
        builder.options += ["--symlink", "../tmp", "/var/tmp"]
        builder.visible.append(PurePosixPath("/var/tmp"))
        return cls(
            options=tuple(builder.options),
            hidden=(PurePosixPath("/"), *builder.hidden),
            visible=tuple(builder.visible),
        )


@attrs.define
class _Builder:
    mounts: list[Mount]
    root: str
    options: list[str] = attrs.Factory(list)
    hidden: list[PurePosixPath] = attrs.Factory(list)
    visible: list[PurePosixPath] = attrs.Factory(list)

    def host(self, path: PurePosixPath) -> str:
        return os.path.join(self.root, str(path).lstrip("/")) if self.root != "/" else str(path)

    def allow(self, path: PurePosixPath) -> None:
        """Show the host's `path` read-only if it exists: a symlink into another allowed
        directory stays a symlink, any other symlink shows what it points to."""
        host = self.host(path)
        if os.path.islink(host):
            target = os.readlink(host)
            resolved = PurePosixPath(
                os.path.normpath(os.path.join(os.path.dirname(str(path)), target))
            )
            if any(resolved.is_relative_to(name) for name in ALLOWED if name != str(path)):
                self.options += ["--symlink", target, str(path)]
                self.visible.append(path)
                return
            path_on_host = PurePosixPath(os.path.realpath(host))
            self.bind(path_on_host, path, writable=False)
            return
        if os.path.isdir(host):
            self.bind(path, path, writable=False)

    def bind(self, source: PurePosixPath, target: PurePosixPath, *, writable: bool) -> None:
        """Bind `source` at `target`, then cover each filesystem mounted below `source`."""
        self.options += ["--bind" if writable else "--ro-bind", self.host(source), str(target)]
        self.visible.append(target)
        covered: list[str] = []
        for mount in self.mounts:
            point = PurePosixPath(mount.mount_point)
            if point == source or not point.is_relative_to(source):
                continue
            if any(point.is_relative_to(done) for done in covered):
                continue
            on_host = self.host(point)
            try:
                mode = os.stat(on_host).st_mode
            except OSError:
                continue  # over-mounted or gone: nothing of it shows
            if stat.S_ISREG(mode) and mount.fstype not in PSEUDO_FILESYSTEMS:
                continue  # a file of an ordinary filesystem (a container's /etc/hosts)
            covered.append(str(point))
            self.cover(
                target / point.relative_to(source),
                reason=f"a {mount.fstype} mounted there",
                is_dir=stat.S_ISDIR(mode),
            )

    def cover(self, path: PurePosixPath, *, reason: str, is_dir: bool | None = None) -> None:
        """Hide `path` behind an empty read-only tmpfs (a directory) or /dev/null."""
        if is_dir is None:
            is_dir = os.path.isdir(self.host(path))
        if is_dir:
            self.options += ["--tmpfs", str(path), "--remount-ro", str(path)]
        else:
            self.options += ["--ro-bind", "/dev/null", str(path)]
        self.hidden.append(path)
        # Debug only: a refusal at start-up must stay one line, and such a mount (a 9p
        # share under /opt, say) is covered on every start.
        log.debug("jobs do not see %s: %s", path, reason)


def _mount_of(mounts: Sequence[Mount], path: PurePosixPath) -> Mount:
    """The mount `path` is on: the last one whose mount point contains it."""
    found = Mount(mount_point="/", fstype="")
    for mount in mounts:
        if path.is_relative_to(mount.mount_point):
            found = mount
    return found


def _existing(root: str, patterns: Iterable[str]) -> list[str]:
    found = []
    for pattern in patterns:
        host = os.path.join(root, pattern.lstrip("/")) if root != "/" else pattern
        for match in sorted(glob.glob(host)):
            found.append("/" + os.path.relpath(match, root) if root != "/" else match)
    return found


def readable_by(user: JobUser, root: str = "/") -> Callable[[str], bool]:
    """A test of whether `user` could read (a file) or enter (a directory) a host
    path: search permission on every directory on the way, then read (a directory:
    search) on the path itself; symbolic links count as what they point to. Root
    reads everything. `root`: where the host's root is (tests)."""

    def can_read(path: str) -> bool:
        if user.is_root:
            return True
        host = os.path.join(root, path.lstrip("/"))
        try:
            real = os.path.realpath(host, strict=True)
            st = os.stat(real)
            parents = [os.stat(parent) for parent in PurePosixPath(real).parents]
        except OSError:
            return False
        if not all(permits(parent, user, 0o1) for parent in parents):
            return False
        return permits(st, user, 0o1 if stat.S_ISDIR(st.st_mode) else 0o4)

    return can_read

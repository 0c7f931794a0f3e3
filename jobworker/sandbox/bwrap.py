"""The command line that starts a job: a cgroup trampoline, a privilege drop, and
bubblewrap.

    sh -c TRAMPOLINE jobworker-trampoline PROCS... -- setpriv --reuid U ... -- bwrap --args FD OPTS -- ARGV

1. The trampoline (`sh`, still root) writes its own pid into every cgroup.procs
   file of the job, then `exec`s the rest: every process the job ever has is born
   inside its cgroups, with no race and no `preexec_fn` in a threaded daemon.
2. `setpriv` drops to the job's host uid (its owner's, `jobworker.jobs.uids`)
   before bubblewrap runs, so bubblewrap builds the sandbox unprivileged, inside a
   new user namespace that maps the job user (default `nobody`) to that uid: the
   command sees itself as the job user, runs as its owner's uid on the host, with
   no capabilities at all.
3. `bwrap` unshares every namespace (pid, mount, net with only `lo` up, uts, ipc,
   user, cgroup) and forbids further user namespaces inside, builds the job's
   view of the host on an empty root (an allow-list of read-only directories,
   `hostview`; no /sys, nor any host procfs or sysfs), mounts a fresh /proc, a
   read-only /dev, and size-limited /tmp and /dev/shm, hides the data dir (other
   jobs' files, when the view shows it) behind a read-only empty tmpfs, mounts
   the job's own work dir (a size-limited tmpfs, see `workdir`) at its path,
   makes the root read-only, and starts the command as the leader of a new
   session. No `--die-with-parent`: the job outlives the daemon;
   `--json-status-fd` reports the host pid of the sandbox's init (leader of
   the command's process group) and the exit code.
   Bubblewrap also installs the jobs' seccomp filter (`seccomp`, through
   `launch.launch`) before it execs what follows.
4. Inside, `READY_HELPER` (`sh`) reports that the sandbox is ready, waits for
   the daemon's answer, then execs the command.

The environment: the three helpers run with `HELPER_ENV`, a fixed environment of
the daemon's choosing, never the request's: a root program (or its dynamic
loader) obeys variables such as LD_PRELOAD, so a request's environment there
would be code of the request's choosing running as root. The job's environment
exists only inside the sandbox: `env_options` makes bubblewrap's `--clearenv`
and one `--setenv K V` per variable, which bubblewrap reads from a file
descriptor (`--args FD`), not from its command line: the host's `ps` shows every
process's command line to every user, and the environment often holds secrets.

Every option used here exists in bubblewrap 0.8 (Debian bookworm's):
`--disable-userns`, `--size`, `--args`, `--clearenv`, `--setenv`, `--remount-ro`.

The bubblewrap and kernel behaviour this relies on: docs/platform.md.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from jobworker.errors import SetupError

#: Writes "$$" into each cgroup.procs file named before "--", then execs what follows.
TRAMPOLINE = (
    'for f do shift; [ "$f" = -- ] && break; '
    'echo $$ > "$f" || { echo "jobworker: cannot enter cgroup $f" >&2; exit 125; }; done; '
    'exec "$@"'
)

#: Put before TRAMPOLINE when the cgroup driver places the job itself (systemd's: the
#: scope is made with the trampoline's pid in it): the trampoline waits for one line
#: on its stdin (the ready socket) before it does anything, and exits if the daemon's
#: end closes instead.
GATE = "read -r _ <&0 || exit 125; "

#: Runs inside the sandbox as the last step before the command: tells the daemon the
#: sandbox is ready (one line on fd 0, a socket only the daemon holds the other end
#: of), waits for the daemon's answer line, then execs the command with stdin from
#: /dev/null. Until then the command does not exist: a SIGTERM to its process group
#: would only reach bubblewrap's init, which ignores it (`start` returns only after
#: the ready line), and the daemon opens the work dir in the sandbox meanwhile
#: (`workdir.open_in_sandbox`), before the command can come and go. If the daemon's
#: end closes instead of answering, the command never runs.
#: An answer that is not empty is why the command may not run (its network could not
#: be set up), and so is no answer at all (jwsd went away first): the helper writes
#: it to the job's output and exits 125.
READY_HELPER = (
    'echo >&0 && { read -r why <&0 || why="jwsd went away before the command could run"; '
    '[ -z "$why" ] && exec "$@" </dev/null; echo "jobworker: $why" >&2; exit 125; }'
)

#: The whole environment of the root helpers (trampoline, setpriv) and of the outer
#: bubblewrap: fixed, whatever the request or the daemon's own environment holds.
HELPER_ENV: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

#: The hostname a job sees in its own UTS namespace.
JOB_HOSTNAME = "job"

#: The processes bubblewrap adds to every job (outer bwrap, and the namespace's init),
#: which count against the pids limit on top of what the user asked for.
HELPER_PROCESSES = 2


@attrs.frozen
class JobUser:
    """Who a job runs as. `name`, `uid` and `gid` are the host account jobs see
    themselves as inside their user namespace (`--job-user`, default `nobody`);
    `host_uid` and `host_gid` are what the job's processes are on the host (its
    owner's ids, `jobworker.jobs.uids`; by default the account's own). Every
    permission the host grants a job is judged for the host ids. uid 0 means root:
    the sandbox then keeps root's capabilities (an explicit, dangerous opt-in of
    the daemon's operator), on the host too."""

    name: str
    uid: int
    gid: int
    host_uid: int = attrs.field(default=attrs.Factory(lambda user: user.uid, takes_self=True))
    host_gid: int = attrs.field(default=attrs.Factory(lambda user: user.gid, takes_self=True))

    @classmethod
    def lookup(cls, name: str) -> JobUser:
        """Resolve a user name; raises SetupError if the account does not exist."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SetupError(
                f"job user {name!r} does not exist on this host; pick another with --job-user"
            ) from None
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid)

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def on_host(self, uid: int) -> JobUser:
        """This user running as host uid (and gid) `uid`; root stays root."""
        return self if self.is_root else attrs.evolve(self, host_uid=uid, host_gid=uid)


@attrs.frozen
class SandboxTools:
    """Absolute paths of the programs the spawn command line uses (never looked up in the job's PATH)."""

    sh: str
    setpriv: str
    bwrap: str


def env_options(env: Mapping[str, str]) -> bytes:
    """Bubblewrap options, NUL-separated for `--args FD`, that give the sandbox
    exactly `env`: `--clearenv`, then `--setenv K V` for each variable. Bubblewrap
    applies them as it parses, to the command's environment only (its own loader
    has long run by then, as the job user)."""
    options = ["--clearenv"]
    for key, value in env.items():
        options += ["--setenv", key, value]
    return b"".join(os.fsencode(option) + b"\0" for option in options)


def spawn_argv(
    tools: SandboxTools,
    user: JobUser,
    *,
    procs_files: Sequence[Path],
    data_dir: Path,
    workdir: Path,
    cwd: str,
    argv: Sequence[str],
    status_fd: int,
    args_fd: int,
    host_network: bool,
    tmpfs_size: int | None,
    workdir_size: int | None,
    view: Sequence[str],
    held: bool = False,
    resolv_conf: Path | None = None,
) -> list[str]:
    """The whole command line for one job (see the module docstring).

    procs_files: the job's cgroup.procs files, one per hierarchy.
    data_dir: hidden from the job behind an empty read-only tmpfs.
    workdir: the job's writable work dir: a tmpfs of `workdir_size` bytes mounted
        there in the sandbox (see `workdir`), or with `workdir_size` None the host
        directory of that path, bound at the same path.
    cwd: the working directory inside the sandbox.
    status_fd: the fd (inherited by the child) bubblewrap writes JSON status lines to.
    args_fd: the fd (inherited by the child) bubblewrap reads more options from,
        `env_options` of the job's environment.
    tmpfs_size: the size in bytes of the job's writable /tmp and /dev/shm (each);
        None: the kernel's default, half the host's RAM.
    view: the options that show the job its view of the host (`hostview.HostView.options`).
    held: the trampoline waits for the daemon's line first (`GATE`).
    resolv_conf: a file shown at /etc/resolv.conf over the host's (`network.resolv_conf`).
    """
    cmd = trampoline_argv(tools, procs_files, held=held)
    if not user.is_root:
        cmd += [*setpriv_argv(tools, user), "--"]
    cmd += [tools.bwrap, "--args", str(args_fd), "--unshare-all"]
    if host_network:
        cmd.append("--share-net")
    cmd += user_namespace_options(user)
    size = [] if tmpfs_size is None else ["--size", str(tmpfs_size)]
    cmd += [
        *view,
        *(["--ro-bind", str(resolv_conf), "/etc/resolv.conf"] if resolv_conf else []),
        "--proc", "/proc",
        # bubblewrap's /dev is a tmpfs the job user owns, of the kernel's default size:
        # read-only but for its own size-limited /dev/shm (device nodes stay writable).
        "--dev", "/dev",
        *size, "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        *size, "--tmpfs", "/tmp",
        # Other jobs' work dirs and output; only the job's own work dir comes back.
        "--tmpfs", str(data_dir),
        *_workdir_options(workdir, workdir_size),
        "--remount-ro", str(data_dir),
        # bubblewrap's root is a tmpfs the job user owns, of half the host's RAM;
        # non-recursive: /tmp, /dev/shm and the work dir stay writable.
        "--remount-ro", "/",
        "--chdir", cwd,
        "--hostname", JOB_HOSTNAME,
        "--new-session",
        "--json-status-fd", str(status_fd),
        "--",
        *exec_argv(tools, argv),
    ]  # fmt: skip
    return cmd


def user_namespace_options(user: JobUser) -> list[str]:
    """The job user's own user namespace, where it is `user` (none for root).
    --disable-userns needs a user namespace of bubblewrap's own making."""
    if user.is_root:
        return []
    return ["--unshare-user", "--disable-userns", "--uid", str(user.uid), "--gid", str(user.gid)]


def setpriv_argv(tools: SandboxTools, user: JobUser) -> list[str]:
    """setpriv dropping to the job's host ids, with no supplementary groups."""
    return [tools.setpriv, f"--reuid={user.host_uid}", f"--regid={user.host_gid}", "--clear-groups"]


def trampoline_argv(
    tools: SandboxTools, procs_files: Sequence[Path], *, held: bool = False
) -> list[str]:
    """The prefix that runs what follows it inside the job's cgroups (`TRAMPOLINE`);
    held: it waits for the daemon's line first (`GATE`)."""
    trampoline = GATE + TRAMPOLINE if held else TRAMPOLINE
    return [tools.sh, "-c", trampoline, "jobworker-trampoline", *map(str, procs_files), "--"]


def _workdir_options(workdir: Path, size: int | None) -> list[str]:
    if size is None:
        return ["--bind", str(workdir), str(workdir)]
    # bubblewrap mounts it nosuid and nodev, owned by the job user.
    return ["--perms", "0700", "--size", str(size), "--tmpfs", str(workdir)]


def exec_argv(tools: SandboxTools, argv: Sequence[str]) -> list[str]:
    """What bubblewrap execs inside the finished sandbox: the ready helper, then the command."""
    return [tools.sh, "-c", READY_HELPER, "jobworker-exec", *argv]

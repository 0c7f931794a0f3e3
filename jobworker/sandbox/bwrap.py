"""The command line that starts a job: a cgroup trampoline, a privilege drop, and
bubblewrap.

    sh -c TRAMPOLINE jobworker-trampoline PROCS... -- setpriv --reuid U ... -- bwrap OPTS -- ARGV

1. The trampoline (`sh`, still root) writes its own pid into every cgroup.procs
   file of the job, then `exec`s the rest: every process the job ever has is born
   inside its cgroups, with no race and no `preexec_fn` in a threaded daemon.
2. `setpriv` drops to the job user (default `nobody`) before bubblewrap runs, so
   bubblewrap builds the sandbox unprivileged, inside a new user namespace: the
   command runs as that user on the host too, with no capabilities at all.
3. `bwrap` unshares every namespace (pid, mount, net with only `lo` up, uts, ipc,
   user, cgroup), binds the host root read-only, mounts a fresh /proc, /dev and
   /tmp, hides the data dir (other jobs' files) behind a tmpfs, binds the job's
   own work dir writable at the same path, and starts the command as the leader
   of a new session. `--die-with-parent` takes the job down if the daemon dies;
   `--json-status-fd` reports the host pid of the sandbox's init (leader of
   the command's process group) and the exit code.
4. Inside, `READY_HELPER` (`sh`) reports that the sandbox is ready, then execs
   the command.

The bubblewrap and kernel behaviour this relies on: docs/platform.md.
"""

from __future__ import annotations

import pwd
from collections.abc import Sequence
from pathlib import Path

import attrs

from jobworker.errors import SetupError

#: Writes "$$" into each cgroup.procs file named before "--", then execs what follows.
TRAMPOLINE = (
    'for f do shift; [ "$f" = -- ] && break; '
    'echo $$ > "$f" || { echo "jobworker: cannot enter cgroup $f" >&2; exit 125; }; done; '
    'exec "$@"'
)

#: Runs inside the sandbox as the last step before the command: tells the daemon the
#: sandbox is ready (one byte on fd 0, a pipe only the daemon reads), then execs the
#: command with stdin from /dev/null. Until this byte arrives the command does not
#: exist yet, and a SIGTERM to its process group would only reach bubblewrap's init,
#: which ignores it: `start` returns only after it.
READY_HELPER = 'echo >&0 && exec "$@" </dev/null'

#: The hostname a job sees in its own UTS namespace.
JOB_HOSTNAME = "job"

#: The processes bubblewrap adds to every job (outer bwrap, and the namespace's init),
#: which count against the pids limit on top of what the user asked for.
HELPER_PROCESSES = 2


@attrs.frozen
class JobUser:
    """The host account jobs run as. uid 0 means root: the sandbox then keeps root's
    capabilities (an explicit, dangerous opt-in of the daemon's operator)."""

    name: str
    uid: int
    gid: int

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


@attrs.frozen
class SandboxTools:
    """Absolute paths of the programs the spawn command line uses (never looked up in the job's PATH)."""

    sh: str
    setpriv: str
    bwrap: str


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
    host_network: bool,
) -> list[str]:
    """The whole command line for one job (see the module docstring).

    procs_files: the job's cgroup.procs files, one per hierarchy.
    data_dir: hidden from the job behind an empty tmpfs.
    workdir: the job's writable work dir (host path, bound at the same path).
    cwd: the working directory inside the sandbox.
    status_fd: the fd (inherited by the child) bubblewrap writes JSON status lines to.
    """
    cmd = [tools.sh, "-c", TRAMPOLINE, "jobworker-trampoline", *map(str, procs_files), "--"]
    if not user.is_root:
        cmd += [tools.setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--"]
    cmd += [tools.bwrap, "--unshare-all"]
    if host_network:
        cmd.append("--share-net")
    if not user.is_root:
        cmd += ["--unshare-user", "--uid", str(user.uid), "--gid", str(user.gid)]
    cmd += [
        "--ro-bind", "/", "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--tmpfs", str(data_dir),
        "--bind", str(workdir), str(workdir),
        "--chdir", cwd,
        "--hostname", JOB_HOSTNAME,
        "--die-with-parent",
        "--new-session",
        "--json-status-fd", str(status_fd),
        "--",
        tools.sh, "-c", READY_HELPER, "jobworker-exec",
        *argv,
    ]  # fmt: skip
    return cmd

"""The host checks jwsd makes once, at start-up: a host that cannot run jobs is a
`SetupError` saying what is missing, never a failure of every job.

`JobTracker` calls them before it serves anything; docs/hosts.md lists each
refusal. The cgroup checks live with the drivers (`sandbox.cgroups.detect`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from jobworker.errors import SetupError
from jobworker.sandbox.bwrap import (
    HELPER_ENV,
    JobUser,
    SandboxTools,
    setpriv_argv,
    user_namespace_options,
)
from jobworker.sandbox.program import permits

log = logging.getLogger(__name__)


def check_root() -> None:
    """jwsd writes cgroups and enters them through a trampoline: it must be root."""
    if os.geteuid() != 0:
        raise SetupError("jwsd must run as root: cgroups and namespaces need it (try sudo)")


def find_tools() -> SandboxTools:
    """The absolute paths of the programs the spawn command line runs."""
    return SandboxTools(
        sh=_which("sh", "the POSIX shell"),
        setpriv=_which("setpriv", "util-linux's setpriv (apt-get install util-linux)"),
        bwrap=_which("bwrap", "bubblewrap (apt-get install bubblewrap)"),
    )


def check_sandbox(
    tools: SandboxTools, user: JobUser, seccomp: bytes | None, view: Sequence[str]
) -> None:
    """Build one empty sandbox with the namespaces and privilege drop jobs get (as the
    job user, every namespace, nested user namespaces disabled), so a host where that
    cannot work (no user namespaces, a bubblewrap too old for a flag) is a SetupError
    at start. Takes ~15 ms, once. (Not `bwrap.spawn_argv`: that one also enters a
    job's cgroups, which do not exist yet.) The size-limited tmpfs is the kind a
    job's work dir is; `seccomp` is the jobs' filter program (None: there is none
    for this architecture, which is logged). `view` is the jobs' view of the host
    (`hostview.HostView.options`): an operator's `--job-bind` the job user cannot
    reach fails here, once, not at every start."""
    argv = [tools.bwrap, "--unshare-all", *user_namespace_options(user)]
    argv += [*view, "--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "0700", "--size", str(1 << 20), "--tmpfs", "/tmp", "--remount-ro", "/"]
    with contextlib.ExitStack() as closing:
        pass_fds: tuple[int, ...] = ()
        if seccomp is None:
            log.warning(
                "no seccomp filter for %s: jobs run without one (see jobworker.sandbox.seccomp)",
                platform.machine(),
            )
        else:
            read_end, write_end = os.pipe()
            closing.callback(os.close, read_end)
            with open(write_end, "wb") as writer:  # a few hundred bytes: the pipe holds them
                writer.write(seccomp)
            argv += ["--seccomp", str(read_end)]
            pass_fds = (read_end,)
        _run_trial_sandbox(tools, user, [*argv, "--", "true"], pass_fds)


def _run_trial_sandbox(
    tools: SandboxTools, user: JobUser, argv: list[str], pass_fds: tuple[int, ...]
) -> None:
    if not user.is_root:
        argv = [*setpriv_argv(tools, user), "--", *argv]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            timeout=10,
            check=False,
            env=dict(HELPER_ENV),
            pass_fds=pass_fds,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"bubblewrap cannot build a sandbox here: {exc}") from exc
    if result.returncode != 0:
        reason = (
            result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        )
        raise SetupError(
            f"bubblewrap cannot build a sandbox here as {user.name}: {reason} "
            "(are unprivileged user namespaces enabled? see user.max_user_namespaces; "
            "--disable-userns needs bubblewrap 0.8 or later)"
        )


def check_reachable(data_dir: Path, user: JobUser) -> None:
    """Bubblewrap, running as the job user, mounts over the data dir (and with
    `--workdir-size 0` binds the job's work dir) by path: every directory above it
    must let that user through (search permission)."""
    if user.is_root:
        return
    for directory in [data_dir, *data_dir.parents]:
        st = directory.stat()
        if not permits(st, user, 0o1):
            raise SetupError(
                f"the job user {user.name} cannot reach the data dir {data_dir}: {directory} is mode "
                f"{stat.S_IMODE(st.st_mode):04o}; pick a data dir below world-traversable dirs (e.g. /var/lib/jobworker) "
                f"or chmod o+x {directory}"
            )


def _which(program: str, what: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise SetupError(f"{program} not found: jobworker needs {what}")
    return found

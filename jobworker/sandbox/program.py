"""Where a job's program is, and whether the kernel will exec its command line:
both answered before anything of the job is created.

`resolve_program` finds the program the way `execvp` inside the sandbox will,
so that a missing or non-executable program is an error of the start request
rather than a job that exits 127 (bubblewrap's own exec failure is
indistinguishable from `exit 1` by its code).

The lookup runs as root but judges every step as the job user would meet it
(search permission on each directory on the way, symbolic links followed), so
its answer is the one `execvp` inside the sandbox would give, and it tells a
user nothing about files in directories the job user cannot enter: a file there
and a missing one are both "permission denied".

`check_exec_size` refuses, as an invalid request, a command line and environment
the kernel would refuse to exec (E2BIG).
"""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from jobworker.echo import quoted
from jobworker.errors import InvalidRequestError, StartFailedError
from jobworker.sandbox.bwrap import JobUser

#: The PATH a job gets when its environment has none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: The kernel's bound on one argument or environment string, its NUL included
#: (MAX_ARG_STRLEN: 32 pages).
MAX_ARG_STRLEN = 32 * 4096
#: The kernel's floor for the room all of exec's strings share (ARG_MAX: 32 pages),
#: and its ceiling (three quarters of _STK_LIM, 8 MiB), whatever the stack limit.
ARG_SPACE_MIN = 32 * 4096
ARG_SPACE_MAX = 6 << 20
#: Room kept free for what is added on the way in: the exec'd file's own path, the
#: PWD the shell exports, the auxiliary vector's strings.
ARG_SPACE_SLACK = 4096
#: How many symbolic links one lookup follows before it is a loop (the kernel's MAXSYMLINKS).
MAX_SYMLINKS = 40


def resolve_program(
    program: str,
    *,
    path: str | None,
    cwd: str,
    user: JobUser,
    hidden: Sequence[PurePosixPath] = (),
    visible: Sequence[PurePosixPath] = (),
) -> str:
    """The absolute path `execvp(program)` will run inside the sandbox.

    path: the job's PATH (`None`: DEFAULT_PATH). cwd: the job's working directory
    (the sandbox binds host paths at the same place, so a host lookup answers for
    the sandbox). hidden: what the sandbox does not show of the host ("/" for an
    allow-list, the data dir, covered mounts); visible: what it shows inside
    those (the allow-list's directories, the job's work dir). A hidden path is
    "no such file", exactly as a missing one: a start request learns nothing of
    what the job could not see itself.

    Raises StartFailedError naming the program and the reason.
    """
    if "/" in program:
        # Walked as given: "link/.." is the link target's parent, as for the kernel.
        candidate = os.path.join(cwd, program)
        reason = _unusable(candidate, user, hidden, visible)
        if reason:
            raise StartFailedError(f"cannot run {quoted(program)}: {reason}")
        return os.path.normpath(candidate)
    search = DEFAULT_PATH if path is None else path
    seen_reason = None
    for directory in search.split(":"):
        candidate = os.path.join(directory or cwd, program)
        reason = _unusable(candidate, user, hidden, visible)
        if reason is None:
            return candidate
        if reason != "no such file":
            seen_reason = f"{quoted(candidate)}: {reason}"
    if seen_reason:
        raise StartFailedError(f"cannot run {quoted(program)}: {seen_reason}")
    # The request chose the program and PATH: both are echoed short and escaped.
    raise StartFailedError(f"program {quoted(program)} not found in PATH ({quoted(search)[1:-1]})")


def _unusable(
    candidate: str, user: JobUser, hidden: Sequence[PurePosixPath], visible: Sequence[PurePosixPath]
) -> str | None:
    """Why `candidate` cannot be executed by `user` inside the sandbox, or None if it can."""
    if _hidden(os.path.normpath(candidate), hidden, visible):
        return "no such file"
    try:
        found = _lookup(candidate, user)
    except OSError as exc:  # a path changing while we walk it
        return exc.strerror.lower() if exc.strerror else "cannot look it up"
    if isinstance(found, str):
        return found
    resolved, st = found
    if _hidden(resolved, hidden, visible):
        return "no such file"
    if stat.S_ISDIR(st.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    executable = bool(st.st_mode & 0o111) if user.is_root else permits(st, user, 0o1)
    return None if executable else f"permission denied (not executable by the job user {user.name})"


def _hidden(path: str, hidden: Sequence[PurePosixPath], visible: Sequence[PurePosixPath]) -> bool:
    """Whether the sandbox hides `path`: the deepest of `hidden` and `visible` that
    contains it is a hidden one (a tie is visible: what shows it is mounted later,
    as an operator's bind is over the empty tmpfs that covers a host mount)."""
    pure = PurePosixPath(path)
    deepest_hidden = max((len(h.parts) for h in hidden if pure.is_relative_to(h)), default=-1)
    deepest_visible = max((len(v.parts) for v in visible if pure.is_relative_to(v)), default=-1)
    return deepest_hidden > deepest_visible


def _lookup(path: str, user: JobUser) -> tuple[str, os.stat_result] | str:
    """Resolve the absolute `path` as the kernel would for `user`: every directory
    passed through must let the user search it (its x bit for the user's uid or
    gid; the job has no supplementary groups), and symbolic links are followed.
    Returns (the resolved path, its stat), or why the lookup fails ("no such file",
    "permission denied (...)", ...). Root stats what it likes; only what the job
    user could learn is reported."""
    pending = path.split("/")[::-1]  # the next component last
    resolved, st = "/", os.stat("/")
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if not stat.S_ISDIR(st.st_mode):
            return "not a directory"
        if not user.is_root and not permits(st, user, 0o1):
            return f"permission denied (the job user {user.name} cannot search {resolved})"
        if part == "..":
            resolved = os.path.dirname(resolved)
            st = os.stat(resolved)
            continue
        candidate = os.path.join(resolved, part)
        try:
            entry = os.lstat(candidate)
        except FileNotFoundError:
            return "no such file"
        except OSError as exc:
            return exc.strerror.lower() if exc.strerror else "cannot stat it"
        if stat.S_ISLNK(entry.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                return "too many levels of symbolic links"
            target = os.readlink(candidate)
            pending.extend(target.split("/")[::-1])
            if target.startswith("/"):
                resolved, st = "/", os.stat("/")
            continue
        resolved, st = candidate, entry
    return resolved, st


def permits(st: os.stat_result, user: JobUser, bit: int) -> bool:
    """Whether the mode bits grant `user` permission `bit` (0o4 read, 0o2 write,
    0o1 execute/search) on the file: its owner's bits, else its group's, else others'
    (judged for the job's host ids, which the kernel checks)."""
    if st.st_uid == user.host_uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid == user.host_gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def exec_space() -> int:
    """The bytes exec's strings and their pointers may take in all, as the kernel
    computes it for this process's children: a quarter of the stack limit, within
    ARG_SPACE_MIN..ARG_SPACE_MAX (2 MiB with the usual 8 MiB stack)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    space = ARG_SPACE_MAX if soft == resource.RLIM_INFINITY else min(ARG_SPACE_MAX, soft // 4)
    return max(space, ARG_SPACE_MIN)


def check_exec_size(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Raise InvalidRequestError when the kernel would refuse to exec `argv` with
    `env` (E2BIG): one string over MAX_ARG_STRLEN, or all of them with their
    pointers over `exec_space()` less ARG_SPACE_SLACK."""
    strings = [os.fsencode(arg) for arg in argv]
    strings += [os.fsencode(f"{key}={value}") for key, value in env.items()]
    for i, string in enumerate(strings):
        if len(string) + 1 > MAX_ARG_STRLEN:
            what = "an argument" if i < len(argv) else "an environment variable"
            shown = string[:40].decode(errors="replace")
            raise InvalidRequestError(
                f"{what} ({shown!r}...) is {len(string)} bytes; "
                f"the kernel passes at most {MAX_ARG_STRLEN - 1} bytes in one: pass large data in a file"
            )
    total = sum(len(string) + 1 for string in strings) + 8 * len(strings)
    space = exec_space() - ARG_SPACE_SLACK
    if total > space:
        raise InvalidRequestError(
            f"the command line and environment take {total} bytes; "
            f"this server's jobs can take at most {space}: pass large data in a file"
        )


__all__ = [
    "ARG_SPACE_SLACK",
    "DEFAULT_PATH",
    "MAX_ARG_STRLEN",
    "check_exec_size",
    "exec_space",
    "permits",
    "resolve_program",
]

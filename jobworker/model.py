"""Plain data: what a job is asked to do, and immutable snapshots of how it is doing.

Nothing here performs I/O. `Limits` (defined with the limits vocabulary in
`jobworker.limits`) and `JobSpec` validate themselves when
built, so a request that passes construction is one the tracker can attempt:
every size and count is bounded (`MAX_ARGS` and the others below, chosen far
above what a real command line needs and below what the kernel's execve takes),
and every string is checked for the characters exec cannot carry. A job id is
checked by `check_job_id`. Values are echoed in errors only through
`jobworker.echo.quoted`.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterable, Mapping

import attrs

from jobworker.echo import quoted
from jobworker.errors import InvalidRequestError, JobNotFoundError

# Limits live with their vocabulary (jobworker.limits); they are model values too.
from jobworker.limits import Limits as Limits
from jobworker.naming import JOB_ID as JOB_ID
from jobworker.naming import Labels, check_name, labels_from

# Request bounds. Sizes are bytes of UTF-8, as execve sees them.
#: Most arguments in a command (argv[0] included).
MAX_ARGS = 4096
#: Largest single argument, and largest "NAME=value" of the environment: Linux's
#: MAX_ARG_STRLEN (32 pages) less the terminating NUL.
MAX_ARG_BYTES = (128 << 10) - 1
#: Most bytes of argv and environment together (each string with its NUL).
MAX_COMMAND_BYTES = 1 << 20
#: Most environment variables.
MAX_ENV = 1024
#: Longest environment variable name.
MAX_ENV_NAME_BYTES = 256
#: Longest working directory: PATH_MAX less its NUL.
MAX_WORKDIR_BYTES = 4095
#: Jobs in one ListJobs page when the request names no page_size, and the most it may name.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: Most bytes of a job's argv a listing shows (its arguments' UTF-8 bytes plus one per
#: argument); the rest is cut, and GetJobStatus shows it all.
MAX_LISTED_ARGS_BYTES = 256

# Message sizes on the wire, for every side in one place.
#: Most output bytes in one GetJobOutput message. The tracker's pump reads the job's
#: pipe in chunks of this size, so a follower that keeps up sends the stored chunks as
#: they are, without slicing copies; small enough that a stream's window holds several.
OUTPUT_CHUNK = 256 << 10
#: Largest gRPC message jwsd sends or accepts: a request at every bound above (1 MiB
#: of argv and environment, or of `cmd`) fits with room; a stream's receive window
#: (twice this) always holds one message plus its header.
MAX_SERVER_MESSAGE = 4 << 20

#: The outcome_reason of a job that jwsd stopped because it was shutting down (not
#: asked to leave its jobs running): `jws output` and `jws run` say so.
STOPPED_BY_SHUTDOWN = "jwsd stopped it as it shut down"
#: Largest message a client accepts: an output chunk with room. The receive window per
#: stream is twice it, which bounds the output in flight to a follower that reads
#: slowly (and the burst of work a slow follower costs jwsd).
MAX_CLIENT_MESSAGE = 1 << 20


def check_job_id(job_id: str) -> str:
    """`job_id` when it can be a job's id; raises InvalidRequestError when it is
    empty and JobNotFoundError (with a short, escaped echo) when it is not a
    canonical UUID: no job has such an id."""
    if not job_id:
        raise InvalidRequestError("job_id is required")
    if len(job_id) != 36 or not JOB_ID.fullmatch(job_id):
        raise JobNotFoundError(job_id)
    return job_id


def _size(text: str) -> int:
    """Bytes of `text` in UTF-8 (a lone surrogate counts as its 3 bytes)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _to_argv(argv: Iterable[str]) -> tuple[str, ...]:
    return tuple(argv)


def _check_argv(argv: tuple[str, ...]) -> tuple[str, ...]:
    if not argv or not argv[0]:
        raise InvalidRequestError("empty command: give a program to run")
    if len(argv) > MAX_ARGS:
        raise InvalidRequestError(
            f"the command has {len(argv)} arguments; at most {MAX_ARGS} are allowed"
        )
    for index, arg in enumerate(argv):
        if "\0" in arg:
            raise InvalidRequestError(
                f"argument {index} ({quoted(arg)}) contains a NUL byte, which no program can receive"
            )
        if len(arg) > MAX_ARG_BYTES or _size(arg) > MAX_ARG_BYTES:
            raise InvalidRequestError(
                f"argument {index} ({quoted(arg)}) is longer than {MAX_ARG_BYTES} bytes; "
                "pass large data in a file or on stdin instead"
            )
    return argv


def _check_env(env: Mapping[str, str]) -> Mapping[str, str]:
    if len(env) > MAX_ENV:
        raise InvalidRequestError(
            f"the environment has {len(env)} variables; at most {MAX_ENV} are allowed"
        )
    for key, value in env.items():
        if (
            not key
            or "=" in key
            or "\0" in key
            or len(key) > MAX_ENV_NAME_BYTES
            or _size(key) > MAX_ENV_NAME_BYTES
        ):
            raise InvalidRequestError(
                f"bad environment variable name {quoted(key)}: names must be 1 to "
                f"{MAX_ENV_NAME_BYTES} bytes, without '=' or NUL"
            )
        if "\0" in value:
            raise InvalidRequestError(
                f"environment variable {quoted(key)} has a NUL byte in its value, "
                "which no program can receive"
            )
        if len(value) > MAX_ARG_BYTES or _size(key) + 1 + _size(value) > MAX_ARG_BYTES:
            raise InvalidRequestError(
                f"environment variable {quoted(key)} is longer than {MAX_ARG_BYTES} bytes; "
                "pass large data in a file instead"
            )
    return env


def _command_size(argv: tuple[str, ...], env: Mapping[str, str] | None) -> int:
    """Bytes execve copies for `argv` and `env` (each string with its NUL)."""
    size = sum(_size(arg) + 1 for arg in argv)
    if env:
        size += sum(_size(key) + _size(value) + 2 for key, value in env.items())
    return size


def cut_argv(
    argv: tuple[str, ...], limit: int = MAX_LISTED_ARGS_BYTES
) -> tuple[tuple[str, ...], bool]:
    """The start of `argv` a listing shows, and whether anything was cut: arguments
    while their UTF-8 bytes plus one per argument fit in `limit`, the last one
    kept maybe cut short (at a character boundary). Costs O(limit), whatever the
    argv's size."""
    kept: list[str] = []
    room = limit
    for arg in argv:
        room -= 1  # each argument costs one byte more: a separator, or its wire length
        if room < 0:
            return tuple(kept), True
        # Characters are at least one byte: more than `room` of them never fit.
        head = arg[: room + 1]
        data = head.encode("utf-8", "surrogatepass")
        if len(head) == len(arg) and len(data) <= room:
            kept.append(arg)
            room -= len(data)
            continue
        kept.append(data[:room].decode("utf-8", "ignore"))
        return tuple(kept), True
    return tuple(kept), False


class NetworkMode(enum.StrEnum):
    """The network a job gets (`sandbox.network`): loopback only, outbound access in
    its own namespace, or the host's namespace."""

    NONE = "none"
    OUTBOUND = "outbound"
    HOST = "host"

    @classmethod
    def parse(cls, text: str) -> NetworkMode:
        """The mode `text` names; InvalidRequestError listing the modes otherwise."""
        try:
            return cls(text)
        except ValueError:
            raise InvalidRequestError(
                f"unknown network mode {text[:40]!r}; the modes are {', '.join(NETWORK_MODES)}"
            ) from None


NETWORK_MODES = tuple(mode.value for mode in NetworkMode)


def _to_network(value: NetworkMode | str | None) -> NetworkMode | None:
    return None if value is None else NetworkMode(value)


@attrs.frozen
class JobSpec:
    """What to run.

    argv: the exact argument vector; argv[0] is looked up in PATH when it has no '/'.
    env: the command's environment; `None` gives a minimal default (PATH, HOME, LANG).
    workdir: the working directory inside the sandbox; `None` is the job's own
        writable work dir.
    limits: resource limits; unset ones take the tracker's defaults.
    network: the network mode (`NetworkMode`); None: the server's default. Once the
        tracker has accepted the job, the mode it got.
    name: the job's name (`jobworker.naming.check_name`); None: it has none.
    labels: its labels, (key, value) pairs sorted by key (`jobworker.naming`);
        a mapping is converted and checked.
    """

    argv: tuple[str, ...] = attrs.field(
        converter=_to_argv, validator=lambda _i, _a, v: _check_argv(v)
    )
    env: Mapping[str, str] | None = attrs.field(
        default=None, validator=lambda _i, _a, v: v is None or bool(_check_env(v))
    )
    workdir: str | None = None
    limits: Limits = attrs.Factory(Limits)
    network: NetworkMode | None = attrs.field(default=None, converter=_to_network)
    name: str | None = attrs.field(
        default=None, validator=lambda _i, _a, v: v is None or bool(check_name(v))
    )
    labels: Labels = attrs.field(default=(), converter=labels_from)

    def __attrs_post_init__(self) -> None:
        if self.workdir is not None:
            if len(self.workdir) > MAX_WORKDIR_BYTES or _size(self.workdir) > MAX_WORKDIR_BYTES:
                raise InvalidRequestError(
                    f"working dir {quoted(self.workdir)} is longer than {MAX_WORKDIR_BYTES} bytes"
                )
            if not self.workdir.startswith("/") or "\0" in self.workdir:
                raise InvalidRequestError(
                    f"working dir must be an absolute path, not {quoted(self.workdir)}"
                )
        size = _command_size(self.argv, self.env)
        if size > MAX_COMMAND_BYTES:
            raise InvalidRequestError(
                f"the command and its environment take {size} bytes; at most "
                f"{MAX_COMMAND_BYTES} are allowed"
            )

    def listed(self) -> tuple[JobSpec, bool]:
        """This spec as a listing shows it, its argv cut (`cut_argv`), and whether
        anything was cut."""
        argv, cut = cut_argv(self.argv)
        return (attrs.evolve(self, argv=argv) if cut else self), cut


class JobState(enum.StrEnum):
    """A job's three states; the words are the API's (and the job records')."""

    PENDING = "Pending"
    ACTIVE = "Active"
    TERMINATED = "Terminated"


class Outcome(enum.StrEnum):
    """How a terminated job ended (the words are the API's and the job records')."""

    EXITED = "exited"  # the command exited by itself; see exit_code
    SIGNALED = "signaled"  # a signal killed it (not sent by a stop); see signal
    OOM_KILLED = "oom-killed"  # the kernel's OOM killer ended it at its memory limit
    STOPPED = "stopped"  # a user (or shutdown: see outcome_reason) stopped it
    TIMED_OUT = "timed-out"  # the daemon stopped it when it ran past its time limit
    LOST = "lost"  # the daemon lost track of it across a restart; see outcome_reason


def shell_status(code: int) -> tuple[int, int | None]:
    """(exit_code, signal) in shell terms from a process's status: a negative code is
    death by that signal (as `subprocess` reports it), and 129–192 is signal
    code − 128 (as a shell, and bubblewrap's exit code, report it)."""
    if code < 0:
        return 128 - code, -code
    if 128 < code <= 128 + 64:
        return code, code - 128
    return code, None


@attrs.frozen
class Usage:
    """Resource usage read from the job's cgroup. cpu_ns: CPU time in nanoseconds;
    peak_memory: the high-water mark in bytes; oom_kills: OOM kills in the cgroup."""

    cpu_ns: int = 0
    peak_memory: int = 0
    oom_kills: int = 0


@attrs.frozen
class JobStatus:
    """An immutable snapshot of a job.

    exit_code: the shell-style code (128+n when signal n killed it); `None` until
        the job has terminated.
    signal: the number of the signal that killed it, else `None`.
    started_at / ended_at: Unix times; `None` while not yet known.
    output_size: bytes of output kept; output_disk_bytes: how many of them are on
        disk (all of them once the job has ended, unless the disk was full).
    output_truncated: why output is missing (its limit was reached, the disk was
        full), else `None`.
    workdir_bytes: bytes used in the job's work dir (read live while it runs;
        the last reading once it has ended).
    outcome_reason: why the job ended as it did, when the outcome alone does not
        say (a job `LOST` across a restart, one `STOPPED` by jwsd's shutdown:
        `STOPPED_BY_SHUTDOWN`), else `None`.
    argv_cut: True when `spec.argv` is only the start of the job's argv (a listing
        cuts it to `MAX_LISTED_ARGS_BYTES`; a job's status has it all).
    """

    job_id: str
    owner: str
    spec: JobSpec
    state: JobState
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    exit_code: int | None = None
    signal: int | None = None
    usage: Usage = attrs.Factory(Usage)
    output_size: int = 0
    output_disk_bytes: int = 0
    output_truncated: str | None = None
    workdir_bytes: int = 0
    outcome_reason: str | None = None
    argv_cut: bool = False

    @property
    def name(self) -> str | None:
        """The job's name (`spec.name`); None when it has none."""
        return self.spec.name

    @property
    def oom_killed(self) -> bool:
        return self.outcome is Outcome.OOM_KILLED

    @property
    def stopped_by_user(self) -> bool:
        """True when a stop (StopJob, or the daemon's shutdown) ended the job: the
        outcome `STOPPED`, which only a stop sets (the API's `stopped_by_user` field)."""
        return self.outcome is Outcome.STOPPED

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"


@attrs.frozen
class AuditRecord:
    """One record of jwsd's audit trail, as `jws audit` shows it (see the API's
    `AuditRecord`): `id` its place (ids grow with time), `time` a Unix time, `user`
    the authenticated name ("-": none), the certificate's `common_name`, `serial` and
    `fingerprint_sha256`, the `peer` address, the `method`, the `job_id` ("-": none),
    the status `code`'s name, and `detail` (a start's command, env names and limits;
    an output read's offset and owner; a refusal's reason). Every text is as the
    caller sent it: show it escaped."""

    id: int
    time: float
    user: str
    common_name: str
    serial: str
    fingerprint_sha256: str
    peer: str
    method: str
    job_id: str
    code: str
    detail: dict[str, object]

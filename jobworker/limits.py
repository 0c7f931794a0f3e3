"""The limits vocabulary in one table, and `Limits`, the per-job limits built from it.

Each limit a job can be given (cpu, memory, io-read, io-write, pids, and the
daemon's own output limit) is one `LimitKind` row of `KINDS`: its word on the
command line (`jws --io-read`, `jwsd --default-limits io-read=10M`), its field in
`Limits` and in the API's `Limits` message, its unit (how text is parsed and how
a value is shown), its bounds, and whether a cgroup enforces it. Everything that
names, parses, shows, converts or bounds a limit reads this table: the model
(validation), `jobworker.server.convert` and `jobworker.messages` (protobuf),
`jws` (options, `jws status`), `jwsd` (`--default-limits`, `--max-limits`), the
tracker (maxima) and the cgroup writers (error messages).

Nothing here performs I/O. `check_host` is the one bound that depends on the
host (its cores): the server applies it, a client reading a status does not.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping

import attrs

from jobworker.errors import InvalidRequestError
from jobworker.units import format_duration, format_size, parse_duration, parse_size

#: Upper bound for a byte count (memory, IO rate): 1 EiB is absurd on any host.
MAX_BYTES = 1 << 60
#: Linux's PID_MAX_LIMIT: no pids limit can be larger.
MAX_PIDS = 4_194_304
#: The smallest memory limit that leaves room for the sandbox helpers (~3 MiB).
MIN_MEMORY = 8 << 20
#: The smallest cpu limit: a 100 ms CFS period gets 1 ms of quota.
MIN_CPU = 0.01
#: The longest time limit: a year (more is no limit at all, and says so plainly).
MAX_SECONDS = 366 * 86400.0
#: The shortest time limit: under it the job could not even have been started.
MIN_SECONDS = 0.1


class Unit(enum.Enum):
    """What a limit counts, and so how its text is read and its value shown."""

    CORES = "cores"
    BYTES = "bytes"
    BYTES_PER_SECOND = "bytes per second"
    COUNT = "count"
    SECONDS = "seconds"

    @property
    def metavar(self) -> str:
        """How an option's help names a value of this unit."""
        return {
            "CORES": "CORES",
            "BYTES": "SIZE",
            "BYTES_PER_SECOND": "RATE",
            "COUNT": "N",
            "SECONDS": "DURATION",
        }[self.name]

    def typed(self, value: float | None) -> float | int | None:
        """`value` as the type a limit of this unit holds: a float of cores or seconds,
        else an int."""
        if value is None or self in (Unit.CORES, Unit.SECONDS):
            return value
        return int(value)

    def parse(self, text: str) -> float | int:
        """The value `text` gives ("0.5", "256M", "10M/s", "100", "2h"); raises
        ValueError with a hint."""
        if self is Unit.SECONDS:
            return parse_duration(text)
        if self is Unit.CORES:
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a number of cores (e.g. 0.5)") from None
        if self is Unit.COUNT:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a whole number (e.g. 100)") from None
        return parse_size(text)

    def show(self, value: float) -> str:
        """`value` for people: "0.5", "256.0 MiB", "10.0 MiB/s", "100", "2h"."""
        if self is Unit.SECONDS:
            return format_duration(value)
        if self is Unit.CORES:
            return f"{value:g}"
        if self is Unit.COUNT:
            return str(value)
        size = format_size(int(value))
        return f"{size}/s" if self is Unit.BYTES_PER_SECOND else size

    def spell(self, value: float) -> str:
        """`value` in the form `parse` reads back exactly: "0.5", "512M", "100", "2h"."""
        if self is Unit.SECONDS:
            return format_duration(value)
        if self is Unit.CORES:
            return f"{value:g}"
        if self is Unit.COUNT:
            return str(value)
        for suffix, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
            if value >= 1 << shift and int(value) % (1 << shift) == 0:
                return f"{int(value) >> shift}{suffix}"
        return str(int(value))


@attrs.frozen
class LimitKind:
    """One limit of the vocabulary.

    key: its word on the command line ("io-read").
    field: its attribute of `Limits` ("io_read_bps").
    proto: its field of the API's `Limits` message ("io_read_bps").
    label: how messages and `jws status` name it ("io read").
    unit: what it counts.
    minimum / maximum: the bounds of a value (`None`: the host's, see `check_host`).
    cgroup: whether a cgroup enforces it (the output and time limits are the daemon's
        own).
    help: the option's help text for `jws start`.
    """

    key: str
    field: str
    proto: str
    label: str
    unit: Unit
    minimum: float
    maximum: float | None
    cgroup: bool
    help: str

    @property
    def what(self) -> str:
        """How errors name this limit: "io read limit"."""
        return f"{self.label} limit"

    def check(self, value: float | None) -> None:
        """Raise InvalidRequestError when `value` (None: no limit) is out of bounds."""
        if value is None:
            return
        what = self.what
        if self.unit is Unit.SECONDS:
            assert self.maximum is not None
            if not math.isfinite(value) or not self.minimum <= value <= self.maximum:
                raise InvalidRequestError(
                    f"{what} must be between {format_duration(self.minimum)} and "
                    f"{format_duration(self.maximum)}, not {value} seconds"
                )
        elif self.unit is Unit.CORES:
            if not math.isfinite(value) or value <= 0:
                raise InvalidRequestError(f"{what} must be a positive number of cores, not {value}")
            if value < self.minimum:
                raise InvalidRequestError(
                    f"{what} {value} is below the minimum of {self.minimum:g} cores"
                )
        elif self.unit is Unit.COUNT:
            assert self.maximum is not None
            if not self.minimum <= value <= self.maximum:
                raise InvalidRequestError(
                    f"{what} must be between {int(self.minimum)} and {int(self.maximum)}, not {value}"
                )
        else:
            if value < self.minimum:
                raise InvalidRequestError(
                    f"{what} must be at least {int(self.minimum)} bytes, not {value}"
                )
            if self.maximum is not None and value > self.maximum:
                raise InvalidRequestError(
                    f"{what} of {value} bytes is absurd; the maximum is {int(self.maximum)}"
                )


CPU = LimitKind(
    "cpu", "cpu", "cpu", "cpu", Unit.CORES, MIN_CPU, None, True,
    "CPU limit in cores (0.5 = half a core).",
)  # fmt: skip
MEMORY = LimitKind(
    "memory", "memory", "memory_bytes", "memory", Unit.BYTES, MIN_MEMORY, MAX_BYTES, True,
    "Memory limit (256M, 1G).",
)  # fmt: skip
IO_READ = LimitKind(
    "io-read", "io_read_bps", "io_read_bps", "io read", Unit.BYTES_PER_SECOND, 1, MAX_BYTES, True,
    "Disk read limit per second (10M).",
)  # fmt: skip
IO_WRITE = LimitKind(
    "io-write", "io_write_bps", "io_write_bps", "io write", Unit.BYTES_PER_SECOND, 1, MAX_BYTES,
    True, "Disk write limit per second (10M).",
)  # fmt: skip
PIDS = LimitKind(
    "pids", "pids", "pids", "pids", Unit.COUNT, 1, MAX_PIDS, True,
    "Most processes and threads at once.",
)  # fmt: skip
OUTPUT = LimitKind(
    "max-output", "output", "output_bytes", "output", Unit.BYTES, 1, MAX_BYTES, False,
    "Most output to keep (10M); past it the job's output pipe is closed. "
    "Default and most: the server's.",
)  # fmt: skip

TIMEOUT = LimitKind(
    "timeout", "timeout", "timeout_seconds", "time", Unit.SECONDS, MIN_SECONDS, MAX_SECONDS, False,
    "Stop the job once it has run this long (30s, 10m, 2h, 1d); its outcome is then timed-out.",
)  # fmt: skip

#: Every limit, in the order they are shown.
KINDS: tuple[LimitKind, ...] = (CPU, MEMORY, IO_READ, IO_WRITE, PIDS, OUTPUT, TIMEOUT)
#: The limits a cgroup enforces.
CGROUP_KINDS: tuple[LimitKind, ...] = tuple(kind for kind in KINDS if kind.cgroup)
#: What `jwsd --default-limits` and `--max-limits` take: every limit but output's,
#: which has flags of its own (`--max-output`).
DAEMON_KINDS: tuple[LimitKind, ...] = tuple(kind for kind in KINDS if kind is not OUTPUT)


@attrs.frozen
class Limits:
    """Per-job resource limits; `None` means "no limit". The fields are `KINDS`'s.

    cpu: CPU time in cores per wall second (0.5 = half a core; fractions allowed).
    memory: bytes of RAM (and swap, where the host accounts it).
    io_read_bps / io_write_bps: bytes per second on the block device that holds
        the data dir (direct IO on cgroup v1; buffered writes too on v2).
    pids: number of tasks (processes and threads) the command may have; the two
        sandbox helper processes are added on top by the sandbox, not counted here.
    output: bytes of output (stdout and stderr together) the daemon keeps; what
        comes after is not kept, and the job's output pipe is closed (see
        `jobworker.jobs.tracker`). Not a cgroup limit.
    timeout: seconds the job may run (from its start); then the daemon stops it as
        `jws stop` would, and its outcome is "timed-out". Not a cgroup limit: the
        daemon keeps the clock, across its own restarts too (from the job's start time).

    Raises InvalidRequestError when a value is out of its kind's bounds.
    """

    cpu: float | None = None
    memory: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    pids: int | None = None
    output: int | None = None
    timeout: float | None = None

    def __attrs_post_init__(self) -> None:
        for kind in KINDS:
            kind.check(getattr(self, kind.field))

    @property
    def has_io(self) -> bool:
        return self.io_read_bps is not None or self.io_write_bps is not None

    @classmethod
    def of(cls, values: Mapping[LimitKind, float | None]) -> Limits:
        """The limits with these values by kind (absent or None: no limit); raises
        InvalidRequestError as the constructor."""
        fields = {kind.field: kind.unit.typed(value) for kind, value in values.items()}
        return cls(**fields)  # type: ignore[arg-type]  # attrs checks no types; `typed` did

    def replace(self, kind: LimitKind, value: float | None) -> Limits:
        """These limits with `kind` set to `value`."""
        return self.of({**{k: self.value(k) for k in KINDS}, kind: value})

    def value(self, kind: LimitKind) -> float | None:
        """This limit of `kind` (None: no limit)."""
        value: float | None = getattr(self, kind.field)
        return value

    def merged_over(self, defaults: Limits) -> Limits:
        """These limits, with each `None` filled from `defaults`."""
        return Limits(
            **{  # type: ignore[arg-type]
                kind.field: self.value(kind)
                if self.value(kind) is not None
                else defaults.value(kind)
                for kind in KINDS
            }
        )


def check_host(limits: Limits) -> None:
    """Raise InvalidRequestError when `limits` asks for more cores than this host has."""
    ncpu = os.cpu_count() or 1
    if limits.cpu is not None and limits.cpu > ncpu:
        raise InvalidRequestError(f"cpu limit {limits.cpu} is more than this host's {ncpu} cores")


def parse_limits(text: str, kinds: tuple[LimitKind, ...] = DAEMON_KINDS) -> Limits:
    """Limits from "cpu=1,memory=512M,io-read=10M,io-write=10M,pids=100,timeout=1h"
    (any subset of `kinds`' keys; "" for none). Raises ValueError saying what is wrong."""
    by_key = {kind.key: kind for kind in kinds}
    values: dict[LimitKind, float | int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in by_key:
            raise ValueError(
                f"{item!r} is not a limit; use {', '.join(k + '=...' for k in by_key)}"
            )
        values[by_key[key]] = by_key[key].unit.parse(value)
    try:
        return Limits.of(values)
    except InvalidRequestError as exc:
        raise ValueError(str(exc)) from None


def format_limits(limits: Limits, kinds: tuple[LimitKind, ...] = DAEMON_KINDS) -> str:
    """`limits` in the form `parse_limits` reads: "cpu=1,memory=512M,pids=256"."""
    return ",".join(
        f"{kind.key}={kind.unit.spell(value)}"
        for kind in kinds
        if (value := limits.value(kind)) is not None
    )


def limits_text(limits: Limits) -> str:
    """`limits` for people: "cpu 0.5, memory 256.0 MiB, io read 10.0 MiB/s", or "none"."""
    return (
        ", ".join(
            f"{kind.label} {kind.unit.show(value)}"
            for kind in KINDS
            if (value := limits.value(kind)) is not None
        )
        or "none"
    )

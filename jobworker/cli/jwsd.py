"""`jwsd`: the jobworker daemon. Runs as root in the foreground; logs to stderr.

SIGTERM or SIGINT starts a clean shutdown (stop accepting, stop every job,
end every stream, remove cgroups, exit 0); a second signal cuts the grace
periods short and kills every job at once. SIGUSR1 exits leaving every running
job running (the upgrade path): the next jwsd on the same data dir takes them
over, as it does after a crash. SIGHUP reloads the TLS files and the users file
(`jobworker.server.reload`): one log line says what is in force, or why the
reload was refused and the configuration in force stays.

Under a service manager that sets `$NOTIFY_SOCKET` (systemd's `Type=notify`),
jwsd sends READY=1 once it serves, RELOADING=1 … READY=1 around a reload, and
STOPPING=1 when its shutdown begins (`jobworker.server.notify`).
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncclick as click
import trio

from jobworker import faults, logs
from jobworker.errors import InvalidRequestError, SetupError, sole_exception
from jobworker.jobs import disk
from jobworker.jobs.config import TrackerConfig
from jobworker.jobs.retention import RetentionPolicy
from jobworker.jobs.uids import UidRange
from jobworker.limits import Limits, check_host, format_limits, parse_limits
from jobworker.sandbox import host as host_checks
from jobworker.sandbox.hostview import JobBind
from jobworker.server.daemon import DEFAULT_PORT, DaemonConfig, serve
from jobworker.server.notify import Notifier
from jobworker.server.reload import Reloader
from jobworker.units import format_duration, parse_addr, parse_duration, parse_size

log = logging.getLogger("jobworker.daemon")

#: --metrics-addr's port when it names none: the API's default port, plus one.
DEFAULT_METRICS_PORT = DEFAULT_PORT + 1
#: The smallest work dir that makes sense (a tmpfs rounds to pages anyway).
MIN_WORKDIR_SIZE = 1 << 20
#: The defaults every flag shows: the configs' own.
_JOBS = TrackerConfig()
_DAEMON = DaemonConfig(tls_dir=Path("certs/dev"))


def parse_tmpfs_size(text: str) -> int | None:
    """A --tmpfs-size: a size ("64M"), or "none" for no bound but the job's memory limit."""
    if text.strip().lower() == "none":
        return None
    size = parse_size(text)
    if size < 1 << 20:
        raise ValueError(f"tmpfs size {text!r} is below 1M; give a size of 1M or more, or none")
    return size


class _Parsed(click.ParamType[Any]):
    """A flag's text turned into a config value by `parse` (a ValueError or
    InvalidRequestError is a usage error naming the flag)."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default, already a config value
        try:
            return self._parse(value)
        except (ValueError, InvalidRequestError) as exc:
            self.fail(str(exc), param, ctx)


def _duration(text: str, *, positive: bool = False) -> float:
    seconds = parse_duration(text)
    if positive and seconds <= 0:
        raise ValueError(f"{text} must be more than 0")
    return seconds


def _limits(text: str) -> Limits:
    limits = parse_limits(text)
    check_host(limits)
    return limits


def _workdir_size(text: str) -> int | None:
    size = parse_size(text) or None
    if size is not None and size < MIN_WORKDIR_SIZE:
        raise ValueError(f"{text} is too small; give at least 1M, or 0 for no tmpfs")
    return size


def _show_size(size: int | None) -> str:
    """A size as the flags read it: "1G", "64M", "0" for none."""
    if not size:
        return "0"
    for suffix, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % scale == 0:
            return f"{size // scale}{suffix}"
    return str(size)


_DURATION = _Parsed("duration", _duration)
_POSITIVE_DURATION = _Parsed("duration", functools.partial(_duration, positive=True))
_DURATION_OR_NONE = _Parsed("duration", lambda text: parse_duration(text) or None)
_SIZE_OR_NONE = _Parsed("size", lambda text: parse_size(text) or None)
_LIMITS = _Parsed("limits", _limits)


def _count_or_none(ctx: click.Context, param: click.Parameter, value: int) -> int | None:
    return value or None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jobworker", prog_name="jwsd")
@click.option(
    "--addr", default=f"127.0.0.1:{DEFAULT_PORT}", show_default=True, help="HOST:PORT to listen on."
)
@click.option(
    "--metrics-addr",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP, no "
    f"authentication: loopback, or see docs/operations.md; port {DEFAULT_PORT + 1} if none "
    "is given). Default: not served.",
)
@click.option(
    "--tls-dir",
    type=click.Path(path_type=Path, file_okay=False, readable=False),
    default=_DAEMON.tls_dir,
    show_default=True,
    help="Directory with server_cert.pem, server_key.pem and client_ca_cert.pem (certs/gen-certs.sh makes them).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False, resolve_path=True, readable=False),
    default=_JOBS.data_dir,
    show_default=True,
    help="Job records, output files and work dirs; IO limits apply to its block device.",
)
@click.option(
    "--users",
    "users_file",
    type=click.Path(path_type=Path, dir_okay=False, readable=False),
    default=None,
    help='TOML users file ([users] alex = "user", root = "admin"). Without it every certificate from the client CA is a user.',
)
@click.option(
    "--job-user",
    default=_JOBS.job_user,
    show_default=True,
    help="The account jobs see themselves as (root: they run as root on the host too).",
)
@click.option(
    "--job-uids",
    type=_Parsed("range", UidRange.parse),
    default=str(_JOBS.job_uids),
    show_default=True,
    metavar="FIRST-LAST",
    help="Host uids jobs run as, one per user (kept in DATA/uids.json); no account, group "
    "or /etc/subuid range may use them.",
)
@click.option(
    "--default-limits",
    type=_LIMITS,
    default=format_limits(_JOBS.default_limits),
    show_default=True,
    help="Limits for jobs that set none: cpu=CORES,memory=SIZE,io-read=RATE,io-write=RATE,pids=N,"
    'timeout=DURATION (any subset; "" for none).',
)
@click.option(
    "--max-limits",
    type=_LIMITS,
    default=format_limits(_JOBS.max_limits),
    help="The most a job may ask for (same form); an unset limit then takes the maximum.",
)
@click.option(
    "--tmpfs-size",
    type=_Parsed("size", parse_tmpfs_size),
    default=_show_size(_JOBS.tmpfs_size) if _JOBS.tmpfs_size else "none",
    show_default=True,
    help="Size of each of a job's writable tmpfs (/tmp, /dev/shm), at most its memory limit; "
    '"none": the memory limit alone.',
)
@click.option(
    "--allow-host-network",
    is_flag=True,
    default=_JOBS.allow_host_network,
    help="Let jobs ask for the host's network instead of loopback only.",
)
@click.option(
    "--job-bind",
    "job_binds",
    multiple=True,
    metavar="SRC[:DST][:ro|rw]",
    help="Show every job the host's SRC at DST (default: SRC), read-only unless rw; "
    "repeatable. Jobs otherwise see only /usr, /etc, /opt and the /bin, /lib links.",
)
@click.option(
    "--stop-grace",
    type=_DURATION,
    default=format_duration(_JOBS.stop_grace),
    show_default=True,
    help="SIGTERM-to-SIGKILL grace when a stop gives none.",
)
@click.option(
    "--sandbox-timeout",
    type=_POSITIVE_DURATION,
    default=format_duration(_JOBS.sandbox_timeout),
    show_default=True,
    help="How long a job's sandbox may take to build before its start fails (a busy or slow host).",
)
@click.option(
    "--idle-timeout",
    type=_DURATION_OR_NONE,
    default=format_duration(_DAEMON.idle_timeout or 0),
    show_default=True,
    help="Close a client connection that has had no call open this long (0: never).",
)
@click.option(
    "--request-timeout",
    type=_DURATION_OR_NONE,
    default=format_duration(_DAEMON.request_timeout or 0),
    show_default=True,
    help="End a call whose request message has not arrived this long after its headers (0: never).",
)
@click.option(
    "--max-connections-per-user",
    type=click.IntRange(min=0),
    default=_DAEMON.max_connections_per_user or 0,
    show_default=True,
    callback=_count_or_none,
    help="Connections one user (client certificate) may hold open at once (0: any number).",
)
@click.option(
    "--cgroup-name",
    envvar="JOBWORKER_CGROUP_NAME",
    default=_JOBS.cgroup_name,
    show_default=True,
    help="Name of the parent cgroup of all jobs, in jwsd's cgroup subtree.",
)
@click.option(
    "--cgroup-parent",
    envvar="JOBWORKER_CGROUP_PARENT",
    default=_JOBS.cgroup_parent,
    help="The cgroup jwsd may divide, as a path in the hierarchy (e.g. /jobworker.slice; "
    "created when missing). Default: jwsd's own cgroup, as a systemd service with "
    "Delegate=yes or a container has it.",
)
@click.option(
    "--max-running-per-user",
    type=click.IntRange(min=0),
    default=_JOBS.max_running_per_user or 0,
    show_default=True,
    callback=_count_or_none,
    help="Most jobs one user may have running at once; more starts get RESOURCE_EXHAUSTED. 0: no limit.",
)
@click.option(
    "--max-record-bytes-per-user",
    type=_SIZE_OR_NONE,
    default=_show_size(_JOBS.max_record_bytes_per_user),
    show_default=True,
    help="Most bytes of job records (argv, environment names, working directory) one user's "
    "jobs may hold, running and kept; more starts get RESOURCE_EXHAUSTED. 0: no limit.",
)
@click.option(
    "--max-output",
    type=_SIZE_OR_NONE,
    default=_show_size(_JOBS.max_output),
    show_default=True,
    help="Most output kept per job (a job may ask for less); past it the job's output pipe is "
    "closed and its status says truncated. 0: no cap.",
)
@click.option(
    "--max-disk-per-user",
    type=_Parsed("size", disk.parse_setting),
    default=_JOBS.max_disk_per_user,
    show_default=True,
    help="Most disk one user's jobs' output may hold, running and kept, charged as written "
    "(a running job holds at most one window of 1/64 of it, 16M-256M, unwritten); the writer "
    "that reaches it is cut, a start with none left is RESOURCE_EXHAUSTED. auto: a quarter of "
    "the data dir's file system, at least 1G. 0: no quota.",
)
@click.option(
    "--workdir-size",
    type=_Parsed("size", _workdir_size),
    default=_show_size(_JOBS.workdir_size),
    show_default=True,
    help="Size of each job's work dir, a tmpfs charged to the job's memory. 0: a plain "
    "directory on the data dir's file system, not bounded.",
)
@click.option(
    "--retention",
    type=_DURATION_OR_NONE,
    default=format_duration(_JOBS.retention.max_age or 0),
    show_default=True,
    help="How long a finished job (record and output) is kept after it ended. 0: until "
    "--max-finished or `jws rm` removes it.",
)
@click.option(
    "--max-finished",
    type=click.IntRange(min=0),
    default=_JOBS.retention.max_per_owner or 0,
    show_default=True,
    callback=_count_or_none,
    help="Most finished jobs kept per user; the oldest are forgotten first. 0: no limit.",
)
@click.option(
    "--no-audit",
    "audit",
    flag_value=False,
    default=True,
    help="Keep no audit trail (nothing in DATA/audit.db, no jobworker.audit log lines, "
    "jws audit refused): for benchmarks, or a host whose calls need no account.",
)
@click.option(
    "--audit-retention",
    type=_DURATION_OR_NONE,
    default=format_duration(_DAEMON.audit_retention or 0),
    show_default=True,
    help="How long an audit record (DATA/audit.db: who started, stopped, removed or read "
    "which job, and every refusal) is kept. 0: for ever (up to --audit-max-records).",
)
@click.option(
    "--audit-max-records",
    type=click.IntRange(min=0),
    default=_DAEMON.audit_max_records or 0,
    show_default=True,
    callback=_count_or_none,
    help="Most audit records kept; the oldest are pruned first. 0: no bound.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one JSON object per line, with the job, user and peer of the call or job "
    "it is about (docs/operations.md).",
)
async def main(
    addr: str,
    metrics_addr: str | None,
    job_binds: tuple[str, ...],
    retention: float | None,
    max_finished: int | None,
    log_level: str,
    log_format: str,
    **settings: Any,
) -> None:
    """Run the jobworker daemon: jobs for authenticated users, over gRPC with mutual TLS.

    \b
    Examples:
      sudo jwsd --tls-dir certs/dev
      sudo jwsd --addr 0.0.0.0:50051 --users /etc/jobworker/users.toml --max-limits memory=2G,cpu=1
    """
    logs.configure(log_level, log_format)
    logging.getLogger("purerpc").setLevel(
        logging.CRITICAL
    )  # its cancellation noise is not ours to report
    try:
        host, port = parse_addr(addr, default_port=DEFAULT_PORT)
        metrics = (
            parse_addr(metrics_addr, default_port=DEFAULT_METRICS_PORT)
            if metrics_addr is not None
            else None
        )
        policy = RetentionPolicy(max_age=retention, max_per_owner=max_finished)
    except (ValueError, InvalidRequestError) as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        faults.check_environment()
    except ValueError as exc:
        _fail(str(exc))
    try:
        host_checks.check_root()  # before anything else: the rest of the checks need root too
        binds = tuple(JobBind.parse(text) for text in job_binds)
    except SetupError as exc:
        _fail(str(exc))
    config = DaemonConfig.of(
        host=host,
        port=port,
        metrics_addr=metrics,
        retention=policy,
        job_binds=binds,
        **settings,
    )
    try:
        await run(config)
    except BaseExceptionGroup as group:
        # serve() runs in run()'s nursery, so its set-up errors arrive wrapped.
        _fail_on_setup_error(group)
        raise
    except SetupError as exc:
        _fail(str(exc))


def _fail_on_setup_error(group: BaseExceptionGroup[BaseException]) -> None:
    """Exit with the one line of the SetupError `group` stands for, if it is one."""
    found = sole_exception(group, ignore=trio.Cancelled)
    if isinstance(found, SetupError):
        _fail(str(found))


async def run(config: DaemonConfig) -> None:
    """serve() with signal handling: the first SIGTERM/SIGINT shuts down cleanly,
    a second one forces it (every job is killed at once); SIGHUP reloads the TLS
    files and the users file; and the service manager told READY=1 once it serves,
    RELOADING=1 … READY=1 around a reload, STOPPING=1 when the shutdown begins."""
    shutdown = trio.Event()
    keep_jobs = trio.Event()
    notifier = Notifier.from_environment()
    reloader = Reloader()
    serving_status = f"serving on {config.host}:{config.port}"

    def reload() -> None:
        if not reloader.attached:
            log.warning("got SIGHUP: not serving yet or shutting down, nothing to reload")
            return
        notifier.reloading("reloading the tls files and the users file")
        try:
            summary = reloader.reload()
        except SetupError as exc:
            log.error("got SIGHUP: reload refused, the configuration in force stays: %s", exc)
            notifier.ready(f"{serving_status}; the last reload was refused: {exc}")
        else:
            log.info("got SIGHUP: reloaded: %s", summary)
            notifier.ready(serving_status)

    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(
                signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP
            ) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        reload()
                        continue
                    if signum == signal.SIGUSR1:
                        if not shutdown.is_set():
                            log.info("got SIGUSR1: exiting, leaving every running job running")
                            notifier.stopping("leaving jobs running")
                            keep_jobs.set()
                            shutdown.set()
                        continue
                    if not shutdown.is_set():
                        log.info(
                            "got %s: shutting down (send it again to kill every job now)",
                            signal.Signals(signum).name,
                        )
                        notifier.stopping("stopping every job")
                        shutdown.set()
                    else:
                        log.warning(
                            "got %s again: killing every job now", signal.Signals(signum).name
                        )
                        serve_scope.cancel()
                        return

        serve_scope = trio.CancelScope()
        nursery.start_soon(watch_signals)
        with serve_scope:
            async with trio.open_nursery() as serving:
                port = await serving.start(
                    functools.partial(serve, keep_jobs=keep_jobs, reloader=reloader),
                    config,
                    shutdown,
                )
                serving_status = f"serving on {config.host}:{port}"
                if not shutdown.is_set():
                    notifier.ready(serving_status)
        nursery.cancel_scope.cancel()


def _fail(message: str) -> None:
    print(f"jwsd: {message}", file=sys.stderr)
    raise SystemExit(1)


def cli() -> None:
    """The `jwsd` console script."""
    main(_anyio_backend="trio")

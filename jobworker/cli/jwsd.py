"""`jwsd`: the jobworker daemon. Runs as root in the foreground; logs to stderr.

SIGTERM or SIGINT starts a clean shutdown (stop accepting, stop every job,
end every stream, remove cgroups, exit 0); a second signal cuts the grace
periods short and kills every job at once. SIGUSR1 exits leaving every running
job running (the upgrade path): the next jwsd on the same data dir takes them
over, as it does after a crash.

Under a service manager that sets `$NOTIFY_SOCKET` (systemd's `Type=notify`),
jwsd sends READY=1 once it serves and STOPPING=1 when its shutdown begins
(`jobworker.server.notify`).
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from pathlib import Path

import asyncclick as click
import trio

from jobworker import faults
from jobworker.errors import InvalidRequestError, SetupError, sole_exception
from jobworker.jobs.retention import RetentionPolicy
from jobworker.limits import Limits, Unit, check_host, format_limits, parse_limits
from jobworker.sandbox import host as host_checks
from jobworker.server.daemon import (
    DEFAULT_DATA_DIR,
    DEFAULT_LIMITS,
    DEFAULT_PORT,
    DEFAULT_TMPFS_SIZE,
    DaemonConfig,
    serve,
)
from jobworker.server.notify import Notifier
from jobworker.units import parse_addr, parse_duration, parse_size

log = logging.getLogger("jobworker.daemon")

#: The smallest work dir that makes sense (a tmpfs rounds to pages anyway).
MIN_WORKDIR_SIZE = 1 << 20


def parse_tmpfs_size(text: str) -> int | None:
    """A --tmpfs-size: a size ("64M"), or "none" for no bound but the job's memory limit."""
    if text.strip().lower() == "none":
        return None
    size = parse_size(text)
    if size < 1 << 20:
        raise ValueError(f"tmpfs size {text!r} is below 1M; give a size of 1M or more, or none")
    return size


def _tmpfs_size_option(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    try:
        return parse_tmpfs_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _limits_option(ctx: click.Context, param: click.Parameter, value: str) -> Limits:
    try:
        limits = parse_limits(value)
        check_host(limits)
        return limits
    except (ValueError, InvalidRequestError) as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--addr", default=f"127.0.0.1:{DEFAULT_PORT}", show_default=True, help="HOST:PORT to listen on."
)
@click.option(
    "--tls-dir",
    type=click.Path(path_type=Path, file_okay=False, readable=False),
    default=Path("certs/dev"),
    show_default=True,
    help="Directory with server_cert.pem, server_key.pem and client_ca_cert.pem (certs/gen-certs.sh makes them).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False, resolve_path=True, readable=False),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Job work dirs and spilled output; IO limits apply to its block device.",
)
@click.option(
    "--users",
    "users_file",
    type=click.Path(path_type=Path, dir_okay=False, readable=False),
    default=None,
    help='TOML users file ([users] alex = "user", root = "admin"). Without it every certificate from the client CA is a user.',
)
@click.option("--job-user", default="nobody", show_default=True, help="Host account jobs run as.")
@click.option(
    "--default-limits",
    default=format_limits(DEFAULT_LIMITS),
    show_default=True,
    callback=_limits_option,
    help="Limits for jobs that set none: cpu=CORES,memory=SIZE,io-read=RATE,io-write=RATE,pids=N,"
    'timeout=DURATION (any subset; "" for none).',
)
@click.option(
    "--max-limits",
    default="",
    callback=_limits_option,
    help="The most a job may ask for (same form); an unset limit then takes the maximum.",
)
@click.option(
    "--tmpfs-size",
    default=Unit.BYTES.spell(DEFAULT_TMPFS_SIZE),
    show_default=True,
    callback=_tmpfs_size_option,
    help="Size of each of a job's writable tmpfs (/tmp, /dev/shm), at most its memory limit; "
    '"none": the memory limit alone.',
)
@click.option(
    "--allow-host-network",
    is_flag=True,
    help="Let jobs ask for the host's network instead of loopback only.",
)
@click.option(
    "--stop-grace",
    default="5s",
    show_default=True,
    help="SIGTERM-to-SIGKILL grace when a stop gives none.",
)
@click.option(
    "--sandbox-timeout",
    default="30s",
    show_default=True,
    help="How long a job's sandbox may take to build before its start fails (a busy or slow host).",
)
@click.option(
    "--idle-timeout",
    default="5m",
    show_default=True,
    help="Close a client connection that has had no call open this long (0: never).",
)
@click.option(
    "--request-timeout",
    default="10s",
    show_default=True,
    help="End a call whose request message has not arrived this long after its headers (0: never).",
)
@click.option(
    "--max-connections-per-user",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="Connections one user (client certificate) may hold open at once (0: any number).",
)
@click.option(
    "--cgroup-name",
    envvar="JOBWORKER_CGROUP_NAME",
    default="jobworker",
    show_default=True,
    help="Name of the parent cgroup of all jobs, in jwsd's cgroup subtree.",
)
@click.option(
    "--cgroup-parent",
    envvar="JOBWORKER_CGROUP_PARENT",
    default=None,
    help="The cgroup jwsd may divide, as a path in the hierarchy (e.g. /jobworker.slice; "
    "created when missing). Default: jwsd's own cgroup, as a systemd service with "
    "Delegate=yes or a container has it.",
)
@click.option(
    "--max-running-per-user",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="Most jobs one user may have running at once; more starts get RESOURCE_EXHAUSTED. 0: no limit.",
)
@click.option(
    "--max-output",
    default="1G",
    show_default=True,
    help="Most output kept per job (a job may ask for less); past it the job's output pipe is "
    "closed and its status says truncated. 0: no cap.",
)
@click.option(
    "--workdir-size",
    default="1G",
    show_default=True,
    help="Size of each job's work dir, a tmpfs charged to the job's memory. 0: a plain "
    "directory on the data dir's file system, not bounded.",
)
@click.option(
    "--retention",
    default="24h",
    show_default=True,
    help="How long a finished job (record and output) is kept after it ended. 0: until "
    "--max-finished or `jws rm` removes it.",
)
@click.option(
    "--max-finished",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Most finished jobs kept per user; the oldest are forgotten first. 0: no limit.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
async def main(
    addr: str,
    tls_dir: Path,
    data_dir: Path,
    users_file: Path | None,
    job_user: str,
    default_limits: Limits,
    max_limits: Limits,
    tmpfs_size: int | None,
    allow_host_network: bool,
    stop_grace: str,
    sandbox_timeout: str,
    idle_timeout: str,
    request_timeout: str,
    max_connections_per_user: int,
    cgroup_name: str,
    cgroup_parent: str | None,
    max_running_per_user: int,
    max_output: str,
    workdir_size: str,
    retention: str,
    max_finished: int,
    log_level: str,
) -> None:
    """Run the jobworker daemon: jobs for authenticated users, over gRPC with mutual TLS.

    \b
    Examples:
      sudo jwsd --tls-dir certs/dev
      sudo jwsd --addr 0.0.0.0:50051 --users /etc/jobworker/users.toml --max-limits memory=2G,cpu=1
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("purerpc").setLevel(
        logging.CRITICAL
    )  # its cancellation noise is not ours to report
    try:
        host, port = parse_addr(addr, default_port=DEFAULT_PORT)
        grace = parse_duration(stop_grace)
        sandbox_seconds = parse_duration(sandbox_timeout)
        if sandbox_seconds <= 0:
            raise ValueError(f"--sandbox-timeout {sandbox_timeout} must be more than 0")
        idle = parse_duration(idle_timeout)
        request_seconds = parse_duration(request_timeout)
        output_cap = parse_size(max_output) or None
        workdir_bytes = parse_size(workdir_size) or None
        policy = RetentionPolicy(
            max_age=parse_duration(retention) or None, max_per_owner=max_finished or None
        )
        if workdir_bytes is not None and workdir_bytes < MIN_WORKDIR_SIZE:
            raise ValueError(
                f"--workdir-size {workdir_size} is too small; give at least 1M, or 0 for no tmpfs"
            )
    except (ValueError, InvalidRequestError) as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        faults.check_environment()
    except ValueError as exc:
        _fail(str(exc))
    try:
        host_checks.check_root()  # before anything else: the rest of the checks need root too
    except SetupError as exc:
        _fail(str(exc))
    config = DaemonConfig(
        tls_dir=tls_dir,
        host=host,
        port=port,
        data_dir=data_dir,
        users_file=users_file,
        job_user=job_user,
        default_limits=default_limits,
        max_limits=max_limits,
        tmpfs_size=tmpfs_size,
        allow_host_network=allow_host_network,
        stop_grace=grace,
        sandbox_timeout=sandbox_seconds,
        idle_timeout=idle or None,
        request_timeout=request_seconds or None,
        max_connections_per_user=max_connections_per_user or None,
        cgroup_name=cgroup_name,
        cgroup_parent=cgroup_parent,
        max_running_per_user=max_running_per_user or None,
        max_output=output_cap,
        workdir_size=workdir_bytes,
        retention=policy,
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
    a second one forces it (every job is killed at once); and the service manager
    told READY=1 once it serves, STOPPING=1 when the shutdown begins."""
    shutdown = trio.Event()
    keep_jobs = trio.Event()
    notifier = Notifier.from_environment()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(
                signal.SIGTERM, signal.SIGINT, signal.SIGUSR1
            ) as signals:
                async for signum in signals:
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
                    functools.partial(serve, keep_jobs=keep_jobs), config, shutdown
                )
                if not shutdown.is_set():
                    notifier.ready(f"serving on {config.host}:{port}")
        nursery.cancel_scope.cancel()


def _fail(message: str) -> None:
    print(f"jwsd: {message}", file=sys.stderr)
    raise SystemExit(1)


def cli() -> None:
    """The `jwsd` console script."""
    main(_anyio_backend="trio")

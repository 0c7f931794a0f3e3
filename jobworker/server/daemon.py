"""`serve()`: jwsd's whole life inside one trio nursery.

    trio.run ─ serve
                ├─ JobTracker (a nursery; a supervisor task per job)
                └─ nursery
                     ├─ RpcServer.serve (a task group per connection, a cancel scope per RPC)
                     ├─ keep_tree (rebuilds the job cgroup tree if it is removed)
                     └─ waits for `shutdown` (set by the signal task of `jwsd`)

A reload (`Reloader`, which the signal task calls on SIGHUP) reads the TLS files and
the users file again and puts them in force without a restart: new connections get
the new certificate and client CA, new calls the new users file, and open calls
the new configuration refuses end (`jobworker.server.auth`); jobs never notice.

With `metrics_addr`, a Prometheus endpoint (`jobworker.server.metrics_http`) is
one more task of the nursery, serving `jobworker.metrics`' registry; it ends when
the nursery is cancelled, after the drain.

The audit trail (`jobworker.server.audit`, `DATA/audit.db`) is opened once the
tracker holds the data dir; the call guard records each call that changes
something or reads a job's data, and each refusal, before its answer leaves; a
failed TLS handshake is recorded by a task of the nursery.

The standard health service (`jobworker.server.health`) runs beside the API on
the same port: SERVING once listening, NOT_SERVING as soon as shutdown begins,
and while the job cgroup tree, removed under jwsd, is being rebuilt
(`sandbox.cgroups.keep_tree`, a task beside the server).

Shutdown, in order and bounded: report NOT_SERVING; refuse new API calls
(UNAVAILABLE) and stop accepting connections; stop every job (SIGTERM, the grace period, SIGKILL),
which ends each output stream after its last byte; end every health Watch;
give running calls
`drain_timeout` seconds to finish; cancel what is left. Each stopped job's cgroup
goes as it ends, and on the way out the tracker removes its cgroup parent and the
ended jobs' work dirs; records, output and job dirs stay for the next jwsd (and with
`keep_jobs`, the running jobs' cgroups and work dirs too).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import attrs
import trio
from prometheus_client.core import GaugeMetricFamily, Metric

from jobworker.echo import bounded
from jobworker.errors import SetupError
from jobworker.jobs.config import TrackerConfig, field_names
from jobworker.jobs.tracker import JobTracker
from jobworker.metrics import Metrics
from jobworker.model import MAX_SERVER_MESSAGE
from jobworker.sandbox.cgroups import keep_tree
from jobworker.server.audit import (
    AUDIT_NAME,
    DEFAULT_MAX_RECORDS,
    DEFAULT_RETENTION,
    AuditLog,
    Entry,
    Identity,
)
from jobworker.server.auth import CallGuard, guarded
from jobworker.server.health import HealthService
from jobworker.server.metrics_http import serve_metrics
from jobworker.server.reload import Access, Reloader
from jobworker.server.service import JobWorkerService
from jobworker.transport import RpcServer
from jobworker.transport.server import DEFAULT_REQUEST_TIMEOUT
from jobworker.units import counted

log = logging.getLogger("jobworker.daemon")

DEFAULT_PORT = 50051


@attrs.frozen
class DaemonConfig:
    """Everything jwsd needs; every field has the default `jwsd --help` shows.

    tls_dir: holds server_cert.pem, server_key.pem and client_ca_cert.pem.
    users_file: the TOML users file; `None`: every client certificate is a user.
    drain_timeout: seconds running calls get to finish once jobs are stopped at shutdown.
    idle_timeout: seconds a client connection may stay open with no call (None: forever).
    request_timeout: seconds a call may take to send its request message after its
        headers (None: forever); past it that call ends with DEADLINE_EXCEEDED.
    max_connections_per_user: connections one user may hold open at once (None: any).
    metrics_addr: (host, port) to serve Prometheus metrics on over plain HTTP (None: not
        served; they are counted all the same).
    audit: whether to keep the audit trail (off: benchmarks, or a host that needs none).
    audit_retention: seconds an audit record is kept (None: for ever).
    audit_max_records: the most audit records kept; the oldest go first (None: any).
    jobs: the job tracker's section (data dir, job user, limits, quotas, retention).
    """

    tls_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    users_file: Path | None = None
    drain_timeout: float = 2.0
    idle_timeout: float | None = 300.0
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    max_connections_per_user: int | None = 32
    metrics_addr: tuple[str, int] | None = None
    audit: bool = True
    audit_retention: float | None = DEFAULT_RETENTION
    audit_max_records: int | None = DEFAULT_MAX_RECORDS
    jobs: TrackerConfig = attrs.Factory(TrackerConfig)

    @classmethod
    def of(cls, **settings: Any) -> DaemonConfig:
        """A config from settings named as the fields of either section (as jwsd's flags
        are): each goes to the section that has a field of its name. Raises TypeError
        for a name neither has."""
        tracker_fields = field_names(TrackerConfig)
        jobs = {name: value for name, value in settings.items() if name in tracker_fields}
        daemon = {name: value for name, value in settings.items() if name not in tracker_fields}
        return cls(**daemon, jobs=TrackerConfig(**jobs))

    @property
    def server_files(self) -> tuple[Path, Path, Path]:
        return (
            self.tls_dir / "server_cert.pem",
            self.tls_dir / "server_key.pem",
            self.tls_dir / "client_ca_cert.pem",
        )


async def serve(
    config: DaemonConfig,
    shutdown: trio.Event,
    *,
    keep_jobs: trio.Event | None = None,
    reloader: Reloader | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run jwsd until `shutdown` is set, then shut down cleanly (see the module docstring).
    When `keep_jobs` is set by then, running jobs are left running (and recorded) for
    the next jwsd on the same data dir to take over, instead of being stopped.
    `reloader`: attached once serving, detached when the shutdown begins; its
    `reload()` then re-reads the TLS files and the users file (see the module docstring).

    Reports the bound port through `task_status` (port 0 picks a free one) once it
    serves: listening, TLS loaded, the tracker ready, health SERVING.
    Raises SetupError before anything starts when the host or the configuration
    cannot work (not root, no cgroups or bubblewrap, bad certificates or users file).
    """
    client_ca = config.server_files[2]
    access = Access.load(config.server_files, config.users_file)
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        tracker = await stack.enter_async_context(JobTracker(config.jobs, metrics=metrics))
        # After the tracker: it holds the data dir (its lock) from here on.
        audit = None
        if config.audit:
            audit = AuditLog.open(
                config.jobs.data_dir / AUDIT_NAME,
                retention=config.audit_retention,
                max_records=config.audit_max_records,
                on_failure=metrics.audit_write_failures.inc,
            )
            stack.callback(audit.close)
        guard = CallGuard(access.policy, access.client_ca, metrics=metrics, audit=audit)

        def handshake_failed(address: str, exc: BaseException) -> None:
            if audit is None:
                return
            entry = Entry(
                time=time.time(),
                user="-",
                identity=Identity(),
                peer=address,
                method="tls-handshake",
                job_id="-",
                code="UNAUTHENTICATED",
                detail={"reason": bounded(str(exc) or type(exc).__name__, 256)},
            )
            audit.record(entry)

        server = RpcServer(
            config.host,
            config.port,
            access.ssl_context,
            max_message_length=MAX_SERVER_MESSAGE,
            max_connections_per_peer=config.max_connections_per_user,
            idle_timeout=config.idle_timeout,
            request_timeout=config.request_timeout,
            on_refused=metrics.count_refused,
            on_handshake_error=handshake_failed,
        )

        def live() -> list[Metric]:
            return [
                GaugeMetricFamily(
                    "jobworker_connections_open",
                    "Client connections open (TLS handshake done).",
                    value=server.connection_count,
                )
            ]

        metrics.add_live(live)
        server.add_service(guarded(JobWorkerService(tracker, audit).service, guard))
        health = HealthService()
        server.add_service(guarded(health.service, guard))
        async with trio.open_nursery() as nursery:
            assert tracker.cgroups is not None
            # A cgroup tree removed under jwsd: NOT_SERVING until it is rebuilt.
            tracker.cgroups.on_tree_change = lambda whole: health.set_serving(
                whole and not shutdown.is_set()
            )
            nursery.start_soon(keep_tree, tracker.cgroups)
            if audit is not None:
                nursery.start_soon(audit.run)
            port = await nursery.start(server.serve)
            if config.metrics_addr is not None:
                await nursery.start(serve_metrics, *config.metrics_addr, metrics.registry)
            log.info(
                "listening on %s:%d (tls 1.3, client certificates from %s; %s)",
                config.host,
                port,
                client_ca,
                f"users from {config.users_file}"
                if config.users_file
                else "every client certificate is a user",
            )
            health.set_serving(True)

            def reload() -> str:
                try:
                    new = Access.load(config.server_files, config.users_file)
                except SetupError:  # nothing changes
                    metrics.reloads.labels(result="refused").inc()
                    raise
                metrics.reloads.labels(result="ok").inc()
                server.set_ssl_context(new.ssl_context)
                ended = guard.reconfigure(new.policy, new.client_ca)
                return (
                    f"server certificate serial {new.serial:x}, client ca {client_ca}, "
                    + (
                        f"users from {config.users_file}"
                        if config.users_file
                        else "every client certificate is a user"
                    )
                    + f"; ended {ended} calls the new configuration refuses"
                )

            if reloader is not None:
                reloader.attach(reload)
            task_status.started(port)
            try:
                await shutdown.wait()
            finally:
                if reloader is not None:
                    reloader.detach()
            health.set_serving(False)
            running = tracker.running_count()
            leave = keep_jobs is not None and keep_jobs.is_set()
            if leave:
                log.info("shutting down: leaving %s running", counted(running, "running job"))
                tracker.leave_running()
            else:
                log.info("shutting down: stopping %s", counted(running, "running job"))
            guard.refuse_new_calls()
            server.stop_accepting()
            await tracker.shutdown(config.jobs.stop_grace)
            health.close()  # a watcher must not hold up the drain below
            # Every job has ended, so every output stream is sending its last bytes.
            await server.shutdown(config.drain_timeout)
            nursery.cancel_scope.cancel()
    log.info("stopped")

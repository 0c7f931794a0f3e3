"""A connection to jwsd: `connect` as a user (`Credentials`), and its calls (`JobWorkerClient`).

Jobs come back as `jobworker.model.JobStatus` and limits go out as
`jobworker.model.Limits`: the protobuf messages stay inside this module.
Errors come back as `jobworker.errors` kinds, from the server's status code,
with its message (`jobworker.client.errors`): `CannotReachError` from `connect`
when jwsd cannot be reached or refuses our certificate, `UnavailableError` from
a call when the connection is lost (see `jobworker.transport`).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from pathlib import Path

import attrs

from jobworker.client.errors import mapped_errors
from jobworker.errors import SetupError
from jobworker.messages import limits_to_proto, listed_from_proto, status_from_proto
from jobworker.model import MAX_CLIENT_MESSAGE, AuditRecord, JobStatus, Limits
from jobworker.transport import explicit_calls, open_channel
from jobworker.v1 import health_grpc, health_pb2, jobworker_grpc
from jobworker.v1 import jobworker_pb2 as pb


@attrs.frozen
class Credentials:
    """Where a user's TLS files are: TLSDIR/USER/client_cert.pem and client_key.pem,
    and the server's CA at TLSDIR/server_ca_cert.pem (as certs/gen-certs.sh lays them out)."""

    tls_dir: Path
    user: str

    @property
    def cert(self) -> Path:
        return self.tls_dir / self.user / "client_cert.pem"

    @property
    def key(self) -> Path:
        return self.tls_dir / self.user / "client_key.pem"

    @property
    def server_ca(self) -> Path:
        return self.tls_dir / "server_ca_cert.pem"

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS 1.3 client context; raises SetupError when a file is missing or bad."""
        from jobworker import tls

        if not self.cert.exists() or not self.key.exists():
            raise SetupError(
                f"no credentials for user {self.user!r} in {self.tls_dir} (need {self.cert} and {self.key})"
            )
        return tls.client_context(self.server_ca, self.cert, self.key)


@contextlib.asynccontextmanager
async def connect(
    addr: tuple[str, int],
    credentials: Credentials,
    *,
    server_hostname: str | None = None,
    connect_timeout: float = 10,
) -> AsyncIterator[JobWorkerClient]:
    """A client connected to jwsd at `addr` as `credentials.user`; the connection closes on exit.

    server_hostname: the name the server's certificate must carry; `None`: the host of `addr`.
    connect_timeout: seconds the TCP connection and TLS handshake may take (else
    CannotReachError). Raises SetupError when the credentials' files are missing or bad."""
    host, port = addr
    context = credentials.ssl_context()
    async with contextlib.AsyncExitStack() as stack:
        with mapped_errors(connecting=True):
            channel = await stack.enter_async_context(
                open_channel(
                    host,
                    port,
                    context,
                    server_hostname=server_hostname,
                    max_message_length=MAX_CLIENT_MESSAGE,
                    connect_timeout=connect_timeout,
                )
            )
        # Calls that end explicitly: a followed stream left early is cancelled on the
        # server at once, not when the garbage collector frees it.
        yield JobWorkerClient(
            explicit_calls(jobworker_grpc.JobWorkerServiceStub(channel)),
            explicit_calls(health_grpc.HealthStub(channel)),
        )


@attrs.frozen
class JobFilter:
    """Which jobs a listing asks the server for (ListJobsRequest's filters); every
    one given must hold. labels: jobs with every one of these; state: "active" or
    "ended" (None: both); name: jobs of this name; owner: this user's jobs (an
    admin's filter); created_after: jobs created at or after this Unix time."""

    labels: Mapping[str, str] = attrs.field(factory=dict)
    state: str | None = None
    name: str | None = None
    owner: str | None = None
    created_after: float | None = None

    def request(self) -> pb.ListJobsRequest:
        """The first page's request with these filters."""
        request = pb.ListJobsRequest(
            labels=dict(self.labels),
            state=self.state or "",
            name=self.name or "",
            owner=self.owner or "",
        )
        if self.created_after is not None:
            request.created_after = self.created_after
        return request


@attrs.frozen
class WatchedEvent:
    """One WatchJobs event: resume after it with `cursor`; kind: "created",
    "active", "stop-requested", "terminated", "removed"; "watching" (no job) first,
    or "stale" (no job) then "current" ones after a stale cursor; at: when (Unix time); job: the job then."""

    cursor: str
    kind: str
    at: float
    job: JobStatus | None


@attrs.define(eq=False)
class JobWorkerClient:
    """The API's calls with Python arguments. Every method raises the `JobWorkerError`
    kind of the status the call failed with (see `jobworker.client.errors`)."""

    stub: jobworker_grpc.JobWorkerServiceStub
    health_stub: health_grpc.HealthStub

    async def health(self, service: str = "") -> str:
        """The server's `grpc.health.v1` status of `service` ("": the server as a whole):
        "SERVING", "NOT_SERVING"...; NOT_FOUND for a service the server does not know."""
        with mapped_errors():
            response: health_pb2.HealthCheckResponse = await self.health_stub.Check(
                health_pb2.HealthCheckRequest(service=service)
            )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def start(
        self,
        *,
        cmd: str = "",
        args: Sequence[str] = (),
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str = "",
        network: str = "",
        name: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> JobStatus:
        """Start a job from a command line (`cmd`) or an exact argv (`args`) within
        `limits` (unset ones: the server's defaults) with the network mode `network`
        ("": the server's default), named `name` ("": no name) with `labels`; its
        status once running."""
        request = pb.StartJobRequest(
            cmd=cmd,
            args=list(args),
            limits=limits_to_proto(limits or Limits()),
            env=dict(env or {}),
            workdir=workdir,
            network=network,
            name=name,
            labels=dict(labels or {}),
        )
        with mapped_errors():
            response: pb.StartJobResponse = await self.stub.StartJob(request)
        return status_from_proto(response.job)

    async def stop(self, job_id: str, grace: float | None = None) -> JobStatus:
        """Stop a job (None: the server's grace period); its status once terminated."""
        request = pb.StopJobRequest(job_id=job_id)
        if grace is not None:
            request.grace_seconds = grace
        with mapped_errors():
            response: pb.StopJobResponse = await self.stub.StopJob(request)
        return status_from_proto(response.job)

    async def status(self, job_id: str) -> JobStatus:
        """The job's current status."""
        with mapped_errors():
            status: pb.GetJobStatusResponse = await self.stub.GetJobStatus(
                pb.GetJobStatusRequest(job_id=job_id)
            )
        return status_from_proto(status)

    async def remove(self, job_id: str) -> None:
        """Forget a terminated job: its record and its output."""
        with mapped_errors():
            await self.stub.RemoveJob(pb.RemoveJobRequest(job_id=job_id))

    async def list(
        self, *, page_size: int | None = None, selection: JobFilter | None = None
    ) -> list[JobStatus]:
        """The caller's jobs (every job, for an admin), oldest first, each argv cut
        as listings cut it (`JobStatus.argv_cut`; `status` gives it all). Gathers
        `jobs()`: one page in flight at a time."""
        return [job async for job in self.jobs(page_size=page_size, selection=selection)]

    async def jobs(
        self, *, page_size: int | None = None, selection: JobFilter | None = None
    ) -> AsyncGenerator[JobStatus, None]:
        """The caller's jobs as `list` gives them, one ListJobs page at a time: the
        next page is asked for once this one's jobs are consumed. page_size: jobs
        per page (1 to 1000; None: the server's default); selection: only the jobs
        it selects, filtered by the server (None: every job)."""
        request = selection.request() if selection is not None else pb.ListJobsRequest()
        if page_size is not None:
            request.page_size = page_size
        while True:
            with mapped_errors():
                response: pb.ListJobsResponse = await self.stub.ListJobs(request)
            for job in listed_from_proto(response):
                yield job
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def watch(
        self,
        *,
        since: str = "",
        job_ids: Sequence[str] = (),
        selection: JobFilter | None = None,
    ) -> AsyncGenerator[WatchedEvent, None]:
        """The events of the caller's jobs (every job's, for an admin) after the cursor
        `since` ("": from now), of `job_ids` only (ids or names; empty: any), those
        `selection` selects (its labels, state and owner). Never ends by itself:
        close it with `contextlib.aclosing`."""
        request = pb.WatchJobsRequest(since=since, job_ids=list(job_ids))
        if selection is not None:
            request.labels.update(selection.labels)
            request.state = selection.state or ""
            request.owner = selection.owner or ""
        responses = self.stub.WatchJobs(request)
        with mapped_errors():
            async with contextlib.aclosing(responses) as stream:
                async for event in stream:
                    yield WatchedEvent(
                        cursor=event.cursor,
                        kind=event.kind,
                        at=event.at,
                        job=status_from_proto(event.job) if event.HasField("job") else None,
                    )

    async def audit(
        self,
        *,
        user: str = "",
        job_id: str = "",
        since: float = 0.0,
        before_id: int = 0,
        limit: int | None = None,
    ) -> builtins.list[AuditRecord]:
        """One page of the audit trail, newest first (admins only: AccessDeniedError
        otherwise): records of `user` and of `job_id` ("": any), at or after `since`
        (a Unix time; 0: any), older than record `before_id` (0: the newest); at most
        `limit` (1 to 200; None: the server's 100)."""
        request = pb.GetAuditLogRequest(user=user, job_id=job_id, since=since, before_id=before_id)
        if limit is not None:
            request.limit = limit
        with mapped_errors():
            response: pb.GetAuditLogResponse = await self.stub.GetAuditLog(request)
        return [
            AuditRecord(
                id=record.id,
                time=record.time,
                user=record.user,
                common_name=record.common_name,
                serial=record.serial,
                fingerprint_sha256=record.fingerprint_sha256,
                peer=record.peer,
                method=record.method,
                job_id=record.job_id,
                code=record.code,
                detail=_detail(record.detail_json),
            )
            for record in response.records
        ]

    async def output(self, job_id: str, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """The job's output from byte `offset` until it has terminated and every byte
        arrived. Close it with `contextlib.aclosing` to abandon the stream early."""
        responses = self.stub.GetJobOutput(pb.GetJobOutputRequest(job_id=job_id, offset=offset))
        with mapped_errors():
            async with contextlib.aclosing(responses) as stream:
                async for response in stream:
                    yield response.output_msg


def _detail(text: str) -> dict[str, object]:
    """An audit record's detail; a server's malformed one is shown, not fatal."""
    try:
        detail = json.loads(text) if text else {}
    except ValueError:
        return {"unreadable": text[:256]}
    return detail if isinstance(detail, dict) else {"unreadable": text[:256]}

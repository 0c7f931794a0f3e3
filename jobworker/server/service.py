"""The JobWorkerService servicer: thin. Convert the request (which validates and
bounds it: `jobworker.server.convert`) before anything else, call the tracker as
the authenticated caller, convert the answer. Errors are mapped to status codes by
the method wrapper (`jobworker.server.auth`), not here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

from jobworker import messages
from jobworker.errors import (
    AccessDeniedError,
    BadStateError,
    InvalidRequestError,
    NameInUseError,
    QuotaExceededError,
    ShuttingDownError,
)
from jobworker.jobs.events import EventKind, JobEvent
from jobworker.jobs.job_index import ListKey, Scanned
from jobworker.jobs.selection import Selection
from jobworker.jobs.tracker import JobTracker
from jobworker.limits import format_limits
from jobworker.metrics import Metrics
from jobworker.model import OUTPUT_CHUNK, cut_argv
from jobworker.server import convert, listing
from jobworker.server.audit import MAX_COMMAND_BYTES, MAX_ENV_NAMES_BYTES, AuditLog
from jobworker.server.auth import current_caller, note_audit, note_job_id
from jobworker.transport import EncodedMessage, wait_writable
from jobworker.v1 import jobworker_grpc
from jobworker.v1 import jobworker_pb2 as pb

#: Events made for one watcher, never shared (not the log's).
_PER_WATCHER = frozenset({EventKind.WATCHING, EventKind.STALE, EventKind.CURRENT})
#: How many encoded events the service keeps for watchers that lag a little.
_ENCODED_EVENTS = 4096


class JobWorkerService(jobworker_grpc.JobWorkerServiceServicer):  # type: ignore[misc]
    """Serves the tracker's jobs over gRPC, each caller seeing only its own (admins: all).
    Counts starts by result and output served into the tracker's metrics."""

    def __init__(self, tracker: JobTracker, audit: AuditLog | None = None) -> None:
        self.tracker = tracker
        self.audit = audit
        self._metrics: Metrics = tracker.metrics
        self._list_turns = listing.Turns()
        # The log's recent events in wire form, by sequence number (`_encoded_event`).
        self._event_bytes: dict[int, bytes] = {}

    async def StartJob(self, message: pb.StartJobRequest) -> pb.StartJobResponse:
        starts = self._metrics.job_starts
        try:
            spec = convert.spec_from_request(message)
        except InvalidRequestError:
            starts.labels(result="invalid").inc()
            raise
        argv, argv_cut = cut_argv(spec.argv, MAX_COMMAND_BYTES)
        env_names, env_cut = cut_argv(tuple(spec.env or ()), MAX_ENV_NAMES_BYTES)
        note_audit(
            argv=list(argv),
            argv_cut=argv_cut,
            env_names=list(env_names),
            env_names_cut=env_cut,
            limits=format_limits(spec.limits),
        )
        caller = current_caller.get()
        try:
            status = await self.tracker.start(caller.name, spec)
        except Exception as exc:
            starts.labels(result=_refused_start(exc)).inc()
            raise
        self._metrics.job_starts.labels(result="started").inc()
        note_job_id(status.job_id)
        return pb.StartJobResponse(job_id=status.job_id, job=messages.status_to_proto(status))

    async def StopJob(self, message: pb.StopJobRequest) -> pb.StopJobResponse:
        job_id = convert.job_id_from(message)
        caller = current_caller.get()
        grace = message.grace_seconds if message.HasField("grace_seconds") else None
        note_audit(grace_seconds=grace)
        status = await self.tracker.stop(caller.name, job_id, grace, admin=caller.is_admin)
        return pb.StopJobResponse(job=messages.status_to_proto(status))

    async def GetJobStatus(self, message: pb.GetJobStatusRequest) -> pb.GetJobStatusResponse:
        job_id = convert.job_id_from(message)
        caller = current_caller.get()
        status = self.tracker.status(caller.name, job_id, admin=caller.is_admin)
        return messages.status_to_proto(status)

    async def GetJobOutput(
        self, message: pb.GetJobOutputRequest
    ) -> AsyncIterator[EncodedMessage]:  # GetJobOutputResponse, in wire form
        job_id = convert.job_id_from(message)
        caller = current_caller.get()
        # The handler is itself the follower's task, reading from its own cursor:
        # no channel and no nursery, which must not span a `yield` in a generator.
        offset = message.offset
        note_audit(
            offset=offset,
            owner=self.tracker.owner_of(caller.name, job_id, admin=caller.is_admin),
        )
        follow = self.tracker.follow(
            caller.name,
            job_id,
            offset,
            admin=caller.is_admin,
            chunk_size=OUTPUT_CHUNK,
        )
        served = self._metrics.output_served_bytes
        with self._metrics.output_followers.track_inprogress():
            async with contextlib.aclosing(follow) as chunks:
                while True:
                    # Read the next chunk only once the client can take it: a follower
                    # behind a slow client holds no chunk and no message meanwhile
                    # (1,000 followers would otherwise hold 1,000 of each).
                    await wait_writable()
                    chunk = await anext(chunks, None)
                    if chunk is None:
                        return
                    yield convert.output_response(chunk, offset)
                    served.inc(len(chunk))
                    offset += len(chunk)

    async def WatchJobs(
        self, message: pb.WatchJobsRequest
    ) -> AsyncIterator[EncodedMessage]:  # JobEvent, in wire form
        request = convert.watch_from(message)
        caller = current_caller.get()
        # A read of job data, audited as GetJobOutput is: what the stream selects.
        job_ids, job_ids_cut = cut_argv(request.job_ids, MAX_COMMAND_BYTES)
        labels, labels_cut = cut_argv(
            tuple(f"{key}={value}" for key, value in request.selection.labels),
            MAX_COMMAND_BYTES,
        )
        note_audit(
            jobs=list(job_ids),
            jobs_cut=job_ids_cut,
            labels=list(labels),
            labels_cut=labels_cut,
            state=None if request.selection.state is None else str(request.selection.state),
            owner=request.selection.owner,
            resumed=request.since is not None,
        )
        # As GetJobOutput: the handler is the watcher's task, reading the shared log
        # from its own cursor, one event at a time as the client can take it.
        events = self.tracker.watch(
            caller.name,
            request.selection,
            admin=caller.is_admin,
            job_ids=request.job_ids,
            since=request.since,
        )
        epoch = self.tracker.events.epoch
        with self._metrics.watchers.track_inprogress():
            async with contextlib.aclosing(events) as stream:
                while True:
                    await wait_writable()
                    event = await anext(stream)
                    yield self._encoded_event(event, epoch)

    def _encoded_event(self, event: JobEvent, epoch: str) -> EncodedMessage:
        """The event in wire form, encoded once for every watcher that gets it (1,000
        watchers of one log would otherwise build and encode it 1,000 times)."""
        if event.kind in _PER_WATCHER:  # not the log's: made for one watcher
            return EncodedMessage([convert.event_message(event, epoch).SerializeToString()])
        key = event.seq
        encoded = self._event_bytes.get(key)
        if encoded is None:
            if len(self._event_bytes) >= _ENCODED_EVENTS:
                self._event_bytes.clear()
            encoded = convert.event_message(event, epoch).SerializeToString()
            self._event_bytes[key] = encoded
        return EncodedMessage([encoded])

    async def RemoveJob(self, message: pb.RemoveJobRequest) -> pb.RemoveJobResponse:
        job_id = convert.job_id_from(message)
        caller = current_caller.get()
        await self.tracker.remove(caller.name, job_id, admin=caller.is_admin)
        return pb.RemoveJobResponse()

    async def GetAuditLog(self, message: pb.GetAuditLogRequest) -> pb.GetAuditLogResponse:
        query = convert.audit_query_from(message)
        caller = current_caller.get()
        if not caller.is_admin:
            raise AccessDeniedError()  # the audit trail is for admins only
        if self.audit is None:
            raise BadStateError("this server keeps no audit trail")
        note_audit(query={"user": query.user, "job": query.job_id, "since": query.since})
        return convert.audit_response(await self.audit.query(query))

    async def ListJobs(self, message: pb.ListJobsRequest) -> EncodedMessage:
        """A ListJobsResponse, in wire form: the concatenation of its jobs' entries."""
        request = listing.request_from(message)
        caller = current_caller.get()
        fetch = functools.partial(self._list, caller.name, caller.is_admin, request.selection)
        async with self._list_turns.turn(caller.name):
            return await listing.page(fetch, request)

    def _list(
        self,
        owner: str,
        admin: bool,
        selection: Selection,
        after: ListKey | None,
        limit: int,
        budget: int,
    ) -> Scanned[listing.Entry]:
        return self.tracker.select(
            owner, selection, listing.entry, admin=admin, after=after, limit=limit, budget=budget
        )


def _refused_start(exc: Exception) -> str:
    """The `result` label of a start the tracker refused with `exc`: its checks raise
    InvalidRequestError only for limits (over the maxima, IO limits without a block
    device, host network not allowed, a command line the kernel would refuse); the
    request itself was checked before, but for a name already in use (NameInUseError,
    an invalid request). Anything else (StartFailedError, an OSError) failed the
    sandbox's build."""
    if isinstance(exc, QuotaExceededError):
        return "quota"
    if isinstance(exc, NameInUseError):
        return "invalid"
    if isinstance(exc, InvalidRequestError):
        return "limits"
    if isinstance(exc, ShuttingDownError):
        return "unavailable"
    return "sandbox"

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
from jobworker.jobs.events import EventKind, JobEvent
from jobworker.jobs.job_index import ListKey, Scanned
from jobworker.jobs.selection import Selection
from jobworker.jobs.tracker import JobTracker
from jobworker.model import OUTPUT_CHUNK, JobStatus
from jobworker.server import convert, listing
from jobworker.server.auth import current_caller, note_job_id
from jobworker.transport import EncodedMessage, wait_writable
from jobworker.v1 import jobworker_grpc
from jobworker.v1 import jobworker_pb2 as pb

#: Events made for one watcher, never shared (not the log's).
_PER_WATCHER = frozenset({EventKind.WATCHING, EventKind.STALE, EventKind.CURRENT})
#: How many encoded events the service keeps for watchers that lag a little.
_ENCODED_EVENTS = 4096


class JobWorkerService(jobworker_grpc.JobWorkerServiceServicer):  # type: ignore[misc]
    """Serves the tracker's jobs over gRPC, each caller seeing only its own (admins: all)."""

    def __init__(self, tracker: JobTracker) -> None:
        self.tracker = tracker
        self._list_turns = listing.Turns()
        # The log's recent events in wire form, by sequence number (`_encoded_event`).
        self._event_bytes: dict[int, bytes] = {}

    async def StartJob(self, message: pb.StartJobRequest) -> pb.StartJobResponse:
        spec = convert.spec_from_request(message)
        caller = current_caller.get()
        status = await self.tracker.start(caller.name, spec)
        note_job_id(status.job_id)
        return pb.StartJobResponse(job_id=status.job_id, job=messages.status_to_proto(status))

    async def StopJob(self, message: pb.StopJobRequest) -> pb.StopJobResponse:
        job_id = convert.job_id_from(message)
        caller = current_caller.get()
        grace = message.grace_seconds if message.HasField("grace_seconds") else None
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
        follow = self.tracker.follow(
            caller.name,
            job_id,
            offset,
            admin=caller.is_admin,
            chunk_size=OUTPUT_CHUNK,
        )
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
                offset += len(chunk)

    async def WatchJobs(
        self, message: pb.WatchJobsRequest
    ) -> AsyncIterator[EncodedMessage]:  # JobEvent, in wire form
        request = convert.watch_from(message)
        caller = current_caller.get()
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

    async def ListJobs(self, message: pb.ListJobsRequest) -> pb.ListJobsResponse:
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
    ) -> Scanned[JobStatus]:
        return self.tracker.select(
            owner, selection, admin=admin, after=after, limit=limit, budget=budget
        )

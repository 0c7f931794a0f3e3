"""Requests in: the server's side of the API's messages, validated into model values.

Every request a handler serves becomes model values here first, before any
work: this is where requests are validated and bounded. The wire format is
checked here (which of `cmd` and `args` is set, which optional fields are
present, the length of `cmd` before it is split); the values are checked by the
model they become (`JobSpec`, `Limits`, `check_job_id`), with the bounds
documented there (`jobworker.model.MAX_ARGS` and the others). A request that
breaks one gets InvalidRequestError (NOT_FOUND for an id that is no job's), and
nothing of it is echoed but a short escaped prefix. Snapshots go out through
`jobworker.messages` (shared with the client); output through `output_response`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import attrs

from jobworker.cmdline import split_command
from jobworker.echo import quoted
from jobworker.errors import InvalidRequestError
from jobworker.jobs.events import Cursor, JobEvent
from jobworker.jobs.selection import Selection
from jobworker.messages import limits_from_proto, status_to_proto, varint
from jobworker.model import (
    MAX_COMMAND_BYTES,
    NETWORK_MODES,
    JobSpec,
    NetworkMode,
    check_job_id,
)
from jobworker.naming import MAX_LABELS, Labels, is_name, labels_from
from jobworker.server import listing
from jobworker.server.audit import MAX_PAGE, Entry, Query
from jobworker.tls import USER_NAME, USER_NAME_RULE
from jobworker.transport import EncodedMessage
from jobworker.v1 import jobworker_pb2 as pb


def job_id_from(
    request: pb.StopJobRequest
    | pb.GetJobStatusRequest
    | pb.GetJobOutputRequest
    | pb.RemoveJobRequest,
) -> str:
    """The job id a request names, or the job name it gives instead (which the
    tracker finds among the caller's own jobs); InvalidRequestError when it names
    none, JobNotFoundError when it can be neither (see `check_job_id`)."""
    if is_name(request.job_id):
        return request.job_id
    return check_job_id(request.job_id)


def spec_from_request(request: pb.StartJobRequest) -> JobSpec:
    """The JobSpec a StartJobRequest asks for; raises InvalidRequestError."""
    if request.cmd and request.args:
        raise InvalidRequestError(
            "give either cmd (one command line) or args (an exact argv), not both"
        )
    if len(request.cmd) > MAX_COMMAND_BYTES:
        raise InvalidRequestError(
            f"the command line is {len(request.cmd)} characters long; "
            f"at most {MAX_COMMAND_BYTES} bytes are allowed"
        )
    argv: tuple[str, ...] = tuple(request.args) if request.args else split_command(request.cmd)
    return JobSpec(
        argv=argv,
        env=dict(request.env) or None,
        workdir=request.workdir or None,
        limits=limits_from_proto(request.limits),
        network=_network_of(request),
        name=request.name or None,
        labels=_labels_from(request.labels),
    )


def _network_of(request: pb.StartJobRequest) -> NetworkMode | None:
    """The mode asked for: `network`, else "host" for the older `host_network`, else
    None (the server's default); InvalidRequestError listing the modes."""
    if request.network:
        if len(request.network) > 64:
            raise InvalidRequestError(
                f"unknown network mode; the modes are {', '.join(NETWORK_MODES)}"
            )
        return NetworkMode.parse(request.network)
    return NetworkMode.HOST if request.host_network else None


def _labels_from(labels: Mapping[str, str]) -> Labels:
    """The labels a request gives, their count checked before any of them."""
    if len(labels) > MAX_LABELS:
        raise InvalidRequestError(f"{len(labels)} labels given; at most {MAX_LABELS} are allowed")
    return labels_from(dict(labels))


#: Most jobs one WatchJobs request may name.
MAX_WATCHED_IDS = 100


@attrs.frozen
class WatchRequest:
    """What a WatchJobsRequest asks for: after `since` (None: from now), the events
    of `job_ids` (ids or names; empty: any) that `selection` selects."""

    since: Cursor | None
    job_ids: tuple[str, ...]
    selection: Selection


def watch_from(request: pb.WatchJobsRequest) -> WatchRequest:
    """The events a WatchJobsRequest asks for; InvalidRequestError for a cursor that
    is not one of ours, more than MAX_WATCHED_IDS jobs, an empty one, or filters
    as ListJobs refuses them; JobNotFoundError for an id that can be no job's."""
    if len(request.job_ids) > MAX_WATCHED_IDS:
        raise InvalidRequestError(
            f"{len(request.job_ids)} jobs named; at most {MAX_WATCHED_IDS} may be watched at once"
        )
    job_ids = tuple(
        job_id if is_name(job_id) else check_job_id(job_id) for job_id in request.job_ids
    )
    since = Cursor.decode(request.since) if request.since else None
    return WatchRequest(since, job_ids, listing.selection_from(request))


def event_message(event: JobEvent, epoch: str) -> pb.JobEvent:
    """A JobEvent as the API sends it, its cursor in the log of `epoch`."""
    message = pb.JobEvent(
        cursor=Cursor(epoch, event.seq).encode(), kind=str(event.kind), at=event.at
    )
    if event.status is not None:
        message.job.CopyFrom(status_to_proto(event.status))
    return message


#: GetAuditLog's page size when the request gives none.
DEFAULT_AUDIT_PAGE = 100


def audit_query_from(request: pb.GetAuditLogRequest) -> Query:
    """The audit entries a GetAuditLogRequest asks for; raises InvalidRequestError
    (JobNotFoundError for a job id that cannot be a job's)."""
    if request.user and not USER_NAME.fullmatch(request.user):
        raise InvalidRequestError(
            f"user {quoted(request.user)} is not a user name: {USER_NAME_RULE}"
        )
    if not math.isfinite(request.since) or request.since < 0:
        raise InvalidRequestError("since must be a Unix time of zero or more")
    if request.before_id < 0:
        raise InvalidRequestError("before_id must be zero or more (a previous record's id)")
    limit = request.limit if request.HasField("limit") else DEFAULT_AUDIT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    return Query(
        user=request.user or None,
        job_id=check_job_id(request.job_id) if request.job_id else None,
        since=request.since or None,
        before_id=request.before_id or None,
        limit=limit,
    )


def audit_response(entries: list[Entry]) -> pb.GetAuditLogResponse:
    return pb.GetAuditLogResponse(
        records=[
            pb.AuditRecord(
                id=entry.id,
                time=entry.time,
                user=entry.user,
                common_name=entry.identity.common_name or "-",
                serial=entry.identity.serial,
                fingerprint_sha256=entry.identity.fingerprint,
                peer=entry.peer,
                method=entry.method,
                job_id=entry.job_id,
                code=entry.code,
                detail_json=json.dumps(entry.detail, ensure_ascii=True),
            )
            for entry in entries
        ]
    )


def output_response(chunk: bytes, offset: int) -> EncodedMessage:
    """`GetJobOutputResponse(output_msg=chunk, offset=offset)`, encoded by hand.

    Output is most of what jwsd sends (1,000 followers of one job: every chunk
    1,000 times), so it skips the protobuf object: `chunk` is not copied at all
    before TLS encrypts it. The bytes are exactly `SerializeToString()`'s (fields in
    number order, defaults left out; tests/unit/test_convert.py compares them).
    """
    parts: list[bytes] = []
    if chunk:
        parts += (_OUTPUT_MSG_TAG + varint(len(chunk)), chunk)
    if offset:
        parts.append(_OFFSET_TAG + varint(offset & _UINT64))
    return EncodedMessage(parts)


# Field keys of GetJobOutputResponse: (number << 3) | wire type (2 = length-delimited, 0 = varint).
_OUTPUT_MSG_TAG = bytes([pb.GetJobOutputResponse.OUTPUT_MSG_FIELD_NUMBER << 3 | 2])
_OFFSET_TAG = bytes([pb.GetJobOutputResponse.OFFSET_FIELD_NUMBER << 3 | 0])
#: A negative int64 goes on the wire as its 64-bit two's complement.
_UINT64 = (1 << 64) - 1

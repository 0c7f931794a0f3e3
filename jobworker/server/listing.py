"""ListJobs, one bounded page at a time: the request's page size and cursor
validated, each job's argv cut, the answer's encoded size kept under what a client
accepts.

Why: a job's argv may be 1 MiB, and a user may keep dozens of jobs. An answer that
carried every job's full argv was larger than any client accepts (and than jwsd
may send), and building it cost the event loop ~100 ms each time, a cost one user
could impose on everyone by listing in a loop. Now the work per call is bounded
by `MAX_PAGE_SIZE` jobs of bounded size: the tracker hands over one page
(`jobworker.jobs.job_index`: O(log n + page)) with each argv already cut to
`MAX_LISTED_ARGS_BYTES` (each job cuts it once, `jobworker.jobs.job.Job.listed_spec`;
building and checking a 1 MiB spec on every call was most of a listing's cost),
each job as its `Entry`: its GetJobStatusResponse already encoded (`entry`, which
checks that bound), kept by every Terminated job (`Job.listed_entry`: a kept job's
listing never changes). A page is then the concatenation of its entries in wire
form (an `EncodedMessage`, exactly what protobuf would serialize): building ~60
messages per page was the rest of a listing's cost on the event loop, under a
flood of listings. It stops early once its encoded size would pass `PAGE_BYTES`.

The cursor (`page_token`) is the key (created_at, job_id) of the last job of the
previous page, packed and base64url-encoded: opaque to clients, and checked
strictly (a token that is not exactly one this module makes is
InvalidRequestError). A forged but well-formed token only moves the start of a
listing the caller could see anyway.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable

import attrs
import trio

from jobworker import messages
from jobworker.echo import quoted
from jobworker.errors import InvalidRequestError
from jobworker.jobs.job_index import ListKey, Scanned
from jobworker.jobs.selection import Selection, StateFilter
from jobworker.messages import varint
from jobworker.model import (
    DEFAULT_PAGE_SIZE,
    MAX_CLIENT_MESSAGE,
    MAX_PAGE_SIZE,
    JobStatus,
)
from jobworker.naming import MAX_LABELS, check_name, labels_from
from jobworker.tls import USER_NAME, USER_NAME_RULE
from jobworker.transport import EncodedMessage
from jobworker.v1 import jobworker_pb2 as pb

#: The most a page's encoded ListJobsResponse may hold: three quarters of what a
#: client accepts, the rest room for gRPC framing and fields a newer server adds.
PAGE_BYTES = MAX_CLIENT_MESSAGE * 3 // 4

#: How far in the future a created_after may be and still be taken for now: the
#: clocks of a client and of jwsd may differ that much.
CLOCK_SLACK = 60.0

# A token: version byte, created_at as a big-endian double, the job id's 16 bytes.
_TOKEN_VERSION = 1
_TOKEN = struct.Struct(">Bd16s")
#: base64 of _TOKEN.size bytes, without padding.
_TOKEN_CHARS = math.ceil(_TOKEN.size * 4 / 3)
# Bytes a job costs in the response beyond its own message: the field's tag and
# length (at most 1 + 3 bytes below 2 MiB) and its packed args_cut bool.
_ENTRY_OVERHEAD = 1 + 3 + 1
# The tags and lengths of next_page_token and of the packed args_cut list.
_RESPONSE_OVERHEAD = 2 + _TOKEN_CHARS + 1 + 3
# Field keys of ListJobsResponse: (number << 3) | 2, each length-delimited (args_cut packed).
_JOBS_TAG = bytes([pb.ListJobsResponse.JOBS_FIELD_NUMBER << 3 | 2])
_TOKEN_TAG = bytes([pb.ListJobsResponse.NEXT_PAGE_TOKEN_FIELD_NUMBER << 3 | 2])
_ARGS_CUT_TAG = bytes([pb.ListJobsResponse.ARGS_CUT_FIELD_NUMBER << 3 | 2])


@attrs.frozen
class PageRequest:
    """What a ListJobsRequest asks for. size: jobs at most; after: the cursor
    (None: from the first job); selection: which jobs."""

    size: int
    after: ListKey | None
    selection: Selection = Selection()


def request_from(message: pb.ListJobsRequest, *, now: float | None = None) -> PageRequest:
    """The page a ListJobsRequest asks for; InvalidRequestError for a page size out
    of 1..MAX_PAGE_SIZE, a page token this server did not make, or a filter that
    is not one (labels outside their syntax or too many, an unknown state, a name
    or owner that cannot be one, a created_after in the future or not finite).
    now: the time a created_after may not pass (None: the clock's)."""
    size = message.page_size if message.HasField("page_size") else DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidRequestError(
            f"page_size must be 1 to {MAX_PAGE_SIZE}, not {size}; "
            f"leave it out for {DEFAULT_PAGE_SIZE}"
        )
    after = decode_token(message.page_token) if message.page_token else None
    return PageRequest(size=size, after=after, selection=_selection_from(message, now))


def _selection_from(message: pb.ListJobsRequest, now: float | None) -> Selection:
    selection = selection_from(message)
    created_after = None
    if message.HasField("created_after"):
        created_after = message.created_after
        now = time.time() if now is None else now
        if not math.isfinite(created_after) or created_after > now + CLOCK_SLACK:
            raise InvalidRequestError(
                f"created_after {created_after} is in the future (now is {now:.0f}); "
                "give a time that has passed"
            )
    return attrs.evolve(
        selection,
        name=check_name(message.name) if message.name else None,
        created_after=created_after,
    )


def selection_from(message: pb.ListJobsRequest | pb.WatchJobsRequest) -> Selection:
    """The labels, state and owner a request selects by; InvalidRequestError for
    labels outside their syntax or too many, an unknown state, an owner that is no
    user name."""
    if len(message.labels) > MAX_LABELS:
        raise InvalidRequestError(
            f"{len(message.labels)} labels given; at most {MAX_LABELS} are allowed"
        )
    labels = labels_from(dict(message.labels))
    try:
        state = StateFilter(message.state) if message.state else None
    except ValueError:
        raise InvalidRequestError(
            f"state must be {' or '.join(repr(str(s)) for s in StateFilter)}, not {quoted(message.state)}"
        ) from None
    if message.owner and not USER_NAME.fullmatch(message.owner):
        raise InvalidRequestError(
            f"owner {quoted(message.owner)} is not a user name: a user name is {USER_NAME_RULE}"
        )
    return Selection(owner=message.owner or None, labels=labels, state=state)


def encode_token(key: ListKey) -> str:
    """The page token of the page that starts after the job whose key is `key`."""
    created_at, job_id = key
    packed = _TOKEN.pack(_TOKEN_VERSION, created_at, uuid.UUID(job_id).bytes)
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


def decode_token(token: str) -> ListKey:
    """The key a page token names; InvalidRequestError unless `token` is exactly
    what `encode_token` makes of some key."""
    refused = InvalidRequestError(
        "page_token is not one this server made; pass the next_page_token of the "
        "previous answer as it is, or none for the first page"
    )
    if len(token) != _TOKEN_CHARS or not token.isascii():
        raise refused
    try:
        padded = token + "=" * (-len(token) % 4)
        packed = base64.b64decode(padded, altchars=b"-_", validate=True)
        version, created_at, id_bytes = _TOKEN.unpack(packed)
    except (binascii.Error, ValueError, struct.error):
        raise refused from None
    if version != _TOKEN_VERSION or not math.isfinite(created_at):
        raise refused
    key = (created_at, str(uuid.UUID(bytes=id_bytes)))
    if encode_token(key) != token:  # not canonical: not one we made
        raise refused
    return key


def listed(status: JobStatus) -> JobStatus:
    """`status` as a listing shows it: its argv cut (`JobSpec.listed`). The tracker
    hands over jobs already cut (each job cuts its argv once): this is the page's
    own guarantee of its bound, at O(MAX_LISTED_ARGS_BYTES) a job."""
    spec, cut = status.spec.listed()
    if not cut:
        return status
    return attrs.evolve(status, spec=spec, argv_cut=True)


@attrs.frozen
class Entry:
    """One job as a page carries it. key: its place in the listing order (the
    cursor). encoded: its GetJobStatusResponse, argv cut (`listed`), serialized.
    argv_cut: whether its argv was cut."""

    key: ListKey
    encoded: bytes
    argv_cut: bool


def entry(status: JobStatus) -> Entry:
    """The page entry of a job's snapshot: its argv cut (`listed`), then encoded once
    (the tracker keeps it for a Terminated job: `JobTracker.select`)."""
    shown = listed(status)
    # Deterministic: the labels (a map) in key order, so that a page is byte for byte
    # what protobuf makes of it (a map's order is otherwise protobuf's own).
    encoded = messages.status_to_proto(shown).SerializeToString(deterministic=True)
    return Entry((status.created_at, status.job_id), encoded, shown.argv_cut)


#: Jobs fetched between checkpoints: a few milliseconds of work at most (a running
#: job at every bound costs ~0.1 ms to encode, a kept one nothing), so other
#: callers' requests interleave.
CHUNK = 8

#: Jobs looked at by one fetch (`SCAN`) and by one call at most (`SCAN_BUDGET`): a
#: selective filter over many jobs answers a page with fewer jobs (even none) and
#: a token, rather than walk every job in one call. A job costs ~1 us to test.
SCAN = 512
SCAN_BUDGET = 16 * SCAN

#: Fetch at most `limit` selected jobs after a key, in listing order, as entries,
#: looking at no more than `budget` jobs (the tracker's `select` with `entry`).
Fetch = Callable[[ListKey | None, int, int], Scanned[Entry]]


async def page(fetch: Fetch, request: PageRequest, *, budget: int = PAGE_BYTES) -> EncodedMessage:
    """The ListJobsResponse of one page, in wire form: up to `request.size` selected
    jobs after `request.after`, as many as fit in `budget` encoded bytes (always at
    least one, when any is selected); next_page_token set when jobs remain, or when
    `SCAN_BUDGET` jobs were looked at first. The bytes are exactly
    `SerializeToString(deterministic=True)`'s (fields in number order, map entries
    in key order; tests/unit/test_listing.py compares them): the entries as they
    are, each after its tag and length.

    Fetched `CHUNK` jobs at a time with a checkpoint between chunks: the cursor
    keeps chunks consistent (a job that starts or ends meanwhile is neither repeated
    nor makes one skip), and no caller holds the loop for long."""
    parts: list[bytes] = []
    cuts = bytearray()
    used = _RESPONSE_OVERHEAD
    after = request.after
    looked = 0
    while True:
        room = min(CHUNK, request.size - len(cuts))
        # One more than fits: whether another selected job follows.
        scan = fetch(after, room + 1, SCAN)
        entries = scan.found
        for item in entries[:room]:
            cost = len(item.encoded) + _ENTRY_OVERHEAD
            if cuts and used + cost > budget:
                return _encoded(parts, cuts, after)
            parts += (_JOBS_TAG + varint(len(item.encoded)), item.encoded)
            cuts.append(item.argv_cut)
            used += cost
            after = item.key
        if len(entries) > room:  # another selected job follows
            if len(cuts) == request.size:
                return _encoded(parts, cuts, after)
        elif scan.stopped is None:
            return _encoded(parts, cuts, None)  # the last job: no next page
        else:  # SCAN jobs looked at, too few of them selected: go on after them
            after = scan.stopped
        looked += scan.looked
        if looked >= SCAN_BUDGET:
            return _encoded(parts, cuts, after)
        await trio.lowlevel.checkpoint()


def _encoded(parts: list[bytes], cuts: bytearray, after: ListKey | None) -> EncodedMessage:
    """The page's message: its jobs (`parts`), the token of the page after `after`
    (None: the last page), then args_cut, packed (one byte a bool)."""
    if after is not None:
        token = encode_token(after).encode("ascii")
        parts += (_TOKEN_TAG + varint(len(token)), token)
    if cuts:
        parts += (_ARGS_CUT_TAG + varint(len(cuts)), bytes(cuts))
    return EncodedMessage(parts)


#: After a caller's ListJobs, its next one waits this many times as long as the last
#: one took: one user's listings, however many connections loop them, hold the event
#: loop at most 1 / (1 + REST) of the time, and other users' calls keep the rest.
REST = 9.0


@attrs.define(eq=False)
class Turns:
    """One ListJobs at a time per caller, in arrival order (`trio.Lock` is fair),
    each after a rest proportional to the caller's previous one (`REST`): a user
    looping ListJobs on many connections has one call at work, the rest waiting at
    no cost, so other users' calls keep their share of the loop."""

    rest: float = REST
    _locks: dict[str, trio.Lock] = attrs.field(init=False, factory=dict)
    _waiting: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    # When each caller's next call may start (kept past the call: a single
    # connection that loops is rested too; expired entries are dropped).
    _ready_at: dict[str, float] = attrs.field(init=False, factory=dict)

    @contextlib.asynccontextmanager
    async def turn(self, caller: str) -> AsyncIterator[None]:
        """Wait for `caller`'s turn; the turn lasts the block."""
        lock = self._locks.setdefault(caller, trio.Lock())
        self._waiting[caller] += 1
        try:
            async with lock:
                await trio.sleep_until(self._ready_at.pop(caller, 0.0))
                began = trio.current_time()
                try:
                    yield
                finally:
                    ended = trio.current_time()
                    self._forget_rested(ended)
                    self._ready_at[caller] = ended + (ended - began) * self.rest
        finally:
            self._waiting[caller] -= 1
            if not self._waiting[caller]:  # nobody else holds or waits for it
                del self._waiting[caller], self._locks[caller]

    def _forget_rested(self, now: float) -> None:
        if len(self._ready_at) > 1000:
            self._ready_at = {name: at for name, at in self._ready_at.items() if at > now}


__all__ = [
    "CLOCK_SLACK",
    "PAGE_BYTES",
    "SCAN",
    "SCAN_BUDGET",
    "REST",
    "decode_token",
    "encode_token",
    "entry",
    "listed",
    "CHUNK",
    "Entry",
    "Fetch",
    "PageRequest",
    "Turns",
    "page",
    "request_from",
    "selection_from",
]

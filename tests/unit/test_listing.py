"""ListJobs pages (`jobworker.server.listing`): bounded page sizes, tokens only the
server makes, argv cut to a bound at O(bound) cost, and a page that always fits in
what a client accepts, whatever the jobs hold."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from jobworker import messages, model, naming
from jobworker.errors import InvalidRequestError
from jobworker.jobs.job import Job
from jobworker.jobs.job_index import JobIndex, ListKey, Scanned
from jobworker.jobs.lifecycle import Lifecycle, Phase
from jobworker.jobs.output_log import FileLog
from jobworker.jobs.record import JobRecord
from jobworker.jobs.selection import Selection, StateFilter
from jobworker.model import (
    DEFAULT_PAGE_SIZE,
    MAX_ARG_BYTES,
    MAX_ARGS,
    MAX_CLIENT_MESSAGE,
    MAX_LISTED_ARGS_BYTES,
    MAX_PAGE_SIZE,
    JobSpec,
    JobState,
    JobStatus,
    Limits,
    Outcome,
    Usage,
)
from jobworker.server import listing
from jobworker.transport import EncodedMessage
from jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.hierarchy_independent

#: Argvs at the request bounds, each of about 1 MiB or of the most arguments.
MAXIMAL_ARGVS = {
    "one-huge-arg": ("x" * MAX_ARG_BYTES,) * 8,
    "most-args": ("a",) + ("",) * (MAX_ARGS - 1),
    "four-byte-chars": ("\U0001f600" * (MAX_ARG_BYTES // 4),) * 8,
    "short-args": ("sh",) + ("-x",) * (MAX_ARGS - 1),
}


def maximal_statuses(argv: tuple[str, ...], count: int) -> list[JobStatus]:
    """`count` jobs with every field at its largest: the argv given, every limit
    set, a 64-character owner, reasons of server-made length."""
    spec = maximal_spec(argv)  # once: checking a 1 MiB argv is not free
    return [maximal_status(spec, n) for n in range(count)]


def maximal_spec(argv: tuple[str, ...]) -> JobSpec:
    return JobSpec(
        argv=argv,
        limits=Limits(
            cpu=1.5,
            memory=1 << 60,
            io_read_bps=1 << 60,
            io_write_bps=1 << 60,
            pids=4194304,
            output=1 << 60,
            timeout=366 * 86400.0 - 0.1,
        ),
    )


def maximal_status(spec: JobSpec, n: int = 0) -> JobStatus:
    return JobStatus(
        job_id=str(uuid.UUID(int=(1 << 127) + n)),
        owner="u" * 64,
        spec=spec,
        state=JobState.TERMINATED,
        created_at=1.7e9 + n,
        started_at=1.7e9 + n,
        ended_at=1.7e9 + n,
        outcome=Outcome.SIGNALED,
        exit_code=255,
        signal=64,
        usage=Usage(cpu_ns=1 << 62, peak_memory=1 << 60, oom_kills=1),
        output_size=1 << 62,
        output_disk_bytes=1 << 62,
        output_truncated="x" * 200,
        workdir_bytes=1 << 62,
        outcome_reason="y" * 200,
    )


def request(**fields: object) -> pb.ListJobsRequest:
    return pb.ListJobsRequest(**fields)  # type: ignore[arg-type]


def test_page_size_defaults_and_bounds() -> None:
    assert listing.request_from(request()).size == DEFAULT_PAGE_SIZE
    assert listing.request_from(request(page_size=1)).size == 1
    assert listing.request_from(request(page_size=MAX_PAGE_SIZE)).size == MAX_PAGE_SIZE


@pytest.mark.parametrize("size", [0, -1, -(1 << 31), MAX_PAGE_SIZE + 1, (1 << 31) - 1])
def test_a_page_size_of_zero_negative_or_over_the_bound_is_invalid(size: int) -> None:
    with pytest.raises(InvalidRequestError, match=f"page_size must be 1 to {MAX_PAGE_SIZE}"):
        listing.request_from(request(page_size=size))


def test_a_token_names_the_key_it_was_made_of() -> None:
    key = (1765432100.123456, "4cca9dfe-5693-4e63-b15d-701d36c7de92")
    token = listing.encode_token(key)
    assert listing.decode_token(token) == key
    assert listing.request_from(request(page_token=token)).after == key


def _other_version(token: str) -> str:
    key = listing.decode_token(token)
    packed = bytearray(listing._TOKEN.pack(1, key[0], uuid.UUID(key[1]).bytes))
    packed[0] = 2
    return base64.urlsafe_b64encode(bytes(packed)).rstrip(b"=").decode()


GOOD = listing.encode_token((1.0, "4cca9dfe-5693-4e63-b15d-701d36c7de92"))


@pytest.mark.parametrize(
    "token",
    [
        "x",
        "not a token at all, but longer than one",
        GOOD[:-1],
        GOOD + "A",
        GOOD[:-1] + "!",
        GOOD[:-1] + "\u00e9",
        GOOD[:-1] + ("B" if GOOD[-1] != "B" else "C"),  # padding bits set: not canonical
        _other_version(GOOD),
        listing.encode_token((float("nan"), "4cca9dfe-5693-4e63-b15d-701d36c7de92")),
        "\0" * len(GOOD),
    ],
)
def test_a_token_the_server_did_not_make_is_invalid(token: str) -> None:
    if token == GOOD:  # a mutation that happened to give a valid token is no test
        pytest.skip("mutation is a valid token")
    with pytest.raises(InvalidRequestError, match="page_token is not one this server made"):
        listing.request_from(request(page_token=token))


def test_a_short_argv_is_listed_whole() -> None:
    assert model.cut_argv(("sh", "-c", "echo hi")) == (("sh", "-c", "echo hi"), False)
    exact = ("a" * (MAX_LISTED_ARGS_BYTES - 1),)
    assert model.cut_argv(exact) == (exact, False)


@pytest.mark.parametrize("name", sorted(MAXIMAL_ARGVS))
def test_a_long_argv_is_cut_to_the_bound_at_a_character_boundary(name: str) -> None:
    argv = MAXIMAL_ARGVS[name]
    kept, cut = model.cut_argv(argv)
    assert cut
    assert sum(len(a.encode()) + 1 for a in kept) <= MAX_LISTED_ARGS_BYTES
    assert kept[0] and argv[0].startswith(kept[0])
    assert all(a == b for a, b in zip(kept[:-1], argv, strict=False))  # a prefix of argv


def fetcher(
    statuses: list[JobStatus], match: Callable[[JobStatus], bool] = lambda _: True
) -> listing.Fetch:
    """The tracker's `select` over `statuses` (those that `match`), which it counts
    the calls of."""
    index: JobIndex[JobStatus] = JobIndex()
    for status in statuses:
        index[status.job_id] = status

    def fetch(after: ListKey | None, limit: int, budget: int) -> Scanned[listing.Entry]:
        calls.append(limit)
        scanned = index.scan(None, after, limit, match, budget)
        return Scanned([listing.entry(s) for s in scanned.found], scanned.stopped, scanned.looked)

    calls: list[int] = []
    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


async def page(
    statuses: list[JobStatus], size: int, *, budget: int = listing.PAGE_BYTES
) -> pb.ListJobsResponse:
    return decoded(
        await listing.page(
            fetcher(statuses), listing.PageRequest(size=size, after=None), budget=budget
        )
    )


def decoded(answer: EncodedMessage) -> pb.ListJobsResponse:
    """The page as a client reads it; its bytes are exactly what protobuf makes of it
    (so any client reads it, and the budget counts what is sent)."""
    wire = answer.SerializeToString()
    message = pb.ListJobsResponse.FromString(wire)
    assert message.SerializeToString(deterministic=True) == wire
    assert answer.size == 5 + len(wire)  # gRPC's prefix, then the message
    return message


async def test_a_page_of_the_most_jobs_with_maximal_argvs_fits_what_a_client_accepts() -> None:
    """1,000 jobs, each at every bound (1 MiB of argv, 4,096 arguments...): the
    page is under the client's max message size, listed whole or cut short with a
    token to go on; and the client reads each job back marked as cut."""
    for name, argv in MAXIMAL_ARGVS.items():
        statuses = maximal_statuses(argv, MAX_PAGE_SIZE + 1)
        answer = await page(statuses, MAX_PAGE_SIZE)
        assert answer.ByteSize() <= listing.PAGE_BYTES < MAX_CLIENT_MESSAGE, name
        assert answer.next_page_token, name  # the 1,001st (at least) is still to come
        assert len(answer.jobs) >= MAX_PAGE_SIZE // 2, name
        read = messages.listed_from_proto(answer)
        assert all(job.argv_cut for job in read), name
        last = read[-1]
        assert listing.decode_token(answer.next_page_token) == (last.created_at, last.job_id)


async def test_a_page_is_fetched_in_chunks_with_checkpoints_between() -> None:
    """No call holds the loop for a whole page: the tracker is asked for CHUNK jobs
    (plus one, to see whether more follow) at a time, and the task checkpoints."""
    statuses = maximal_statuses(("sh",), 100)
    fetch = fetcher(statuses)
    with trio.CancelScope() as scope:
        scope.cancel()  # a checkpoint raises Cancelled: the page must reach one
        with pytest.raises(trio.Cancelled):
            await listing.page(fetch, listing.PageRequest(size=100, after=None))
    assert fetch.calls == [listing.CHUNK + 1]  # type: ignore[attr-defined]
    fetch = fetcher(statuses)
    answer = decoded(await listing.page(fetch, listing.PageRequest(size=100, after=None)))
    assert [j.job_id for j in answer.jobs] == [s.job_id for s in statuses]
    assert max(fetch.calls) == listing.CHUNK + 1  # type: ignore[attr-defined]


async def test_following_tokens_lists_every_job_once() -> None:
    statuses = maximal_statuses(("sh",), 45)
    fetch = fetcher(statuses)
    seen: list[str] = []
    after = None
    while True:
        answer = decoded(await listing.page(fetch, listing.PageRequest(size=7, after=after)))
        seen += [job.job_id for job in answer.jobs]
        assert len(answer.jobs) <= 7
        if not answer.next_page_token:
            break
        after = listing.decode_token(answer.next_page_token)
    assert seen == [s.job_id for s in statuses]


async def test_a_page_stops_early_at_its_byte_budget_and_says_where_to_go_on() -> None:
    statuses = maximal_statuses(("sh",), 10)
    one = (await page(statuses[:1], 10)).ByteSize()
    answer = await page(statuses, 10, budget=3 * one)
    assert 1 <= len(answer.jobs) < 10
    last = answer.jobs[-1]
    assert listing.decode_token(answer.next_page_token) == (last.created_at, last.job_id)
    assert not answer.args_cut[0]


async def test_the_last_page_has_no_token_and_a_page_holds_at_least_one_job() -> None:
    statuses = maximal_statuses(("sh",), 3)
    assert (await page(statuses, 3)).next_page_token == ""
    assert (await page(statuses, 5)).next_page_token == ""
    assert (await page(statuses, 2)).next_page_token != ""
    assert len((await page(statuses, 3, budget=1)).jobs) == 1
    assert await page([], 3) == pb.ListJobsResponse()


async def test_one_caller_lists_at_a_time_and_turns_are_forgotten() -> None:
    turns = listing.Turns()
    order: list[str] = []

    async def lister(name: str, tag: str) -> None:
        async with turns.turn(name):
            order.append(f"{tag}+")
            await trio.sleep(0.01)
            order.append(f"{tag}-")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lister, "betty", "b1")
        nursery.start_soon(lister, "betty", "b2")
        nursery.start_soon(lister, "alex", "a")
    assert order.index("b1-") < order.index("b2+") or order.index("b2-") < order.index("b1+")
    assert order.index("a+") < max(order.index("b1-"), order.index("b2-"))  # others don't wait
    assert not turns._locks and not turns._waiting


def labelled_status(n: int, labels: dict[str, str], state: JobState) -> JobStatus:
    return attrs.evolve(
        maximal_status(JobSpec(argv=("sh",), name=f"job-{n}", labels=labels), n), state=state
    )


async def every_page(fetch: listing.Fetch, request: listing.PageRequest) -> list[list[str]]:
    """The ids of every page, following the tokens to the end."""
    pages = []
    while True:
        answer = decoded(await listing.page(fetch, request))
        pages.append([job.job_id for job in answer.jobs])
        if not answer.next_page_token:
            return pages
        request = attrs.evolve(request, after=listing.decode_token(answer.next_page_token))


async def test_a_filter_over_a_thousand_jobs_pages_through_every_selected_job_once() -> None:
    """Filtering happens before paging: every selected job comes exactly once, in
    order, on pages of at most page_size, and no unselected job shows."""
    statuses = [
        labelled_status(n, {"team": "a" if n % 7 == 0 else "b"}, JobState.ACTIVE)
        for n in range(1000)
    ]
    wanted = [s.job_id for s in statuses if s.spec.labels == (("team", "a"),)]
    fetch = fetcher(statuses, lambda s: s.spec.labels == (("team", "a"),))
    pages = await every_page(fetch, listing.PageRequest(size=10, after=None))
    assert [job for page in pages for job in page] == wanted
    assert all(len(page) <= 10 for page in pages)
    assert len(pages) == -(-len(wanted) // 10)


async def test_a_filter_that_selects_nothing_looks_at_a_bounded_number_of_jobs_a_call() -> None:
    """However many jobs a filter skips, one call looks at SCAN_BUDGET of them at
    most, and answers with no job and a token to go on from; following the tokens
    reaches the end."""
    count = listing.SCAN_BUDGET * 2 + 5
    statuses = [maximal_status(JobSpec(argv=("sh",)), n) for n in range(count)]
    fetch = fetcher(statuses, lambda _: False)
    answer = decoded(await listing.page(fetch, listing.PageRequest(size=100, after=None)))
    assert list(answer.jobs) == [] and answer.next_page_token
    assert len(fetch.calls) == listing.SCAN_BUDGET // listing.SCAN  # type: ignore[attr-defined]
    stopped = listing.decode_token(answer.next_page_token)
    assert stopped == (
        statuses[listing.SCAN_BUDGET - 1].created_at,
        statuses[listing.SCAN_BUDGET - 1].job_id,
    )
    pages = await every_page(fetch, listing.PageRequest(size=100, after=None))
    assert pages == [[], [], []]


async def test_a_page_of_jobs_with_the_longest_names_and_most_labels_fits_a_client() -> None:
    labels = {
        f"{'p' * 60}.example.com/{'k' * 61}{n:02d}": "v" * 63 for n in range(naming.MAX_LABELS)
    }
    spec = JobSpec(
        argv=MAXIMAL_ARGVS["short-args"], name="n" * naming.MAX_NAME_BYTES, labels=labels
    )
    statuses = [maximal_status(spec, n) for n in range(MAX_PAGE_SIZE + 1)]
    answer = await page(statuses, MAX_PAGE_SIZE)
    assert answer.ByteSize() <= listing.PAGE_BYTES
    assert answer.next_page_token and len(answer.jobs) >= 40
    read = messages.listed_from_proto(answer)
    assert read[0].spec.labels == tuple(sorted(labels.items()))
    assert read[0].name == "n" * naming.MAX_NAME_BYTES


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"labels": {"bad key": "x"}}, "bad label key"),
        ({"labels": {"app": "-x"}}, "bad label value"),
        ({"labels": {"Upper.Case/app": "x"}}, "DNS subdomain"),
        ({"labels": {f"k{n}": "" for n in range(naming.MAX_LABELS + 1)}}, "at most 32"),
        ({"state": "running"}, "state must be 'active' or 'ended'"),
        ({"name": "-x"}, "bad job name"),
        ({"owner": "a b"}, "is not a user name"),
        ({"created_after": 2e9}, "in the future"),
        ({"created_after": float("nan")}, "in the future"),
    ],
)
def test_a_filter_outside_its_syntax_is_refused_saying_what_was_wrong(
    fields: dict[str, object], said: str
) -> None:
    with pytest.raises(InvalidRequestError, match=said):
        listing.request_from(pb.ListJobsRequest(**fields), now=1.7e9)  # type: ignore[arg-type]


def test_the_filters_a_request_gives_become_its_selection() -> None:
    request = listing.request_from(
        pb.ListJobsRequest(
            labels={"b": "2", "a": ""},
            state="ended",
            name="nightly",
            owner="alex",
            created_after=1.7e9 - 10,
        ),
        now=1.7e9,
    )
    assert request.selection == Selection(
        owner="alex",
        name="nightly",
        labels=(("a", ""), ("b", "2")),
        state=StateFilter.ENDED,
        created_after=1.7e9 - 10,
    )
    assert listing.request_from(pb.ListJobsRequest()).selection == Selection()


def test_a_terminated_job_keeps_its_entry_and_a_running_one_is_encoded_afresh(
    tmp_path: Path,
) -> None:
    """A kept job's listing never changes, so its entry is encoded once (a page of
    them is concatenation); a job not yet Terminated is encoded at each listing, its
    readings being live."""
    spec = maximal_spec(MAXIMAL_ARGVS["one-huge-arg"])

    def job(phase: Phase) -> Job:
        record = JobRecord.new(str(uuid.uuid4()), "alex", spec, created_at=1.7e9)
        log = FileLog.restored(tmp_path / "output.log", 0)
        return Job(record, tmp_path, log, Lifecycle(phase))

    kept, running = job(Phase.TERMINATED), job(Phase.ACTIVE)
    first = kept.listed_entry(listing.entry)
    assert kept.listed_entry(listing.entry) is first
    assert first.argv_cut and len(first.encoded) < 2 * MAX_LISTED_ARGS_BYTES
    assert running.listed_entry(listing.entry) is not running.listed_entry(listing.entry)
    kept.update(exit_code=3)  # a record that changes (never, once Terminated) is seen
    assert kept.listed_entry(listing.entry) is not first

"""`jws events` and `jws wait`: the commands on WatchJobs (issue 22), which learn of
jobs' changes as jwsd tells them, never by polling.

`jws wait` rides over a restart of jwsd as `jws output` does: it watches again
from the last cursor it had; the new jwsd says that cursor is stale and sends
the current state of the jobs first, so an end that happened meanwhile is seen.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING

import asyncclick as click
import attrs
import trio

from jobworker.cli import render
from jobworker.cli.failure import EXIT_USAGE, Failure
from jobworker.cli.job_ids import JobIds, complete_job_ids
from jobworker.cli.job_request import label_flag, labels_option
from jobworker.cli.target import (
    Target,
    connected,
    connection_options,
    reconnect_option,
    reconnector_to,
)
from jobworker.cli.usage import StrictCommand, job_ids_options
from jobworker.echo import shown
from jobworker.model import JobState, JobStatus, Outcome
from jobworker.units import format_duration, parse_duration

if TYPE_CHECKING:
    from jobworker.client import JobWorkerClient, WatchedEvent

#: `jws wait --timeout` ran out before every job had ended (as timeout(1) exits).
EXIT_WAIT_TIMEOUT = 124
#: The exit code of a job that ended with no code of its own (lost), as `jws run`'s.
EXIT_LOST = 255


@click.command(cls=StrictCommand)
@connection_options
@click.option("--since", default="", metavar="CURSOR", help="Resume after this event's cursor.")
@click.option(
    "-j",
    "--job",
    "job_ids",
    multiple=True,
    help="Only this job (id, id prefix or name; repeatable).",
    shell_complete=complete_job_ids,
)
@label_flag("Only jobs with this label KEY=VALUE (repeatable: every one must hold).")
@click.option("--state", type=click.Choice(["active", "ended"]), help="Only jobs in this state.")
@click.option("--owner", metavar="USER", help="Only USER's jobs (for an admin).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, for scripts.")
async def events(
    user: str | None,
    addr: str | None,
    tls_dir: str | None,
    since: str,
    job_ids: tuple[str, ...],
    labels: tuple[str, ...],
    state: str | None,
    owner: str | None,
    as_json: bool,
) -> None:
    """Print your jobs' changes as they happen, one line each (like `docker events`).

    Each line ends with the event's cursor: `--since CURSOR` resumes after it. A
    cursor jwsd no longer holds (an earlier jwsd's) prints a `stale` line, then the
    current state of each job (`current`), then the live events. Runs until
    interrupted (Ctrl-C) or jwsd goes away (exit code 3).

    \b
    Examples:
      jws events
      jws events --label team=infra --json | jq -r 'select(.kind == "terminated") | .job_id'
    """
    from jobworker.client import JobFilter

    selection = JobFilter(labels=labels_option(labels), state=state, owner=owner)
    target = Target.chosen(user, addr, tls_dir)
    async with connected(target) as client:
        resolver = JobIds(client, target.credentials.user)
        resolved = [await resolver.resolve(typed) for typed in job_ids]
        stream = client.watch(since=since, job_ids=resolved, selection=selection)
        async with contextlib.aclosing(stream) as watched:
            async for event in watched:
                click.echo(_event_json(event) if as_json else _event_line(event))


def _event_line(event: WatchedEvent) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.at))
    fraction = f"{event.at % 1:.3f}"[1:]
    parts = [f"{when}{fraction}Z", event.kind.ljust(14)]
    if event.job is not None:
        parts += [event.job.job_id, event.job.name or "-"]
        if event.job.state is JobState.TERMINATED:
            parts.append(render.headline(event.job))
    parts.append(f"cursor={event.cursor}")
    return shown("  ".join(parts))


def _event_json(event: WatchedEvent) -> str:
    data = {
        "cursor": event.cursor,
        "kind": event.kind,
        "at": event.at,
        "job": render.status_dict(event.job) if event.job is not None else None,
    }
    return json.dumps(data, ensure_ascii=True)


@attrs.define
class _Waiting:
    """What `jws wait` knows so far: each job's end, and where to watch from."""

    wanted: tuple[str, ...]
    ended: dict[str, JobStatus] = attrs.field(factory=dict)
    cursor: str = ""
    #: The ids of the jobs named (names resolved by jwsd), by what was given.
    ids: dict[str, str] = attrs.field(factory=dict)

    @property
    def done(self) -> bool:
        return all(self.ids.get(given) in self.ended for given in self.wanted)

    async def watch(self, client: JobWorkerClient) -> None:
        """Watch until every job has ended (one connection's worth)."""
        stream = client.watch(since=self.cursor, job_ids=self.wanted)
        async with contextlib.aclosing(stream) as watched:
            async for event in watched:
                self.cursor = event.cursor
                if event.kind in ("watching", "stale"):
                    # Subscribed: an end from now on comes as an event; one before, here.
                    for given in self.wanted:
                        status = await client.status(given)
                        self.ids[given] = status.job_id
                        if status.state is JobState.TERMINATED:
                            self.ended[status.job_id] = status
                elif event.job is not None and event.job.state is JobState.TERMINATED:
                    self.ended[event.job.job_id] = event.job
                if self.ids and self.done:
                    return


@click.command(cls=StrictCommand)
@connection_options
@job_ids_options
@click.option(
    "--timeout",
    "give_up_after",
    metavar="DURATION",
    help="Give up after this long (exit code 124), leaving the jobs as they are.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final statuses as JSON.")
@reconnect_option
async def wait(
    user: str | None,
    addr: str | None,
    tls_dir: str | None,
    job_ids: tuple[str, ...],
    give_up_after: str | None,
    as_json: bool,
    reconnect_timeout: str,
) -> int:
    """Wait until the jobs have ended; print how each ended; exit as `jws run` does.

    With one job, exits with its exit code (128+n when signal n killed it, 255
    when it was lost); with several, 0 when every one exited 0, else the code of
    the first one given that did not. Learns of the ends from jwsd's events
    (WatchJobs), not by asking again and again; when jwsd goes away (a restart),
    connects again and goes on.

    \b
    Examples:
      jws wait -j nightly
      jws wait "$a" "$b" --timeout 10m && echo both passed
    """
    seconds = None
    if give_up_after is not None:
        try:
            seconds = parse_duration(give_up_after)
        except ValueError as exc:
            raise Failure(f"--timeout: {exc}", EXIT_USAGE) from None
    target = Target.chosen(user, addr, tls_dir)
    reconnector = reconnector_to(target, reconnect_timeout, _say)
    async with connected(target) as client:
        resolver = JobIds(client, target.credentials.user)
        # Each once: a prefix and the whole id may name one job.
        waiting = _Waiting(tuple(dict.fromkeys([await resolver.resolve(t) for t in job_ids])))
        with trio.move_on_after(seconds if seconds is not None else float("inf")):
            await reconnector.call(waiting.watch, client)
    finals = [waiting.ended[waiting.ids[given]] for given in waiting.wanted if waiting.done]
    if not waiting.done:
        assert seconds is not None
        _say(f"gave up waiting after {format_duration(seconds)}; the jobs go on")
        return EXIT_WAIT_TIMEOUT
    if as_json:
        click.echo(render.as_json([render.status_dict(job) for job in finals]))
    else:
        for final in finals:
            click.echo(shown(f"{final.job_id}  {final.name or '-'}  {render.headline(final)}"))
    for final in finals:
        if final.outcome is Outcome.LOST:
            _say(f"job {final.job_id} was lost: {final.outcome_reason}")
    codes = [EXIT_LOST if job.exit_code is None else job.exit_code for job in finals]
    return next((code for code in codes if code != 0), 0)


def _say(line: str) -> None:
    click.echo(f"jws: {shown(line)}", err=True)


__all__ = ["EXIT_LOST", "EXIT_WAIT_TIMEOUT", "events", "wait"]

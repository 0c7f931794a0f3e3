"""`jws`: the jobworker client, as docker/kubectl users expect it.

    jws start -u alex -c "ls -l"        prints the job id, and nothing else
    jws status -u alex -j ID            Pending / Active / Terminated, then the details
    jws output -u alex -j ID            the raw output from the first byte, following to the end
    jws stop -u alex -j ID [-j ID2]     SIGTERM, grace, SIGKILL; returns once they have ended
    jws list -u alex --label team=a     the caller's jobs (filtered by jwsd)
    jws events -u alex                  the caller's jobs' changes as they happen
    jws wait -u alex -j NAME            until it ends; exits with its exit code
    jws rm -u alex -j ID                forget a finished job: its record and its output
    jws run -u alex -- make test        start, stream, exit with the job's exit code
    jws login alex                      make alex (and --addr / --tls-dir) the default
    jws health                          SERVING (exit 0) or not: a probe for supervisors

Exit codes: 0 success; 1 the server refused (access denied, no such job, bad
request...); 2 a usage or local set-up error (bad or repeated flag, no user, no
credentials, a client certificate jwsd cannot accept); 3 jwsd could not be
reached or went away; 127 no such program; 130 interrupted (Ctrl-C); 141 `jws
run`'s stdout closed; 124 `jws wait --timeout` ran out. `jws run` and `jws wait` exit with the job's own exit code (128+n when
signal n killed it) once the job has ended; Ctrl-C or a closed stdout stops the
job first (see `jobworker.cli.leaving`).

`output`, `run` and `wait` ride over a restart of jwsd: once connected, they connect
again with backoff when jwsd goes away and resume at the byte they reached
(`--reconnect-timeout`, see `jobworker.client.reconnect`); every other command fails
at once with exit code 3.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import asyncclick as click

from jobworker.cli import render, watch
from jobworker.cli.config import DEFAULT_ADDR, DEFAULT_TLS_DIR
from jobworker.cli.failure import EXIT_SERVER_ERROR, EXIT_USAGE, Failure
from jobworker.cli.job_ids import JobIds
from jobworker.cli.job_request import JobRequest, job_options, label_flag, labels_option
from jobworker.cli.leaving import EXIT_INTERRUPTED, Following, Left, start_interruptibly
from jobworker.cli.stdout import copy_output
from jobworker.cli.target import (
    Target,
    connected,
    connection_options,
    reconnect_option,
    reconnector_to,
)
from jobworker.cli.usage import StrictGroup, job_id_option, job_ids_options, one_line
from jobworker.echo import shown
from jobworker.errors import (
    JobWorkerError,
    SetupError,
    UnavailableError,
)
from jobworker.model import STOPPED_BY_SHUTDOWN, JobState, JobStatus, Outcome
from jobworker.units import format_duration, parse_duration

if TYPE_CHECKING:  # imported lazily at run time: `jws --help` stays quick
    from jobworker.client import JobWorkerClient, Reconnector


# ---- the commands --------------------------------------------------------------


@click.group(cls=StrictGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jobworker", prog_name="jws")
def jws() -> None:
    """jobworker's client: run commands on a jwsd host, follow their output, stop them.

    \b
    Examples:
      jws login alex --addr 127.0.0.1:50051 --tls-dir certs/dev
      id=$(jws start -c "sh -c 'for i in 1 2 3; do echo tick $i; sleep 1; done'")
      jws output -j "$id"
      jws run --memory 256M --cpu 0.5 -- python3 -c 'print(42)'
    """


@jws.command()
@connection_options
@job_options
async def start(user: str | None, addr: str | None, tls_dir: str | None, job: JobRequest) -> None:
    """Start a job; print its id (only the id, so `id=$(jws start ...)` works).

    \b
    Examples:
      jws start -c "make -C /src test"
      jws start --memory 256M --pids 50 -- sh -c 'make -j4'
    """
    async with connected(Target.chosen(user, addr, tls_dir)) as client:
        started = await job.start(client)
    click.echo(shown(started.job_id))


async def _for_each_job(
    job_ids: tuple[str, ...], target: Target, act: Callable[[JobWorkerClient, str], Any]
) -> None:
    """`act(client, job_id)` for every id (or prefix, `JobIds`) at once, on one
    connection; every refusal is its own line, then exit code 1. Raises Failure at
    once when jwsd is unavailable."""
    import trio

    refused: list[str] = []
    lost: list[JobWorkerError] = []  # raised here, not as an ExceptionGroup
    async with connected(target) as client:
        resolver = JobIds(client, target.credentials.user)
        async with trio.open_nursery() as nursery:

            async def one(typed: str) -> None:
                try:
                    await act(client, await resolver.resolve(typed))
                except (UnavailableError, SetupError) as exc:
                    lost.append(exc)
                    nursery.cancel_scope.cancel()
                except JobWorkerError as exc:
                    refused.append(str(exc))

            for typed in job_ids:
                nursery.start_soon(one, typed)
        if lost:
            raise lost[0]
    for line in refused[:-1]:
        _say(line)
    if refused:
        raise Failure(refused[-1], EXIT_SERVER_ERROR)


@jws.command()
@connection_options
@job_ids_options
@click.option(
    "--grace",
    help="Time between SIGTERM and SIGKILL (5s, 500ms; 0 kills at once). Default: the server's.",
)
async def stop(
    user: str | None,
    addr: str | None,
    tls_dir: str | None,
    job_ids: tuple[str, ...],
    grace: str | None,
) -> None:
    """Stop jobs and their every process: SIGTERM, a grace period, then SIGKILL.

    Returns once every job has ended. Stopping a job that already ended is fine.
    Several jobs are stopped at once; a refusal of one is reported and the others
    are stopped all the same (exit code 1).

    \b
    Examples:
      jws stop -j 5f0c1a2b-... --grace 10s
      jws stop 5f0c1a2b-... 7a31e0c4-...
    """
    seconds = _grace_from(grace)

    async def stop_one(client: JobWorkerClient, job_id: str) -> None:
        await client.stop(job_id, seconds)

    await _for_each_job(job_ids, Target.chosen(user, addr, tls_dir), stop_one)


def _grace_from(text: str | None) -> float | None:
    """--grace's seconds (None: the server's)."""
    try:
        return parse_duration(text) if text is not None else None
    except ValueError as exc:
        raise Failure(f"--grace: {exc}", EXIT_USAGE) from None


@jws.command()
@connection_options
@job_id_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON, for scripts.")
async def status(
    user: str | None, addr: str | None, tls_dir: str | None, job_id: str, as_json: bool
) -> None:
    """Show a job's status: Pending, Active or Terminated first, then how it ended and what it used.

    The id may be cut to a prefix that begins no other of your jobs' ids, or be
    the name of one of your jobs.

    \b
    Example:
      jws status 5f0c1a2b
      jws status nightly-build
      jws status -j 5f0c1a2b-... --json | jq .exit_code
    """
    target = Target.chosen(user, addr, tls_dir)
    async with connected(target) as client:
        job = await client.status(await JobIds(client, target.credentials.user).resolve(job_id))
    click.echo(render.as_json(render.status_dict(job)) if as_json else render.status_text(job))


@jws.command(name="rm")
@connection_options
@job_ids_options
async def remove(
    user: str | None, addr: str | None, tls_dir: str | None, job_ids: tuple[str, ...]
) -> None:
    """Forget jobs that have ended: their records and their output are deleted.

    A job still running is refused (stop it first); the others are removed all
    the same (exit code 1). jwsd also forgets finished jobs by itself (see jwsd
    --retention and --max-finished).

    \b
    Examples:
      jws rm -j 5f0c1a2b-...
      jws rm 5f0c1a2b-... 7a31e0c4-...
    """

    async def remove_one(client: JobWorkerClient, job_id: str) -> None:
        await client.remove(job_id)

    await _for_each_job(job_ids, Target.chosen(user, addr, tls_dir), remove_one)


@jws.command(name="list")
@connection_options
@label_flag("Only jobs with this label KEY=VALUE (repeatable: every one must hold).")
@click.option(
    "--state",
    type=click.Choice(["active", "ended"]),
    help="active: jobs that have not ended; ended: those that have.",
)
@click.option("--name", help="Only the job of this name.")
@click.option("--owner", metavar="USER", help="Only USER's jobs (for an admin).")
@click.option(
    "--since",
    metavar="WHEN",
    help="Only jobs created since WHEN: a duration ago (10m, 2h, 1d) or a time "
    "(2026-01-31T12:00:00Z, RFC 3339).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON, for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the jobs' ids, one a line.")
@click.option("--no-trunc", is_flag=True, help="Show each command as jwsd listed it, uncut.")
async def list_jobs(
    user: str | None,
    addr: str | None,
    tls_dir: str | None,
    labels: tuple[str, ...],
    state: str | None,
    name: str | None,
    owner: str | None,
    since: str | None,
    as_json: bool,
    quiet: bool,
    no_trunc: bool,
) -> None:
    """List your jobs (every job, for an admin, with an OWNER column), oldest first,
    filtered by jwsd.

    Follows the server's pages to the end. On a terminal the COMMAND column fits
    its width (elsewhere, 60 characters); --no-trunc shows it as jwsd listed it,
    which cuts a command past 256 bytes ("..."; "args_cut" in JSON): `jws status
    JOB_ID` shows it whole.

    \b
    Examples:
      jws list --state active
      jws list --label team=infra --since 1h
      jws rm $(jws list -q --state ended)
      jws list --owner betty --json | jq -r '.[].job_id'     # as an admin
    """
    from jobworker.client import JobFilter

    selection = JobFilter(
        labels=labels_option(labels),
        state=state,
        name=name,
        owner=owner,
        created_after=None if since is None else _since(since),
    )
    target = Target.chosen(user, addr, tls_dir)
    async with connected(target) as client:
        jobs = await client.list(selection=selection)
    if as_json:
        click.echo(render.as_json([render.status_dict(job) for job in jobs]))
    elif quiet:
        for job in jobs:
            click.echo(job.job_id)
    else:
        width = None if no_trunc else render.command_width()
        others = any(job.owner != target.credentials.user for job in jobs)
        click.echo(render.table(jobs, command_width=width, owners=others))


@jws.command()
@connection_options
@click.option(
    "--until",
    help="Only jobs that ended at least this long ago (30m, 1h, 2d). Default: every ended job.",
)
async def prune(user: str | None, addr: str | None, tls_dir: str | None, until: str | None) -> None:
    """Remove your jobs that have ended (their records and output), as `docker container prune`.

    Running jobs are left alone, and so are other users' jobs (for an admin
    too: `jws rm` removes those one by one). Prints each removed id.

    \b
    Examples:
      jws prune
      jws prune --until 1h
    """
    try:
        age = parse_duration(until) if until is not None else 0.0
    except ValueError as exc:
        raise Failure(f"--until: {exc}", EXIT_USAGE) from None
    target = Target.chosen(user, addr, tls_dir)
    cutoff = time.time() - age
    async with connected(target) as client:
        ended = [
            job.job_id
            for job in await client.list()
            if job.owner == target.credentials.user
            and job.state is JobState.TERMINATED
            and (job.ended_at or 0) <= cutoff
        ]
    if not ended:
        _say("no ended job to remove")
        return

    async def remove_one(client: JobWorkerClient, job_id: str) -> None:
        await client.remove(job_id)
        click.echo(job_id)

    await _for_each_job(tuple(ended), target, remove_one)
    _say(f"removed {len(ended)} {'job' if len(ended) == 1 else 'jobs'}")


def _since(text: str) -> float:
    """The Unix time `--since` names: a duration before now, or an RFC 3339 time."""
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise Failure(
            f"--since wants a duration (10m, 2h) or a time (2026-01-31T12:00:00Z), not {text!r}",
            EXIT_USAGE,
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a time without a zone is the local one
    return when.timestamp()


async def _final_status(
    reconnector: Reconnector, job_id: str, client: JobWorkerClient
) -> JobStatus:
    """The job's status after following it, across restarts of jwsd."""

    async def status(connection: JobWorkerClient) -> JobStatus:
        return await connection.status(job_id)

    # After a reconnection the first connection is dead: the call opens a new one.
    return await reconnector.call(status, None if reconnector.reconnected else client)


def _say_if_stopped_by_a_shutdown(final: JobStatus) -> None:
    if final.outcome is Outcome.STOPPED and final.outcome_reason == STOPPED_BY_SHUTDOWN:
        _say(f"job {final.job_id} did not end by itself: {STOPPED_BY_SHUTDOWN}")


def _say_what_a_restart_cost(final: JobStatus, reached: int) -> None:
    """On stderr: the job was lost with a jwsd that stopped, or the follower wrote
    bytes that the jwsd it reconnected to no longer has."""
    if final.outcome is Outcome.LOST:
        _say(f"the job was lost: {final.outcome_reason}")
    if final.output_size < reached:
        _say(
            f"jwsd kept {final.output_size} bytes of the job's output, fewer than the "
            f"{reached} written here: the rest was lost with the jwsd that stopped"
        )


@jws.command()
@connection_options
@job_id_option
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=0,
    help="Start from this byte (resume an earlier read).",
)
@reconnect_option
async def output(
    user: str | None,
    addr: str | None,
    tls_dir: str | None,
    job_id: str,
    offset: int,
    reconnect_timeout: str,
) -> None:
    """Write a job's output (stdout and stderr, as one stream) to stdout, byte for byte.

    Starts at the first byte (or --offset) and follows the job until it ends.
    Ctrl-C stops following; the job keeps running. When jwsd goes away (a
    restart), connects again and goes on from the byte it reached. The id may
    be cut to a prefix that begins no other of your jobs' ids, or be the name
    of one of your jobs.

    \b
    Example:
      jws output 5f0c1a2b > build.log
    """
    target = Target.chosen(user, addr, tls_dir)
    reconnector = reconnector_to(target, reconnect_timeout, _say)
    async with connected(target) as client:
        job_id = await JobIds(client, target.credentials.user).resolve(job_id)
        fd = sys.stdout.fileno()
        reached = await copy_output(client, job_id, offset, fd, reconnector)
        if reconnector.reconnected:  # jwsd restarted: what did that cost the job?
            final = await _final_status(reconnector, job_id, client)
            _say_what_a_restart_cost(final, reached)
            _say_if_stopped_by_a_shutdown(final)
            return
        try:
            final = await client.status(job_id)
        except UnavailableError:
            # The output ended and jwsd refuses calls: it is shutting down, and stops
            # its jobs first (unless told to leave them running, when they run on and
            # their output does not end).
            _say(
                f"jwsd is shutting down: it stopped job {job_id} as it went, unless the job "
                f"had just ended (`jws status -j {job_id}` says, once jwsd is back)"
            )
            return
        _say_if_stopped_by_a_shutdown(final)


@jws.command()
@connection_options
@job_options
@reconnect_option
@click.option(
    "--grace",
    help="When Ctrl-C or a closed stdout stops the job: the time between SIGTERM and "
    "SIGKILL (as `jws stop --grace`). Default: the server's.",
)
@click.option(
    "--detach-on-interrupt",
    is_flag=True,
    help="Ctrl-C leaves the job running (it says the job's id) instead of stopping it.",
)
async def run(
    user: str | None,
    addr: str | None,
    tls_dir: str | None,
    job: JobRequest,
    reconnect_timeout: str,
    grace: str | None,
    detach_on_interrupt: bool,
) -> int:
    """Start a job, stream its output, and exit with its exit code (like `docker run`).

    A job killed by signal n exits 128+n. Ctrl-C stops the job (SIGTERM, --grace,
    SIGKILL) and exits 130; a second Ctrl-C leaves at once. When stdout closes
    (`| head`), the job is stopped too, and jws exits 141. When jwsd goes away
    after the job started (a restart), connects again and goes on from the byte it
    reached; the start itself is never repeated.

    \b
    Example:
      jws run --cpu 1 --memory 1G -- make -j2 test
    """
    target = Target.chosen(user, addr, tls_dir)
    reconnector = reconnector_to(target, reconnect_timeout, _say)
    seconds = _grace_from(grace)
    async with connected(target) as client:
        started, interrupted = await start_interruptibly(lambda: job.start(client), _say)
        following = Following(
            client, reconnector, started.job_id, seconds, detach_on_interrupt, _say
        )
        reached = await following.until_ended(sys.stdout.fileno(), interrupted_already=interrupted)
        if isinstance(reached, Left):
            return reached.code
        final = await _final_status(reconnector, started.job_id, client)
    _say_what_a_restart_cost(final, reached)
    _say_if_stopped_by_a_shutdown(final)
    if final.oom_killed:
        _say("the job was killed at its memory limit (OOM)")
    if final.outcome is Outcome.TIMED_OUT:
        timeout = final.spec.limits.timeout
        limit = f" ({format_duration(timeout)})" if timeout else ""
        _say(f"the job ran past its time limit{limit} and was stopped")
    if final.output_truncated is not None:
        _say(f"output truncated: {final.output_truncated}")
    code = final.exit_code if final.exit_code is not None else 255
    raise SystemExit(code)


@jws.command()
@connection_options
@click.option(
    "--service",
    default="",
    help='The service to ask about: "" (the server, the default) or jobworker.v1.JobWorkerService.',
)
async def health(user: str | None, addr: str | None, tls_dir: str | None, service: str) -> int:
    """Ask jwsd's standard gRPC health service; print its status.

    Exits 0 when it is SERVING, 1 when it answers anything else (NOT_SERVING
    while it shuts down), 3 when it cannot be reached. Any user whose
    certificate the client CA signed may ask, listed in jwsd's users file or
    not: fit for a container HEALTHCHECK or a load balancer's probe.

    \b
    Example:
      jws health -u alex --addr 127.0.0.1:50051
    """
    async with connected(Target.chosen(user, addr, tls_dir)) as client:
        status = await client.health(service)
    click.echo(shown(status))
    return 0 if status == "SERVING" else EXIT_SERVER_ERROR


@jws.command()
@connection_options
@click.option("--of", "of_user", default="", help="Only the records of this user.")
@click.option("-j", "--job", "job_id", default="", help="Only the records of this job.")
@click.option("--since", default=None, help="Only the records of the last DURATION (1h, 7d).")
@click.option(
    "--limit", type=click.IntRange(1, 200), default=100, show_default=True, help="Most records."
)
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON, for scripts.")
async def audit(
    user: str | None,
    addr: str | None,
    tls_dir: str | None,
    of_user: str,
    job_id: str,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show jwsd's audit trail (admins only): who started, stopped, removed or read
    which job, from where, with which certificate, and every refusal; the newest
    LIMIT records, oldest first.

    \b
    Examples:
      jws audit -u admin --since 1h
      jws audit -u admin --of betty --json | jq -r '.[] | select(.code != "OK") | .method'
    """
    try:
        after = time.time() - parse_duration(since) if since else 0.0
    except ValueError as exc:
        raise Failure(f"--since: {exc}", EXIT_USAGE) from None
    async with connected(Target.chosen(user, addr, tls_dir)) as client:
        records = await client.audit(user=of_user, job_id=job_id, since=after, limit=limit)
    if as_json:
        click.echo(render.as_json([render.audit_dict(record) for record in records]))
    elif records:
        click.echo(render.audit_text(records))


@jws.command()
@click.argument("user")
@click.option(
    "--addr",
    envvar="JWS_ADDR",
    help=f"jwsd's HOST:PORT to remember (default: $JWS_ADDR, else keep, else {DEFAULT_ADDR}).",
)
@click.option(
    "--tls-dir",
    envvar="JWS_TLS_DIR",
    type=click.Path(file_okay=False, resolve_path=True),
    help=f"The TLS dir to remember, as an absolute path (default: $JWS_TLS_DIR, else keep, else {DEFAULT_TLS_DIR}).",
)
async def login(user: str, addr: str | None, tls_dir: str | None) -> None:
    """Make USER (and --addr, --tls-dir) the default for later commands.

    Checks that USER's certificate and key are in the TLS dir and load, then writes
    them to the config file, the TLS dir as an absolute path (so a command from
    another directory, or a new shell, finds it); -u, --addr and --tls-dir still
    override. Whether jwsd knows USER is up to jwsd: the next command says.

    \b
    Examples:
      jws login alex
      jws login betty --addr jobs.example.org:50051 --tls-dir ~/jobworker-certs
    """
    click.echo(shown(Target.remember(user, addr, tls_dir)), err=True)


jws.add_command(watch.events)
jws.add_command(watch.wait)


def _say(line: str) -> None:
    """One line on stderr for a person, "jws: " first; what it quotes (a command, a
    reason, an id) may be the user's own, so it is `shown` (escaped)."""
    click.echo(f"jws: {shown(line)}", err=True)


def _fail(message: str, code: int) -> NoReturn:
    print(f"jws: {shown(message)}", file=sys.stderr)
    raise SystemExit(code)


def cli(args: list[str] | None = None) -> None:
    """The `jws` console script: run on trio; turn failures into one line and an exit code."""
    import trio

    try:
        code = trio.run(_main, args)
    except Failure as exc:
        _fail(str(exc), exc.code)
    except click.ClickException as exc:
        _fail(one_line(exc), exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # `jws output | head`: the reader left; that is not an error of ours.
        # Nothing more can be flushed to it: point stdout at /dev/null for the exit.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        raise SystemExit(0) from None
    raise SystemExit(code if isinstance(code, int) else 0)


async def _main(args: list[str] | None) -> Any:
    return await jws.main(args=args, prog_name="jws", standalone_mode=False)

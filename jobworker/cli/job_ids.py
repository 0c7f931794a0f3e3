"""Which jobs the ids a person typed name, as `docker` resolves container ids: a whole
id in any case (`7A31E0C4-...` is `7a31e0c4-...`), the name of one of the caller's own
jobs (`jws status nightly`), or a unique prefix of one of the jobs the caller can list
(`jws status 7a31`). A name shaped like a prefix too (`cafe`) is the name first, as
`docker` takes a container's name before an id prefix.

A prefix is resolved on the client, from the caller's own listing (an admin's: every
job): jwsd's API keeps taking whole ids only, so nothing new is asked of it, and a
prefix can name no job the caller could not already see. The listing is fetched once
per command, however many prefixes it was given. What is neither a whole id nor a
possible prefix goes to jwsd as typed: a name (jwsd finds it among the caller's own
jobs, "no job named ..." else), or something whose refusal ("no job with id ...")
echoes it escaped."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import asyncclick as click

from jobworker.echo import quoted
from jobworker.errors import JobNotFoundError, JobWorkerError
from jobworker.model import JOB_ID
from jobworker.naming import is_name

if TYPE_CHECKING:
    from jobworker.client import JobWorkerClient
    from jobworker.model import JobStatus

#: What can begin a job id: hex digits and dashes, shorter than a whole id.
_PREFIX = re.compile(r"[0-9a-f-]{1,35}")
#: How many candidates an ambiguous prefix's error names.
_NAMED = 5


class AmbiguousJobIdError(JobWorkerError):
    """A prefix that begins the ids of more than one of the caller's jobs."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        named = ", ".join(candidates[:_NAMED])
        more = f" and {len(candidates) - _NAMED} more" if len(candidates) > _NAMED else ""
        super().__init__(
            f"{quoted(prefix)} begins the ids of {len(candidates)} jobs: {named}{more}; "
            "give more of the id"
        )


class JobIds:
    """Resolves typed ids on one connection; see the module docstring."""

    def __init__(self, client: JobWorkerClient, user: str) -> None:
        """user: the caller, whose own jobs alone a name finds (an admin's listing
        holds other users' jobs, whose names are theirs)."""
        import trio  # here, not at import: `jws --help` does not need it

        self._client = client
        self._user = user
        self._listed: list[JobStatus] | None = None
        self._listing = trio.Lock()  # `jws stop A B` resolves both at once: one listing

    async def resolve(self, typed: str) -> str:
        """The whole id `typed` names, or `typed` itself for jwsd to resolve (a name
        that cannot be a prefix). Raises JobNotFoundError for a prefix of no job's
        id, AmbiguousJobIdError for one of several."""
        lowered = typed.lower()
        if JOB_ID.fullmatch(lowered):
            return lowered
        if not _PREFIX.fullmatch(lowered):
            return typed
        async with self._listing:
            if self._listed is None:
                self._listed = await self._client.list()
            listed = self._listed
        if is_name(typed):
            named = [job.job_id for job in listed if job.name == typed and job.owner == self._user]
            if named:  # names are unique among a user's jobs: one
                return named[0]
        candidates = [job.job_id for job in listed if job.job_id.startswith(lowered)]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise JobNotFoundError(typed)
        raise AmbiguousJobIdError(typed, candidates)


#: How long completing an id may wait for jwsd before offering nothing.
COMPLETION_TIMEOUT = 2.0


def complete_job_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of an id argument: the caller's job ids (an admin's: every
    job's) that begin with what is typed so far, from a listing as the command's own
    flags and environment choose jwsd and the user. Offers nothing when jwsd cannot
    be asked within COMPLETION_TIMEOUT, or the user is unknown.

    asyncclick calls it synchronously from inside `jws`'s own trio run, so the
    listing is fetched by a trio run of its own on a thread of its own, joined here."""
    import threading

    import trio

    from jobworker.cli.target import Target

    found: list[str] = []

    async def listing() -> None:
        params = ctx.params
        target = Target.chosen(params.get("user"), params.get("addr"), params.get("tls_dir"))
        with trio.move_on_after(COMPLETION_TIMEOUT):
            async with target.connect(connect_timeout=COMPLETION_TIMEOUT) as client:
                found.extend([job.job_id async for job in client.jobs()])

    def fetch() -> None:
        try:
            trio.run(listing)
        except Exception:  # noqa: BLE001 - a completion offers nothing rather than a traceback
            found.clear()

    worker = threading.Thread(target=fetch, name="jws-complete", daemon=True)
    worker.start()
    worker.join(COMPLETION_TIMEOUT + 1)
    typed = incomplete.lower()
    return [job_id for job_id in list(found) if job_id.startswith(typed)]

"""The errors jobworker raises, one base class and a subclass per kind of failure.

Every error a caller can cause or observe is a `JobWorkerError`. The RPC layer
maps each subclass to one gRPC status code in exactly one place
(`jobworker.transport.status`); nothing below the RPC boundary knows about gRPC.
The client maps each status code back to a kind in one place too
(`jobworker.client.errors`), so that its callers catch these classes, not
`purerpc.RpcFailedError`; the last four kinds below are the client's own.
Messages are written for a person: lower case, what went wrong and what to do;
a value that came from a request appears in them only through
`jobworker.echo.quoted` (short and escaped).

`sole_exception` is the one way jobworker unwraps the exception groups trio's
nurseries raise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Self

from jobworker.echo import quoted


class JobWorkerError(Exception):
    """Base class of every error jobworker reports to its callers."""

    @classmethod
    def reported(cls, message: str) -> Self:
        """An error of this kind with `message` as is: how a client shows one that jwsd
        reported (the kind's own `__init__`, which words a message, is not run)."""
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        return error


class InvalidRequestError(JobWorkerError):
    """The request is malformed or asks for something impossible; nothing changed."""


class NameInUseError(InvalidRequestError):
    """A start names its job as one of the caller's jobs already is (INVALID_ARGUMENT,
    as any bad request; its own kind so that the start's metrics tell it apart from
    refused limits)."""


class JobNotFoundError(JobWorkerError):
    """No job has this id (or the id is not a job id at all), or none of the caller's
    jobs this name (`by_name`)."""

    #: The id (or name) asked for; "" when a client learnt of the error from jwsd's message.
    job_id: str = ""

    def __init__(self, job_id: str, *, by_name: bool = False) -> None:
        if by_name:
            super().__init__(f"no job of yours is named {quoted(job_id)}")
        else:
            super().__init__(f"no job with id {quoted(job_id)}")
        self.job_id = job_id


class AccessDeniedError(JobWorkerError):
    """The job exists but belongs to somebody else.

    The message is deliberately a bare "access denied": it must not
    say whose job it is or anything else about it.
    """

    def __init__(self) -> None:
        super().__init__("access denied")


class NotAllowedError(AccessDeniedError):
    """The server's policy does not let anyone ask for this (a network mode); the
    message says what is allowed. PERMISSION_DENIED, as any AccessDeniedError."""

    def __init__(self, message: str) -> None:
        JobWorkerError.__init__(self, message)


class UnauthenticatedError(JobWorkerError):
    """The caller presented no identity, or one the server's policy does not know."""


class StartFailedError(JobWorkerError):
    """The command could not be started (missing program, not executable, sandbox refused)."""


class BadStateError(JobWorkerError):
    """The operation is not possible in the job's or the service's current state."""


class ShuttingDownError(BadStateError):
    """The tracker is shutting down and accepts no new work."""

    def __init__(self) -> None:
        super().__init__("jobworker is shutting down; try again once it is back")


class QuotaExceededError(JobWorkerError):
    """The caller already uses all of a per-user quota (running jobs); nothing changed."""


class SetupError(JobWorkerError):
    """The host or the configuration is not fit to run: not root, no usable cgroups
    or bubblewrap, a data dir that is not writable, TLS files or a users file that
    are missing or bad, an address that cannot be listened on. Mostly raised while
    jwsd (or a client) starts; a cgroup file the kernel refuses to read or write
    while a job runs is one too. The message names what is wrong and what to do."""


class UnavailableError(JobWorkerError):
    """A client's call found no jwsd: the connection was lost during it (jwsd stopped,
    crashed, or is shutting down), or, as a subclass says, never made."""


class CannotReachError(UnavailableError):
    """A client could not connect to jwsd: refused, no answer in time, or the TLS
    handshake failed. The message names the address and why."""


class GaveUpReconnectingError(UnavailableError):
    """jwsd went away while a client followed a job and did not come back within the
    client's bound (`jws --reconnect-timeout`)."""


class RemoteError(JobWorkerError):
    """jwsd (or the connection) ended a call with a status no other kind stands for:
    an internal error, a call cancelled or past its deadline, a message too large."""


def sole_exception(
    exc: BaseException, *, ignore: type[BaseException] | tuple[type[BaseException], ...] = ()
) -> BaseException | None:
    """The one exception that `exc` stands for, or None when it stands for several.

    exc: an exception, or an exception group (nested to any depth), as a trio
        nursery raises it.
    ignore: kinds of leaf not to count next to others (e.g. `trio.Cancelled`, which
        a nursery's other tasks raise when one of them fails); when they are all
        there is and there is one of them, it is the answer.

    An exception that is not a group is its own answer.
    """
    leaves = list(_leaves(exc))
    if len(leaves) == 1:
        return leaves[0]
    kept = [leaf for leaf in leaves if not isinstance(leaf, ignore)]
    return kept[0] if len(kept) == 1 else None


@contextlib.contextmanager
def sole_error(
    ignore: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Re-raise the exception group of a nursery inside the block as the one error it
    stands for (`sole_exception`: others were cancelled because of it), so that callers
    see that error; a group of several real errors goes out as it is. Wrap the nursery:
    `with sole_error(ignore=trio.Cancelled): async with trio.open_nursery() as n: ...`."""
    try:
        yield
    except BaseExceptionGroup as group:
        single = sole_exception(group, ignore=ignore)
        if single is None:
            raise
        context = single.__context__
        try:
            raise single
        finally:
            # `raise` inside the except block would chain the group as context: undo that.
            single.__context__ = context


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]

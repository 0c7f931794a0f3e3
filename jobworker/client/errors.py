"""The one place where the gRPC status a call ended with becomes a jobworker error.

jwsd maps each `jobworker.errors` kind to a status code
(`jobworker.transport.status`); this is the way back, so that the client's
callers catch `JobWorkerError` kinds and never see `purerpc.RpcFailedError`
(as httpcore's `map_exceptions` does for the errors of its backends):

| code                | kind                                               |
| ------------------- | -------------------------------------------------- |
| INVALID_ARGUMENT    | InvalidRequestError                                |
| NOT_FOUND           | JobNotFoundError (also: a health service unknown)  |
| PERMISSION_DENIED   | AccessDeniedError                                  |
| UNAUTHENTICATED     | UnauthenticatedError                               |
| FAILED_PRECONDITION | BadStateError (also: a start that failed)          |
| RESOURCE_EXHAUSTED  | QuotaExceededError                                 |
| UNAVAILABLE         | UnavailableError; CannotReachError while connecting |
| any other           | RemoteError                                        |

The error's message is the status message as jwsd (or the channel) wrote it,
for a person (a status without one: its code's name, in lower case); the
`RpcFailedError` stays as its `__cause__`. `GaveUpReconnectingError` is raised
by `jobworker.client.reconnect`, not from a status.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import purerpc

from jobworker.errors import (
    AccessDeniedError,
    BadStateError,
    CannotReachError,
    InvalidRequestError,
    JobNotFoundError,
    JobWorkerError,
    QuotaExceededError,
    RemoteError,
    UnauthenticatedError,
    UnavailableError,
    sole_exception,
)

_KINDS: dict[purerpc.StatusCode, type[JobWorkerError]] = {
    purerpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    purerpc.StatusCode.NOT_FOUND: JobNotFoundError,
    purerpc.StatusCode.PERMISSION_DENIED: AccessDeniedError,
    purerpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    purerpc.StatusCode.FAILED_PRECONDITION: BadStateError,
    purerpc.StatusCode.RESOURCE_EXHAUSTED: QuotaExceededError,
    purerpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def error_for(status: purerpc.Status, *, connecting: bool = False) -> JobWorkerError:
    """The error that stands for a call ended with `status` (see the module's table).

    connecting: the status came while the connection was being made (UNAVAILABLE
    then means it never was: `CannotReachError`)."""
    code = status.status_code
    kind = _KINDS.get(code, RemoteError)
    if connecting and kind is UnavailableError:
        kind = CannotReachError
    return kind.reported(status.status_message or code.name.lower())


@contextlib.contextmanager
def mapped_errors(*, connecting: bool = False) -> Iterator[None]:
    """Raise `error_for` the status of an `RpcFailedError` that leaves the block (alone,
    or as the one exception of a group), from it; anything else passes as it is."""
    try:
        yield
    except BaseException as exc:
        failed = sole_exception(exc)
        if not isinstance(failed, purerpc.RpcFailedError):
            raise
        raise error_for(failed.status, connecting=connecting) from failed

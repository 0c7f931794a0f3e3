"""The one place where an exception becomes a gRPC status.

| exception                                   | code                |
| ------------------------------------------- | ------------------- |
| InvalidRequestError                         | INVALID_ARGUMENT    |
| a request that does not decode (DecodeError) | INVALID_ARGUMENT    |
| StartFailedError                            | FAILED_PRECONDITION |
| JobNotFoundError                            | NOT_FOUND           |
| AccessDeniedError                           | PERMISSION_DENIED   |
| UnauthenticatedError                        | UNAUTHENTICATED     |
| ShuttingDownError                           | UNAVAILABLE         |
| BadStateError                               | FAILED_PRECONDITION |
| QuotaExceededError                          | RESOURCE_EXHAUSTED  |
| purerpc.RpcFailedError                      | its own             |
| any other JobWorkerError, or anything else  | INTERNAL "internal error" |

An exception group (from a nursery) counts as the one exception in it
(`jobworker.errors.sole_exception`); a group of several is unexpected.

The message of a known error goes to the client as is (they are written for
people and give nothing away), cut to `jobworker.echo.MESSAGE_LIMIT` characters.
An undecodable request is one WARNING line in the log; an unexpected exception is
logged with its traceback and the client only learns "internal error" (never the
repr, which may hold internals).
"""

from __future__ import annotations

import logging

import purerpc
from google.protobuf.message import DecodeError

from jobworker.echo import bounded
from jobworker.errors import (
    AccessDeniedError,
    BadStateError,
    InvalidRequestError,
    JobNotFoundError,
    JobWorkerError,
    QuotaExceededError,
    ShuttingDownError,
    StartFailedError,
    UnauthenticatedError,
    sole_exception,
)

log = logging.getLogger(__name__)

INTERNAL_ERROR_MESSAGE = "internal error"

# Order matters: subclasses before their bases.
_CODES: list[tuple[type[JobWorkerError], purerpc.StatusCode]] = [
    (InvalidRequestError, purerpc.StatusCode.INVALID_ARGUMENT),
    (StartFailedError, purerpc.StatusCode.FAILED_PRECONDITION),
    (JobNotFoundError, purerpc.StatusCode.NOT_FOUND),
    (AccessDeniedError, purerpc.StatusCode.PERMISSION_DENIED),
    (UnauthenticatedError, purerpc.StatusCode.UNAUTHENTICATED),
    (ShuttingDownError, purerpc.StatusCode.UNAVAILABLE),
    (BadStateError, purerpc.StatusCode.FAILED_PRECONDITION),
    (QuotaExceededError, purerpc.StatusCode.RESOURCE_EXHAUSTED),
]

_UNDECODABLE = (
    "the request is not a valid protobuf message for its method (bad encoding or "
    "invalid utf-8 in a string); check that the client uses jobworker's api"
)


def status_for(exc: BaseException, method: str = "") -> purerpc.Status:
    """The status to end a call of `method` (for the log) with, when it failed with `exc`.

    See the module's table. Logs an unexpected exception with its traceback.
    """
    one = sole_exception(exc)
    if isinstance(one, purerpc.RpcFailedError):
        status = one.status
        return purerpc.Status(status.status_code, bounded(status.status_message or ""))
    for kind, code in _CODES:
        if isinstance(one, kind):
            return purerpc.Status(code, bounded(str(one)))
    if isinstance(one, DecodeError):
        log.warning("rpc %s refused: its request does not decode", method or "-")
        return purerpc.Status(purerpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE)
    log.error("rpc %s failed: %s", method or "-", INTERNAL_ERROR_MESSAGE, exc_info=exc)
    return purerpc.Status(purerpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE)


def to_rpc_error(exc: BaseException, method: str = "") -> purerpc.RpcFailedError:
    """`status_for(exc, method)` as the exception a method raises to end its call with it."""
    return purerpc.RpcFailedError(status_for(exc, method))


def code_name(exc: BaseException | None) -> str:
    """The status code name a finished call ends with, for the access log: "OK" for
    None, the code of an RpcFailedError, "CANCELLED" for anything else (the call
    was cancelled: its client went away, or shutdown)."""
    if exc is None:
        return "OK"
    if isinstance(exc, purerpc.RpcFailedError):
        return str(exc.status.status_code.name)
    return "CANCELLED"

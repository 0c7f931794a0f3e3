"""The one place where jobworker's errors become gRPC status codes.

| error                  | code                |
| ---------------------- | ------------------- |
| InvalidRequestError    | INVALID_ARGUMENT    |
| StartFailedError       | FAILED_PRECONDITION |
| JobNotFoundError       | NOT_FOUND           |
| AccessDeniedError      | PERMISSION_DENIED   |
| UnauthenticatedError   | UNAUTHENTICATED     |
| ShuttingDownError      | UNAVAILABLE         |
| BadStateError          | FAILED_PRECONDITION |
| any other JobWorkerError, or anything else | INTERNAL "internal error" |

The message of a known error goes to the client as is (they are written for
people and give nothing away); an unknown exception is logged here with its
traceback and the client only learns "internal error".
"""

from __future__ import annotations

import logging

import purerpc

from jobworker.errors import (
    AccessDeniedError,
    BadStateError,
    InvalidRequestError,
    JobNotFoundError,
    JobWorkerError,
    ShuttingDownError,
    StartFailedError,
    UnauthenticatedError,
)

log = logging.getLogger(__name__)

# Order matters: subclasses before their bases.
_CODES: list[tuple[type[JobWorkerError], purerpc.StatusCode]] = [
    (InvalidRequestError, purerpc.StatusCode.INVALID_ARGUMENT),
    (StartFailedError, purerpc.StatusCode.FAILED_PRECONDITION),
    (JobNotFoundError, purerpc.StatusCode.NOT_FOUND),
    (AccessDeniedError, purerpc.StatusCode.PERMISSION_DENIED),
    (UnauthenticatedError, purerpc.StatusCode.UNAUTHENTICATED),
    (ShuttingDownError, purerpc.StatusCode.UNAVAILABLE),
    (BadStateError, purerpc.StatusCode.FAILED_PRECONDITION),
]


def to_rpc_error(exc: BaseException) -> purerpc.RpcFailedError:
    """The RpcFailedError to send for `exc` (see the module's table)."""
    if isinstance(exc, purerpc.RpcFailedError):
        return exc
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return purerpc.RpcFailedError(purerpc.Status(code, str(exc)))
    log.error("internal error", exc_info=exc)
    return purerpc.RpcFailedError(purerpc.Status(purerpc.StatusCode.INTERNAL, "internal error"))


def code_name(exc: BaseException | None) -> str:
    """The status code name a finished call ends with, for the access log."""
    if exc is None:
        return "OK"
    if isinstance(exc, purerpc.RpcFailedError):
        return str(exc.status.status_code.name)
    return "CANCELLED"

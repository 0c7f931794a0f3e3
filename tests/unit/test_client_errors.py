"""The client's one map from a gRPC status to a jobworker error, and jws's one map
from those errors to an exit code and a line: by type, never by message prefix."""

from __future__ import annotations

from pathlib import Path

import purerpc
import pytest
import trio

from jobworker.cli.failure import EXIT_SERVER_ERROR, EXIT_UNREACHABLE, EXIT_USAGE
from jobworker.cli.target import Target, failure_for
from jobworker.client import Credentials, error_for
from jobworker.client.errors import mapped_errors
from jobworker.errors import (
    AccessDeniedError,
    BadStateError,
    CannotReachError,
    GaveUpReconnectingError,
    InvalidRequestError,
    JobNotFoundError,
    JobWorkerError,
    QuotaExceededError,
    RemoteError,
    SetupError,
    UnauthenticatedError,
    UnavailableError,
)
from jobworker.transport import status_for

Code = purerpc.StatusCode


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (Code.INVALID_ARGUMENT, InvalidRequestError),
        (Code.NOT_FOUND, JobNotFoundError),
        (Code.PERMISSION_DENIED, AccessDeniedError),
        (Code.UNAUTHENTICATED, UnauthenticatedError),
        (Code.FAILED_PRECONDITION, BadStateError),
        (Code.RESOURCE_EXHAUSTED, QuotaExceededError),
        (Code.UNAVAILABLE, UnavailableError),
        (Code.INTERNAL, RemoteError),
        (Code.CANCELLED, RemoteError),
        (Code.DEADLINE_EXCEEDED, RemoteError),
    ],
)
def test_each_status_code_becomes_one_kind_with_the_servers_message_as_is(
    code: purerpc.StatusCode, kind: type[JobWorkerError]
) -> None:
    error = error_for(purerpc.Status(code, "what jwsd said"))
    assert type(error) is kind
    assert str(error) == "what jwsd said"


def test_a_status_without_a_message_is_named_by_its_code() -> None:
    assert str(error_for(purerpc.Status(Code.INTERNAL, ""))) == "internal"


def test_unavailable_while_connecting_is_cannot_reach_and_later_a_lost_connection() -> None:
    status = purerpc.Status(Code.UNAVAILABLE, "cannot reach 127.0.0.1:1: connection refused")
    assert type(error_for(status, connecting=True)) is CannotReachError
    assert type(error_for(purerpc.Status(Code.NOT_FOUND, "x"), connecting=True)) is JobNotFoundError


@pytest.mark.parametrize(
    "server_error",
    [
        InvalidRequestError("bad"),
        JobNotFoundError("abc"),
        AccessDeniedError(),
        UnauthenticatedError("who"),
        BadStateError("still running"),
        QuotaExceededError("too many"),
    ],
)
def test_a_kind_jwsd_raises_comes_back_to_the_client_as_the_same_kind(
    server_error: JobWorkerError,
) -> None:
    """The way back (this map) undoes the way out (`transport.status`)."""
    back = error_for(status_for(server_error))
    assert isinstance(back, type(server_error))
    assert str(back) == str(server_error)


def test_mapped_errors_keeps_the_rpc_error_as_the_cause_and_unwraps_a_group_of_one() -> None:
    failed = purerpc.NotFoundError("no job with id 'x'")
    with pytest.raises(JobNotFoundError) as info, mapped_errors():
        raise ExceptionGroup("nursery", [failed])
    assert info.value.__cause__ is failed
    with pytest.raises(KeyError), mapped_errors():  # anything else passes as it is
        raise KeyError("x")
    several = ExceptionGroup("nursery", [failed, purerpc.NotFoundError("y")])
    with pytest.raises(ExceptionGroup), mapped_errors():
        raise several
    with pytest.raises(trio.Cancelled), mapped_errors():
        raise trio.Cancelled._create()


TARGET = Target("127.0.0.1", 50051, Credentials(Path("tls"), "alex"))


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (SetupError("no credentials for user 'x'"), EXIT_USAGE, "no credentials for user 'x'"),
        (
            CannotReachError.reported("cannot reach 127.0.0.1:1: connection refused"),
            EXIT_UNREACHABLE,
            "cannot reach 127.0.0.1:1: connection refused",
        ),
        (
            GaveUpReconnectingError("gave up reconnecting to jwsd after 2 s: why"),
            EXIT_UNREACHABLE,
            "gave up reconnecting to jwsd after 2 s: why",
        ),
        (
            UnavailableError.reported("jobworker is shutting down; try again once it is back"),
            EXIT_UNREACHABLE,
            "lost jwsd at 127.0.0.1:50051: jobworker is shutting down; try again once it is back",
        ),
        # A lost connection whose message happens to start like the others is still lost.
        (
            UnavailableError.reported("cannot reach: a message from jwsd"),
            EXIT_UNREACHABLE,
            "lost jwsd at 127.0.0.1:50051: cannot reach: a message from jwsd",
        ),
        (AccessDeniedError(), EXIT_SERVER_ERROR, "access denied"),
        (JobNotFoundError.reported("no job with id 'x'"), EXIT_SERVER_ERROR, "no job with id 'x'"),
        (RemoteError.reported("internal error"), EXIT_SERVER_ERROR, "internal error"),
    ],
)
def test_jws_picks_the_exit_code_and_line_by_the_errors_type(
    error: JobWorkerError, code: int, line: str
) -> None:
    failure = failure_for(error, TARGET)
    assert (failure.code, str(failure)) == (code, line)

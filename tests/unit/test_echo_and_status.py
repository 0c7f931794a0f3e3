"""Values from requests are echoed short and escaped; exception groups unwrap one way;
every exception becomes a status in one place, with a bounded message."""

from __future__ import annotations

import logging

import purerpc
import pytest
import trio
from google.protobuf.message import DecodeError

from jobworker.echo import ECHO_LIMIT, MESSAGE_LIMIT, bounded, log_field, quoted
from jobworker.errors import InvalidRequestError, JobNotFoundError, sole_exception
from jobworker.transport.status import INTERNAL_ERROR_MESSAGE, code_name, status_for


def test_quoted_is_a_short_escaped_literal() -> None:
    assert quoted("alex") == "'alex'"
    assert quoted("a\nb\x1b[2J\u2028") == "'a\\nb\\x1b[2J\\u2028'"
    long = quoted("x" * (1 << 20))
    assert long == repr("x" * ECHO_LIMIT) + "…"
    assert quoted("\x00" * (1 << 20)).count("\\x00") == ECHO_LIMIT


def test_log_fields_are_plain_only_when_safe() -> None:
    job_id = "4cca9dfe-5693-4e63-b15d-701d36c7de92"
    assert log_field(job_id) == job_id
    assert log_field("alex") == "alex"
    assert log_field("-") == "-"
    assert log_field("x code=OK\nrpc user=admin") == "'x code=OK\\nrpc user=admin'"
    assert len(log_field("y" * (1 << 20))) < 2 * ECHO_LIMIT


def test_bounded_cuts_and_escapes_a_message() -> None:
    assert bounded("no job") == "no job"
    assert len(bounded("z" * (1 << 20))) == MESSAGE_LIMIT
    assert bounded("a\nb") == "a\\nb"


def test_job_not_found_echoes_a_short_prefix_of_the_id() -> None:
    message = str(JobNotFoundError("x" * (1 << 20)))
    assert len(message) < 100 and message.endswith("…")


def test_sole_exception_unwraps_nested_groups_of_one() -> None:
    error = ValueError("one")
    assert sole_exception(error) is error
    assert sole_exception(ExceptionGroup("g", [ExceptionGroup("h", [error])])) is error
    several = ExceptionGroup("g", [error, KeyError("two")])
    assert sole_exception(several) is None
    cancelled = BaseExceptionGroup("g", [error, trio.Cancelled._create()])
    assert sole_exception(cancelled) is None
    assert sole_exception(cancelled, ignore=trio.Cancelled) is error


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidRequestError("bad"), purerpc.StatusCode.INVALID_ARGUMENT),
        (ExceptionGroup("g", [JobNotFoundError("x")]), purerpc.StatusCode.NOT_FOUND),
        (purerpc.NotFoundError("gone"), purerpc.StatusCode.NOT_FOUND),
        (
            ExceptionGroup("g", [ExceptionGroup("h", [purerpc.AbortedError("no")])]),
            purerpc.StatusCode.ABORTED,
        ),
    ],
)
def test_known_errors_keep_their_code_and_message(exc: Exception, code: purerpc.StatusCode) -> None:
    status = status_for(exc)
    assert status.status_code is code
    assert status.status_message == str(sole_exception(exc)) or isinstance(
        sole_exception(exc), purerpc.RpcFailedError
    )


def test_a_status_message_is_bounded_whatever_raised_it() -> None:
    for exc in [
        InvalidRequestError("x" * (1 << 20)),
        purerpc.InvalidArgumentError("y" * (1 << 20)),
    ]:
        assert len(status_for(exc).status_message) == MESSAGE_LIMIT


def test_an_undecodable_request_is_invalid_argument_in_one_line_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    status = status_for(DecodeError("Error parsing message"), "svc/Method")
    assert status.status_code is purerpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in status.status_message
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None


def test_an_unexpected_exception_or_group_is_internal_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for exc in [KeyError("/etc/secret"), ExceptionGroup("g", [KeyError("a"), KeyError("b")])]:
        caplog.clear()
        status = status_for(exc, "svc/Method")
        assert status.status_code is purerpc.StatusCode.INTERNAL
        assert status.status_message == INTERNAL_ERROR_MESSAGE
        assert caplog.records[0].exc_info is not None
    assert code_name(None) == "OK"
    assert code_name(purerpc.NotFoundError("x")) == "NOT_FOUND"
    assert code_name(trio.Cancelled._create()) == "CANCELLED"

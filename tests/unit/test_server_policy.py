"""The users file, and the one mapping from errors to gRPC status codes."""

from __future__ import annotations

from pathlib import Path

import purerpc
import pytest

from jobworker.errors import (
    AccessDeniedError,
    BadStateError,
    InvalidRequestError,
    JobNotFoundError,
    SetupError,
    ShuttingDownError,
    StartFailedError,
    UnauthenticatedError,
)
from jobworker.server.policy import Caller, Role, UserPolicy
from jobworker.transport.status import code_name, to_rpc_error


def test_without_a_users_file_every_certificate_is_a_plain_user() -> None:
    policy = UserPolicy.load(None)
    assert policy.authenticate("anyone") == Caller("anyone", Role.USER)
    with pytest.raises(UnauthenticatedError, match="exactly one common name"):
        policy.authenticate(None)
    for odd in ["alex\nbetty", "alex betty", "x" * 65, "-alex"]:
        with pytest.raises(UnauthenticatedError, match="no identity"):
            policy.authenticate(odd)


def test_a_users_file_names_who_may_call_and_who_is_admin(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[users]\nalex = "user"\nroot = "admin"\n')
    policy = UserPolicy.load(users)
    assert policy.authenticate("alex") == Caller("alex", Role.USER)
    assert policy.authenticate("root").is_admin
    with pytest.raises(UnauthenticatedError, match="unknown user 'mallory'"):
        policy.authenticate("mallory")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml [", "not valid TOML"),
        ('alex = "user"\n', r"needs a \[users\] table"),
        ('[users]\nalex = "root"\n', 'use "user" or "admin"'),
        ('[users]\n"Bad Name" = "user"\n', "invalid user"),
        ('[users]\n"alex\\nbetty" = "user"\n', r"invalid user 'alex\\nbetty': a user name is"),
    ],
)
def test_a_broken_users_file_is_a_setup_error_naming_it(
    tmp_path: Path, text: str, message: str
) -> None:
    users = tmp_path / "users.toml"
    users.write_text(text)
    with pytest.raises(SetupError, match=message):
        UserPolicy.load(users)
    with pytest.raises(SetupError, match="cannot read the users file"):
        UserPolicy.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequestError("bad"), purerpc.StatusCode.INVALID_ARGUMENT),
        (StartFailedError("no such program"), purerpc.StatusCode.FAILED_PRECONDITION),
        (JobNotFoundError("x"), purerpc.StatusCode.NOT_FOUND),
        (AccessDeniedError(), purerpc.StatusCode.PERMISSION_DENIED),
        (UnauthenticatedError("who"), purerpc.StatusCode.UNAUTHENTICATED),
        (ShuttingDownError(), purerpc.StatusCode.UNAVAILABLE),
        (BadStateError("later"), purerpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_each_error_has_one_status_code_and_keeps_its_message(
    error: Exception, code: purerpc.StatusCode
) -> None:
    mapped = to_rpc_error(error)
    assert mapped.status.status_code is code
    assert mapped.status.status_message == str(error)
    assert code_name(mapped) == code.name


def test_an_unexpected_exception_is_internal_and_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mapped = to_rpc_error(KeyError("/etc/secret path"))
    assert mapped.status.status_code is purerpc.StatusCode.INTERNAL
    assert mapped.status.status_message == "internal error"
    assert "secret" in caplog.text  # the daemon's log has it; the client does not
    assert code_name(None) == "OK"

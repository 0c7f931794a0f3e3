"""Requests and identities as an attacker with a valid certificate would craft them,
through a real jwsd on loopback with real certificates.

Each request is refused before any work with INVALID_ARGUMENT (or NOT_FOUND for an
id that cannot be a job's), quickly, with a short message and one short access-log
line; other users' calls made at the same time are not slowed. Certificates whose
Common Name is ambiguous or not a user name are no identity (UNAUTHENTICATED).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import purerpc
import pytest
import trio
from cryptography import x509
from cryptography.x509.oid import NameOID

from jobworker.client import JobWorkerClient
from jobworker.errors import JobWorkerError
from jobworker.transport import open_channel
from jobworker.v1 import jobworker_pb2 as pb
from tests.integration.test_service import rpc_status
from tests.support.certs import TestPKI, issue_with_subject
from tests.support.daemon import Daemon, DaemonFiles

pytestmark = [pytest.mark.root, pytest.mark.hierarchy_independent]

Code = purerpc.StatusCode
MIB = 1 << 20
SERVICE = "jobworker.v1.JobWorkerService"
#: Longest status message or access-log line a hostile request may cause.
SHORT = 512
#: The longest an audit record's JSON line may be (every field of it is bounded).
AUDIT_LINE = 2048


@pytest.fixture
async def open_daemon(tmp_path: Path, pki: TestPKI) -> AsyncIterator[Daemon]:
    """A jwsd without a users file: every certificate the client CA signed is a user."""
    async with DaemonFiles.write(tmp_path, pki, users=None).serving() as daemon:
        yield daemon


class RawRequest:
    """A request message that is exactly `data` on the wire (purerpc calls SerializeToString)."""

    DESCRIPTOR = pb.StartJobRequest.DESCRIPTOR  # purerpc reads the type's name from it

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 (protobuf's name)
        return self.data


def raw_stub(channel: Any, method: str, response_type: Any) -> Any:
    signature = purerpc.RPCSignature(purerpc.Cardinality.UNARY_UNARY, RawRequest, response_type)
    return purerpc.Client(SERVICE, channel).get_method_stub(method, signature)


async def expect_refused(call: Awaitable[object], *codes: purerpc.StatusCode) -> str:
    with pytest.raises((purerpc.RpcFailedError, JobWorkerError)) as info:
        await call
    status = rpc_status(info.value)
    assert status.status_code in codes, status
    assert len(status.status_message) < SHORT, len(status.status_message)
    return str(status.status_message)


def _status(job_id: str) -> tuple[str, bytes]:
    return "GetJobStatus", pb.GetJobStatusRequest(job_id=job_id).SerializeToString()


def _start(**fields: Any) -> tuple[str, bytes]:
    return "StartJob", pb.StartJobRequest(**fields).SerializeToString()


#: field -> (method, request bytes) with a 1 MiB value in that field.
HUGE: dict[str, Callable[[], tuple[str, bytes]]] = {
    "job id": lambda: _status("x" * MIB),
    "stop job id": lambda: (
        "StopJob",
        pb.StopJobRequest(job_id="\n" * MIB).SerializeToString(),
    ),
    "argv[0]": lambda: _start(args=["x" * MIB]),
    "cmd": lambda: _start(cmd="x" * MIB),
    "workdir": lambda: _start(args=["true"], workdir="/" + "x" * MIB),
    "env key": lambda: _start(args=["true"], env={"K" * MIB: "v"}),
}


@pytest.mark.parametrize("field", list(HUGE))
async def test_a_1_mib_field_is_refused_at_once_and_does_not_slow_anyone_else(
    daemon: Daemon, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    method, data = HUGE[field]()
    betty_took: list[float] = []

    async def betty_lists(client: JobWorkerClient) -> None:
        started = time.monotonic()
        assert await client.list() == []
        betty_took.append(time.monotonic() - started)

    context = daemon.credentials("alex").ssl_context()
    async with (
        open_channel(
            "127.0.0.1",
            daemon.port,
            context,
            server_hostname="localhost",
            max_message_length=4 * MIB,
        ) as channel,
        daemon.connect("betty") as betty,
    ):
        await betty.list()  # connected and warm
        stub = raw_stub(channel, method, pb.StartJobResponse)
        with trio.fail_after(5):  # not the 100 s it took
            async with trio.open_nursery() as nursery:
                started = time.monotonic()
                nursery.start_soon(betty_lists, betty)
                await expect_refused(stub(RawRequest(data)), Code.INVALID_ARGUMENT, Code.NOT_FOUND)
                took = time.monotonic() - started
    assert took < 1.0, f"the refusal took {took:.2f} s"
    assert betty_took and betty_took[0] < 1.0, betty_took
    access = [r.getMessage() for r in caplog.records if r.name == "jobworker.access"]
    assert any(f"method={method}" in line for line in access), access
    assert all(len(line) < SHORT and "\n" not in line for line in access), access


async def test_a_malformed_job_id_echoes_only_a_short_escaped_prefix(daemon: Daemon) -> None:
    async with daemon.connect("alex") as alex:
        message = await expect_refused(
            alex.status("ab\x1b[2J\ncd" + "x" * 1000), Code.NOT_FOUND, Code.INVALID_ARGUMENT
        )
    assert "\x1b" not in message and "\n" not in message
    assert "'ab\\x1b[2J\\ncd" in message and "…" in message


#: case -> (method, request bytes) jwsd could not handle before: INTERNAL and a traceback.
INVALID: dict[str, Callable[[], tuple[str, bytes]]] = {
    # field 1 (job_id), length-delimited, 2 bytes that are not UTF-8
    "invalid utf-8": lambda: ("GetJobStatus", b"\x0a\x02\xff\xfe"),
    # a length prefix far past the end of the message
    "corrupt protobuf": lambda: ("StartJob", b"\x0a\xff\xff\xff\x0f\x01"),
    "3.9 MiB argument": lambda: _start(args=["echo", "x" * (39 * MIB // 10)]),
    "100k env vars": lambda: _start(args=["true"], env={f"V{i}": "1" for i in range(100_000)}),
    "4097 arguments": lambda: _start(args=["true"] * 4097),
    "NUL in an env value": lambda: _start(args=["true"], env={"A": "b\0c"}),
    "'=' in an env key": lambda: _start(args=["true"], env={"A=B": "c"}),
}


@pytest.mark.parametrize("case", list(INVALID))
async def test_invalid_input_is_invalid_argument_with_at_most_one_log_line(
    daemon: Daemon, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    method, data = INVALID[case]()
    context = daemon.credentials("alex").ssl_context()
    async with open_channel(
        "127.0.0.1", daemon.port, context, server_hostname="localhost", max_message_length=4 * MIB
    ) as channel:
        with trio.fail_after(5):
            await expect_refused(
                raw_stub(channel, method, pb.StartJobResponse)(RawRequest(data)),
                Code.INVALID_ARGUMENT,
            )
    # One log line, and the refusal's audit record as one JSON line (a few bounded
    # fields more: at most AUDIT_LINE), whatever the request held. A request that does
    # not decode is refused by the transport, before the guard: it has no record.
    lines = [r for r in caplog.records if r.name.startswith("jobworker")]
    audit = [r for r in lines if r.name == "jobworker.audit"]
    others = [r for r in lines if r.name != "jobworker.audit"]
    assert len(others) <= 1 and len(audit) <= 1, [r.getMessage() for r in lines]
    assert all(r.exc_info is None and len(r.getMessage()) < SHORT for r in others)
    assert all(len(r.getMessage()) < AUDIT_LINE for r in audit)
    async with daemon.connect("alex") as alex:
        assert await alex.list() == []  # nothing started, the daemon still serves


async def test_requests_within_the_documented_bounds_are_served(daemon: Daemon) -> None:
    env = {f"V{i}": "1" for i in range(1023)}
    env["BIG"] = "y" * (100 << 10)
    async with daemon.connect("alex") as alex:
        job = await alex.start(
            args=["sh", "-c", 'printf %s "$BIG" | wc -c', *["x"] * 4000], env=env
        )
        out = bytearray()
        async for chunk in alex.output(job.job_id):
            out += chunk
    assert out.strip() == str(100 << 10).encode()


# ---- identities ----------------------------------------------------------------------------


def _write_client(daemon: Daemon, pki: TestPKI, name: str, subject: x509.Name) -> str:
    issue_with_subject(pki.client_ca, subject, daemon.tls_dir / name)
    return name


def _cn(*names: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in names])


@pytest.mark.parametrize(
    ("case", "subject"),
    [
        ("two CNs, admin last", _cn("alex", "admin")),
        ("two CNs, the same", _cn("alex", "alex")),
        (
            "two CNs in two RDNs",
            x509.Name(
                [
                    x509.RelativeDistinguishedName(
                        [x509.NameAttribute(NameOID.COMMON_NAME, "alex")]
                    ),
                    x509.RelativeDistinguishedName(
                        [x509.NameAttribute(NameOID.COMMON_NAME, "admin")]
                    ),
                ]
            ),
        ),
        ("no CN", x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "alex")])),
    ],
)
async def test_an_ambiguous_identity_is_no_identity(
    daemon: Daemon, pki: TestPKI, case: str, subject: x509.Name
) -> None:
    user = _write_client(daemon, pki, "ambiguous", subject)
    async with daemon.connect(user) as client:
        with trio.fail_after(5):
            await expect_refused(client.list(), Code.UNAUTHENTICATED)
            await expect_refused(client.start(args=["true"]), Code.UNAUTHENTICATED)
    async with daemon.connect("admin") as admin:
        assert await admin.list() == []  # nothing started as admin (or anyone)


@pytest.mark.parametrize(
    "name", ["alex\nbetty", "alex betty", "al\x1bex", "alex/../admin", "ålex", "-alex"]
)
async def test_a_name_outside_the_user_alphabet_is_no_identity_even_without_a_users_file(
    open_daemon: Daemon, pki: TestPKI, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user = _write_client(open_daemon, pki, "odd", _cn(name))
    async with open_daemon.connect(user) as client:
        with trio.fail_after(5):
            message = await expect_refused(client.list(), Code.UNAUTHENTICATED)
    assert "\n" not in message and "\x1b" not in message
    access = [r.getMessage() for r in caplog.records if r.name == "jobworker.access"]
    assert access and all("\n" not in line and "user=-" in line for line in access), access
    # A good name still works without a users file.
    async with open_daemon.connect("alex") as alex:
        assert await alex.list() == []

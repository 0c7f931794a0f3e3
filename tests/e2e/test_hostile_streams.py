"""Hostile HTTP/2 streams against the real `jwsd` (`--request-timeout` as its flag
sets it), from a raw client on one connection beside well-formed calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from jobworker.client import Credentials
from jobworker.v1 import jobworker_pb2 as pb
from tests.e2e.conftest import Jwsd, start_jwsd
from tests.integration.test_transport_requests import (
    DEADLINE_EXCEEDED,
    OK,
    UNIMPLEMENTED,
    raw_connection,
)
from tests.support.certs import TestPKI
from tests.support.timing import scaled

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.hierarchy_independent]

LIST_JOBS = "/jobworker.v1.JobWorkerService/ListJobs"


async def test_a_body_less_call_and_a_malformed_path_end_their_own_streams_only(
    tmp_path: Path, pki: TestPKI, daemons: list[Jwsd]
) -> None:
    jwsd = start_jwsd(tmp_path, pki, "--request-timeout", "1s")
    daemons.append(jwsd)
    port = int(jwsd.addr.rpartition(":")[2])
    context = Credentials(jwsd.tls_dir, "alex").ssl_context()
    request = pb.ListJobsRequest().SerializeToString()
    with trio.fail_after(scaled(20)):
        async with raw_connection(port, context) as client:
            silent = await client.call(LIST_JOBS, None, end=False)
            start = trio.current_time()
            for path in ["/a/b/c", "nope"]:
                reply = await client.reply(await client.call(path, request))
                assert reply.status == UNIMPLEMENTED, (path, reply)
            assert (await client.reply(await client.call(LIST_JOBS, request))).status == OK
            reply = await client.reply(silent)
            assert reply.status == DEADLINE_EXCEEDED, reply
            assert 0.9 < trio.current_time() - start < scaled(10)
            assert (await client.reply(await client.call(LIST_JOBS, request))).status == OK
            assert not client.lost

"""The peer for the RPC layer: jobworker's own proto served by grpcio (C-core, asyncio),
with the same mutual TLS, so the same clients (`jws`, the Python client, the RPC
load generator) talk to it unchanged.

    python -m tests.bench.grpcio_server TLS_DIR

It prints "listening on 127.0.0.1:PORT" to stderr when ready and serves until
SIGTERM. It runs no jobs: GetJobOutput for job id "zeros:N" streams N zero bytes
in messages of jwsd's chunk size (each message built like jwsd builds its own);
GetJobStatus answers a status message as full as jwsd's. Anything else is
NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from jobworker.model import OUTPUT_CHUNK
from jobworker.v1 import jobworker_pb2 as pb

SERVICE = "jobworker.v1.JobWorkerService"


def _status(job_id: str) -> pb.GetJobStatusResponse:
    """A status with every field jwsd fills for a running job with limits."""
    now = time.time()
    return pb.GetJobStatusResponse(
        status="Active",
        job_id=job_id,
        owner="alex",
        args=["sleep", "3600"],
        limits=pb.Limits(cpu=0.5, memory_bytes=64 << 20, pids=16),
        created_at=now,
        started_at=now,
        cpu_time_ns=1_234_567,
        peak_memory_bytes=2 << 20,
        output_bytes=0,
    )


async def get_job_status(
    request: pb.GetJobStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> pb.GetJobStatusResponse:
    return _status(request.job_id)


async def get_job_output(
    request: pb.GetJobOutputRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[pb.GetJobOutputResponse]:
    kind, _, size_text = request.job_id.partition(":")
    if kind != "zeros" or not size_text.isdigit():
        await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
    size = int(size_text)
    chunk = bytes(OUTPUT_CHUNK)
    offset = request.offset
    while offset < size:
        data = chunk if size - offset >= OUTPUT_CHUNK else chunk[: size - offset]
        yield pb.GetJobOutputResponse(output_msg=data, offset=offset)
        offset += len(data)


async def serve(tls_dir: Path) -> None:
    """Serve on a free loopback port until SIGTERM or SIGINT."""
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", 32 << 20), ("grpc.so_reuseport", 0)]
    )
    handlers = {
        "GetJobStatus": grpc.unary_unary_rpc_method_handler(
            get_job_status,
            request_deserializer=pb.GetJobStatusRequest.FromString,
            response_serializer=pb.GetJobStatusResponse.SerializeToString,
        ),
        "GetJobOutput": grpc.unary_stream_rpc_method_handler(
            get_job_output,
            request_deserializer=pb.GetJobOutputRequest.FromString,
            response_serializer=pb.GetJobOutputResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    credentials = grpc.ssl_server_credentials(
        [((tls_dir / "server_key.pem").read_bytes(), (tls_dir / "server_cert.pem").read_bytes())],
        root_certificates=(tls_dir / "client_ca_cert.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))

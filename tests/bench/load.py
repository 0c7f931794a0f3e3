"""Client-side load, run as its own process so that its CPU is not the runner's:

    python -m tests.bench.load COMMAND ADDR TLS_DIR [options]

starts        sequential StartJob of `true` with limits; the latency of each, in ms
start-many    start N `sleep` jobs with limits, C at a time; wall time, job ids
stop-many     stop the given jobs (grace 0), C at a time; with --all every running one
states        how many of the user's jobs are in each state (ListJobs)
follow        F followers of one job's output over C connections; checks every byte
follow-grpcio the same with grpcio's C-core client (the fan-out row's load generator)
rpc           GetJobStatus from N clients (one grpcio channel each) for D seconds

Each prints one JSON object on stdout. jobworker is reached through
`jobworker.client` (purerpc on trio), the way `jws` reaches it; `rpc` uses grpcio's
asyncio client for both servers, so the client side costs the same for each.
User "alex" of TLS_DIR (the gen-certs layout) is the caller unless --user names another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import trio

from jobworker.client import Credentials, JobWorkerClient, connect
from jobworker.errors import JobWorkerError
from jobworker.model import JobState, Limits, Outcome
from jobworker.v1 import jobworker_pb2 as pb
from tests.bench.peers import CPU_CORES, MEMORY_BYTES, PIDS
from tests.bench.results import percentile

#: The caller when --user names none.
USER = "alex"


def limits() -> Limits:
    """The limits every benchmark job runs with (the same as runc's in peers.py)."""
    return Limits(cpu=CPU_CORES, memory=MEMORY_BYTES, pids=PIDS)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> Any:
    async with connect(
        _addr(args.addr), Credentials(Path(args.tls_dir), args.user), server_hostname="localhost"
    ) as client:
        yield client


async def starts(args: argparse.Namespace) -> dict[str, Any]:
    """StartJob until it returns (the job is Active), one at a time, after a short warm-up."""
    samples = []
    async with _client(args) as client:
        for index in range(args.count + args.warmup):
            started = time.perf_counter()
            job = await client.start(args=["true"], limits=limits(), network=args.network)
            elapsed = (time.perf_counter() - started) * 1000
            ended_badly = job.outcome not in (None, Outcome.EXITED)
            if job.state not in (JobState.ACTIVE, JobState.TERMINATED) or ended_badly:
                raise RuntimeError(f"job did not start: {job}")
            if index >= args.warmup:
                samples.append(elapsed)
    return {"ms": samples}


async def start_many(args: argparse.Namespace) -> dict[str, Any]:
    """Start `count` jobs (`sh -c COMMAND`, or a long sleep) with limits, `concurrency` requests in flight, over
    `connections` connections; the wall time until all are Active."""
    job_ids: list[str] = []
    latencies: list[float] = []
    todo = iter(range(args.count))
    argv = ["sh", "-c", args.command] if args.command else ["sleep", "3600"]

    async def worker(client: JobWorkerClient) -> None:
        for _ in todo:
            started = time.perf_counter()
            job = await client.start(args=argv, limits=limits())
            latencies.append((time.perf_counter() - started) * 1000)
            if job.state is not JobState.ACTIVE:
                raise RuntimeError(f"job is {job.state.value}, not Active: {job.outcome}")
            job_ids.append(job.job_id)

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(_client(args)) for _ in range(args.connections)]
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(args.concurrency):
                nursery.start_soon(worker, clients[index % len(clients)])
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "job_ids": job_ids,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }


async def stop_many(args: argparse.Namespace) -> dict[str, Any]:
    """Stop the jobs in --ids-file, or with --all every job of --user that still runs."""
    if args.all:
        async with _client(args) as client:
            job_ids = [
                job.job_id for job in await client.list() if job.state is not JobState.TERMINATED
            ]
    else:
        job_ids = Path(args.ids_file).read_text().split()
    todo = iter(job_ids)
    outcomes: dict[str, int] = {}

    async def worker(client: JobWorkerClient) -> None:
        for job_id in todo:
            job = await client.stop(job_id, grace=0)
            outcomes[job.state.value] = outcomes.get(job.state.value, 0) + 1

    started = time.perf_counter()
    async with _client(args) as client, trio.open_nursery() as nursery:
        for _ in range(args.concurrency):
            nursery.start_soon(worker, client)
    return {"seconds": time.perf_counter() - started, "states": outcomes}


async def states(args: argparse.Namespace) -> dict[str, Any]:
    """How many of the caller's jobs are in each state, and the ids of those Active."""
    async with _client(args) as client:
        jobs = await client.list()
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    active = [job.job_id for job in jobs if job.state is JobState.ACTIVE]
    return {"states": counts, "active": active}


async def follow(args: argparse.Namespace) -> dict[str, Any]:
    """`followers` streams of one job's output over `connections` connections.

    The job is `job`, or with `start` a new job `sh -c START` that this process
    starts itself. Every byte is compared with the expected content (`expect`:
    "zeros:N" or "file:PATH"). A slow follower sleeps `slow` seconds after each
    chunk; followers give up after `deadline` seconds, or, with `until_end`, once
    the job has terminated (checking what they got either way). With `until_end`
    the result also has the job's own run time (ended_at - started_at)."""
    kind, _, value = args.expect.partition(":")
    expected = bytes(int(value)) if kind == "zeros" else Path(value).read_bytes()
    results: list[tuple[int, bool, str]] = []
    first_bytes: list[float] = []
    first_cpu: list[float] = []  # this process's CPU time when each follower's first byte came
    job_times: dict[str, float] = {}

    async def follower(client: JobWorkerClient, job_id: str) -> None:
        offset, ok, error = 0, True, ""
        try:
            chunks_of = cast(AsyncGenerator[bytes, None], client.output(job_id))
            async with contextlib.aclosing(chunks_of) as chunks:
                async for chunk in chunks:
                    if not offset:
                        first_bytes.append(time.time())
                        first_cpu.append(time.process_time())
                    end = offset + len(chunk)
                    # a memcmp in place (slicing `expected` would copy it; comparing
                    # memoryviews is 40x slower)
                    ok = ok and end <= len(expected) and expected.startswith(chunk, offset)
                    offset = end
                    if args.slow:
                        await trio.sleep(args.slow)
        except JobWorkerError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        finally:
            results.append((offset, ok, error))

    async def watch_end(client: JobWorkerClient, job_id: str, scope: trio.CancelScope) -> None:
        while (job := await client.status(job_id)).state is not JobState.TERMINATED:
            await trio.sleep(0.02)
        assert job.ended_at is not None and job.started_at is not None
        job_times["job_seconds"] = job.ended_at - job.started_at
        job_times["exit_code"] = -1 if job.exit_code is None else job.exit_code
        scope.cancel()

    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(_client(args)) for _ in range(args.connections)]
        job_id = args.job
        if args.start:
            job_id = (await clients[0].start(args=["sh", "-c", args.start])).job_id
        with trio.move_on_after(args.deadline or float("inf")) as scope:
            async with trio.open_nursery() as nursery:
                for index in range(args.followers):
                    nursery.start_soon(follower, clients[index % len(clients)], job_id)
                if args.until_end:
                    nursery.start_soon(watch_end, clients[0], job_id, nursery.cancel_scope)
    seconds = time.perf_counter() - started
    return {
        **_follow_result(results, expected, seconds, first_bytes, first_cpu),
        "job_id": job_id,
        "timed_out": scope.cancelled_caught,
        **job_times,
    }


def _follow_result(
    results: list[tuple[int, bool, str]],
    expected: bytes,
    seconds: float,
    first_bytes: list[float],
    first_cpu: list[float],
) -> dict[str, Any]:
    """What a `follow` reports: followers that got every byte right, bytes, timings, errors."""
    return {
        "followers": len(results),
        "complete": sum(1 for size, ok, _ in results if ok and size == len(expected)),
        "prefix_ok": sum(1 for _, ok, _ in results if ok),
        "bytes": sum(size for size, _, _ in results),
        "seconds": seconds,
        "first_byte_at": min(first_bytes, default=0.0),
        "done_at": time.time(),
        "errors": sorted({error for _, _, error in results if error})[:5],
        # CPU time this process used (every thread: grpcio's C-core threads too) from its
        # first byte to the end, the span the fan-out row's wall time measures
        "cpu_seconds": time.process_time() - min(first_cpu, default=time.process_time()),
    }


async def rpc(args: argparse.Namespace) -> dict[str, Any]:
    """GetJobStatus in a loop from `clients` grpcio channels for `seconds`; the rate and
    latencies of the calls that succeeded (every answer is checked for the job's id)."""
    import grpc.aio

    job_ids = args.jobs.split(",")
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = 0.0
    connected = [0]

    async def client(index: int) -> None:
        async with _grpcio_channel(args) as channel:
            call = channel.unary_unary(
                "/jobworker.v1.JobWorkerService/GetJobStatus",
                request_serializer=pb.GetJobStatusRequest.SerializeToString,
                response_deserializer=pb.GetJobStatusResponse.FromString,
            )
            job_id = job_ids[index % len(job_ids)]
            request = pb.GetJobStatusRequest(job_id=job_id)
            await call(request)  # connect before the clock starts
            connected[0] += 1
            if connected[0] == args.clients:
                all_connected.set()
            await ready.wait()
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await call(request)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                if response.job_id != job_id:
                    errors["wrong answer"] = errors.get("wrong answer", 0) + 1

    ready, all_connected = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(client(index)) for index in range(args.clients)]
    # Every channel makes its first call before the clock starts.
    waiter = asyncio.create_task(all_connected.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task.done() and task.exception():
            raise RuntimeError("a client could not connect") from task.exception()
    deadline = time.perf_counter() + args.seconds
    started = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    return {
        "count": len(latencies),
        "seconds": seconds,
        "rate": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "errors": errors,
    }


def _grpcio_channel(args: argparse.Namespace) -> Any:
    """A grpcio (C-core, asyncio) channel to ADDR as --user: a connection of its own
    (no subchannel sharing), the server named as its certificate says."""
    import grpc
    import grpc.aio

    tls = Path(args.tls_dir)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls / "server_ca_cert.pem").read_bytes(),
        private_key=(tls / args.user / "client_key.pem").read_bytes(),
        certificate_chain=(tls / args.user / "client_cert.pem").read_bytes(),
    )
    return grpc.aio.secure_channel(
        args.addr,
        credentials,
        options=[
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 4 << 20),
        ],
    )


async def follow_grpcio(args: argparse.Namespace) -> dict[str, Any]:
    """`follow` of an existing job (`job`) with grpcio's C-core client: the load generator
    for the fan-out row, where the followers' own CPU would otherwise be the limit (the
    purerpc client decodes TLS and HTTP/2 in Python, on the same two cores as jwsd)."""
    kind, _, value = args.expect.partition(":")
    expected = bytes(int(value)) if kind == "zeros" else Path(value).read_bytes()
    results: list[tuple[int, bool, str]] = []
    first_bytes: list[float] = []
    first_cpu: list[float] = []  # this process's CPU time when each follower's first byte came

    async def follower(channel: Any) -> None:
        import grpc.aio

        call = channel.unary_stream(
            "/jobworker.v1.JobWorkerService/GetJobOutput",
            request_serializer=pb.GetJobOutputRequest.SerializeToString,
            response_deserializer=pb.GetJobOutputResponse.FromString,
        )
        offset, ok, error = 0, True, ""
        try:
            async for response in call(pb.GetJobOutputRequest(job_id=args.job)):
                chunk = response.output_msg
                if not offset:
                    first_bytes.append(time.time())
                    first_cpu.append(time.process_time())
                end = offset + len(chunk)
                ok = (
                    ok
                    and response.offset == offset
                    and end <= len(expected)
                    and expected.startswith(chunk, offset)
                )
                offset = end
        except grpc.aio.AioRpcError as exc:
            ok, error = False, f"{exc.code().name}: {exc.details()}"
        finally:
            results.append((offset, ok, error))

    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(_grpcio_channel(args)) for _ in range(args.connections)
        ]
        await asyncio.gather(
            *(follower(channels[index % len(channels)]) for index in range(args.followers))
        )
    seconds = time.perf_counter() - started
    return _follow_result(results, expected, seconds, first_bytes, first_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.load")
    commands = parser.add_subparsers(dest="action", required=True)
    for name in ("starts", "start-many", "stop-many", "states", "follow", "follow-grpcio", "rpc"):
        command = commands.add_parser(name)
        command.add_argument("addr")
        command.add_argument("tls_dir")
        command.add_argument("--count", type=int, default=30)
        command.add_argument("--warmup", type=int, default=3)
        command.add_argument("--concurrency", type=int, default=50)
        command.add_argument("--connections", type=int, default=1)
        command.add_argument("--ids-file", default="")
        command.add_argument("--job", default="")
        command.add_argument("--jobs", default="")
        command.add_argument("--followers", type=int, default=1)
        command.add_argument("--expect", default="zeros:0")
        command.add_argument("--slow", type=float, default=0.0)
        command.add_argument("--deadline", type=float, default=0.0)
        command.add_argument("--start", default="")
        command.add_argument("--command", default="")
        command.add_argument("--until-end", action="store_true")
        command.add_argument("--clients", type=int, default=50)
        command.add_argument("--seconds", type=float, default=3.0)
        command.add_argument("--user", default=USER)
        command.add_argument("--network", default="", help="the jobs' network mode (starts)")
        command.add_argument("--all", action="store_true")
    args = parser.parse_args()
    if args.action in ("rpc", "follow-grpcio"):
        result = asyncio.run(rpc(args) if args.action == "rpc" else follow_grpcio(args))
    else:
        handler = {
            "starts": starts,
            "start-many": start_many,
            "stop-many": stop_many,
            "states": states,
            "follow": follow,
        }[args.action]
        result = trio.run(handler, args)
    json.dump(result, sys.stdout)
    print(flush=True)


if __name__ == "__main__":
    main()

"""The Python client of jwsd, used by `jws`, the end-to-end tests and the benchmarks.

    async with connect(("127.0.0.1", 50051), Credentials(Path("certs/dev"), "alex")) as client:
        job = await client.start(args=["echo", "hi"])
        async with contextlib.aclosing(client.output(job.job_id)) as chunks:
            async for chunk in chunks:
                ...

What it offers:

- `connect`, `Credentials`, `JobWorkerClient` (`connection`): one connection to
  jwsd as one user, and the API's calls with Python arguments;
- `Reconnector`, `Backoff`, `follow_output` (`reconnect`): calls safe to repeat
  that connect again, with backoff, when jwsd goes away; a follower of a job's
  output that resumes at the byte it reached;
- `error_for` (`errors`): the one map from a gRPC status to a
  `jobworker.errors` kind. Every call raises such a kind, never
  `purerpc.RpcFailedError`: `CannotReachError`, `UnavailableError` and
  `GaveUpReconnectingError` when there is no jwsd to talk to, the server's own
  kinds (`JobNotFoundError`, `AccessDeniedError`, ...) when it refused.
"""

from jobworker.client.connection import (
    Credentials,
    JobFilter,
    JobWorkerClient,
    WatchedEvent,
    connect,
)
from jobworker.client.errors import error_for
from jobworker.client.reconnect import CONNECT_TIMEOUT, Backoff, Connect, Reconnector, follow_output

__all__ = [
    "CONNECT_TIMEOUT",
    "Backoff",
    "Connect",
    "Credentials",
    "JobFilter",
    "JobWorkerClient",
    "Reconnector",
    "WatchedEvent",
    "connect",
    "error_for",
    "follow_output",
]

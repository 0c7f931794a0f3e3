"""The jobworker service on the RPC transport: what jwsd serves.

- `jobworker.server.daemon`: `serve()`, the tracker and the transport's `RpcServer` put together.
- `jobworker.server.service`: `JobWorkerService`, the API's methods on a `JobTracker`.
- `jobworker.server.auth`: `CallGuard`, around every method: who is calling, may they, logging.
- `jobworker.server.policy`: users and what each may do.
- `jobworker.server.convert`: requests to the model's values, validated and bounded before any work.
- `jobworker.server.health`: the standard `grpc.health.v1` service, beside the API.
- `jobworker.server.notify`: sd_notify, telling systemd (`Type=notify`) that jwsd is ready or stopping.

Errors become gRPC status codes in one place, `jobworker.transport.status`.
"""

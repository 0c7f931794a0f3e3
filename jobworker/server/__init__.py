"""The jobworker service on the RPC transport: what jwsd serves.

- `jobworker.server.daemon`: `serve()`, the tracker and the transport's `RpcServer` put together.
- `jobworker.server.service`: `JobWorkerService`, the API's methods on a `JobTracker`.
- `jobworker.server.auth`: `CallGuard`, around every method: who is calling, may they, logging.
- `jobworker.server.policy`: users and what each may do.
- `jobworker.server.status`: `JobWorkerError`s to gRPC status codes, in one place.
- `jobworker.server.convert`: the model's types to and from protobuf messages.
"""

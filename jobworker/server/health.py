"""The standard `grpc.health.v1.Health` service, for load balancers, probes and supervisors.

jwsd serves it on its own port, beside the API. It knows two service names: ""
(the server as a whole) and "jobworker.v1.JobWorkerService" (the API); both are
SERVING from the moment jwsd listens until its shutdown begins, then
NOT_SERVING. `Check` of another name is NOT_FOUND; `Watch` of one sends
SERVICE_UNKNOWN and keeps watching, as the protocol says. Every `Watch` gets the
current status at once, then each change, and ends (status OK) once the health
service is closed, so that a watcher never holds up jwsd's shutdown. A change
that is undone before a watcher runs (NOT_SERVING while the cgroup tree is
rebuilt, then SERVING: `CgroupDriver.ensure_tree`) still reaches it: each watcher
is sent every status in turn, of the last `KEPT_CHANGES` changes.

Who may ask: any client whose certificate passed the mTLS handshake; no users
file check (`jobworker.server.auth.CallGuard` exempts this service).
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterable

import purerpc
import trio

from jobworker.v1 import health_grpc
from jobworker.v1 import health_pb2 as pb

#: The service name on the wire, as `auth.CallGuard` and clients name it.
HEALTH_SERVICE = "grpc.health.v1.Health"
#: The names jwsd reports on: the whole server ("") and the API.
JOBWORKER_SERVICES = ("", "jobworker.v1.JobWorkerService")

Status = pb.HealthCheckResponse.ServingStatus
#: How many status changes are kept for watchers that have not seen them yet (a
#: watcher further behind skips to the oldest kept).
KEPT_CHANGES = 16


class HealthService(health_grpc.HealthServicer):  # type: ignore[misc]  # generated, untyped
    """The serving status of a fixed set of service names, and the RPCs that report it.

    services: the names it knows; each starts NOT_SERVING until `set_serving(True)`.
    """

    def __init__(self, services: Iterable[str] = JOBWORKER_SERVICES) -> None:
        self._status: dict[str, pb.HealthCheckResponse.ServingStatus] = dict.fromkeys(
            services, Status.NOT_SERVING
        )
        self._changed = trio.Event()
        self._closed = False
        # (generation, statuses) of the latest changes, oldest first.
        self._generation = 0
        self._changes: collections.deque[tuple[int, dict[str, Status]]] = collections.deque(
            maxlen=KEPT_CHANGES
        )

    def set_serving(self, serving: bool) -> None:
        """Report every known service as SERVING (True) or NOT_SERVING (False); wakes watchers."""
        status = Status.SERVING if serving else Status.NOT_SERVING
        for name in self._status:
            self._status[name] = status
        self._generation += 1
        self._changes.append((self._generation, dict(self._status)))
        self._wake()

    def close(self) -> None:
        """End every `Watch` (after the status it last sent) and every later one at once."""
        self._closed = True
        self._wake()

    def status(self, service: str) -> pb.HealthCheckResponse.ServingStatus | None:
        """The serving status of `service`; `None` when it is not one this server knows."""
        return self._status.get(service)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def Check(self, message: pb.HealthCheckRequest) -> pb.HealthCheckResponse:  # noqa: N802
        status = self.status(message.service)
        if status is None:
            raise purerpc.NotFoundError(f"no service {message.service!r} here")
        return pb.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802
        self, message: pb.HealthCheckRequest
    ) -> AsyncIterator[pb.HealthCheckResponse]:
        sent: pb.HealthCheckResponse.ServingStatus | None = None
        status = self.status(message.service)
        seen = self._generation
        while True:
            if status is None:
                status = Status.SERVICE_UNKNOWN
            if status != sent:
                yield pb.HealthCheckResponse(status=status)
                sent = status
            unseen = [(g, statuses) for g, statuses in self._changes if g > seen]
            if unseen:
                seen, statuses = unseen[0]
                status = statuses.get(message.service)
                continue
            if self._closed:
                return
            await self._changed.wait()

"""The "interceptors": one guard around every method, unary and streaming alike.

purerpc has no interceptors; `jobworker.transport.wrap_methods` runs a wrapper
around every method, and `CallGuard.wrap` is ours. Before any handler code
runs it refuses calls during shutdown (UNAVAILABLE) and authenticates the
caller from the connection's verified client certificate (UNAUTHENTICATED for
a name the policy does not know); then it sets `current_caller` for the
handler, maps every error to its status code (`jobworker.transport.status`), and
writes one access-log line per call:

    rpc user=alex method=StartJob job=5f0c... code=OK ms=7.1

Every field of that line is short and escaped (`jobworker.echo.log_field`): a
job id as sent, before the handler has checked it, shows as a quoted prefix.

Nothing the client sends (metadata included) is consulted for identity.

One exemption, decided here and nowhere else: the services in
`OPEN_SERVICES` (the standard health service) answer any client whose
certificate passed the mTLS handshake, with no users file check, and keep
answering during shutdown (to report NOT_SERVING); their calls are logged
at DEBUG, since probes call them every few seconds.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator

import attrs
import purerpc

from jobworker.echo import log_field
from jobworker.errors import ShuttingDownError
from jobworker.server.policy import Caller, UserPolicy
from jobworker.transport import (
    MethodCall,
    code_name,
    current_identity,
    to_rpc_error,
    wrap_methods,
)

access_log = logging.getLogger("jobworker.access")

#: Services any certificate the client CA signed may call, also during shutdown.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})

#: The authenticated caller of the RPC being handled.
current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("jobworker_current_caller")
_current_record: contextvars.ContextVar[_CallRecord] = contextvars.ContextVar(
    "jobworker_call_record"
)


def note_job_id(job_id: str) -> None:
    """Name the job a call created in its access-log line (StartJob's request has no id)."""
    record = _current_record.get(None)
    if record is not None:
        record.job_id = job_id


@attrs.define(eq=False)
class _CallRecord:
    method: str
    user: str = "-"
    job_id: str = "-"


@attrs.define(eq=False)
class CallGuard:
    """Authentication, error mapping and the access log, around every call."""

    policy: UserPolicy
    _accepting: bool = True

    def refuse_new_calls(self) -> None:
        """From now on every new call gets UNAVAILABLE (the daemon is shutting down)."""
        self._accepting = False

    @contextlib.asynccontextmanager
    async def wrap(self, method: str, call: MethodCall) -> AsyncIterator[_CallRecord]:
        """Guard one call (a `jobworker.transport.MethodWrapper`); see the module docstring."""
        record = _CallRecord(method, job_id=getattr(call.message, "job_id", "") or "-")
        started = time.monotonic()
        error: BaseException | None = None
        if call.service_name in OPEN_SERVICES:
            # The TLS handshake already required a certificate of the client CA.
            peer = current_identity()
            record.user = (peer.common_name if peer else None) or "-"
            try:
                yield record
            except BaseException as exc:
                error = exc
                raise
            finally:
                access_log.debug(
                    "rpc user=%s method=%s code=%s", record.user, method, code_name(error)
                )
            return
        try:
            if not self._accepting:
                raise ShuttingDownError()
            peer = current_identity()
            caller = self.policy.authenticate(peer.common_name if peer else None)
            record.user = caller.name
            token = current_caller.set(caller)
            record_token = _current_record.set(record)
            try:
                yield record
            finally:
                _current_record.reset(record_token)
                current_caller.reset(token)
        except Exception as exc:
            error = to_rpc_error(exc, method)
            raise error from None
        except BaseException as exc:  # cancelled: the client went away, or shutdown
            error = exc
            raise
        finally:
            access_log.info(
                "rpc user=%s method=%s job=%s code=%s ms=%.1f",
                log_field(record.user),
                log_field(record.method),
                log_field(record.job_id),
                code_name(error),
                (time.monotonic() - started) * 1000,
            )


def guarded(service: purerpc.Service, guard: CallGuard) -> purerpc.Service:
    """A copy of `service` whose every method runs inside `guard.wrap`."""
    return wrap_methods(service, guard.wrap)

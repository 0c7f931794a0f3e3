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

A reload (`reconfigure`, on SIGHUP) swaps the users file and the client CA in
place. New calls are checked against the new ones, on old connections too: a
certificate the new client CA did not issue is UNAUTHENTICATED, as is a name the
new users file does not list. Every open call is checked again at once, and one
the new configuration refuses ends with the status a new call would get (its
handler cancelled, the status sent: `jobworker.transport.current_rpc`), so a
revoked user keeps no stream; every other call goes on untouched.

One exemption, decided here and nowhere else: the services in
`OPEN_SERVICES` (the standard health service) answer any client whose
certificate passed the mTLS handshake, with no users file check, and keep
answering during shutdown (to report NOT_SERVING); their calls are logged
at DEBUG, since probes call them every few seconds. After a reload they too
need a certificate the client CA in force signs.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import purerpc

from jobworker import faults, logs
from jobworker.echo import bounded, log_field
from jobworker.errors import ShuttingDownError, UnauthenticatedError
from jobworker.metrics import Metrics
from jobworker.server.audit import AuditLog, Entry
from jobworker.server.policy import Caller, UserPolicy
from jobworker.tls import ClientCa
from jobworker.transport import (
    MethodCall,
    Peer,
    RpcHandle,
    code_name,
    current_identity,
    current_rpc,
    to_rpc_error,
    wrap_methods,
)

access_log = logging.getLogger("jobworker.access")

#: Services any certificate the client CA signed may call, also during shutdown.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})

#: The authenticated caller of the RPC being handled.
current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("jobworker_current_caller")
#: The methods every call of which is audited (they change something or read a job's
#: data); a call of any other method is audited when it is refused.
AUDITED_METHODS = frozenset(
    {"StartJob", "StopJob", "RemoveJob", "GetJobOutput", "WatchJobs", "GetAuditLog"}
)
#: How many certificates `CallGuard` remembers the client CA's verdict on.
_SIGNED_CACHE = 1024

_current_record: contextvars.ContextVar[_CallRecord] = contextvars.ContextVar(
    "jobworker_call_record"
)


def note_job_id(job_id: str) -> None:
    """Name the job a call created in its access-log line and audit record (StartJob's
    request has no id)."""
    record = _current_record.get(None)
    if record is not None:
        record.job_id = job_id
    logs.add_field("job", job_id)


def note_audit(**detail: Any) -> None:
    """Add what the handler knows (JSON-safe, bounded values) to the call's audit record."""
    record = _current_record.get(None)
    if record is not None:
        record.detail.update(detail)


@attrs.define(eq=False)
class _CallRecord:
    method: str
    user: str = "-"
    job_id: str = "-"
    detail: dict[str, Any] = attrs.Factory(dict)


@attrs.define(eq=False)
class _OpenCall:
    """A call inside the guard: who made it, and how to end it."""

    peer: Peer | None
    open_service: bool
    rpc: RpcHandle | None
    ended_by: Exception | None = None


@attrs.define(eq=False)
class CallGuard:
    """Authentication, error mapping and the access log, around every call.

    policy: the users file in force.
    client_ca: the client CA in force, which every call's certificate must have been
        issued by; None: the handshake's check is the only one (as before any reload).
    metrics: where each call is counted by method and status code, with its latency
        (None: nowhere).
    audit: where each call that changes something or reads a job's data, and each
        refused call, is recorded before its answer leaves (None: nowhere).
    """

    policy: UserPolicy
    client_ca: ClientCa | None = None
    metrics: Metrics | None = None
    audit: AuditLog | None = None
    _accepting: bool = True
    _open: set[_OpenCall] = attrs.field(factory=set)
    #: The client CA's verdict per certificate (DER), for calls on old connections.
    _signed: dict[bytes, bool] = attrs.field(factory=dict)

    def refuse_new_calls(self) -> None:
        """From now on every new call gets UNAVAILABLE (the daemon is shutting down)."""
        self._accepting = False

    def reconfigure(self, policy: UserPolicy, client_ca: ClientCa | None) -> int:
        """Put `policy` and `client_ca` in force for every call from now on, and end each
        open call they refuse with the status a new call would get (see the module
        docstring). Returns how many calls were ended."""
        self.policy = policy
        self.client_ca = client_ca
        self._signed.clear()
        ended = 0
        for call in list(self._open):
            try:
                self._admit(call.peer, open_service=call.open_service)
            except UnauthenticatedError as exc:
                if call.rpc is not None and call.ended_by is None:
                    call.ended_by = exc
                    call.rpc.end(to_rpc_error(exc))
                    ended += 1
        return ended

    def _admit(self, peer: Peer | None, *, open_service: bool) -> Caller | None:
        """The caller `peer` is under the configuration in force (None for an open
        service); raises UnauthenticatedError."""
        if (
            self.client_ca is not None
            and peer is not None
            and peer.certificate is not None
            and not self._is_signed(peer.certificate)
        ):
            raise UnauthenticatedError(
                f"the client certificate is not signed by the client ca in force "
                f"({self.client_ca.path}); get a certificate from it"
            )
        if open_service:
            return None
        return self.policy.authenticate(peer.common_name if peer else None)

    def _is_signed(self, certificate: bytes) -> bool:
        assert self.client_ca is not None
        verdict = self._signed.get(certificate)
        if verdict is None:
            if len(self._signed) >= _SIGNED_CACHE:
                self._signed.clear()
            verdict = self._signed[certificate] = self.client_ca.signs(certificate)
        return verdict

    @contextlib.asynccontextmanager
    async def wrap(self, method: str, call: MethodCall) -> AsyncIterator[_CallRecord]:
        """Guard one call (a `jobworker.transport.MethodWrapper`); see the module docstring."""
        record = _CallRecord(method, job_id=getattr(call.message, "job_id", "") or "-")
        started = time.monotonic()
        error: BaseException | None = None
        peer = current_identity()
        if call.service_name in OPEN_SERVICES:
            # The TLS handshake already required a certificate of the client CA.
            record.user = (peer.common_name if peer else None) or "-"
            open_call = _OpenCall(peer, open_service=True, rpc=current_rpc())
            try:
                self._admit(peer, open_service=True)
                self._open.add(open_call)
                yield record
            except BaseException as exc:
                error = open_call.ended_by or exc
                raise
            finally:
                self._open.discard(open_call)
                code = code_name(error)
                self._count(method, code, started)
                access_log.debug("rpc user=%s method=%s code=%s", record.user, method, code)
            return
        # Every line logged for this call carries its peer, user and job (jobworker.logs).
        with logs.fields(
            peer=peer.address if peer is not None else "",
            user=(peer.common_name if peer is not None else None) or "",
            job=record.job_id[:64] if record.job_id != "-" else "",
        ) as call_fields:
            open_call = _OpenCall(peer, open_service=False, rpc=current_rpc())
            try:
                if not self._accepting:
                    raise ShuttingDownError()
                caller = self._admit(peer, open_service=False)
                assert caller is not None
                record.user = call_fields["user"] = caller.name
                token = current_caller.set(caller)
                record_token = _current_record.set(record)
                self._open.add(open_call)
                try:
                    yield record
                finally:
                    self._open.discard(open_call)
                    _current_record.reset(record_token)
                    current_caller.reset(token)
            except Exception as exc:
                error = to_rpc_error(exc, method)
                raise error from None
            except BaseException as exc:  # cancelled: the client went away, shutdown, or a reload
                error = open_call.ended_by or exc
                raise
            finally:
                code = code_name(error)
                self._count(method, code, started)
                if self.audit is not None and (
                    method in AUDITED_METHODS or code not in ("OK", "CANCELLED")
                ):
                    # Before the answer leaves: a client that saw it finds it recorded.
                    self._audit(self.audit, record, peer, code, error)
                    faults.reach("call.audited")
                access_log.info(
                    "rpc user=%s method=%s job=%s code=%s ms=%.1f",
                    log_field(record.user),
                    log_field(record.method),
                    log_field(record.job_id),
                    code,
                    (time.monotonic() - started) * 1000,
                )

    def _audit(
        self,
        audit: AuditLog,
        record: _CallRecord,
        peer: Peer | None,
        code: str,
        error: BaseException | None,
    ) -> None:
        detail = dict(record.detail)
        if isinstance(error, purerpc.RpcFailedError) and code != "OK":
            detail["reason"] = bounded(str(error.status.status_message or ""), 256)
        audit.record(
            Entry(
                time=time.time(),
                user=record.user,
                identity=audit.identities.of(peer),
                peer=peer.address if peer is not None else "-",
                method=record.method,
                job_id=record.job_id,
                code=code,
                detail=detail,
            )
        )

    def _count(self, method: str, code: str, started: float) -> None:
        # `method` is one the server serves (a short fixed list), never the client's text.
        if self.metrics is not None:
            self.metrics.count_rpc(method, code, time.monotonic() - started)


def guarded(service: purerpc.Service, guard: CallGuard) -> purerpc.Service:
    """A copy of `service` whose every method runs inside `guard.wrap`."""
    return wrap_methods(service, guard.wrap)

"""Which jwsd `jws` talks to, and as whom (the connection options, the environment,
`jws login`), and what each failure of talking to it means to the caller."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncclick as click
import attrs

from jobworker.cli.config import DEFAULT_ADDR, DEFAULT_TLS_DIR, ClientConfig, config_path
from jobworker.cli.failure import (
    EXIT_NOT_FOUND,
    EXIT_SERVER_ERROR,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Failure,
)
from jobworker.errors import (
    BadStateError,
    CannotReachError,
    GaveUpReconnectingError,
    JobWorkerError,
    SetupError,
    UnavailableError,
)
from jobworker.units import parse_addr, parse_duration

if TYPE_CHECKING:  # imported lazily at run time: `jws --help` stays quick
    from jobworker.client import Credentials, JobWorkerClient, Reconnector

DEFAULT_PORT = 50051


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "-u",
        "--user",
        envvar="JWS_USER",
        help="Act as this user (its certificate in TLSDIR/USER/). Default: `jws login`.",
    )(fn)
    fn = click.option(
        "--addr",
        envvar="JWS_ADDR",
        help=f"jwsd's HOST:PORT. Default: `jws login`, else {DEFAULT_ADDR}.",
    )(fn)
    fn = click.option(
        "--tls-dir",
        envvar="JWS_TLS_DIR",
        help=f"Directory with server_ca_cert.pem and USER/client_{{cert,key}}.pem. Default: `jws login`, else {DEFAULT_TLS_DIR}.",
    )(fn)
    return fn


@attrs.frozen
class Target:
    """Which jwsd to talk to, and as whom, from the flags, the environment and `jws login`."""

    host: str
    port: int
    credentials: Credentials

    @classmethod
    def chosen(cls, user: str | None, addr: str | None, tls_dir: str | None) -> Target:
        """Raises Failure (usage) for a bad config file or address, or no user."""
        from jobworker.client import Credentials

        try:
            stored = ClientConfig.load()
        except ValueError as exc:
            raise Failure(str(exc), EXIT_USAGE) from None
        user = user or stored.user
        if not user:
            raise Failure(
                "no user: pass -u USER, or make one the default with `jws login USER`", EXIT_USAGE
            )
        addr_text = addr or stored.addr or DEFAULT_ADDR
        try:
            host, port = parse_addr(addr_text, default_port=DEFAULT_PORT)
        except ValueError as exc:
            raise Failure(str(exc), EXIT_USAGE) from None
        credentials = Credentials(Path(tls_dir or stored.tls_dir or DEFAULT_TLS_DIR), user)
        return cls(host, port, credentials)

    @staticmethod
    def remember(user: str, addr: str | None, tls_dir: str | None) -> str:
        """`jws login`: check that `user`'s files are in the TLS dir and load, save the
        defaults (the TLS dir as an absolute path), and say what was saved. Blocking
        file reads, which is fine for a one-shot command. Raises Failure (usage)."""
        from jobworker.client import Credentials

        try:
            stored = ClientConfig.load()
            if addr is not None:
                parse_addr(addr, default_port=DEFAULT_PORT)
        except ValueError as exc:
            raise Failure(str(exc), EXIT_USAGE) from None
        # Absolute, as the shell named it (a path without a symlink resolved): a later
        # command from another directory must find the same files.
        tls = Path(os.path.abspath(tls_dir or stored.tls_dir or DEFAULT_TLS_DIR))
        try:
            Credentials(tls, user).ssl_context()
        except SetupError as exc:
            raise Failure(f"{exc}; nothing saved", EXIT_USAGE) from None
        path = ClientConfig(user=user, addr=addr or stored.addr, tls_dir=str(tls)).save(
            config_path()
        )
        return f"now acting as {user}, with {tls} (saved in {path})"

    def connect(self, connect_timeout: float = 10) -> AbstractAsyncContextManager[JobWorkerClient]:
        """A new connection (see `jobworker.client.connect`)."""
        from jobworker.client import connect

        return connect((self.host, self.port), self.credentials, connect_timeout=connect_timeout)


#: How jwsd says that a job's program does not exist (jobworker.sandbox.program).
_MISSING_PROGRAM = re.compile(r"program .* not found in PATH|cannot run .*: no such file")


def failure_for(exc: JobWorkerError, target: Target) -> Failure:
    """The line and exit code for `exc`, a failure of a command that talked to `target`:
    usage for local set-up (credentials, and a certificate jwsd cannot accept),
    unreachable for no jwsd (a lost connection names the address), 127 for a program
    that does not exist, server error for anything else jwsd refused."""
    if isinstance(exc, SetupError):
        return Failure(str(exc), EXIT_USAGE)
    if isinstance(exc, (CannotReachError, GaveUpReconnectingError)):
        return Failure(str(exc), EXIT_UNREACHABLE)  # they name the address and why
    if isinstance(exc, UnavailableError):
        # A refused client certificate looks like a lost connection (TLS 1.3 checks it
        # after the handshake): look at it before telling the caller to retry.
        problem = _certificate_problem(target.credentials)
        if problem is not None:
            return Failure(problem, EXIT_USAGE)
        return Failure(f"lost jwsd at {target.host}:{target.port}: {exc}", EXIT_UNREACHABLE)
    if isinstance(exc, BadStateError) and _MISSING_PROGRAM.match(str(exc)):
        return Failure(str(exc), EXIT_NOT_FOUND)
    return Failure(str(exc), EXIT_SERVER_ERROR)


def _certificate_problem(credentials: Credentials) -> str | None:
    """Why jwsd cannot accept the client certificate of `credentials`: expired, not
    yet valid, or not issued by TLSDIR/client_ca_cert.pem (checked when that file is
    there); None when nothing is wrong that the client can see."""
    import ssl

    from jobworker import tls

    if not credentials.cert.exists():  # the connection was not made with it
        return None
    try:
        tls.check_certificate_file(credentials.cert)
        client_ca = credentials.tls_dir / "client_ca_cert.pem"
        if not client_ca.exists():
            return None
        der = ssl.PEM_cert_to_DER_cert(credentials.cert.read_text())
        if not tls.ClientCa.load(client_ca).signs(der):
            return (
                f"certificate {credentials.cert} was not issued by {client_ca}, the CA jwsd "
                "trusts for users; use a certificate that CA issued"
            )
    except SetupError as exc:
        return str(exc)
    except (OSError, ValueError):
        return None
    return None


@contextlib.asynccontextmanager
async def connected(target: Target) -> AsyncIterator[JobWorkerClient]:
    """Connect to `target`, translating every failure (of the body too) to a Failure."""
    try:
        async with target.connect() as client:
            yield client
    except JobWorkerError as exc:
        raise failure_for(exc, target) from None


def reconnect_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--reconnect-timeout` of the commands that follow a job (`output`, `run`)."""
    return click.option(
        "--reconnect-timeout",
        envvar="JWS_RECONNECT_TIMEOUT",
        default="5m",
        show_default=True,
        help="When jwsd goes away (a restart), connect again for up to this long "
        "and resume at the byte reached (0: fail at once).",
    )(fn)


def reconnector_to(target: Target, timeout: str, say: Callable[[str], None]) -> Reconnector:
    """A Reconnector to `target` that gives up after `timeout` (a duration as typed),
    saying each attempt through `say`."""
    from jobworker.client import Backoff, Reconnector

    try:
        total = parse_duration(timeout)
    except ValueError as exc:
        raise Failure(f"--reconnect-timeout: {exc}", EXIT_USAGE) from None

    return Reconnector(target.connect, Backoff(total=total), say)

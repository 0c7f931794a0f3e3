"""What `systemctl reload jwsd` (SIGHUP) re-reads, and the way it reaches a running jwsd.

`Access` is every file a reload reads, loaded and checked as a whole: the server's
certificate and key, the client CA, the users file. Loading it either succeeds
or raises one `SetupError` naming the file and the problem, before anything
changes; so a reload is all or nothing, and a refused one leaves the
configuration in force as it was.

`Reloader` is how the signal task of `jwsd` (`jobworker.cli.jwsd.run`) asks the
running `serve()` to reload: `serve()` attaches what a reload does (swap the
server's TLS context for new connections, put the new users file and client CA in
force in the call guard, which ends the calls they refuse) and detaches it when
its shutdown begins. Nothing else changes: every job, and every call the new
configuration allows, goes on.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import attrs

from jobworker import tls
from jobworker.errors import SetupError
from jobworker.server.policy import UserPolicy


@attrs.frozen
class Access:
    """Who may connect and call, as the files say: what jwsd loads at start and on reload.

    ssl_context: the server's context (its certificate and key, the client CA).
    client_ca: the same client CA, to check certificates of connections made before.
    policy: the users file.
    serial: the server certificate's serial number, for the log.
    """

    ssl_context: ssl.SSLContext
    client_ca: tls.ClientCa
    policy: UserPolicy
    serial: int

    @classmethod
    def load(cls, server_files: tuple[Path, Path, Path], users_file: Path | None) -> Access:
        """Read and check every file (`server_files`: certificate, key, client CA).
        Raises SetupError naming the first file that is missing, unreadable, malformed,
        expired, or (the key) does not match its certificate."""
        cert, key, client_ca = server_files
        for path in (cert, client_ca):
            tls.check_certificate_file(path)
        ssl_context = tls.server_context(cert, key, client_ca)
        return cls(
            ssl_context=ssl_context,
            client_ca=tls.ClientCa.load(client_ca),
            policy=UserPolicy.load(users_file),
            serial=tls.certificate_serial(cert),
        )


@attrs.define(eq=False)
class Reloader:
    """The reload of a running `serve()`, for the signal task.

    `serve()` attaches a function that loads and puts in force the new configuration
    (returning a summary for the log) once it serves, and detaches it when its
    shutdown begins.
    """

    _apply: Callable[[], str] | None = None

    @property
    def attached(self) -> bool:
        """Whether a `serve()` is serving, so that a reload can be carried out."""
        return self._apply is not None

    def attach(self, apply: Callable[[], str]) -> None:
        self._apply = apply

    def detach(self) -> None:
        self._apply = None

    def reload(self) -> str:
        """Load the files again and put them in force; returns what changed, in words.
        Raises SetupError (nothing changed) when a file is wrong or nothing serves."""
        if self._apply is None:
            raise SetupError("jwsd is not serving (starting or shutting down); nothing to reload")
        return self._apply()

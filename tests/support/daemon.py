"""A real jwsd (`serve()`) in the test's own trio run, with real certificates: the one
way the integration tests start a daemon and connect to it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from jobworker.client import Credentials, JobWorkerClient, connect
from jobworker.model import NetworkMode
from jobworker.sandbox import SANDBOX_SETUP_TIMEOUT
from jobworker.server.daemon import DaemonConfig, serve
from tests.conftest import require_root
from tests.support.certs import TestPKI
from tests.support.names import unique_name
from tests.support.timing import scaled

#: The users file most tests run with.
USERS = {"alex": "user", "betty": "user", "admin": "admin"}
#: Certificates every test daemon's CA issues (mallory's is valid but in no users file).
CERTS = ("alex", "betty", "admin", "mallory")


@attrs.define
class Daemon:
    port: int
    tls_dir: Path
    config: DaemonConfig
    shutdown: trio.Event
    pki: TestPKI

    def credentials(self, user: str) -> Credentials:
        return Credentials(self.tls_dir, user)

    def connect(self, user: str) -> contextlib.AbstractAsyncContextManager[JobWorkerClient]:
        return connect(
            ("127.0.0.1", self.port),
            self.credentials(user),
            server_hostname="localhost",
            # 50 handshakes at once on an emulated or busy CPU take seconds each.
            connect_timeout=scaled(30),
        )


@attrs.frozen
class DaemonFiles:
    """What a test daemon reads: its TLS dir, and its users file (None: no users file)."""

    tmp_path: Path
    pki: TestPKI
    tls_dir: Path
    users_file: Path | None

    @classmethod
    def write(
        cls,
        tmp_path: Path,
        pki: TestPKI,
        *,
        users: Mapping[str, str] | None = USERS,
        certs: Iterable[str] = CERTS,
    ) -> DaemonFiles:
        """Write the TLS dir (a certificate per name in `certs`) and the users file."""
        require_root()
        tls_dir = pki.write_tls_dir(tmp_path / "tls", list(certs))
        users_file = None
        if users is not None:
            users_file = tmp_path / "users.toml"
            lines = "".join(f'{name} = "{role}"\n' for name, role in users.items())
            users_file.write_text("[users]\n" + lines)
        return cls(tmp_path, pki, tls_dir, users_file)

    @contextlib.asynccontextmanager
    async def serving(self, **fields: Any) -> AsyncIterator[Daemon]:
        """jwsd with these files, a data dir under tmp_path, a cgroup name of its own,
        jobs on loopback only unless they ask (`network_default`) and the DaemonConfig
        `fields` given, for the block's duration."""
        config = DaemonConfig.of(
            tls_dir=self.tls_dir,
            port=0,
            data_dir=self.tmp_path / "data",
            users_file=self.users_file,
            stop_grace=1.0,
            cgroup_name=unique_name(),
            # Loopback only unless a test asks: the network is what few tests are about.
            **{
                "sandbox_timeout": scaled(SANDBOX_SETUP_TIMEOUT),
                "network_default": NetworkMode.NONE,
                **fields,
            },
        )
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, config, shutdown)
            yield Daemon(port, self.tls_dir, config, shutdown, self.pki)
            shutdown.set()

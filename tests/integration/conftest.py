"""Fixtures the integration tests share: a module's test PKI and a real in-process jwsd
(a module that needs another kind defines its own under the same name)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.certs import TestPKI
from tests.support.daemon import Daemon, DaemonFiles


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture
async def daemon(tmp_path: Path, pki: TestPKI) -> AsyncIterator[Daemon]:
    """jwsd with the usual users file (alex, betty: users; admin: admin)."""
    async with DaemonFiles.write(tmp_path, pki).serving() as daemon:
        yield daemon

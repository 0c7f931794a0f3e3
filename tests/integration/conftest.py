"""Fixtures the integration tests share: a real in-process jwsd, with the suite's test PKI
(`pki`, tests/support/fixtures.py); a module that needs another kind of daemon defines its
own under the same name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.certs import TestPKI
from tests.support.daemon import Daemon, DaemonFiles


@pytest.fixture
async def daemon(tmp_path: Path, pki: TestPKI) -> AsyncIterator[Daemon]:
    """jwsd with the usual users file (alex, betty: users; admin: admin)."""
    async with DaemonFiles.write(tmp_path, pki).serving() as daemon:
        yield daemon

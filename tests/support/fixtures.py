"""The fixtures every suite shares, defined once (the root conftest loads this module as a
plugin, so any test may ask for them by name)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobworker.jobs.tracker import JobTracker
from tests.support.certs import TestPKI
from tests.support.remote_host import host_pings, remote_host
from tests.support.tracking import running_tracker


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    """The suite's one test PKI: CAs and certificates are made once per run, and
    `client_cert` gives the same certificate for the same name each time."""
    return TestPKI()


@pytest.fixture
async def tracker(tmp_path: Path) -> AsyncIterator[JobTracker]:
    """A real tracker (root only) on `tmp_path / "data"` with the default config; when the
    test is done, it exits and nothing but the job records may be left."""
    async with running_tracker(tmp_path / "data") as tracker:
        yield tracker


__all__ = ["host_pings", "pki", "remote_host", "tracker"]

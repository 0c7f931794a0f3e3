"""The fixtures every suite shares, defined once (the root conftest loads this module as a
plugin, so any test may ask for them by name)."""

from __future__ import annotations

import pytest

from tests.support.certs import TestPKI


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    """The suite's one test PKI: CAs and certificates are made once per run, and
    `client_cert` gives the same certificate for the same name each time."""
    return TestPKI()

"""Fixtures and helpers shared by every test."""

from __future__ import annotations

import os

import pytest

#: Set by .ci/run: root-only tests then fail instead of skipping, so they can never silently vanish.
REQUIRE_ROOT = os.environ.get("JOBWORKER_REQUIRE_ROOT") == "1"


def require_root() -> None:
    """Skip the calling test unless we are root; fail instead when JOBWORKER_REQUIRE_ROOT=1."""
    if os.geteuid() == 0:
        return
    if REQUIRE_ROOT:
        pytest.fail("this test needs root, and JOBWORKER_REQUIRE_ROOT=1 forbids skipping it")
    pytest.skip("needs root (cgroups and bubblewrap)")

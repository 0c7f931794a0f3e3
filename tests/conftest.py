"""Fixtures and helpers shared by every test."""

from __future__ import annotations

import os

import pytest

#: Fixtures shared by every suite (`pki`, …), defined once in tests/support.
pytest_plugins = ("tests.support.fixtures",)

#: Set by .ci/run: root-only tests then fail instead of skipping, so they can never silently vanish.
REQUIRE_ROOT = os.environ.get("JOBWORKER_REQUIRE_ROOT") == "1"


def require_root() -> None:
    """Skip the calling test unless we are root; fail instead when JOBWORKER_REQUIRE_ROOT=1."""
    if os.geteuid() == 0:
        return
    if REQUIRE_ROOT:
        pytest.fail("this test needs root, and JOBWORKER_REQUIRE_ROOT=1 forbids skipping it")
    pytest.skip("needs root (cgroups and bubblewrap)")


@pytest.fixture(autouse=True)
def _job_user_can_reach_tmp_path(request: pytest.FixtureRequest) -> None:
    """Jobs run as `nobody`, and bubblewrap binds their work dir by path: a data dir under
    tmp_path needs every dir above it traversable (o+x). pytest makes them 0700."""
    if os.geteuid() != 0 or "tmp_path" not in request.fixturenames:
        return
    path = request.getfixturevalue("tmp_path")
    for directory in [path, *path.parents]:
        if str(directory) in ("/", "/tmp"):
            break
        os.chmod(directory, os.stat(directory).st_mode | 0o011)

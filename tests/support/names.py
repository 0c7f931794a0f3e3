"""Names for what a test makes on the host: unique per call, recognisable when left over.

Cgroup parents, directories outside the test's tmp_path and abstract sockets outlive a
test that dies half-way; the common prefix says whose they are (`jobworker-test-*`
is safe to remove by hand), and the random part keeps concurrent runs apart.
"""

from __future__ import annotations

import uuid

#: The prefix of every name a test makes on the host.
PREFIX = "jobworker-test"


def unique_name() -> str:
    """A fresh `jobworker-test-XXXXXXXX` (8 hex digits): a cgroup name, a directory, a socket."""
    return f"{PREFIX}-{uuid.uuid4().hex[:8]}"

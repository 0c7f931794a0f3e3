"""How long a test may wait for something on this machine.

The bounds in the tests were set on the development machines. CI also runs the
suite in a VM whose CPU is emulated, about ten times slower; there it sets
JOBWORKER_TEST_TIME_SCALE=10 and every bound that depends on CPU speed (a
handshake, moving megabytes through TLS in Python) is multiplied by it. Bounds
that are the behaviour under test (a grace period, an idle timeout) are not.
"""

from __future__ import annotations

import os

#: How many times slower than a development machine this one is (1: as fast).
TIME_SCALE = float(os.environ.get("JOBWORKER_TEST_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    """`seconds`, a bound set on a development machine, for this machine."""
    return seconds * TIME_SCALE

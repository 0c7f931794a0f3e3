"""The backoff of a client that reconnects to jwsd: doubling, capped, jittered."""

from __future__ import annotations

import itertools
import random

from jobworker.client import Backoff


def test_delays_double_from_the_first_up_to_the_cap_each_in_its_upper_half() -> None:
    backoff = Backoff(total=60, first=0.1, cap=2.0)
    delays = list(itertools.islice(backoff.delays(random.Random(1)), 12))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.6] + [2.0] * 7
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_delays_are_jittered_so_clients_of_one_jwsd_do_not_come_back_in_step() -> None:
    backoff = Backoff()
    first, second = (
        list(itertools.islice(backoff.delays(random.Random(seed)), 8)) for seed in (1, 2)
    )
    assert all(a != b for a, b in zip(first, second, strict=True))

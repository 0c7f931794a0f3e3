"""A job that prints a counter for a while: long enough to outlive a jwsd killed a few
lines in, and the next jwsd's start and take-over; its whole output known in advance."""

from __future__ import annotations

from tests.support.timing import scaled

#: How long the counter runs (scaled to the machine's speed), and how many lines it prints.
COUNTER_SECONDS = 10.0
COUNTER_LINES = 50


def counter_script(exit_code: int = 0) -> str:
    """A `sh -c` script: COUNTER_LINES lines `line N` over about COUNTER_SECONDS, then exit."""
    pause = scaled(COUNTER_SECONDS) / COUNTER_LINES
    return (
        f"i=0; while [ $i -lt {COUNTER_LINES} ]; do echo line $i; i=$((i+1)); "
        f"sleep {pause:.3f}; done; exit {exit_code}"
    )


def counter_output() -> bytes:
    """Every byte `counter_script` prints."""
    return b"".join(b"line %d\n" % i for i in range(COUNTER_LINES))

"""`python -m tests.bench.sink N`: read stdin to the end and check it is exactly N zero bytes.

The reader every stdout-based throughput path ends in (raw pipe, ssh, `jws output`),
so all of them pay the same for the check. Every byte is compared with the known
content (memcmp, ~15-30 GB/s here), so a fast wrong answer cannot pass. Prints
"ready" once it is about to read (so that its own start-up is not timed), then one
JSON line: {"bytes": count, "ok": all zero and exactly N, "seconds": first read to EOF}.
"""

from __future__ import annotations

import json
import os
import sys
import time

READ_SIZE = 1 << 20


def drain_zeros(fd: int, expected: int) -> dict[str, object]:
    """Read `fd` to EOF; count the bytes and check each one is zero."""
    zeros: dict[int, bytes] = {}
    count, ok, first = 0, True, None
    while data := os.read(fd, READ_SIZE):
        first = first or time.perf_counter()
        size = len(data)
        reference = zeros.get(size)
        if reference is None:
            reference = zeros[size] = bytes(size)
        ok = ok and data == reference
        count += size
    seconds = time.perf_counter() - first if first else 0.0
    return {"bytes": count, "ok": ok and count == expected, "seconds": seconds}


def main() -> None:
    print("ready", flush=True)
    print(json.dumps(drain_zeros(sys.stdin.fileno(), int(sys.argv[1]))), flush=True)


if __name__ == "__main__":
    main()

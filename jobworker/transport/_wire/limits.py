"""The transport's numbers: how long a closing connection drains, how much a
connection may queue before senders wait, and the bound on one message.

No library internals here; the seams that use these numbers are in `wrapper` and
`streams`.
"""

from __future__ import annotations

#: Seconds a closing connection may spend writing what it still has buffered.
CLOSE_DRAIN_TIMEOUT = 2.0
#: Bytes a connection may hold in h2's send buffer before senders wait (see
#: `GuardedSocketWrapper.wait_room`).
PACING_LIMIT = 512 << 10

#: The largest HTTP/2 flow-control window (RFC 9113, 6.9.1).
_MAX_WINDOW = 2**31 - 1

#: The bound on one message each way when a caller gives none (the transport's own
#: default, for any service; jwsd and jobworker's client pass theirs:
#: `jobworker.model.MAX_SERVER_MESSAGE`, `MAX_CLIENT_MESSAGE`).
DEFAULT_MAX_MESSAGE = 16 << 20


def check_message_length(max_message_length: int) -> int:
    """Return `max_message_length` if purerpc can use it, else raise ValueError.

    purerpc sets each stream's receive window to twice the limit and returns
    window only per whole message, so one message plus its 5-byte header must
    fit in it (it always does at 2x), and 2x must be a legal HTTP/2 window.
    """
    if not 0 < max_message_length <= (_MAX_WINDOW // 2) - 5:
        raise ValueError(
            f"max_message_length {max_message_length} is out of range; "
            f"use 1 to {(_MAX_WINDOW // 2) - 5} bytes"
        )
    return max_message_length

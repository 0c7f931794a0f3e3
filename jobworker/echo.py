"""The one place where a value that came from outside is made safe to show.

Anything a client sent (a job id, an argument, a path, a certificate's name) and
that jobworker repeats in an error message, a gRPC status trailer or a log line
goes through here first: cut to a few dozen characters and escaped, so that a
request cannot make the daemon spend time or memory echoing it (HPACK encoding a
1 MiB `grpc-message` costs minutes of CPU) nor forge log lines or drive a
terminal with control characters.
"""

from __future__ import annotations

import re

#: How many characters of a value are shown; the rest becomes "…".
ECHO_LIMIT = 64
#: Longest message sent as a gRPC status or written as one log field.
MESSAGE_LIMIT = 1024

# What a log field may hold unquoted: the user-name alphabet and what ids and methods use.
_PLAIN = re.compile(r"[A-Za-z0-9._@/:-]{1,64}")


def quoted(value: object, limit: int = ECHO_LIMIT) -> str:
    """`value` (a str, or anything str() takes) as a Python literal, e.g. 'alex', cut after `limit` characters.

    Control and other non-printable characters are escaped as repr() escapes them
    (\\n, \\x1b, \\u2028), so the result is one printable line; a cut value ends
    in "…" after the closing quote. The result is at most about 10 × `limit` long.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + "…"


def log_field(value: str) -> str:
    """`value` as one field of a `key=value` log line: as is when it is short and plain
    (a user name, a job id, "-"), else `quoted`."""
    if value == "-" or _PLAIN.fullmatch(value):
        return value
    return quoted(value)


def bounded(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """`message` cut to `limit` characters (ending in "…" when cut), with any
    non-printable character escaped as repr() would.

    The last line of defence for status messages and logged error texts: every
    value in them should already be `quoted`, so a cut here means one was not.
    """
    cut = message if len(message) <= limit else message[: limit - 1] + "…"
    if cut.isprintable():
        return cut
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)

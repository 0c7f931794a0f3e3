"""The one place where a value that came from outside is made safe to show.

Anything a client sent (a job id, an argument, a path, a certificate's name) and
that jobworker repeats in an error message, a gRPC status trailer or a log line
goes through here first: cut to a few dozen characters and escaped, so that a
request cannot make the daemon spend time or memory echoing it (HPACK encoding a
1 MiB `grpc-message` costs minutes of CPU) nor forge log lines or drive a
terminal with control characters.

Whatever `jws` prints that a user controls (a job's command, its reasons, an
error line) goes through `shown` on its way to a terminal: whole, but escaped,
so a command holding `ESC [2J` (clear the screen), `ESC ]0;...BEL` (set the
title), a newline (a forged table row) or U+202E (text shown backwards) shows
those as `\x1b[2J`, `\x1b]0;...\x07`, `\n`, `\u202e`.
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


def shown(text: str) -> str:
    """`text`, whole, as one line that is safe to print on a terminal: every character
    that is not printable escaped as repr() escapes it, the rest (backslashes too) as is.

    Not printable (`str.isprintable`): the C0 controls (ESC, BEL, the newline, the
    tab...), DEL, the C1 controls (U+0080-U+009F: CSI U+009B starts a terminal
    sequence like ESC [), the bidirectional controls (U+200E, U+200F, U+061C,
    U+202A-U+202E, U+2066-U+2069) and every other format character, the line and
    paragraph separators, spaces other than " ", unassigned code points. The
    escapes (\x1b, \n, \u202e) are for people to read, not to be parsed back: a
    backslash in `text` is not doubled.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def bounded(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """`message` cut to `limit` characters (ending in "…" when cut), and `shown`.

    The last line of defence for status messages and logged error texts: every
    value in them should already be `quoted`, so a cut here means one was not.
    """
    return shown(message if len(message) <= limit else message[: limit - 1] + "…")

"""The one-string command line, split into an argv with POSIX shell quoting
rules (those of `shlex` in POSIX mode), without running a shell: no globbing, no
variables, no pipes.

`"ls -l 'my dir'"` becomes `("ls", "-l", "my dir")`. Someone who wants a shell
asks for one: `sh -c '...'`.

The splitter is a regular expression, not `shlex` itself: shlex builds each word
one character at a time (`token = token + char`), which is quadratic in the
length of a word (a 1 MiB word took minutes of CPU); this one is linear and gives
the same argv for every input (tests/unit/test_cmdline.py compares them).
"""

from __future__ import annotations

import re
from typing import NoReturn

from jobworker.errors import InvalidRequestError

# The pieces of a command line, in the order they are tried. shlex's whitespace is
# exactly " \t\r\n"; its escape is "\\", its quotes "'" and '"', and only inside '"'
# does a backslash escape anything (itself and '"'; before any other character it stays).
_PIECES = re.compile(
    r"""
      (?P<space>[ \t\r\n]+)
    | (?P<plain>[^ \t\r\n'"\\]+)
    | '(?P<single>[^']*)'
    | "(?P<double>[^"\\]*(?:\\.[^"\\]*)*)"
    | \\(?P<escaped>.)
    | (?P<open>['"])
    | (?P<dangling>\\)
    """,
    re.VERBOSE | re.DOTALL,
)
_DOUBLE_ESCAPES = re.compile(r'\\(["\\])')
_DOUBLE_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)


def split_command(cmd: str) -> tuple[str, ...]:
    """Split `cmd` into an argv as a POSIX shell would, but expand nothing.

    Raises InvalidRequestError for an empty command, an unterminated quote or
    escape, or a NUL byte (which no program can receive in its arguments).
    Runs in time linear in the length of `cmd`.
    """
    if "\0" in cmd:
        raise InvalidRequestError(
            "the command line contains a NUL byte, which no program can receive"
        )
    argv: list[str] = []
    word: list[str] = []
    in_word = False
    for piece in _PIECES.finditer(cmd):
        kind = piece.lastgroup
        if kind == "space":
            if in_word:
                argv.append("".join(word))
                word, in_word = [], False
            continue
        if kind == "open":
            # No closing quote. shlex names a backslash left at the very end instead.
            body = _DOUBLE_BODY.match(cmd, piece.end()) if piece.group() == '"' else None
            if body is not None and body.end() < len(cmd):
                _cannot_split("no escaped character")
            _cannot_split("no closing quotation")
        if kind == "dangling":
            _cannot_split("no escaped character")
        text = piece.group(kind or "")
        if kind == "double":
            text = _DOUBLE_ESCAPES.sub(r"\1", text)
        word.append(text)
        in_word = True
    if in_word:
        argv.append("".join(word))
    if not argv:
        raise InvalidRequestError("empty command: give a program to run")
    return tuple(argv)


def _cannot_split(reason: str) -> NoReturn:
    raise InvalidRequestError(
        f"cannot split the command line: {reason}; close the quote or escape it with a backslash"
    )

"""The seed's one-string command line, split into an argv with POSIX shell quoting
rules (`shlex`), without running a shell: no globbing, no variables, no pipes.

`"ls -l 'my dir'"` becomes `("ls", "-l", "my dir")`. Someone who wants a shell
asks for one: `sh -c '...'`.
"""

from __future__ import annotations

import shlex

from jobworker.errors import InvalidRequestError


def split_command(cmd: str) -> tuple[str, ...]:
    """Split `cmd` into an argv as a POSIX shell would, but expand nothing.

    Raises InvalidRequestError for an empty command, an unterminated quote or
    escape, or a NUL byte (which no program can receive in its arguments).
    """
    if "\0" in cmd:
        raise InvalidRequestError(
            "the command line contains a NUL byte, which no program can receive"
        )
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = ""  # '#' is an ordinary character, as in an argv
    try:
        argv = tuple(lexer)
    except ValueError as exc:  # "No closing quotation" / "No escaped character"
        raise InvalidRequestError(
            f"cannot split the command line: {str(exc).lower()}; close the quote or escape it with a backslash"
        ) from None
    if not argv:
        raise InvalidRequestError("empty command: give a program to run")
    return argv

"""How `jws` fails: one line on stderr and an exit code a script can act on
(docs/cli.md's table; `jobworker.cli.leaving` has the codes of a `jws run` left)."""

from __future__ import annotations

EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 127  # a missing program, as a shell (and docker run) says it


class Failure(Exception):
    """A one-line error for stderr and the exit code that goes with it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

"""The seed's one-string command line: split like a POSIX shell, expand nothing."""

from __future__ import annotations

import contextlib
import shlex
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobworker.cmdline import split_command
from jobworker.errors import InvalidRequestError
from tests.support.timing import scaled

_arg = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=0)


@pytest.mark.parametrize(
    ("cmd", "argv"),
    [
        ("ls -l", ("ls", "-l")),
        ("  ls   -l  ", ("ls", "-l")),
        ("ls 'my dir'", ("ls", "my dir")),
        ('echo "a b" c\\ d', ("echo", "a b", "c d")),
        ("echo $HOME *.txt", ("echo", "$HOME", "*.txt")),  # nothing is expanded: no shell runs
        ("echo a#b # not a comment", ("echo", "a#b", "#", "not", "a", "comment")),
        ("sh -c 'echo hi | wc -c'", ("sh", "-c", "echo hi | wc -c")),
        ("printf ''", ("printf", "")),
    ],
)
def test_split_like_a_shell_without_expanding(cmd: str, argv: tuple[str, ...]) -> None:
    assert split_command(cmd) == argv


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ("", "empty command"),
        ("   \t\n", "empty command"),
        ("echo 'unterminated", "no closing quotation"),
        ('echo "unterminated', "no closing quotation"),
        ("echo trailing\\", "no escaped character"),
        ("echo a\0b", "NUL byte"),
    ],
)
def test_bad_command_lines_are_refused_with_the_reason(cmd: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        split_command(cmd)


@given(st.lists(_arg, min_size=1).filter(lambda argv: argv[0] != ""))
def test_split_inverts_shlex_join(argv: list[str]) -> None:
    """Any argv quoted by shlex.join comes back exactly, whatever its characters."""
    assert split_command(shlex.join(argv)) == tuple(argv)


@given(st.text())
def test_split_either_succeeds_or_raises_invalid_request(cmd: str) -> None:
    """No input makes the splitter fail with anything but a clear InvalidRequestError."""
    try:
        argv = split_command(cmd)
    except InvalidRequestError:
        return
    assert argv
    assert all("\0" not in arg for arg in argv)


def _shlex_split(cmd: str) -> tuple[str, ...] | str:
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return tuple(lexer)
    except ValueError as exc:
        return str(exc).lower()


@given(st.text(alphabet="ab '\"\\ \t\r\n\x0b#$", max_size=40))
def test_split_gives_what_shlex_gives(cmd: str) -> None:
    """The same argv as shlex in POSIX mode (or the same refusal), for the characters
    that matter to quoting."""
    expected = _shlex_split(cmd)
    try:
        got: tuple[str, ...] | str = split_command(cmd)
    except InvalidRequestError as exc:
        got = str(exc)
        assert isinstance(expected, str) and expected in got or expected == ()
        return
    assert got == expected


@pytest.mark.parametrize(
    "cmd",
    [
        "x" * (1 << 20),
        '"' + "\\x" * (1 << 19) + '"',
        '"' + "\\x" * (1 << 19),
        "'" + "y" * (1 << 20),
    ],
)
def test_a_1_mib_word_splits_in_linear_time(cmd: str) -> None:
    """shlex took minutes for one 1 MiB word (it is quadratic); this must not."""
    started = time.monotonic()
    with contextlib.suppress(InvalidRequestError):
        split_command(cmd)
    # Linear takes ~0.5 s here, 3 s on a loaded 2-core host; the quadratic one took minutes.
    assert time.monotonic() - started < scaled(10.0)

"""jws gives a pipe on its stdout room for several output messages."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from jobworker.cli.stdout import STDOUT_PIPE_SIZE, _widen_pipe


def test_a_pipe_on_stdout_is_widened() -> None:
    read_end, write_end = os.pipe()
    try:
        assert fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) < STDOUT_PIPE_SIZE
        _widen_pipe(write_end)
        assert fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) >= STDOUT_PIPE_SIZE
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_file_or_a_closed_fd_is_left_alone(tmp_path: Path) -> None:
    with (tmp_path / "out").open("wb") as file:
        fd = file.fileno()
        _widen_pipe(fd)  # not a pipe: nothing to do, no error
    _widen_pipe(fd)  # closed: nothing to do, no error

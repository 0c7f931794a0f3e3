"""Nothing a user controls reaches a terminal raw: `echo.shown` escapes every
control (C0, DEL, C1, bidirectional), and jws's tables, status text and JSON use it."""

from __future__ import annotations

import json

import pytest

from jobworker.cli import render
from jobworker.echo import bounded, shown
from jobworker.messages import status_from_proto
from jobworker.model import JobStatus
from jobworker.v1 import jobworker_pb2 as pb

#: Every character the red team's list names, and the separators that break lines.
CONTROLS = (
    [chr(c) for c in range(0x00, 0x20)]
    + ["\x7f"]
    + [chr(c) for c in range(0x80, 0xA0)]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c", "\u2028", "\u2029"]
)
HOSTILE = "x\x1b[2J\x1b]0;owned\x07y\nz\u202eevil\x9b31m\x7f"


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_each_control_is_escaped_to_printable_ascii(control: str) -> None:
    text = shown(f"a{control}b")
    assert control not in text
    assert text.isascii() and text.isprintable()
    assert text == "a" + repr(control)[1:-1] + "b"


def test_printable_text_is_shown_as_is_backslashes_and_letters_of_any_script_included() -> None:
    for text in ["ls -l", "printf 'a\\n'", "échec 日本語 ✓", ""]:
        assert shown(text) == text


def test_shown_never_cuts_and_bounded_cuts_then_escapes() -> None:
    assert shown("a\n" * 1000) == "a\\n" * 1000
    assert bounded("\x1b" * 10, limit=4) == "\\x1b\\x1b\\x1b…"


def _job(args: list[str], **fields: object) -> JobStatus:
    base: dict[str, object] = {
        "job_id": "j1",
        "owner": "alex",
        "args": args,
        "status": "Terminated",
        "exit_code": 0,
        "created_at": 100.0,
        "started_at": 100.0,
        "ended_at": 101.0,
    }
    base.update(fields)
    return status_from_proto(pb.GetJobStatusResponse(**base))  # type: ignore[arg-type]


def _raw_controls(text: str) -> list[str]:
    return [c for c in CONTROLS if c in text and c != "\n"]


def test_a_hostile_command_stays_in_its_table_row_and_drives_no_terminal() -> None:
    table = render.table([_job(["echo", HOSTILE]), _job(["true"], job_id="j2")], now=102.0)
    lines = table.split("\n")
    assert len(lines) == 3  # the header and one row per job: the newline did not add one
    assert _raw_controls(table) == []
    assert "\\x1b[2J" in lines[1] and "\\x07" in lines[1] and "\\n" in lines[1]
    assert lines[2].startswith("j2")


def test_a_hostile_command_and_reason_in_the_status_text_are_escaped() -> None:
    job = _job(
        ["echo", HOSTILE], outcome_reason=f"bad {HOSTILE}", signal_name="SIG\x1b[2J", signal=9
    )
    text = render.status_text(job, now=102.0)
    assert _raw_controls(text) == []
    assert text.count("\n") == 9  # the headline and its nine detail lines, no more
    assert "\\u202eevil" in text


def test_json_escapes_every_control_and_still_carries_the_exact_argv() -> None:
    every = "".join(CONTROLS[1:])  # no NUL: no argument can hold one
    job = _job(["echo", HOSTILE + every], outcome_reason=HOSTILE)
    text = render.as_json([render.status_dict(job)])
    assert text.isascii()
    assert _raw_controls(text) == []
    assert json.loads(text)[0]["args"] == ["echo", HOSTILE + every]

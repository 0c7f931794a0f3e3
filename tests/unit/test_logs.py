"""`--log-format json` (`jobworker.logs`): one escaped JSON object per line, carrying
the fields of the call or job in force in the task that logged it (and in the tasks
it started), and none elsewhere."""

from __future__ import annotations

import json
import logging

import trio

from jobworker import logs


def _record(message: str, *args: object) -> logging.LogRecord:
    record = logging.LogRecord("jobworker.test", logging.INFO, __file__, 1, message, args, None)
    logs._ContextFilter().filter(record)
    return record


def test_a_line_is_one_escaped_json_object_with_the_fields_in_force() -> None:
    with logs.fields(user="alex", peer="127.0.0.1:5000") as current:
        current["job"] = "5f0c"
        line = logs.JsonFormatter().format(_record("started %s", "\x1b[2J\nfake"))
    assert "\n" not in line and line.isascii()
    data = json.loads(line)
    assert data["message"] == "started \x1b[2J\nfake"
    assert (data["job"], data["user"], data["peer"]) == ("5f0c", "alex", "127.0.0.1:5000")
    assert (data["level"], data["logger"]) == ("info", "jobworker.test")
    outside = json.loads(logs.JsonFormatter().format(_record("no call")))
    assert not {"job", "user", "peer"} & set(outside)


async def test_tasks_started_under_the_fields_carry_them_and_others_do_not() -> None:
    seen: dict[str, dict[str, str] | None] = {}

    async def note(name: str) -> None:
        seen[name] = logs.log_fields.get()

    async with trio.open_nursery() as nursery:
        with logs.fields(job="j1", user="alex"):
            logs.add_field("peer", "127.0.0.1:1")
            nursery.start_soon(note, "inside")
        nursery.start_soon(note, "outside")
    assert seen["inside"] == {"job": "j1", "user": "alex", "peer": "127.0.0.1:1"}
    assert seen["outside"] is None


def test_empty_values_are_left_out_and_inner_blocks_add_to_outer_ones() -> None:
    with logs.fields(user="alex", peer=""), logs.fields(job="j2"):
        assert logs.log_fields.get() == {"user": "alex", "job": "j2"}
    logs.add_field("job", "j3")  # outside any block: nothing to add to
    assert logs.log_fields.get() is None

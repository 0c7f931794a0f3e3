"""jwsd's log lines: text for people, or one JSON object per line (`--log-format json`)
that carries the job, the user and the peer of the call or job it is about.

The fields come from context, not from each call site: the call guard
(`jobworker.server.auth`) sets `log_fields` for the handler of every call (its user,
its peer, and its job once known), and a job's supervisor task sets them for its job
(its id, its owner). Trio gives every task a copy of its parent's context, so a line
logged anywhere under them carries them, and nothing else can.

A JSON line is `json.dumps(..., ensure_ascii=True)`: every control and non-ASCII
character is escaped, so a line is one line whatever a request held. Under systemd,
`journalctl -u jwsd -o cat | jq 'select(.job == "ID")'` filters on the fields (the
journal keeps each line as its MESSAGE).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Final

#: The call's or job's fields for every line logged under it: "job", "user", "peer".
log_fields: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "jobworker_log_fields", default=None
)
#: The fields a JSON line may carry from context, in this order.
FIELDS: Final = ("job", "user", "peer")
#: The text format's layout.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def fields(**values: str) -> Iterator[dict[str, str]]:
    """Within the block, every line logged (in this task and those it starts) carries
    `values`, over the fields already in force; yields the dict, which may be added to
    (a call's job id, once the handler knows it)."""
    current = {**(log_fields.get() or {}), **{k: v for k, v in values.items() if v}}
    token = log_fields.set(current)
    try:
        yield current
    finally:
        log_fields.reset(token)


def add_field(name: str, value: str) -> None:
    """Add `name` to the fields in force (nothing outside a `fields` block)."""
    current = log_fields.get()
    if current is not None and value:
        current[name] = value


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the
    context's fields, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = getattr(record, "context", None) or {}
        for name in FIELDS:
            if name in context:
                line[name] = context[name]
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True)


class _ContextFilter(logging.Filter):
    """Attach the context's fields to each record (read in the logging task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = log_fields.get()
        record.context = dict(current) if current else None
        return True


def configure(level: str, log_format: str) -> None:
    """jwsd's logging to stderr, as `--log-level` and `--log-format` (text|json) say."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


__all__ = ["FIELDS", "JsonFormatter", "add_field", "configure", "fields", "log_fields"]

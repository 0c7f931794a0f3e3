"""Parsing the sizes, rates and durations people type: `256M`, `1Gi`, `10MB`, `5s`,
`500ms`, `2h`, `2m30s`.

Sizes use binary multiples (K = 1024), as `docker run --memory` does; a trailing
`B`, `i` (kubectl's `1Gi`), `iB` or `/s` is accepted and ignored. A duration may
join several parts, largest first, as Go's and systemd's do (`1h30m`, `2m30s`).
"""

from __future__ import annotations

import re

_SIZE = re.compile(
    r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]?)(?:(?<=[kmgt])i|i?b)?(?:/s)?", re.IGNORECASE
)
_MULTIPLIER = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?", re.IGNORECASE)
_DURATION_PART = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)", re.IGNORECASE)
_UNIT_ORDER = ["d", "h", "m", "s", "ms"]
_SECONDS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str) -> int:
    """Bytes in `text` ("256M", "1.5G", "4096"); raises ValueError with a hint."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(
            f"{text!r} is not a size; use a number with an optional K, M, G or T suffix (e.g. 256M)"
        )
    return int(float(match["number"]) * _MULTIPLIER[match["unit"].lower()])


def parse_duration(text: str) -> float:
    """Seconds in `text` ("5s", "500ms", "2m", "1h", "1d", "1.5", "2m30s"); raises
    ValueError with a hint."""
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match:
        return float(match["number"]) * _SECONDS[(match["unit"] or "").lower()]
    parts = _DURATION_PART.findall(text) if len(text) <= 64 else []
    units = [unit.lower() for _, unit in parts]
    ordered = [unit for unit in _UNIT_ORDER if unit in units]
    if not parts or "".join(n + u for n, u in parts) != text or units != ordered:
        raise ValueError(f"{text!r} is not a duration; use e.g. 5s, 500ms, 2m30s or 1h")
    return sum(float(number) * _SECONDS[unit.lower()] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """`seconds` in the form `parse_duration` reads back exactly: the largest unit
    that divides it ("2h", "90s", "1.5s", "250ms")."""
    for suffix in ("d", "h", "m", "s"):
        size = _SECONDS[suffix]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{suffix}"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def format_size(size: int) -> str:
    """`size` bytes for people: 1536 -> "1.5 KiB"."""
    value = float(size)
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def counted(count: int, noun: str) -> str:
    """`count` and `noun`, plural unless it is one: "1 job", "2 jobs"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def parse_addr(text: str, *, default_port: int) -> tuple[str, int]:
    """("host", port) from "host:port", "host", ":port" or "[::1]:port"; raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    host = host or "127.0.0.1"
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT; the port must be a number from 0 to 65535")
    return host, int(port_text)

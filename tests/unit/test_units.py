"""What people type for sizes, durations and addresses parses as they mean it, or fails with a hint."""

from __future__ import annotations

import pytest

from jobworker.units import format_duration, format_size, parse_addr, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("256M", 256 << 20), ("256m", 256 << 20), ("1.5G", 3 << 29), ("10MB", 10 << 20),
     ("10MiB", 10 << 20), ("10M/s", 10 << 20), ("2k", 2048), (" 1T ", 1 << 40), ("1Gi", 1 << 30),
     ("512Mi", 512 << 20)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1M", "10X", "ten", "1.2.3M", "1i", "1Mii"])
def test_bad_sizes_raise_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="e.g. 256M"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5", 5.0),
        ("5s", 5.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("0", 0.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("2m30s", 150.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s500ms", 93784.5),
        ("1.5m30s", 120.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (86400.0, "1d"),
        (7200.0, "2h"),
        (90.0, "90s"),
        (600.0, "10m"),
        (1.5, "1.5s"),
        (0.25, "250ms"),
    ],
)
def test_durations_are_spelled_in_the_largest_unit_that_divides_them(
    seconds: float, text: str
) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "-5s", "5x", "soon", "30s2m", "2m2m", "2m 30s", "2m30", "1h" * 40]
)
def test_bad_durations_raise_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="e.g. 5s"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "addr"),
    [("127.0.0.1:8000", ("127.0.0.1", 8000)), ("localhost", ("localhost", 50051)), (":9", ("127.0.0.1", 9)),
     ("[::1]:7", ("::1", 7)), ("[::1]", ("::1", 50051))],
)  # fmt: skip
def test_addresses(text: str, addr: tuple[str, int]) -> None:
    assert parse_addr(text, default_port=50051) == addr


@pytest.mark.parametrize("text", ["host:port", "host:99999", "h:-1"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_addr(text, default_port=1)


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1023, 1536, 5 << 20)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
    ]

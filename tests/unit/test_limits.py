"""The limits vocabulary is one table: every place that names, parses, shows or
converts a limit covers exactly its rows, and each row round-trips everywhere."""

from __future__ import annotations

import attrs
import pytest

from jobworker.cli.jws import jws
from jobworker.limits import (
    CGROUP_KINDS,
    KINDS,
    MEMORY,
    OUTPUT,
    TIMEOUT,
    LimitKind,
    Limits,
    format_limits,
    limits_text,
    parse_limits,
)
from jobworker.messages import limits_from_proto, limits_to_proto
from jobworker.v1 import jobworker_pb2 as pb

#: A valid value of each kind, as typed and as held.
SAMPLES: dict[str, tuple[str, float]] = {
    "cpu": ("0.5", 0.5),
    "memory": ("256M", 256 << 20),
    "io_read_bps": ("10M", 10 << 20),
    "io_write_bps": ("1K", 1 << 10),
    "pids": ("100", 100),
    "output": ("3M", 3 << 20),
    "timeout": ("90m", 5400.0),
}


def test_the_table_has_a_row_for_each_field_of_the_model_and_of_the_api() -> None:
    assert [kind.field for kind in KINDS] == list(attrs.fields_dict(Limits))
    assert {kind.proto for kind in KINDS} == set(pb.Limits.DESCRIPTOR.fields_by_name)
    assert set(SAMPLES) == {kind.field for kind in KINDS}
    # The daemon enforces these two itself.
    assert set(CGROUP_KINDS) == set(KINDS) - {OUTPUT, TIMEOUT}


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.key)
def test_each_limit_parses_shows_and_converts_the_same_everywhere(kind: LimitKind) -> None:
    text, value = SAMPLES[kind.field]
    assert kind.unit.parse(text) == value
    assert kind.unit.parse(kind.unit.spell(value)) == value
    limits = Limits.of({kind: value})
    assert limits.value(kind) == value
    assert limits_from_proto(limits_to_proto(limits)) == limits
    assert limits_text(limits).startswith(f"{kind.label} ")
    if kind is not OUTPUT:  # jwsd's --default-limits and --max-limits take the others
        assert parse_limits(format_limits(limits)) == limits


def test_jws_offers_an_option_for_each_limit() -> None:
    start = jws.commands["start"]
    options = {opt for param in start.params for opt in getattr(param, "opts", [])}
    assert {f"--{kind.key}" for kind in KINDS} <= options


def test_a_limit_out_of_bounds_is_named_by_its_label() -> None:
    with pytest.raises(ValueError, match="memory limit must be at least"):
        parse_limits("memory=1K")
    with pytest.raises(ValueError, match="'output=1M' is not a limit; use cpu=..."):
        parse_limits("output=1M")
    assert Limits().merged_over(Limits.of({MEMORY: MEMORY.minimum})) == Limits(memory=8 << 20)

"""What a benchmark run produces: rows of samples, summaries, the Markdown table and JSON.

A `Row` is one figure of one path (jobworker or a peer) measured several times in
the same run; the table shows its median with the min-max over the runs, and,
for a peer, the ratio of jobworker's median to the peer's for the same metric.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import attrs


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` (0..1) percentile of `values` by the nearest-rank method.
    Raises ValueError for an empty sequence."""
    if not values:
        raise ValueError("percentile of no values; the measurement produced no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@attrs.define(eq=False)
class Row:
    """One figure of one path, with a sample per run.

    group: the measurement ("start latency", "output throughput", ...).
    path: what was measured ("jobworker StartJob", "runc run", ...).
    metric: the figure's name ("p50", "MiB/s", ...) and unit: its unit.
    higher_is_better: how to read a ratio.
    subject: True for jobworker's own rows; peers are compared with the subject
        row of the same group and metric.
    note: a short remark printed under the table (sizes, checks).
    """

    group: str
    path: str
    metric: str
    unit: str
    higher_is_better: bool = False
    subject: bool = False
    samples: list[float] = attrs.Factory(list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def low(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def high(self) -> float:
        return max(self.samples) if self.samples else math.nan


@attrs.define(eq=False)
class Report:
    """Every row of a run, the machine it ran on, and the targets checked against it."""

    facts: dict[str, str]
    rows: list[Row] = attrs.Factory(list)
    checks: list[tuple[str, str, bool | None]] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)

    def row(self, group: str, path: str, metric: str, unit: str, **kwargs: Any) -> Row:
        """The row for (group, path, metric), created on first use."""
        for row in self.rows:
            if (row.group, row.path, row.metric) == (group, path, metric):
                return row
        row = Row(group, path, metric, unit, **kwargs)
        self.rows.append(row)
        return row

    def find(self, group: str, path: str, metric: str) -> Row | None:
        for row in self.rows:
            if (row.group, row.path, row.metric) == (group, path, metric):
                return row
        return None

    def subject_of(self, row: Row) -> Row | None:
        """The jobworker row a peer row is compared with (same group and metric)."""
        for other in self.rows:
            if other.subject and other.group == row.group and other.metric == row.metric:
                return other
        return None

    def ratio(self, row: Row) -> float | None:
        """jobworker's median divided by this peer's median (None for jobworker's rows)."""
        subject = self.subject_of(row)
        if row.subject or subject is None or not row.samples or not subject.samples:
            return None
        if row.median == 0:
            return None
        return subject.median / row.median

    def markdown(self) -> str:
        lines = ["| | |", "| --- | --- |"]
        lines += [f"| {key} | {value} |" for key, value in self.facts.items()]
        for group in _unique(row.group for row in self.rows):
            rows = [row for row in self.rows if row.group == group and row.samples]
            lines += ["", f"### {group}", ""]
            lines += [
                "| path | metric | median | min-max | runs | jobworker ÷ this |",
                "| --- | --- | ---: | ---: | ---: | ---: |",
            ]
            for row in rows:
                ratio = self.ratio(row)
                shown = "—" if ratio is None else f"{ratio:.2f}×"
                lines.append(
                    f"| {'**' + row.path + '**' if row.subject else row.path} | {row.metric} "
                    f"| {_fmt(row.median)} {row.unit} | {_fmt(row.low)}–{_fmt(row.high)} "
                    f"| {len(row.samples)} | {shown} |"
                )
            notes = _unique(row.note for row in rows if row.note)
            lines += [""] + [f"- {note}" for note in notes] if notes else []
        if self.checks:
            lines += ["", "### targets", "", "| target | now | met |", "| --- | --- | --- |"]
            for target, now, met in self.checks:
                lines.append(
                    f"| {target} | {now} | {'—' if met is None else 'yes' if met else 'no'} |"
                )
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        if self.errors:
            lines += ["", "### errors", "", *[f"- {error}" for error in self.errors]]
        return "\n".join(lines) + "\n"

    def json(self) -> str:
        return json.dumps(
            {
                "facts": self.facts,
                "rows": [
                    {
                        "group": row.group,
                        "path": row.path,
                        "metric": row.metric,
                        "unit": row.unit,
                        "subject": row.subject,
                        "samples": row.samples,
                        "median": row.median,
                        "min": row.low,
                        "max": row.high,
                        "ratio_jobworker_to_this": self.ratio(row),
                        "note": row.note,
                    }
                    for row in self.rows
                ],
                "targets": [
                    {"target": target, "now": now, "met": met} for target, now, met in self.checks
                ],
                "notes": self.notes,
                "errors": self.errors,
            },
            indent=2,
        )


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))

"""Results: samples per measurement, rows of (cscd, reference, ratio), the table and the JSON.

Owns ``Cell`` (the samples of one measurement, or the errors that kept it from being taken),
``CaseResult`` (a case's cells, the rows that compare them, notes), the printed table and
``latest.json``. A failed sample is an error string in its cell, never an exception here, so
one broken measurement leaves the rest of the report intact.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@dataclass
class Cell:
    """The samples of one measurement; the median is what gets reported."""

    unit: str
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, value: float) -> float:
        self.values.append(float(value))
        return value

    def fail(self, exc: BaseException | str) -> None:
        self.errors.append(exc if isinstance(exc, str) else _describe(exc))

    def sample(self, fn: Callable[[], float]) -> float | None:
        """Run ``fn`` and keep its value; an exception becomes an error of this cell."""
        try:
            return self.add(fn())
        except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
            self.fail(exc)
            return None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "median": self.median, "runs": self.values, "errors": self.errors}


@dataclass
class Row:
    label: str
    cscd: str  # cell key
    ref: str  # cell key
    ref_name: str
    higher_is_better: bool


@dataclass
class CaseResult:
    name: str
    title: str
    cells: dict[str, Cell] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_detail: str | None = None
    seconds: float = 0.0

    def cell(self, key: str, unit: str) -> Cell:
        """The cell ``key``, created with ``unit`` on first use."""
        c = self.cells.get(key)
        if c is None:
            c = self.cells[key] = Cell(unit)
        return c

    def row(self, label: str, cscd: str, ref: str, ref_name: str, *, higher_is_better: bool) -> None:
        self.rows.append(Row(label, cscd, ref, ref_name, higher_is_better))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fail(self, exc: BaseException) -> None:
        self.error = _describe(exc)
        self.error_detail = "".join(traceback.format_exception(exc))

    def ratio(self, row: Row) -> float | None:
        a = self.cells.get(row.cscd)
        b = self.cells.get(row.ref)
        if a is None or b is None or a.median is None or b.median is None or b.median == 0:
            return None
        return a.median / b.median

    def to_json(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            a = self.cells.get(r.cscd)
            b = self.cells.get(r.ref)
            rows.append({
                "label": r.label,
                "unit": a.unit if a else (b.unit if b else ""),
                "higher_is_better": r.higher_is_better,
                "cscd": a.median if a else None,
                "reference": b.median if b else None,
                "reference_name": r.ref_name,
                "ratio": self.ratio(r),
                "cscd_runs": a.values if a else [],
                "reference_runs": b.values if b else [],
                "errors": (a.errors if a else []) + (b.errors if b else []),
            })
        return {
            "title": self.title,
            "error": self.error,
            "error_detail": self.error_detail,
            "seconds": round(self.seconds, 3),
            "rows": rows,
            "cells": {k: c.to_json() for k, c in self.cells.items()},
            "notes": self.notes,
            "info": self.info,
        }


# ------------------------------------------------------------------ formatting


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    a = abs(v)
    if a >= 1000:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    elif a == 0:
        s = "0"
    else:
        s = f"{v:.3g}"
    return f"{s} {unit}".strip()


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


def table_lines(results: list[CaseResult]) -> list[str]:
    """The report as text lines: case, measurement, cscd, reference, ratio (cscd / reference)."""
    header = ("case", "measurement", "cscd", "reference", "ratio")
    body: list[tuple[str, ...]] = []
    errors: list[str] = []
    for res in results:
        first = True
        for r in res.rows:
            a = res.cells.get(r.cscd)
            b = res.cells.get(r.ref)
            unit = a.unit if a else (b.unit if b else "")
            better = "higher" if r.higher_is_better else "lower"
            cv = fmt_value(a.median if a else None, unit)
            rv = fmt_value(b.median if b else None, unit)
            if a is not None and a.median is None and a.errors:
                cv = "ERROR"
            if b is not None and b.median is None and b.errors:
                rv = "ERROR"
            body.append((
                res.name if first else "",
                f"{r.label} [{better} is better]",
                cv,
                f"{rv} ({r.ref_name})",
                fmt_ratio(res.ratio(r)),
            ))
            first = False
            for side, c in (("cscd", a), (r.ref_name, b)):
                if c is not None and c.errors:
                    errors.append(f"{res.name}: {r.label}: {side}: " + "; ".join(sorted(set(c.errors))))
        if res.error:
            body.append((res.name if first else "", "ERROR: " + res.error, "", "", ""))
            errors.append(f"{res.name}: {res.error}")
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    seen: set[str] = set()
    uniq = [e for e in errors if not (e in seen or seen.add(e))]
    if uniq:
        lines.append("")
        lines.append("errors:")
        lines.extend(f"  {e}" for e in uniq)
    notes = [(res.name, n) for res in results for n in res.notes]
    if notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(f"  {name}: {n}" for name, n in notes)
    return lines


def markdown_table(results: list[CaseResult]) -> str:
    """The same rows as a Markdown table (for the README's Performance section)."""
    out = ["| case | measurement | cscd | reference | ratio |", "| --- | --- | --- | --- | --- |"]
    for res in results:
        for r in res.rows:
            a = res.cells.get(r.cscd)
            b = res.cells.get(r.ref)
            unit = a.unit if a else (b.unit if b else "")
            cv = fmt_value(a.median if a else None, unit) if a and a.values else ("error" if a and a.errors else "-")
            rv = fmt_value(b.median if b else None, unit) if b and b.values else ("error" if b and b.errors else "-")
            better = "↑" if r.higher_is_better else "↓"
            out.append(f"| {res.name} | {r.label} {better} | {cv} | {rv} ({r.ref_name}) | {fmt_ratio(res.ratio(r))} |")
        if res.error:
            out.append(f"| {res.name} | error: {res.error} | | | |")
    return "\n".join(out)


def write_json(path: Path, results: list[CaseResult], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": {**meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "cases": {r.name: r.to_json() for r in results},
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)

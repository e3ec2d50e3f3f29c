"""The site-data check of a FLAb folder (`assays.csv` + `<task>/<assay>.csv`): every row read with the
loader's own rules (`flab.iter_assay_rows`); warnings for duplicates, one antibody with conflicting labels,
values that look capped (a documented sentinel such as HIC "25 = no elution", or many rows at exactly an
assay's minimum or maximum) and assays with few rows. Called by the kind that reads FLAb folders."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from .check import ERROR, MIN_ROWS, WARNING, CheckReport, reason_of
from .flab import ASSAY_COLUMNS, Assay, assay_path, iter_assay_rows, load_assays
from .sequences import DataError

VALUE = ASSAY_COLUMNS[2]   # the label column of an assay file
CAP_SHARE = 0.10     # at least this share of an assay's rows at exactly its minimum or maximum: looks capped
CAP_MIN_ROWS = 3     # ... and at least this many rows
# a documented sentinel in the assay table's measure text, e.g. "HIC retention time (min); 25 = no elution"
SENTINEL_NOTE = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*=\s*([^;]+)")


def check_flab(folder: Path, report: CheckReport) -> None:
    """Every problem of a FLAb site folder (assays.csv + <task>/<assay>.csv), rows per assay."""
    if not folder.is_dir():
        report.add(ERROR, "", "not a folder (fitness data is a FLAb folder: assays.csv + <task>/<assay>.csv)")
        return
    try:
        assays = load_assays(folder)
    except (DataError, OSError, UnicodeDecodeError, csv.Error) as exc:
        report.add(ERROR, "assays.csv", reason_of(exc, folder / "assays.csv", folder))
        return
    if not assays:
        report.add(ERROR, "assays.csv", "lists no assays")
    listed = set()
    for a in assays:
        try:
            path = assay_path(folder, a)
        except DataError as exc:
            report.add(ERROR, "assays.csv", str(exc))
            continue
        if a.key in listed:
            report.add(ERROR, "assays.csv", f"assay {a.key} listed more than once")
            continue
        listed.add(a.key)
        _check_assay(path, a, report)
    for path in sorted(folder.glob("*/*.csv")):
        if f"{path.parent.name}/{path.stem}" not in listed:
            report.add(WARNING, str(path.relative_to(folder)), "not listed in assays.csv: training ignores it")


def _check_assay(path: Path, assay: Assay, report: CheckReport) -> None:
    rel = f"{assay.key}.csv"
    if not path.is_file():
        report.add(WARNING, rel, "listed in assays.csv but absent: no labels for this assay at this site")
        report.rows[assay.key] = 0
        return
    if path.stat().st_size == 0:
        report.add(ERROR, rel, "empty file (not even the header heavy,light,fitness)")
        return
    first_row: dict[tuple, int] = {}
    by_antibody: dict[tuple, dict[float, int]] = defaultdict(dict)
    values: list[tuple[float, int]] = []
    try:
        for i, parsed, problems in iter_assay_rows(path):
            for column, reason in problems:
                report.add(ERROR, rel, reason, i, column)
            if parsed is None:
                continue
            if parsed in first_row:
                report.add(WARNING, rel, f"exact duplicate of row {first_row[parsed]}", i)
            else:
                first_row[parsed] = i
                by_antibody[parsed[:2]].setdefault(parsed[2], i)
            values.append((parsed[2], i))
    except DataError as exc:
        report.add(ERROR, rel, reason_of(exc, path))
        return
    for labels in by_antibody.values():
        if len(labels) > 1:
            rows = sorted(labels.values())
            report.add(WARNING, rel, "the same antibody has different labels: "
                       + ", ".join(f"{v:g} (row {r})" for v, r in sorted(labels.items(), key=lambda x: x[1]))
                       + "; each becomes a separate training sample", rows[0], VALUE)
    report.rows[assay.key] = len(values)
    _check_values(assay, rel, values, report)


def _check_values(assay: Assay, rel: str, values: list[tuple[float, int]], report: CheckReport) -> None:
    n = len(values)
    if n < MIN_ROWS:
        report.add(WARNING, rel, f"only {n} labelled row(s) (fewer than {MIN_ROWS}): too few to learn or "
                                 f"evaluate this assay at this site" if n else "no labelled rows")
    if n == 0:
        return
    lo, hi = min(v for v, _ in values), max(v for v, _ in values)
    if lo == hi and n > 1:
        report.add(WARNING, rel, f"all {n} labels are {lo:g}: no signal to learn", column=VALUE)
        return
    flagged = set()
    for m in SENTINEL_NOTE.finditer(assay.measure):
        value, meaning = float(m.group(1)), m.group(0).strip()
        rows = [r for v, r in values if v == value]
        if rows:
            flagged.add(value)
            report.add(WARNING, rel, f"{_rows(rows, n)} at {value:g}, documented in assays.csv as {meaning!r}: "
                                     f"a sentinel, not a measurement", rows[0], VALUE)
    for name, extreme in (("minimum", lo), ("maximum", hi)):
        rows = [r for v, r in values if v == extreme]
        if extreme not in flagged and len(rows) >= max(CAP_MIN_ROWS, CAP_SHARE * n):
            report.add(WARNING, rel, f"{_rows(rows, n)} sit exactly at the assay's {name} {extreme:g}: "
                                     f"capped or sentinel values?", rows[0], VALUE)


def _rows(rows: list[int], n: int) -> str:
    shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
    return f"{len(rows)} of {n} rows ({100 * len(rows) / n:.0f}%; rows {shown})"

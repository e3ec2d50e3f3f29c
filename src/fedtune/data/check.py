"""Check a site's data folder before training, reporting every problem (file, row, column, reason).

The rows are read with the loaders' own rules (`flab.iter_assay_rows`, `fpb.iter_fpb_lines`), so a folder
without errors here is one `load_site` accepts, and the loader itself confirms it at the end. Errors are what
the loaders refuse (unreadable file, missing columns, invalid residues, unknown labels, non-finite labels,
empty data). Warnings are what they accept but a data engineer should look at: exact duplicate rows, one
antibody or sentence with conflicting labels, values that look capped (a sentinel such as HIC "25 = no
elution", or many rows at exactly an assay's minimum or maximum), assays or labels with few rows.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .flab import Assay, assay_path, iter_assay_rows, load_assays
from .fpb import SENTIMENT_LABELS, iter_fpb_lines
from .sequences import DataError
from .site import MIN_SAMPLES, SENTIMENT_FILE, check_kind, load_site_data, sentiment_path

ERROR, WARNING = "error", "warning"
MIN_ROWS = 10        # fewer labelled rows for an assay (or sentences for a label): a warning
CAP_SHARE = 0.10     # at least this share of an assay's rows at exactly its minimum or maximum: looks capped
CAP_MIN_ROWS = 3     # ... and at least this many rows
# a documented sentinel in the assay table's measure text, e.g. "HIC retention time (min); 25 = no elution"
SENTINEL_NOTE = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*=\s*([^;]+)")


@dataclass(frozen=True)
class Problem:
    severity: str              # "error" or "warning"
    file: str                  # relative to the checked folder; "" for the folder itself
    reason: str
    row: int | None = None     # CSV row (header = 1) or line of a sentiment file
    column: str | None = None

    def __str__(self) -> str:
        where = self.file or "(folder)"
        if self.row is not None:
            where += f" {'line' if self.file.endswith('.txt') else 'row'} {self.row}"
        if self.column:
            where += f", column {self.column}"
        return f"{self.severity:<7} {where}: {self.reason}"


@dataclass
class CheckReport:
    kind: str
    folder: str
    problems: list[Problem] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)   # labelled rows per assay / sentences per label
    samples: int = 0                                     # what training sees (one per antibody or sentence)

    def add(self, severity: str, file: str, reason: str, row: int | None = None, column: str | None = None):
        self.problems.append(Problem(severity, file, reason, row, column))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"kind": self.kind, "folder": self.folder, "ok": self.ok, "samples": self.samples,
                "rows": dict(self.rows), "errors": len(self.errors), "warnings": len(self.warnings),
                "problems": [asdict(p) for p in self.problems]}

    def format(self, per_file: int = 20) -> str:
        """A human summary: counts, then every error and warning (at most `per_file` per file and severity;
        the JSON form lists them all)."""
        lines = [f"{self.kind} data in {self.folder}: {self.samples} samples; "
                 f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        lines += [f"  {name}: {n} {'rows' if self.kind == 'fitness' else 'sentences'}"
                  for name, n in self.rows.items()]
        for group in (self.errors, self.warnings):
            shown: dict[str, int] = defaultdict(int)
            for p in group:
                shown[p.file] += 1
                if shown[p.file] <= per_file:
                    lines.append(f"  {p}")
            for file, n in shown.items():
                if n > per_file:
                    lines.append(f"  ... and {n - per_file} more {group[0].severity}(s) in {file or '(folder)'} "
                                 f"(--json lists all)")
        return "\n".join(lines)


def kinds_present(folder: str | Path) -> list[str]:
    """The kinds of data a site folder holds: fitness (FLAb layout) and/or sentiment (an FPB-format file)."""
    folder = Path(folder)
    if folder.is_file():
        return ["sentiment"]
    kinds = []
    if folder.is_dir() and ((folder / "assays.csv").exists() or any(folder.glob("*/*.csv"))):
        kinds.append("fitness")
    if folder.is_dir() and sentiment_path(folder).exists():
        kinds.append("sentiment")
    return kinds


def check_folder(folder: str | Path, kinds: list[str] | None = None) -> list[CheckReport]:
    """Check every kind present in `folder` (or the given kinds); a folder with no data is one error."""
    kinds = kinds or kinds_present(folder)
    if not kinds:
        report = CheckReport("site", str(folder))
        report.add(ERROR, "", "no such folder" if not Path(folder).exists() else
                   f"no site data: neither assays.csv / <task>/<assay>.csv (fitness) nor {SENTIMENT_FILE} "
                   f"(sentiment); see `fedtune prepare-data`")
        return [report]
    return [check_site(kind, folder) for kind in kinds]


def check_site(kind: str, folder: str | Path) -> CheckReport:
    """Every problem of one kind of data in a site folder; never raises on bad data."""
    folder = Path(folder)
    report = CheckReport(check_kind(kind), str(folder))
    if not folder.exists():
        report.add(ERROR, "", "no such file or folder")
        return report
    if kind == "fitness":
        _check_fitness(folder, report)
    else:
        _check_sentiment(folder, report)
    if report.ok:    # the loader has the last word: what passes here must load
        try:
            report.samples = len(load_site_data(kind, folder))
        except DataError as exc:   # pragma: no cover - the rules above are the loader's own
            report.add(ERROR, "", str(exc))
            return report
        if report.samples < MIN_SAMPLES:
            report.add(ERROR, "", f"{report.samples} sample(s): no data to train on (a site needs at least "
                                  f"{MIN_SAMPLES}, split into train and validation)")
    return report


def _reason(exc: Exception, *paths: Path) -> str:
    """A loader's message without the path prefix (the report names the file in its own field)."""
    text = str(exc)
    for path in paths:
        text = text.removeprefix(f"{path}: ")
    return text


def _check_fitness(folder: Path, report: CheckReport) -> None:
    if not folder.is_dir():
        report.add(ERROR, "", "not a folder (fitness data is a FLAb folder: assays.csv + <task>/<assay>.csv)")
        return
    try:
        assays = load_assays(folder)
    except (DataError, OSError, UnicodeDecodeError, csv.Error) as exc:
        report.add(ERROR, "assays.csv", _reason(exc, folder / "assays.csv", folder))
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
        report.add(ERROR, rel, _reason(exc, path))
        return
    for labels in by_antibody.values():
        if len(labels) > 1:
            rows = sorted(labels.values())
            report.add(WARNING, rel, "the same antibody has different labels: "
                       + ", ".join(f"{v:g} (row {r})" for v, r in sorted(labels.items(), key=lambda x: x[1]))
                       + "; each becomes a separate training sample", rows[0], "fitness")
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
        report.add(WARNING, rel, f"all {n} labels are {lo:g}: no signal to learn", column="fitness")
        return
    flagged = set()
    for m in SENTINEL_NOTE.finditer(assay.measure):
        value, meaning = float(m.group(1)), m.group(0).strip()
        rows = [r for v, r in values if v == value]
        if rows:
            flagged.add(value)
            report.add(WARNING, rel, f"{_rows(rows, n)} at {value:g}, documented in assays.csv as {meaning!r}: "
                                     f"a sentinel, not a measurement", rows[0], "fitness")
    for name, extreme in (("minimum", lo), ("maximum", hi)):
        rows = [r for v, r in values if v == extreme]
        if extreme not in flagged and len(rows) >= max(CAP_MIN_ROWS, CAP_SHARE * n):
            report.add(WARNING, rel, f"{_rows(rows, n)} sit exactly at the assay's {name} {extreme:g}: "
                                     f"capped or sentinel values?", rows[0], "fitness")


def _rows(rows: list[int], n: int) -> str:
    shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
    return f"{len(rows)} of {n} rows ({100 * len(rows) / n:.0f}%; rows {shown})"


def _check_sentiment(folder: Path, report: CheckReport) -> None:
    path = sentiment_path(folder)
    rel = str(path.relative_to(folder)) if folder.is_dir() else path.name
    if not path.is_file():
        report.add(ERROR, rel, f"no sentiment file (a site folder holds {SENTIMENT_FILE}: 'sentence@label' lines)")
        return
    if path.stat().st_size == 0:
        report.add(ERROR, rel, "empty file")
        return
    first: dict[str, tuple[int, int]] = {}
    counts = dict.fromkeys(SENTIMENT_LABELS, 0)
    try:
        for i, parsed, problem in iter_fpb_lines(path):
            if problem:
                report.add(ERROR, rel, problem, i)
                continue
            text, label = parsed
            if text not in first:
                first[text] = (i, label)
                counts[SENTIMENT_LABELS[label]] += 1
            elif first[text][1] == label:
                report.add(WARNING, rel, f"exact duplicate of line {first[text][0]} (training keeps it once)", i)
            else:
                j, kept = first[text]
                report.add(WARNING, rel, f"same sentence as line {j} with a different label "
                                         f"({SENTIMENT_LABELS[label]} here, {SENTIMENT_LABELS[kept]} there); "
                                         f"training keeps line {j}", i)
    except DataError as exc:
        report.add(ERROR, rel, _reason(exc, path))
        return
    report.rows = counts
    for label, n in counts.items():
        if first and n < MIN_ROWS:
            report.add(WARNING, rel, f"label {label!r}: only {n} sentence(s) (fewer than {MIN_ROWS})")


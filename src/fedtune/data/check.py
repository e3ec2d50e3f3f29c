"""Check a site's data folder before training, reporting every problem (file, row, column, reason).

The common part: a report (`CheckReport` of `Problem`s) and the dispatch over the task kinds
(`fedtune.tasks`): each kind says whether a folder holds its data (`Task.detect`) and checks it
(`Task.check`, e.g. `data.flab_check`, `data.fpb_check`). Each kind reads its rows with its loader's own rules,
so a folder without errors here is one the kind's loader accepts, and the loader itself confirms it at the end.
Errors are what the loaders refuse (unreadable file, missing columns, invalid residues, unknown labels,
non-finite labels, empty data). Warnings are what they accept but a data engineer should look at: exact
duplicate rows, one sample with conflicting labels, values that look capped, labels with few rows.

The registry sits above data/ (it imports the loaders), hence its lazy import here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .sequences import DataError
from .site import MIN_SAMPLES

ERROR, WARNING = "error", "warning"
MIN_ROWS = 10        # fewer labelled rows for an assay (or sentences for a label): a warning


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
    unit: str = "rows"                                   # what `rows` counts, for `format` (the kind's check sets it)

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
        lines += [f"  {name}: {n} {self.unit}"
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
    """The kinds of data a site folder (or a file) holds, in registry order (`Task.detect`)."""
    from ..tasks import get, kinds
    return [kind for kind in kinds() if get(kind).detect(Path(folder))]


def check_folder(folder: str | Path, kinds: list[str] | None = None) -> list[CheckReport]:
    """Check every kind present in `folder` (or the given kinds); a folder with no data is one error."""
    from ..tasks import get, kinds as every_kind
    kinds = kinds or kinds_present(folder)
    if not kinds:
        report = CheckReport("site", str(folder))
        layouts = " nor ".join(f"{get(k).site_files} ({k})" for k in every_kind())
        report.add(ERROR, "", "no such folder" if not Path(folder).exists() else
                   f"no site data: neither {layouts}; see `fedtune prepare-data`")
        return [report]
    return [check_site(kind, folder) for kind in kinds]


def check_site(kind: str, folder: str | Path) -> CheckReport:
    """Every problem of one kind of data in a site folder; never raises on bad data (an unknown kind is a
    ValueError)."""
    from ..tasks import get
    task = get(kind)
    folder = Path(folder)
    report = CheckReport(task.name, str(folder))
    if not folder.exists():
        report.add(ERROR, "", "no such file or folder")
        return report
    task.check(folder, report)
    if report.ok:    # the loader has the last word: what passes here must load
        try:
            report.samples = len(task.read(folder))
        except DataError as exc:   # pragma: no cover - the kind's checks are its loader's own rules
            report.add(ERROR, "", str(exc))
            return report
        if report.samples < MIN_SAMPLES:
            report.add(ERROR, "", f"{report.samples} sample(s): no data to train on (a site needs at least "
                                  f"{MIN_SAMPLES}, split into train and validation)")
    return report


def reason_of(exc: Exception, *paths: Path) -> str:
    """A loader's message without the path prefix (the report names the file in its own field)."""
    text = str(exc)
    for path in paths:
        text = text.removeprefix(f"{path}: ")
    return text

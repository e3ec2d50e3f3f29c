"""FLAb antibody fitness data: one folder per task, one CSV per assay with `heavy,light,fitness`.

A root folder looks like `../shared/data/flab`: `<task>/<assay>.csv` plus an optional `assays.csv`
(`task,assay,rows,measure,favourable`). Rows are grouped by antibody (the heavy+light pair): one sample
carries every label the antibody has, NaN where it has none, so one trunk pass serves all tasks. An
antibody measured twice in the same assay yields a second sample, so every CSV row is used exactly once.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sequences import MAX_CHAIN_LENGTH, DataError, chain_problem, normalise

FITNESS_TASKS = ("aggregation", "binding", "expression", "immunogenicity", "polyreactivity", "thermostability")


@dataclass(frozen=True)
class Assay:
    task: str
    name: str
    favourable: str = "higher"   # "higher" or "lower"
    measure: str = ""

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"

    @property
    def sign(self) -> int:
        return 1 if self.favourable == "higher" else -1

    def to_dict(self) -> dict:
        return {"task": self.task, "name": self.name, "favourable": self.favourable, "measure": self.measure}

    @classmethod
    def from_dict(cls, d: dict) -> "Assay":
        return cls(d["task"], d["name"], d.get("favourable", "higher"), d.get("measure", ""))


@dataclass
class FitnessData:
    heavy: list[str]
    light: list[str]
    labels: np.ndarray            # float32 [N, A], NaN = no label
    assays: list[Assay]

    def __len__(self) -> int:
        return len(self.heavy)

    def subset(self, idx) -> "FitnessData":
        idx = np.asarray(idx, dtype=np.int64)
        return FitnessData([self.heavy[i] for i in idx], [self.light[i] for i in idx],
                           self.labels[idx], list(self.assays))

    def antibody_ids(self) -> list[str]:
        return [f"{h}/{l}" for h, l in zip(self.heavy, self.light)]

    # the samples protocol (shared with the other data containers): split unit, lengths, model inputs, union
    def split_ids(self) -> list[str]:
        """The split unit: the antibody (duplicates of one heavy+light pair never straddle a split)."""
        return self.antibody_ids()

    def lengths(self) -> np.ndarray:
        return np.array([len(h) + len(l) for h, l in zip(self.heavy, self.light)])

    def inputs(self, idx) -> tuple[list[str], list[str]]:
        """What the model embeds for rows `idx`: (heavy chains, light chains)."""
        return [self.heavy[i] for i in idx], [self.light[i] for i in idx]

    @classmethod
    def concat(cls, parts: list["FitnessData"]) -> "FitnessData":
        """The union of several parts with the same assay list (e.g. every site's training rows)."""
        return cls([h for p in parts for h in p.heavy], [lt for p in parts for lt in p.light],
                   np.concatenate([p.labels for p in parts]), list(parts[0].assays))

    @property
    def tasks(self) -> list[str]:
        return ordered_tasks(self.assays)

    def task_assays(self, task: str) -> list[int]:
        return [i for i, a in enumerate(self.assays) if a.task == task]

    def rows_per_assay(self) -> dict[str, int]:
        return {a.key: int((~np.isnan(self.labels[:, i])).sum()) for i, a in enumerate(self.assays)}

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in self.assays:
            h.update(a.key.encode())
        for hv, lt, row in zip(self.heavy, self.light, self.labels):
            h.update(f"{hv},{lt},".encode())
            h.update(np.nan_to_num(row, nan=-1e30).astype(np.float32).tobytes())
        return h.hexdigest()


def ordered_tasks(assays: list[Assay]) -> list[str]:
    seen = []
    for a in assays:
        if a.task not in seen:
            seen.append(a.task)
    return seen


def load_assays(root: str | Path) -> list[Assay]:
    """The assay table of a FLAb folder: `assays.csv` when present, else every `<task>/<assay>.csv`."""
    root = Path(root)
    table = root / "assays.csv"
    if table.exists():
        out = []
        with table.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"task", "assay"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{table}: missing column(s) {sorted(missing)}; expected task,assay,rows,measure,"
                                f"favourable")
            for i, row in enumerate(reader, start=2):
                task, name = (row.get("task") or "").strip(), (row.get("assay") or "").strip()
                if not task or not name:
                    raise DataError(f"{table}: row {i}: empty task or assay")
                fav = (row.get("favourable") or "higher").strip()
                if fav not in ("higher", "lower"):
                    raise DataError(f"{table}: row {i}: favourable must be 'higher' or 'lower', got {fav!r}")
                out.append(Assay(task, name, fav, (row.get("measure") or "").strip()))
        return sort_assays(out)
    found = [Assay(p.parent.name, p.stem) for p in sorted(root.glob("*/*.csv"))]
    if not found:
        raise DataError(f"{root}: no assays.csv and no <task>/<assay>.csv files")
    return sort_assays(found)


def assay_path(root: Path, assay: Assay) -> Path:
    """The file of an assay's rows under a FLAb folder. Task and assay must be plain names: an assay list
    (a site's assays.csv, or a job's) cannot point outside the folder."""
    for part in (assay.task, assay.name):
        if not part or part.startswith(".") or "/" in part or "\\" in part:
            raise DataError(f"assay {assay.task!r}/{assay.name!r}: task and assay must be plain names")
    return root / assay.task / f"{assay.name}.csv"


def sort_assays(assays: list[Assay]) -> list[Assay]:
    order = {t: i for i, t in enumerate(FITNESS_TASKS)}
    return sorted(assays, key=lambda a: (order.get(a.task, len(order)), a.task, a.name))


ASSAY_COLUMNS = ("heavy", "light", "fitness")


def parse_assay_row(row: dict, max_length: int = MAX_CHAIN_LENGTH) -> tuple[tuple[str, str, float] | None, list]:
    """One CSV row -> ((heavy, light, value), []) when valid, else (None, [(column, reason), ...]) naming
    every problem of the row. The one definition of a valid row, shared by the loader and `check_site`."""
    chains, problems = {}, []
    for col in ("heavy", "light"):
        seq = normalise(row.get(col) or "")
        problem = chain_problem(seq, max_length)
        if problem:
            problems.append((col, problem))
        chains[col] = seq
    raw = row.get("fitness")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        problems.append(("fitness", f"not a number: {raw!r}"))
    else:
        if not np.isfinite(value):
            problems.append(("fitness", f"not finite: {raw!r}"))
    return (None if problems else (chains["heavy"], chains["light"], value)), problems


def iter_assay_rows(path: Path, max_length: int = MAX_CHAIN_LENGTH):
    """Yield (row number, parsed row or None, problems) for every data row of one assay file (the header is
    row 1). A file that cannot be read as such (missing columns, not UTF-8, broken CSV) raises DataError."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(ASSAY_COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: missing column(s) {sorted(missing)}; expected heavy,light,fitness")
            for i, row in enumerate(reader, start=2):
                yield (i, *parse_assay_row(row, max_length))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (csv.Error, OSError) as exc:
        raise DataError(f"{path}: cannot be read as CSV: {exc}") from None


def read_assay_csv(path: Path, max_length: int = MAX_CHAIN_LENGTH) -> list[tuple[str, str, float]]:
    """Rows of one assay file, every sequence validated; a bad row raises DataError naming file and row."""
    rows = []
    for i, parsed, problems in iter_assay_rows(path, max_length):
        if problems:
            col, why = problems[0]
            raise DataError(f"{path}: row {i}, column {col}: {why}")
        rows.append(parsed)
    return rows


def load_flab(root: str | Path, assays: list[Assay] | None = None,
              max_length: int = MAX_CHAIN_LENGTH) -> FitnessData:
    """Load a FLAb folder. `assays` fixes the assay list (and order), as the job configuration does;
    an assay of that list with no file at this site simply has no labels here."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    assays = sort_assays(assays) if assays is not None else load_assays(root)
    values: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    order: list[tuple[str, str]] = []
    for j, assay in enumerate(assays):
        path = assay_path(root, assay)
        if not path.exists():
            continue
        for heavy, light, value in read_assay_csv(path, max_length):
            key = (heavy, light)
            if key not in values:
                order.append(key)
            values[key][j].append(value)
    heavy, light, rows = [], [], []
    for key in order:
        per_assay = values[key]
        for copy in range(max(len(v) for v in per_assay.values())):
            row = np.full(len(assays), np.nan, dtype=np.float32)
            for j, vals in per_assay.items():
                if copy < len(vals):
                    row[j] = vals[copy]
            heavy.append(key[0])
            light.append(key[1])
            rows.append(row)
    labels = np.stack(rows) if rows else np.zeros((0, len(assays)), dtype=np.float32)
    return FitnessData(heavy, light, labels, list(assays))


def write_flab(data: FitnessData, root: str | Path) -> Path:
    """Write FitnessData in FLAb layout (one CSV per assay with its rows, plus assays.csv)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "assays.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["task", "assay", "rows", "measure", "favourable"])
        counts = data.rows_per_assay()
        for a in data.assays:
            w.writerow([a.task, a.name, counts[a.key], a.measure, a.favourable])
    for j, a in enumerate(data.assays):
        (root / a.task).mkdir(exist_ok=True)
        with (root / a.task / f"{a.name}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["heavy", "light", "fitness"])
            for hv, lt, v in zip(data.heavy, data.light, data.labels[:, j]):
                if not np.isnan(v):
                    w.writerow([hv, lt, repr(float(v))])
    return root

"""Data of the `sequences` kind: a CSV (`data.csv`) of one or two sequence columns and the label columns its
task card (`task.json`, see `sequences_card`) names; its reader, writer, site split and synthetic data.

Split unit: the sequence tuple (the row's sequences together), so identical inputs never straddle a split.
Regression labels are float32 [N, L] with NaN where a row has none; a classification label is an int64 [N]
index into the card's class names.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.sequences import AMINO_ACIDS, DataError, chain_problem, normalise
from ..data.split import MAX_DRAWS, MIN_SITE_SAMPLES
from .sequences_card import Card

DATA_FILE = "data.csv"
MAX_TEXT_LENGTH = 4000     # characters of one text cell
UNIT_SEP = "\x1f"          # joins a row's sequences into its split unit


@dataclass
class SequenceData:
    seqs: list[list[str]]        # [S][N]: one list per sequence column of the card
    labels: np.ndarray           # float32 [N, L] (regression, NaN = missing) or int64 [N] (classification)
    card: Card

    def __len__(self) -> int:
        return len(self.seqs[0])

    def subset(self, idx) -> "SequenceData":
        idx = np.asarray(idx, dtype=np.int64)
        return SequenceData([[col[i] for i in idx] for col in self.seqs], self.labels[idx], self.card)

    # the samples protocol (shared with the other data containers): split unit, lengths, model inputs, union
    def split_ids(self) -> list[str]:
        """The split unit: the row's sequence tuple."""
        return [UNIT_SEP.join(t) for t in zip(*self.seqs)]

    def lengths(self) -> np.ndarray:
        return np.array([sum(len(s) for s in t) for t in zip(*self.seqs)])

    def inputs(self, idx) -> tuple[list[str], ...]:
        """What the model embeds for rows `idx`: one list per sequence column."""
        return tuple([col[i] for i in idx] for col in self.seqs)

    @classmethod
    def concat(cls, parts: list["SequenceData"]) -> "SequenceData":
        card = parts[0].card
        return cls([[s for p in parts for s in p.seqs[j]] for j in range(len(card.sequence_columns))],
                   np.concatenate([p.labels for p in parts]), card)

    def digest(self) -> str:
        h = hashlib.sha256(repr(self.card.to_dicts()).encode())
        for i, t in enumerate(zip(*self.seqs)):
            h.update(UNIT_SEP.join(t).encode())
            h.update(np.nan_to_num(np.atleast_1d(self.labels[i]), nan=-1e30).astype(np.float64).tobytes())
        return h.hexdigest()

    def rows(self) -> dict[str, int]:
        """Labelled rows per regression label, or rows per class."""
        cls_col = self.card.classification
        if cls_col:
            return {c: int((self.labels == k).sum()) for k, c in enumerate(cls_col.classes)}
        return {c.name: int((~np.isnan(self.labels[:, j])).sum()) for j, c in enumerate(self.card.label_columns)}


def _sequence(cell: str, alphabet: str, column: str) -> str:
    if alphabet == "protein":
        seq = normalise(cell)
        problem = chain_problem(seq)
    else:
        seq = cell.strip()
        problem = ("empty text" if not seq else
                   f"text of length {len(seq)} exceeds the limit of {MAX_TEXT_LENGTH}" if len(seq) > MAX_TEXT_LENGTH
                   else None)
    if problem:
        raise _RowError(problem, column)
    return seq


def _number(cell: str, column: str) -> float:
    cell = cell.strip()
    if not cell:
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise _RowError(f"{cell[:40]!r} is not a number (leave the cell empty for a missing label)", column) from None
    if not math.isfinite(value):
        raise _RowError(f"{cell[:40]!r} is not a finite number", column)
    return value


def _open_rows(path: Path, card: Card):
    """The open file and its DictReader, after the header was checked against the card."""
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None
    try:
        reader = csv.DictReader(f)
        header = reader.fieldnames
    except (UnicodeDecodeError, csv.Error) as exc:
        f.close()
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV: {exc}") from None
    if not header:
        f.close()
        raise DataError(f"{path}: empty file (expected a header row naming the card's columns)")
    dup = sorted({h for h in header if header.count(h) > 1})
    missing = [c.name for c in card.columns if c.name not in header]
    if dup or missing:
        f.close()
        raise DataError(f"{path}: " + (f"the header names column(s) {dup} twice" if dup else
                                       f"the task card names column(s) {missing} that the CSV header lacks "
                                       f"(header: {header[:12]})"))
    return f, reader


def _parse(row: dict, card: Card):
    """(sequences, label) of one CSV row under `card`, or raise DataError(reason, column)."""
    if None in row or any(row.get(c.name) is None for c in card.columns):
        raise _RowError("the number of cells differs from the header's")
    seqs = []
    for c in card.sequence_columns:
        seqs.append(_sequence(row[c.name], c.alphabet, c.name))
    cls_col = card.classification
    if cls_col:
        name = row[cls_col.name].strip()
        if name not in cls_col.classes:
            raise _RowError(f"unknown class {name[:40]!r}; the card's classes are {list(cls_col.classes)}",
                            cls_col.name)
        return seqs, cls_col.classes.index(name)
    values = [_number(row[c.name], c.name) for c in card.label_columns]
    if all(math.isnan(v) for v in values):
        raise _RowError("no label at all (every label cell is empty)")
    return seqs, values


class _RowError(DataError):
    def __init__(self, reason: str, column: str | None = None):
        super().__init__(reason)
        self.reason, self.column = reason, column


def iter_rows(path: str | Path, card: Card):
    """Yield (CSV row number, (sequences, label) or None, (reason, column) or None) for every data row of
    `data.csv` under `card`: the one definition of a valid row, shared by the loader and the site check.
    A file or header that cannot be used raises DataError."""
    path = Path(path)
    if path.is_dir():
        path = path / DATA_FILE
    f, reader = _open_rows(path, card)
    with f:
        try:
            for r, row in enumerate(reader, start=2):
                try:
                    yield r, _parse(row, card), None
                except _RowError as exc:
                    yield r, None, (exc.reason, exc.column)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: cannot be read as a UTF-8 CSV: {exc}") from None


def read_table(path: str | Path, card: Card) -> SequenceData:
    """The rows of `data.csv` under `card`; DataError names the file, row, column and what is wrong."""
    path = Path(path)
    path = path / DATA_FILE if path.is_dir() else path
    seqs: list[list[str]] = [[] for _ in card.sequence_columns]
    labels: list = []
    for r, parsed, problem in iter_rows(path, card):
        if problem:
            reason, column = problem
            raise DataError(f"{path}: row {r}" + (f", column {column!r}" if column else "") + f": {reason}")
        for j, s in enumerate(parsed[0]):
            seqs[j].append(s)
        labels.append(parsed[1])
    if not labels:
        raise DataError(f"{path}: no data rows")
    arr = (np.asarray(labels, dtype=np.int64) if card.classification
           else np.asarray(labels, dtype=np.float32).reshape(len(labels), len(card.label_columns)))
    return SequenceData(seqs, arr, card)


def write_table(data: SequenceData, folder: str | Path) -> Path:
    """`data.csv` + `task.json` in `folder` (created), read back identically by `read_table`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card, cls_col = data.card, data.card.classification
    with (folder / DATA_FILE).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([c.name for c in card.columns])
        for i, t in enumerate(zip(*data.seqs)):
            if cls_col:
                cells = [cls_col.classes[int(data.labels[i])]]
            else:
                cells = ["" if np.isnan(v) else str(np.float32(v)) for v in data.labels[i]]   # shortest exact float32
            w.writerow(list(t) + cells)
    card.write(folder)
    return folder


def _groups(data: SequenceData) -> tuple[list[str], dict[str, list[int]]]:
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(data.split_ids()):
        groups.setdefault(key, []).append(i)
    return sorted(groups), groups


def _strata(data: SequenceData, keys: list[str], groups: dict, bins: int = 3) -> np.ndarray:
    """A stratum per split unit for label skew: its class, or a tertile of its first labelled regression value."""
    first = [groups[k][0] for k in keys]          # a unit's first row stands for it
    if data.card.classification:
        return data.labels[first].astype(np.int64)
    lab = data.labels[first]
    val = np.array([row[~np.isnan(row)][0] for row in lab])
    cuts = np.quantile(val, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(cuts, val)


def split_sites(data: SequenceData, n_sites: int, alpha: float, split: str, seed: int) -> list[SequenceData]:
    """IID (shuffled units, equal shares) or label-skewed (`skew`: Dirichlet(alpha) share of each class, or of
    each tertile of the first label, per site), by split unit; deterministic under `seed`."""
    if n_sites < 1:
        raise ValueError("n_sites must be >= 1")
    keys, groups = _groups(data)
    if split == "iid":
        order = np.random.default_rng(seed).permutation(len(keys))
        return [data.subset(sorted(i for g in part for i in groups[keys[g]])) for part in np.array_split(order, n_sites)]
    if split != "skew":
        raise ValueError(f"unknown split mode {split!r}; choose 'iid' or 'skew'")
    strata = _strata(data, keys, groups)
    for draw in range(MAX_DRAWS):
        rng = np.random.default_rng([seed, draw])
        parts: list[list[int]] = [[] for _ in range(n_sites)]
        for s in np.unique(strata):
            units = rng.permutation(np.flatnonzero(strata == s))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_sites, alpha)))[:-1] * len(units)).astype(int)
            for k, part in enumerate(np.split(units, cuts)):
                parts[k].extend(i for g in part for i in groups[keys[g]])
        if min(len(p) for p in parts) >= min(MIN_SITE_SAMPLES, len(data) // n_sites):
            return [data.subset(sorted(p)) for p in parts]
    raise ValueError(f"no Dirichlet(alpha={alpha}) draw gave every site data; raise alpha or use fewer sites")


# ---- synthetic data: labels follow the residue composition (protein) or the wording (text)
_GROUPS = ("AILMFVW", "KR", "DE", "FWY")
_ALPHABET = np.array(sorted(AMINO_ACIDS))
_PARENT = "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYC"
SYNTHETIC_REGRESSION = [
    {"name": "chain", "role": "sequence", "alphabet": "protein"},
    {"name": "stability", "role": "regression", "favourable": "higher", "units": "deg C"},
    {"name": "viscosity", "role": "regression", "favourable": "lower", "units": "cP"},
]
SYNTHETIC_CLASSES = [
    {"name": "text", "role": "sequence", "alphabet": "text"},
    {"name": "outcome", "role": "classification", "classes": ["fail", "pass"]},
]


def _mutant(rng: np.random.Generator, rate: float = 0.25) -> str:
    seq = np.array(list(_PARENT))
    hit = rng.random(len(seq)) < rate
    seq[hit] = rng.choice(_ALPHABET, size=int(hit.sum()))
    return "".join(seq[: len(seq) - int(rng.integers(0, 6))])


def synthetic_sequences(n: int, seed: int, specs: list[dict] | None = None) -> SequenceData:
    """Deterministic data with a learnable signal under a card (default `SYNTHETIC_REGRESSION`): protein labels
    are linear in the hydrophobic / charged / aromatic fractions plus noise (about a tenth of the regression
    cells left empty), protein classes are bins of that signal; text says "rose" or "fell" (class 1 or 0)."""
    card = Card.from_dicts(specs or SYNTHETIC_REGRESSION)
    rng = np.random.default_rng(seed)
    width = card.n_outputs
    if card.alphabet == "text":
        words = (["fell", "failed", "dropped", "collapsed"], ["rose", "passed", "held", "improved"])
        seqs = [[f"batch {int(rng.integers(10**6))} {c.name} {rng.choice(words[k % 2])} in run {int(rng.integers(99))}"
                 for k in range(n)] for c in card.sequence_columns]
        signal = np.repeat((np.arange(n) % 2 * 2.0 - 1.0)[:, None], width, axis=1)       # -1 fell, +1 rose
    else:
        seqs = [[_mutant(rng) for _ in range(n)] for _ in card.sequence_columns]
        feats = np.array([np.concatenate([[sum(s.count(a) for a in g) / len(s) for g in _GROUPS] for s in t])
                          for t in zip(*seqs)])
        feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-9)
        signal = feats @ np.random.default_rng(777).normal(size=(feats.shape[1], width))
        signal = (signal - signal.mean(0)) / (signal.std(0) + 1e-9)
    cls_col = card.classification
    if cls_col:
        cuts = np.quantile(signal[:, 0], np.linspace(0, 1, len(cls_col.classes) + 1)[1:-1])
        return SequenceData(seqs, np.digitize(signal[:, 0], cuts).astype(np.int64), card)
    signs = np.array([c.sign for c in card.label_columns])
    raw = 10.0 + 3.0 * signs * (signal + 0.2 * rng.normal(size=signal.shape))
    raw[rng.random(raw.shape) < 0.1] = np.nan
    empty = np.isnan(raw).all(1)
    raw[empty, 0] = 10.0 + 3.0 * signs[0] * signal[empty, 0]          # every row keeps a label
    return SequenceData(seqs, raw.astype(np.float32), card)

"""The site-data check of the `sequences` kind (`fedtune check-data`): the card, then every row of `data.csv`
read with the loader's own rules (`sequences_data.iter_rows`), each problem reported with its row and column;
warnings for exact duplicates, one sequence tuple with different labels, and labels with few rows."""

from __future__ import annotations

import math
from pathlib import Path

from ..data.sequences import DataError
from .sequences_card import CARD_FILE, Card
from .sequences_data import DATA_FILE, iter_rows

MIN_ROWS = 10          # fewer labelled rows for a label (or rows for a class): a warning


def _reason(exc: Exception, path: Path) -> str:
    return str(exc).removeprefix(f"{path}: ")


def check_folder(folder: Path, report) -> None:
    """Add every problem of `folder` (task.json + data.csv) to `report` (`data.check.CheckReport`); never raises
    on bad data."""
    from ..data.check import ERROR, WARNING
    report.unit = "labelled rows"
    try:
        card = Card.read(folder)
    except DataError as exc:
        report.add(ERROR, CARD_FILE, _reason(exc, folder / CARD_FILE))
        return
    path = folder / DATA_FILE
    cls_col = card.classification
    names = list(cls_col.classes) if cls_col else [c.name for c in card.label_columns]
    counts = dict.fromkeys(names, 0)
    first: dict[tuple, tuple[int, object]] = {}
    try:
        for r, parsed, problem in iter_rows(path, card):
            if problem:
                report.add(ERROR, DATA_FILE, problem[0], r, problem[1])
                continue
            seqs, label = parsed
            key, value = tuple(seqs), (label if cls_col else tuple("" if math.isnan(v) else v for v in label))
            if cls_col:
                counts[cls_col.classes[label]] += 1
            else:
                for name, v in zip(names, label):
                    counts[name] += not math.isnan(v)
            report.samples += 1
            if key not in first:
                first[key] = (r, value)
            elif first[key][1] == value:
                report.add(WARNING, DATA_FILE, f"exact duplicate of row {first[key][0]}", r)
            else:
                report.add(WARNING, DATA_FILE, f"same sequences as row {first[key][0]} with different labels "
                                               f"(both are trained on; they never straddle a split)", r)
    except DataError as exc:
        report.add(ERROR, DATA_FILE, _reason(exc, path))
        return
    if not report.samples and not report.errors:
        report.add(ERROR, DATA_FILE, "no data rows")
    report.rows = counts
    for name, n in counts.items():
        if report.samples and n < MIN_ROWS:
            report.add(WARNING, DATA_FILE, f"{'class' if cls_col else 'label'} {name!r}: only {n} row(s) "
                                           f"(fewer than {MIN_ROWS})")

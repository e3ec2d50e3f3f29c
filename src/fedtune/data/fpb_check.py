"""The site-data check of a Financial PhraseBank file (`Sentences.txt`, or the original FPB files): every line
read with the loader's own rules (`fpb.iter_fpb_lines`); warnings for duplicates, one sentence with two labels
and labels with few sentences. Called by the kind that reads FPB files."""

from __future__ import annotations

from pathlib import Path

from .check import ERROR, MIN_ROWS, WARNING, CheckReport, reason_of
from .fpb import SENTIMENT_LABELS, SITE_FILE, iter_fpb_lines, site_file
from .sequences import DataError


def check_fpb(folder: Path, report: CheckReport) -> None:
    """Every problem of a site's FPB file (`sentence@label` lines), sentences per label."""
    report.unit = "sentences"
    path = site_file(folder)
    rel = str(path.relative_to(folder)) if folder.is_dir() else path.name
    if not path.is_file():
        report.add(ERROR, rel, f"no sentiment file (a site folder holds {SITE_FILE}: 'sentence@label' lines)")
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
        report.add(ERROR, rel, reason_of(exc, path))
        return
    report.rows = counts
    for label, n in counts.items():
        if first and n < MIN_ROWS:
            report.add(WARNING, rel, f"label {label!r}: only {n} sentence(s) (fewer than {MIN_ROWS})")

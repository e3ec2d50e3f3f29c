"""A site's data folder, as `fedtune client --data DIR` and `fedtune train-local --data DIR` read it.

- fitness: FLAb layout (`assays.csv` + `<task>/<assay>.csv` with heavy,light,fitness)
- sentiment: one Financial PhraseBank-format file `Sentences.txt` (latin-1, `sentence@label`)
The site splits its rows into train/validation itself, deterministically (by antibody / sentence).
"""

from __future__ import annotations

import json
from pathlib import Path

from .flab import Assay, load_flab, write_flab
from .fpb import AGREEMENT_FILES, SENTIMENT_LABELS, load_fpb, write_fpb
from .sequences import DataError
from .split import site_names, split_fitness_sites, split_sentiment_sites, train_val_split
from .synthetic import synthetic_fitness, synthetic_sentiment

SENTIMENT_FILE = "Sentences.txt"
KINDS = ("fitness", "sentiment")
MIN_SAMPLES = 2   # a site splits its rows into train and validation


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r}; choose one of {KINDS}")
    return kind


def write_site(kind: str, data, folder: str | Path) -> Path:
    folder = Path(folder)
    if check_kind(kind) == "fitness":
        return write_flab(data, folder)
    write_fpb(data, folder / SENTIMENT_FILE)
    return folder


def load_site_data(kind: str, folder: str | Path, assays: list[Assay] | None = None):
    folder = Path(folder)
    if check_kind(kind) == "fitness":
        return load_flab(folder, assays)
    return load_fpb(sentiment_path(folder))


def sentiment_path(folder: str | Path) -> Path:
    """The sentiment file a site reads: `Sentences.txt` in the folder, else the original FPB files' 50Agree
    one; `folder` may also be the file itself."""
    folder = Path(folder)
    if not folder.is_dir():
        return folder
    own = folder / SENTIMENT_FILE
    return own if own.exists() else folder / AGREEMENT_FILES["50"]


def load_site(kind: str, folder: str | Path, assays: list[Assay] | None = None, seed: int = 0,
              val_fraction: float = 0.2):
    """(train, validation) of one site's folder."""
    data = load_site_data(kind, folder, assays)
    if len(data) < MIN_SAMPLES:
        raise DataError(f"{folder}: only {len(data)} sample(s); a site needs at least {MIN_SAMPLES}")
    return train_val_split(data, val_fraction, seed)


def prepare_sites(kind: str, out: str | Path, sites: int = 3, source: str | Path | None = None, alpha: float = 1.0,
                  split: str = "iid", agreement: str = "50", samples: int = 600, seed: int = 0) -> dict:
    """Split a data set (real `source`, else deterministic synthetic data) over sites and write one folder per
    site under `out` (site-1 ... site-N), plus `<kind>-split.json` describing the split. Returns that summary.
    A site folder can hold a fitness and a sentiment data set side by side."""
    out = Path(out)
    if check_kind(kind) == "fitness":
        full = load_flab(source) if source else synthetic_fitness(samples, seed)
        parts = split_fitness_sites(full, sites, alpha, seed)
    else:
        full = load_fpb(source, agreement) if source else synthetic_sentiment(samples, seed)
        parts = split_sentiment_sites(full, sites, split, alpha, seed)
    summary = {"kind": kind, "source": str(source) if source else "synthetic", "alpha": alpha, "split": split,
               "seed": seed, "sites": {}}
    for name, part in zip(site_names(sites), parts):
        write_site(kind, part, out / name)
        counts = (part.rows_per_assay() if kind == "fitness"
                  else {lab: int((part.labels == i).sum()) for i, lab in enumerate(SENTIMENT_LABELS)})
        summary["sites"][name] = {"folder": str(out / name), "samples": len(part), "rows": counts}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{kind}-split.json").write_text(json.dumps(summary, indent=2))
    return summary

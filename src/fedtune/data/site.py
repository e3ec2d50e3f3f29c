"""A site's data folder, as `fedtune client --data DIR` and `fedtune train-local --data DIR` read it.

- fitness: FLAb layout (`assays.csv` + `<task>/<assay>.csv` with heavy,light,fitness)
- sentiment: one Financial PhraseBank-format file `Sentences.txt` (latin-1, `sentence@label`)
The site splits its rows into train/validation itself, deterministically (by antibody / sentence).
"""

from __future__ import annotations

from pathlib import Path

from .flab import Assay, load_flab, write_flab
from .fpb import load_fpb, write_fpb
from .sequences import DataError
from .split import train_val_split

SENTIMENT_FILE = "Sentences.txt"
KINDS = ("fitness", "sentiment")


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
    path = folder / SENTIMENT_FILE if folder.is_dir() else folder
    if folder.is_dir() and not path.exists():
        return load_fpb(folder)  # a folder with the original FPB files (50Agree)
    return load_fpb(path)


def load_site(kind: str, folder: str | Path, assays: list[Assay] | None = None, seed: int = 0,
              val_fraction: float = 0.2):
    """(train, validation) of one site's folder."""
    data = load_site_data(kind, folder, assays)
    if len(data) < 2:
        raise DataError(f"{folder}: only {len(data)} sample(s); a site needs at least 2")
    return train_val_split(data, val_fraction, seed)

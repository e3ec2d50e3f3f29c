"""Compatibility shim, to be removed in the next step of issue 14: a site folder's layout, reader, writer and
split belong to its task kind (`fedtune.tasks.get(kind).load_site(...)`, `.read(...)`, `.write(...)`,
`.prepare_sites(...)`).

Kept only because `fedtune.fl.client` and the federation and data-check tests still call these by kind name;
they resolve the kind through the registry at call time (an upward import, hence lazy).
"""

from __future__ import annotations

from pathlib import Path

from .fpb import AGREEMENT_FILES
from .sequences import DataError

SENTIMENT_FILE = "Sentences.txt"
MIN_SAMPLES = 2   # a site splits its rows into train and validation


def sentiment_path(folder: str | Path) -> Path:
    """The sentiment file a site reads: `Sentences.txt` in the folder, else the original FPB files' 50Agree
    one; `folder` may also be the file itself."""
    folder = Path(folder)
    if not folder.is_dir():
        return folder
    own = folder / SENTIMENT_FILE
    return own if own.exists() else folder / AGREEMENT_FILES["50"]


def check_kind(kind: str) -> str:
    from ..tasks import kinds
    if kind not in kinds():
        raise DataError(f"unknown kind {kind!r}; choose one of {kinds()}")
    return kind


def write_site(kind: str, data, folder: str | Path) -> Path:
    from ..tasks import get
    return get(check_kind(kind)).write(data, folder)


def load_site_data(kind: str, folder: str | Path, assays=None):
    from ..tasks import get
    return get(check_kind(kind)).read(folder, assays)


def load_site(kind: str, folder: str | Path, assays=None, seed: int = 0, val_fraction: float = 0.2):
    """(train, validation) of one site's folder."""
    from ..tasks import get
    return get(check_kind(kind)).load_site(folder, assays, seed=seed, val_fraction=val_fraction)


def prepare_sites(kind: str, out: str | Path, sites: int = 3, source: str | Path | None = None, alpha: float = 1.0,
                  split: str = "iid", agreement: str = "50", samples: int = 600, seed: int = 0) -> dict:
    from ..tasks import get
    return get(check_kind(kind)).prepare_sites(out, sites, source, alpha, split, agreement, samples, seed)


def __getattr__(name: str):
    if name == "KINDS":
        from ..tasks import kinds
        return kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

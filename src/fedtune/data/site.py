"""Compatibility shim, to be removed in the next step of issue 14: a site folder's layout, reader, writer and
split belong to its task kind (`fedtune.tasks.get(kind).load_site(...)`, `.write(...)`, `.prepare_sites(...)`).

Kept only because `fedtune.fl.client` and the federation tests still call these by kind name; they resolve the
kind through the registry at call time (an upward import, hence lazy).
"""

from __future__ import annotations

from pathlib import Path


def write_site(kind: str, data, folder: str | Path) -> Path:
    from ..tasks import get
    return get(kind).write(data, folder)


def load_site(kind: str, folder: str | Path, assays=None, seed: int = 0, val_fraction: float = 0.2):
    """(train, validation) of one site's folder."""
    from ..tasks import get
    return get(kind).load_site(folder, assays, seed=seed, val_fraction=val_fraction)

"""Frozen-trunk embeddings shared by every Trainer of one process.

A frozen trunk maps the same rows to the same embeddings whichever model it sits in: `fedtune compare` scores
every site's final model of every run on every site's test split (the cross-site matrix) and runs the
membership attack on each, and with a frozen trunk each of those used to run the trunk over the rows again
(AntiBERTy: minutes per run on 2 CPU cores). Here they are computed once per (trunk content, data object).

The key is a digest of the trunk's weights (names, dtypes, shapes and bytes) plus everything else that changes
what `model.embed` returns (model class, tokenizer max length, device, autocast, eval batch size); the entry
holds a reference to the data object and is used only for that very object, so a recycled `id()` cannot alias.
The store is a small LRU (`MAX_ENTRIES` data objects): a process that embeds many datasets keeps only the latest.

**On disk, across processes** (`use_disk`): every federated job runs in a new process at the site, so without a
disk layer each job of a site with a frozen trunk (FedAvg, ridge, ridge-MLP, a resumed job, ...) ran the trunk over
the same rows again. With a folder set (`fedtune client` sets `<kit>/fedtune-embeddings`, override or switch off
with FEDTUNE_EMBEDDING_CACHE=<folder>|off), an embedding computed once is stored as
`emb-<digest>.safetensors`; the digest covers the same key plus the data's class, row count and content digest
(every input and label, in order), and the file's metadata repeats the key, which is compared on load. The folder
is created owner-only (0700), files are written 0600 through a temporary file and an atomic rename. A file that
fails to load, or whose key, shape or values do not fit, is ignored with a warning and recomputed; nothing outside
the folder's `emb-*.safetensors` names is ever written. These are derived from the site's private rows: they stay
in the site's own kit, like its data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

MAX_ENTRIES = 64
ENV = "FEDTUNE_EMBEDDING_CACHE"
_store: OrderedDict[tuple, tuple[object, torch.Tensor]] = OrderedDict()
_disk: Path | None = None
_damaged: set[Path] = set()


def trunk_digest(trunk: nn.Module) -> str:
    """Content digest of a trunk's weights and buffers."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(trunk.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_key(model: nn.Module, device: torch.device, autocast: bool, batch_size: int) -> tuple:
    """What, besides the rows, decides a frozen trunk's embeddings."""
    trunk = model.trunk
    return (type(model).__qualname__, getattr(trunk, "max_length", None), getattr(trunk, "prompt", None) is None,
            str(device), bool(autocast), int(batch_size), trunk_digest(trunk))


def use_disk(folder: str | Path | None) -> Path | None:
    """Keep embeddings in `folder` too (created owner-only if missing), so later processes reuse them; None or
    "off": memory only. Returns the folder in use."""
    global _disk
    if folder is None or str(folder).strip().lower() in ("", "off", "0", "false", "no"):
        _disk = None
        return None
    folder = Path(folder).expanduser()
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"embedding cache {folder}: not a folder (a symlink or a file is not used)")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _disk = folder
    return folder


def use_disk_from_env() -> Path | None:
    """`use_disk` from FEDTUNE_EMBEDDING_CACHE (unset: memory only); a folder that cannot be used is logged and
    left off: a cache never stops a job."""
    try:
        return use_disk(os.environ.get(ENV))
    except (OSError, ValueError) as exc:
        log.warning("%s: %s; embeddings are kept in memory only", ENV, exc)
        return use_disk(None)


def _disk_entry(key: tuple, data) -> tuple[Path, str] | None:
    if _disk is None or not hasattr(data, "digest"):
        return None
    label = repr((key, type(data).__qualname__, len(data), data.digest()))
    return _disk / f"emb-{hashlib.blake2b(label.encode(), digest_size=20).hexdigest()}.safetensors", label


def _load(entry: tuple[Path, str], data, device: str) -> torch.Tensor | None:
    from safetensors import safe_open

    path, label = entry
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if (f.metadata() or {}).get("key") != label:
                raise ValueError("its key differs from this trunk and data")
            emb = f.get_tensor("embeddings")
        if emb.dtype != torch.float32 or emb.ndim != 2 or emb.shape[0] != len(data) or not torch.isfinite(emb).all():
            raise ValueError(f"shape {tuple(emb.shape)} / dtype {emb.dtype} / values do not fit {len(data)} rows")
    except Exception as exc:        # a damaged file: recompute (and replace it), never fail the job
        log.warning("embedding cache: ignoring %s (%s); recomputing", path.name, exc)
        _damaged.add(path)
        return None
    log.info("embedding cache: read %s (%d rows)", path.name, len(data))
    return emb.to(device)


def _save(entry: tuple[Path, str], emb: torch.Tensor) -> None:
    from safetensors.torch import save_file

    path, label = entry
    try:
        fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=".tmp", dir=path.parent)      # 0600
        os.close(fd)
        try:
            save_file({"embeddings": emb.detach().float().cpu().contiguous()}, tmp, metadata={"key": label})
            os.replace(tmp, path)
            log.info("embedding cache: wrote %s (%d rows)", path.name, emb.shape[0])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except Exception as exc:        # a full disk, a read-only folder: the job goes on without the file
        log.warning("embedding cache: cannot write %s (%s)", path.name, exc)


def get(key: tuple, data) -> torch.Tensor | None:
    hit = _store.get((key, id(data)))
    if hit is not None and hit[0] is data:
        _store.move_to_end((key, id(data)))
        return hit[1]
    entry = _disk_entry(key, data)
    emb = _load(entry, data, key[3]) if entry else None        # key[3]: the device (model_key)
    if emb is not None:
        _remember(key, data, emb)
    return emb


def put(key: tuple, data, emb: torch.Tensor) -> None:
    _remember(key, data, emb)
    entry = _disk_entry(key, data)
    if entry and (not entry[0].exists() or entry[0] in _damaged):
        _save(entry, emb)
        _damaged.discard(entry[0])


def _remember(key: tuple, data, emb: torch.Tensor) -> None:
    _store[(key, id(data))] = (data, emb)
    _store.move_to_end((key, id(data)))
    while len(_store) > MAX_ENTRIES:
        _store.popitem(last=False)


def clear() -> None:
    _store.clear()

"""Frozen-trunk embeddings shared by every Trainer of one process.

A frozen trunk maps the same rows to the same embeddings whichever model it sits in: `fedtune compare` scores
every site's final model of every run on every site's test split (the cross-site matrix) and runs the
membership attack on each, and with a frozen trunk each of those used to run the trunk over the rows again
(AntiBERTy: minutes per run on 2 CPU cores). Here they are computed once per (trunk content, data object).

The key is a digest of the trunk's weights (names, dtypes, shapes and bytes) plus everything else that changes
what `model.embed` returns (model class, tokenizer max length, device, autocast, eval batch size); the entry
holds a reference to the data object and is used only for that very object, so a recycled `id()` cannot alias.
The store is a small LRU (`MAX_ENTRIES` data objects): a process that embeds many datasets keeps only the latest.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn

MAX_ENTRIES = 64
_store: OrderedDict[tuple, tuple[object, torch.Tensor]] = OrderedDict()


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


def get(key: tuple, data) -> torch.Tensor | None:
    hit = _store.get((key, id(data)))
    if hit is None or hit[0] is not data:
        return None
    _store.move_to_end((key, id(data)))
    return hit[1]


def put(key: tuple, data, emb: torch.Tensor) -> None:
    _store[(key, id(data))] = (data, emb)
    _store.move_to_end((key, id(data)))
    while len(_store) > MAX_ENTRIES:
        _store.popitem(last=False)


def clear() -> None:
    _store.clear()

"""Pooled embeddings of items, part by part (a chain, a text), with an optional per-part LRU cache.

Heavy and light chains are embedded separately and concatenated (`Task.item_parts`), so a library of
heavy-chain variants over a few light chains needs each light chain once: the cache keeps each part's pooled
embedding keyed by (namespace, part), the namespace being the bundle digest (plus the backend, when there is
more than one), bounded in bytes (least recently used entries go first). This is exact only because the trunk
is deterministic in eval mode: a part's embedding does not depend on the item or the batch it came with (up to
float rounding of the padded batch shapes, ~1e-6).

`embed_items` is the one way the service's batcher and `fedtune predict` turn items into embeddings.
"""

from __future__ import annotations

import collections
import threading

import numpy as np
import torch

ENTRY_OVERHEAD = 160        # bytes per entry beyond the vector and the key text: dict slot, tuple, array header


class EmbeddingCache:
    """A thread-safe LRU map (namespace, part) -> float32 vector, at most `max_bytes` (vectors + keys +
    ENTRY_OVERHEAD each). Counters: hits (parts of items that needed no trunk pass: cached, or a repeat within
    the batch), misses (parts the trunk embedded), evictions; `bytes` and `entries` now."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"the embedding cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: collections.OrderedDict[tuple[str, str], np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def _size(key: tuple[str, str], vec: np.ndarray) -> int:
        return vec.nbytes + len(key[1]) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, namespace: str, parts) -> dict[str, np.ndarray]:
        """{part: vector} of the `parts` that are cached (each now the most recently used)."""
        found = {}
        with self._lock:
            for part in parts:
                key = (namespace, part)
                vec = self._entries.get(key)
                if vec is not None:
                    self._entries.move_to_end(key)
                    found[part] = vec
        return found

    def count(self, hits: int, misses: int) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses

    def put_many(self, namespace: str, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors (copied: a row of a batch tensor would keep the whole batch alive)."""
        with self._lock:
            for part, vec in vectors.items():
                key = (namespace, part)
                vec = np.array(vec, dtype=np.float32, copy=True)
                size = self._size(key, vec)
                if size > self.max_bytes:
                    continue
                old = self._entries.pop(key, None)
                if old is not None:
                    self.bytes -= self._size(key, old)
                self._entries[key] = vec
                self.bytes += size
                while self.bytes > self.max_bytes:
                    k, v = self._entries.popitem(last=False)
                    self.bytes -= self._size(k, v)
                    self.evictions += 1

    def stats(self) -> dict:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "bytes": self.bytes,
                    "entries": len(self._entries), "max_bytes": self.max_bytes}


def new_cache(mib: float) -> EmbeddingCache | None:
    """A cache of `mib` MiB, or None for 0 (off)."""
    return EmbeddingCache(int(mib * 1024 * 1024)) if mib > 0 else None


def _chunks(order: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Length-sorted indices cut so that each chunk's padded size (count x longest) stays within max_tokens."""
    chunks, chunk, longest = [], [], 0
    for i in order:
        if chunk and (len(chunk) + 1) * max(longest, lengths[i]) > max_tokens:
            chunks.append(chunk)
            chunk, longest = [], 0
        chunk.append(i)
        longest = max(longest, lengths[i])
    if chunk:
        chunks.append(chunk)
    return chunks


def embed_parts(task, model, parts: list[str], max_batch_tokens: int) -> torch.Tensor:
    """Pooled trunk embeddings [len(parts), H] (float32, on the model's device), in length-sorted padded
    chunks of at most `max_batch_tokens`."""
    device = next(model.parameters()).device
    out = torch.empty(len(parts), model.trunk.hidden_size, device=device)
    lengths = [len(p) + 2 for p in parts]     # + the special tokens
    order = sorted(range(len(parts)), key=lengths.__getitem__)
    for chunk in _chunks(order, lengths, max_batch_tokens):
        tokens = model.trunk.tokenize([task.part_text(model, parts[i]) for i in chunk])
        emb = model.trunk(**{k: v.to(device, non_blocking=True) for k, v in tokens.items()})
        out[torch.tensor(chunk, device=device)] = emb.float()
    return out


def embed_items(task, model, items: list, *, cache: EmbeddingCache | None = None, namespace: str = "",
                max_batch_tokens: int = 16384) -> torch.Tensor:
    """Embeddings [len(items), parts x H] of `items` (what `model.embed_tokens` gives for them), each part
    embedded once per call and, with a `cache`, looked up there first (namespace: the bundle digest)."""
    parts = [task.item_parts(model, it) for it in items]
    per_item = {len(p) for p in parts}
    if len(per_item) != 1:
        raise ValueError(f"items with different numbers of parts: {sorted(per_item)}")
    k = per_item.pop()
    flat = [p for ps in parts for p in ps]
    hidden = model.trunk.hidden_size
    if cache is None:           # every part through the trunk, as `embed_tokens` does
        return embed_parts(task, model, flat, max_batch_tokens).reshape(len(items), k * hidden)
    distinct = list(dict.fromkeys(flat))
    vectors = cache.get_many(namespace, distinct)
    missing = [p for p in distinct if p not in vectors]
    cache.count(hits=len(flat) - len(missing), misses=len(missing))    # per part of an item: trunk pass or not
    if missing:
        fresh = embed_parts(task, model, missing, max_batch_tokens).cpu().numpy()
        new = dict(zip(missing, fresh))
        cache.put_many(namespace, new)
        vectors.update(new)
    emb = np.stack([vectors[p] for p in flat]).reshape(len(items), k * hidden)
    return torch.from_numpy(emb).to(next(model.parameters()).device)

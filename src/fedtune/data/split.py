"""Deterministic splits over sites and into train/validation.

Fitness: for every task a Dirichlet(alpha) draw says how that task's data lean over the sites; each
antibody (heavy+light pair, which can appear in several tasks) goes to exactly one site, drawn from the mean
of the leanings of the tasks it has labels for. Train/validation splits are by antibody too, so duplicates
of one antibody never straddle a split.
"""

from __future__ import annotations

import numpy as np

from .flab import FitnessData
from .fpb import SENTIMENT_LABELS, SentimentData

MIN_SITE_SAMPLES = 4
MAX_DRAWS = 200


def site_names(n_sites: int) -> list[str]:
    return [f"site-{i + 1}" for i in range(n_sites)]


def _groups(ids: list[str]) -> tuple[list[str], dict[str, list[int]]]:
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(ids):
        groups.setdefault(key, []).append(i)
    return list(groups), groups


def split_fitness_sites(data: FitnessData, n_sites: int, alpha: float = 1.0, seed: int = 0) -> list[FitnessData]:
    """Dirichlet(alpha) per task, by antibody. Every row lands on exactly one site."""
    if n_sites < 1:
        raise ValueError("n_sites must be >= 1")
    keys, groups = _groups(data.antibody_ids())
    tasks = data.tasks
    task_of = np.array([tasks.index(a.task) for a in data.assays])
    has_task = np.zeros((len(keys), len(tasks)), dtype=bool)
    for g, key in enumerate(keys):
        labelled = ~np.isnan(data.labels[groups[key]]).all(axis=0)
        for j in np.flatnonzero(labelled):
            has_task[g, task_of[j]] = True
    for draw in range(MAX_DRAWS):
        rng = np.random.default_rng([seed, draw])
        lean = rng.dirichlet(np.full(n_sites, alpha), size=len(tasks))          # [T, K]
        order = rng.permutation(len(keys))
        site_of = np.empty(len(keys), dtype=np.int64)
        for g in order:
            p = lean[has_task[g]].mean(0) if has_task[g].any() else np.full(n_sites, 1.0 / n_sites)
            site_of[g] = rng.choice(n_sites, p=p / p.sum())
        sizes = np.array([sum(len(groups[keys[g]]) for g in np.flatnonzero(site_of == k)) for k in range(n_sites)])
        if sizes.min() >= min(MIN_SITE_SAMPLES, len(data) // n_sites):
            break
    else:
        raise ValueError(f"no Dirichlet(alpha={alpha}) draw gave every site data; raise alpha or use fewer sites")
    return [data.subset(sorted(i for g in np.flatnonzero(site_of == k) for i in groups[keys[g]]))
            for k in range(n_sites)]


def train_val_split(data, val_fraction: float = 0.2, seed: int = 0):
    """Split by the data's own split unit (`data.split_ids()`: antibody, sentence); deterministic under `seed`."""
    keys, groups = _groups(data.split_ids())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    n_val = int(round(len(keys) * val_fraction))
    if val_fraction > 0 and len(keys) > 1:
        n_val = min(max(n_val, 1), len(keys) - 1)
    val_keys = set(order[:n_val].tolist())
    train_idx = sorted(i for g, k in enumerate(keys) if g not in val_keys for i in groups[k])
    val_idx = sorted(i for g, k in enumerate(keys) if g in val_keys for i in groups[k])
    return data.subset(train_idx), data.subset(val_idx)


def split_sentiment_sites(data: SentimentData, n_sites: int, mode: str = "iid", alpha: float = 0.5,
                          seed: int = 0) -> list[SentimentData]:
    """IID (shuffled, equal shares) or label-skewed (Dirichlet(alpha) share of each class per site)."""
    rng = np.random.default_rng(seed)
    if mode == "iid":
        order = rng.permutation(len(data))
        return [data.subset(sorted(part)) for part in np.array_split(order, n_sites)]
    if mode != "skew":
        raise ValueError(f"unknown split mode {mode!r}; choose 'iid' or 'skew'")
    for draw in range(MAX_DRAWS):
        rng = np.random.default_rng([seed, draw])
        parts: list[list[int]] = [[] for _ in range(n_sites)]
        for c in range(len(SENTIMENT_LABELS)):
            idx = rng.permutation(np.flatnonzero(data.labels == c))
            shares = rng.dirichlet(np.full(n_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for k, part in enumerate(np.split(idx, cuts)):
                parts[k].extend(part.tolist())
        if min(len(p) for p in parts) >= min(MIN_SITE_SAMPLES, len(data) // n_sites):
            return [data.subset(sorted(p)) for p in parts]
    raise ValueError(f"no Dirichlet(alpha={alpha}) draw gave every site data")

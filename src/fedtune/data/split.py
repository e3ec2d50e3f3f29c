"""Deterministic splits over sites and into train / validation / test.

Fitness: for every task a Dirichlet(alpha) draw says how that task's data lean over the sites; each
antibody (heavy+light pair, which can appear in several tasks) goes to exactly one site, drawn from the mean
of the leanings of the tasks it has labels for. Train/validation splits are by antibody too, so duplicates
of one antibody never straddle a split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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


TEST_FRACTION = 0.15       # default share of a site's split units held out as its test split


@dataclass(frozen=True)
class Split:
    """One site's train / validation / test parts (disjoint by split unit) and the record of the split."""
    train: object
    val: object
    test: object
    seed: int
    val_fraction: float
    test_fraction: float

    def record(self) -> dict:
        """What the split was: seed, fractions and, per part, its size and the sorted SHA-256 hashes of its split
        units (antibodies, sentences), so a run's metrics say exactly which rows were scored."""
        return {"seed": self.seed, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                **{name: {"n": len(part), "units": unit_hashes(part)}
                   for name, part in (("train", self.train), ("val", self.val), ("test", self.test))}}


def unit_hashes(data) -> list[str]:
    """Sorted SHA-256 hex digests (first 16 hex digits) of the distinct split units of `data`."""
    return sorted({hashlib.sha256(k.encode()).hexdigest()[:16] for k in data.split_ids()})


def _part_sizes(n_keys: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_val = int(round(n_keys * val_fraction))
    if val_fraction > 0 and n_keys > 1:
        n_val = min(max(n_val, 1), n_keys - 1)
    n_test = int(round(n_keys * test_fraction))
    if test_fraction > 0 and n_keys - n_val > 1:
        n_test = min(max(n_test, 1), n_keys - n_val - 1)
    else:
        n_test = 0
    return n_val, n_test


def train_val_test_split(data, val_fraction: float = TEST_FRACTION, test_fraction: float = TEST_FRACTION,
                         seed: int = 0) -> Split:
    """Split by the data's own split unit (`data.split_ids()`: antibody, sentence); deterministic under `seed`.
    One seeded permutation of the units: validation takes the first `val_fraction` of it (the very validation
    part `train_val_split` gives for the same seed and fraction), test the next `test_fraction`, train the rest.
    With at least 3 units, train, validation and test are each non-empty (when both fractions are > 0)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be >= 0 and sum to < 1 (val {val_fraction}, test {test_fraction})")
    _, groups = _groups(data.split_ids())
    keys = sorted(groups)                  # the split depends on the units, not on the order rows were read in
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val, n_test = _part_sizes(len(keys), val_fraction, test_fraction)
    part_of = np.zeros(len(keys), dtype=np.int64)           # 0 train, 1 val, 2 test
    part_of[order[:n_val]] = 1
    part_of[order[n_val:n_val + n_test]] = 2
    parts = [data.subset(sorted(i for g, k in enumerate(keys) if part_of[g] == p for i in groups[k]))
             for p in range(3)]
    return Split(*parts, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)


def train_val_split(data, val_fraction: float = 0.2, seed: int = 0):
    """(train, validation) by split unit, no test part; deterministic under `seed`."""
    split = train_val_test_split(data, val_fraction, 0.0, seed)
    return split.train, split.val


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

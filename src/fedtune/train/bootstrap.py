"""Bootstrap 95% intervals of test metrics, resampling split units (antibodies, sentences), seeded.

Rows of one split unit (duplicates of an antibody) are drawn together, so an interval never treats them as
independent evidence. Any metric the kind's `Task.evaluate` returns can be bootstrapped by its path
("mean_pearson", "accuracy", "tasks.binding.pearson"). The replicates are kept, so intervals of a mean over
sites can be formed from the sites' replicates (same seed, same number of draws: replicate i of every site
averaged)."""

from __future__ import annotations

import numpy as np

N_BOOT = 200
LEVEL = 0.95


def metric_at(metrics: dict, path: str):
    """The value at a dotted path of a metrics dict (None when absent)."""
    node = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def interval(values, level: float = LEVEL) -> dict | None:
    """The central `level` percentile interval {"lo", "hi"} of the defined values (None when none are)."""
    vals = np.array([v for v in values if v is not None], dtype=float)
    if len(vals) == 0:
        return None
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return {"lo": float(lo), "hi": float(hi)}


def bootstrap(task, pred: np.ndarray, data, stats, paths: list[str], n_boot: int = N_BOOT, seed: int = 0,
              level: float = LEVEL) -> dict:
    """{"n": split units, "n_boot", "level", "replicates": {path: [..]}, "ci": {path: {"lo", "hi"} | None}} for the
    metrics at `paths` of `task.evaluate(pred, data, stats)`, resampling split units with replacement."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(data.split_ids()):
        groups.setdefault(key, []).append(i)
    units = [groups[k] for k in sorted(groups)]
    rng = np.random.default_rng(seed)
    reps: dict[str, list] = {p: [] for p in paths}
    for _ in range(n_boot if units else 0):
        idx = np.array([i for u in rng.integers(0, len(units), len(units)) for i in units[u]], dtype=np.int64)
        m = task.evaluate(pred[idx], data.subset(idx), stats)
        for p in paths:
            reps[p].append(metric_at(m, p))
    return {"n": len(units), "n_boot": n_boot, "level": level, "replicates": reps,
            "ci": {p: interval(v, level) for p, v in reps.items()}}


def mean_interval(boots: list[dict], path: str, level: float = LEVEL) -> dict | None:
    """Interval of the mean over sites of one metric, from the sites' replicates (replicate i averaged over the
    sites that define it)."""
    columns = [b["replicates"].get(path) or [] for b in boots]
    if not columns or not all(columns):
        return None
    means = []
    for draw in zip(*columns):
        vals = [v for v in draw if v is not None]
        means.append(float(np.mean(vals)) if vals else None)
    return interval(means, level)


def score_test(trainer, test, paths: list[str], seed: int = 0, replicates: bool = True) -> dict:
    """Test metrics of a trained model (the `Trainer`), scored once, with a bootstrap over split units
    (`replicates=False`: n and the intervals only, e.g. for a reply that leaves the site)."""
    pred = trainer.predict(test)
    metrics = trainer.task.evaluate(pred, test, trainer.stats)
    boot = bootstrap(trainer.task, pred, test, trainer.stats, paths, seed=seed)
    if not replicates:
        boot.pop("replicates")
    return {**metrics, "bootstrap": boot}

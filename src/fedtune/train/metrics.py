"""Evaluation metrics, generic over task kinds (each kind picks its own in `fedtune.tasks`).

Multi-target regression (`regression_metrics`): per target RMSE in the target's own units, Pearson and
Spearman; per group (a task of assays) the mean over its targets; `mean_pearson` over groups.
Classification (`classification_metrics`): accuracy, macro-F1, per-class precision / recall / F1.
JSON-ready (None where a metric is undefined, e.g. fewer than 3 labelled rows or a constant column)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from ..data.flab import Assay, ordered_tasks
from ..data.stats import AssayStats


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return _clean(fn(a, b)[0])


def mean_or_none(values) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def masked_mse(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean squared error over the labelled (non-NaN) targets only."""
    mask = ~np.isnan(target)
    return float(((pred - np.nan_to_num(target)) ** 2 * mask).sum() / max(1, mask.sum()))


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (NaN for no rows)."""
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-9, 1.0)
    return float(-np.log(p).mean()) if len(labels) else float("nan")


def regression_metrics(pred_z: np.ndarray, labels: np.ndarray, assays: list[Assay], stats: AssayStats) -> dict:
    """pred_z: [N, A] oriented z predictions; labels: [N, A] raw values with NaN for missing."""
    pred_raw = stats.from_z(pred_z)
    true_z = stats.to_z(labels)
    tasks: dict[str, dict] = {}
    for t in ordered_tasks(assays):
        per_assay, z_err = {}, []
        for j, a in enumerate(assays):
            if a.task != t:
                continue
            m = ~np.isnan(labels[:, j])
            n = int(m.sum())
            per_assay[a.name] = {
                "n": n, "measure": a.measure, "favourable": a.favourable,
                "rmse": _clean(float(np.sqrt(np.mean((pred_raw[m, j] - labels[m, j]) ** 2)))) if n else None,
                "pearson": _corr(sps.pearsonr, pred_raw[m, j], labels[m, j]),
                "spearman": _corr(sps.spearmanr, pred_raw[m, j], labels[m, j]),
            }
            z_err.extend(((pred_z[m, j] - true_z[m, j]) ** 2).tolist())
        tasks[t] = {
            "n": max((v["n"] for v in per_assay.values()), default=0),
            "pearson": mean_or_none(v["pearson"] for v in per_assay.values()),
            "spearman": mean_or_none(v["spearman"] for v in per_assay.values()),
            "rmse_z": _clean(float(np.sqrt(np.mean(z_err)))) if z_err else None,
            "assays": per_assay,
        }
    return {"n": int(len(labels)), "mean_pearson": mean_or_none(t["pearson"] for t in tasks.values()),
            "mean_spearman": mean_or_none(t["spearman"] for t in tasks.values()), "tasks": tasks}


def classification_metrics(probs: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict:
    """probs: [N, C] class probabilities; labels: [N] class indices into `names`.

    Scikit-learn's definitions: macro-F1 averages over the classes present in the labels or the
    predictions (a class absent from both is not counted as an F1 of 0); per-class precision / recall / F1
    are 0 where undefined. None for no rows."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support
    labels = np.asarray(labels).astype(int)
    pred = np.asarray(probs).argmax(-1) if len(labels) else np.zeros(0, dtype=int)
    per_class = {}
    if len(labels):
        prec, rec, f1, _ = precision_recall_fscore_support(labels, pred, labels=list(range(len(names))),
                                                           zero_division=0)
    else:
        prec = rec = f1 = np.zeros(len(names))
    for c, name in enumerate(names):
        per_class[name] = {"precision": float(prec[c]), "recall": float(rec[c]), "f1": float(f1[c]),
                           "n": int((labels == c).sum())}
    macro = float(f1_score(labels, pred, average="macro", zero_division=0)) if len(labels) else None
    return {"n": int(len(labels)), "accuracy": float((pred == labels).mean()) if len(labels) else None,
            "macro_f1": macro, "per_class": per_class}


"""Evaluation metrics. Fitness: per assay RMSE in the assay's own units, Pearson and Spearman; per task the
mean over its assays; `mean_pearson` over tasks. Sentiment: accuracy and macro-F1. JSON-ready (None where a
metric is undefined, e.g. fewer than 3 labelled rows or a constant column)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from ..data.flab import Assay, ordered_tasks
from ..data.fpb import SENTIMENT_LABELS
from ..data.stats import AssayStats


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return _clean(fn(a, b)[0])


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def fitness_metrics(pred_z: np.ndarray, labels: np.ndarray, assays: list[Assay], stats: AssayStats) -> dict:
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
            "pearson": _mean(v["pearson"] for v in per_assay.values()),
            "spearman": _mean(v["spearman"] for v in per_assay.values()),
            "rmse_z": _clean(float(np.sqrt(np.mean(z_err)))) if z_err else None,
            "assays": per_assay,
        }
    return {"n": int(len(labels)), "mean_pearson": _mean(t["pearson"] for t in tasks.values()),
            "mean_spearman": _mean(t["spearman"] for t in tasks.values()), "tasks": tasks}


def sentiment_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    pred = probs.argmax(-1)
    per_class, f1s = {}, []
    for c, name in enumerate(SENTIMENT_LABELS):
        tp = int(((pred == c) & (labels == c)).sum())
        fp = int(((pred == c) & (labels != c)).sum())
        fn = int(((pred != c) & (labels == c)).sum())
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[name] = {"precision": prec, "recall": rec, "f1": f1, "n": int((labels == c).sum())}
        f1s.append(f1)
    return {"n": int(len(labels)), "accuracy": float((pred == labels).mean()) if len(labels) else None,
            "macro_f1": float(np.mean(f1s)), "per_class": per_class}


def key_metric(kind: str) -> str:
    return "mean_pearson" if kind == "fitness" else "accuracy"

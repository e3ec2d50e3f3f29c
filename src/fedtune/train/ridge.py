"""Ridge heads from sufficient statistics: exact, and additive over sites.

For one output column (an assay), let X be the embeddings of the training rows labelled for it with a column of
ones appended (the intercept) and y their standardised targets. The ridge solution with an unpenalised intercept
solves (G + lam P) w = b with G = X^T X, b = X^T y and P = diag(1, ..., 1, 0). G and b are sums over rows, so the
sums of every site's G and b are the pooled G and b, and the solution from them *is* the pooled ridge: no
approximation, one exchange. (An unpenalised intercept is the same as centring X and y on the pooled means.)
The row count is G's last diagonal entry (the ones column), which lets a receiver check a sender's counts.

lam is relative to the data's scale: lam = alpha * tr(C) / dim, with C = the centred Gram (G's feature block minus
s s^T / n, s = the feature sums in G's last row), i.e. alpha times n times the mean feature variance, so one grid
`ALPHAS` suits every trunk. alpha is chosen per column on validation rows (`sse`, summed over sites), never on
test rows; a column without validation rows takes the alpha that is best over all columns together.
"""

from __future__ import annotations

import numpy as np

ALPHAS = tuple(float(10.0 ** (k / 2)) for k in range(-6, 7))   # 1e-3 ... 1e3, half decades


def augment(x: np.ndarray) -> np.ndarray:
    """[n, dim] -> [n, dim + 1] float64 with a last column of ones (the intercept)."""
    x = np.asarray(x, dtype=np.float64)
    return np.hstack([x, np.ones((len(x), 1))])


def sums(x: np.ndarray, y: np.ndarray, min_count: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G [A, D, D], b [A, D], n [A]) of embeddings `x` [n, dim] and targets `y` [n, A] (NaN: not labelled),
    D = dim + 1. A column with fewer than `min_count` labelled rows is all zeros (not shared)."""
    xa = augment(x)
    y = np.asarray(y, dtype=np.float64)
    n_cols, dim = y.shape[1], xa.shape[1]
    gram, xty, n = np.zeros((n_cols, dim, dim)), np.zeros((n_cols, dim)), np.zeros(n_cols)
    for a in range(n_cols):
        rows = np.isfinite(y[:, a])
        if rows.sum() < max(1, min_count):
            continue
        xr = xa[rows]
        gram[a], xty[a], n[a] = xr.T @ xr, xr.T @ y[rows, a], rows.sum()
    return gram, xty, n


def lambdas(gram: np.ndarray, alphas=ALPHAS) -> np.ndarray:
    """The penalties [L] of one column's Gram G [D, D] for the relative grid `alphas` (see the module doc)."""
    n = gram[-1, -1]
    s = gram[-1, :-1]
    feat = gram[:-1, :-1]
    scale = (np.trace(feat) - s @ s / n) / feat.shape[0] if n > 0 else 0.0
    return np.asarray(alphas, dtype=np.float64) * (scale if scale > 0 else 1.0)


def solve(gram: np.ndarray, xty: np.ndarray, alphas=ALPHAS) -> np.ndarray:
    """Ridge solutions W [A, L, D] (last entry: the intercept) for every column and every alpha of the grid;
    a column without rows (n = 0) gets zeros."""
    n_cols, dim = xty.shape
    out = np.zeros((n_cols, len(alphas), dim))
    pen = np.eye(dim)
    pen[-1, -1] = 0.0                      # the intercept is not penalised
    for a in range(n_cols):
        if gram[a, -1, -1] <= 0:
            continue
        for j, lam in enumerate(lambdas(gram[a], alphas)):
            out[a, j] = np.linalg.solve(gram[a] + lam * pen, xty[a])
    return out


def sse(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of squared errors [A, L], labelled rows [A]) of candidate solutions `w` [A, L, D] on embeddings `x`
    and targets `y` [n, A] (NaN: not labelled)."""
    xa = augment(x)
    y = np.asarray(y, dtype=np.float64)
    out, n = np.zeros(w.shape[:2]), np.zeros(w.shape[0])
    for a in range(w.shape[0]):
        rows = np.isfinite(y[:, a])
        pred = xa[rows] @ w[a].T                         # [rows, L]
        out[a] = ((pred - y[rows, a][:, None]) ** 2).sum(0)
        n[a] = rows.sum()
    return out, n


def choose(sse_sum: np.ndarray, n_sum: np.ndarray, overall: np.ndarray | None = None) -> np.ndarray:
    """The index into the grid per column [A]: the least validation error where the column has validation rows,
    else the least of `overall` [L] (validation error over every column together; default: the sum of the
    per-column errors, each per row)."""
    per_row = sse_sum / np.maximum(n_sum, 1)[:, None]
    if overall is None:
        overall = per_row[n_sum > 0].sum(0) if (n_sum > 0).any() else np.zeros(sse_sum.shape[1])
    fallback = int(np.argmin(overall)) if np.any(overall) else sse_sum.shape[1] // 2
    return np.where(n_sum > 0, np.argmin(per_row, axis=1), fallback)


def fit(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, alphas=ALPHAS,
        min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One party's ridge (a site alone, or pooled rows): (W [A, D], chosen alpha per column [A]), alpha chosen on
    (x_val, y_val). The federated job computes the same from summed `sums` and summed `sse`."""
    gram, xty, _ = sums(x, y, min_count)
    cand = solve(gram, xty, alphas)
    err, n = sse(x_val, y_val, cand)
    pick = choose(err, n)
    return cand[np.arange(len(pick)), pick], np.asarray(alphas)[pick]

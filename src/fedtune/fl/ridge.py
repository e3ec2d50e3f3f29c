"""The ridge phase of a job with head type `ridge` or `ridge-mlp`: exact federated ridge heads, in two exchanges.

After the stats phase (pooled target statistics), before any training round:

1. `ridge-sums`: each site embeds its training rows with the job's trunk (eval mode) and sends, per output column
   (assay), the sums G = X^T X and b = X^T y over its rows labelled for it (X with a ones column: the intercept)
   and their count, in float64 (`fedtune.train.ridge.sums`). The stats phase's minimum-count rule holds: a
   column with fewer than `min_stat_count` labelled rows at a site is sent as zeros. The server checks every
   answer (`check_sums`: keys, shapes, finite, symmetric with a non-negative diagonal, counts integral, within
   the site's stats-phase row count, at least the minimum, equal to G's ones entry) and drops a bad one with its
   reason, as it drops a bad update. It adds the sums and solves (G + lam P) w = b for every lam of the grid:
   with every site's rows this is exactly the pooled ridge.
2. `ridge-val`: the server sends those candidate solutions; each site returns, per column, the sum of squared
   errors of every candidate on its validation rows (zeros for a column with fewer than `min_stat_count`
   validation rows there) and the same summed over all its columns. The server picks per column the penalty
   with the least summed validation error (columns without validation rows: the least over all columns).
   The test split plays no part. The server never sees a site's embeddings, so these errors do not reveal the
   site's labels.

The chosen solutions go into the heads' linear terms (`Task.set_linear_outputs`): head type `ridge` is then
final (its job has no training rounds), `ridge-mlp` trains on from there (its MLP term starts at zero, so the
first round starts from the ridge exactly). The server keeps the float64 solutions, penalties and counts in
`<fedtune>/ridge.safetensors` and `summary["ridge"]`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..train import ridge
from .aggregate import Rejected, stats_bound

SUMS, VAL = "ridge-sums", "ridge-val"
KEYS = ("ridge.gram", "ridge.xty", "ridge.n")


def _array(params: dict, key: str, shape: tuple) -> np.ndarray:
    if key not in params:
        raise Rejected(f"{key} is missing")
    arr = np.asarray(params[key])
    if arr.dtype.kind != "f":
        raise Rejected(f"{key}: dtype {arr.dtype} instead of a floating type")
    if arr.shape != shape:
        raise Rejected(f"{key}: shape {arr.shape} instead of {shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise Rejected(f"{key}: non-finite values (NaN or inf)")
    return arr


def _counts(n: np.ndarray, what: str, bound: int | None, min_count: int) -> None:
    if (n < 0).any() or (n != np.round(n)).any():
        raise Rejected(f"{what}: counts must be non-negative integers")
    if bound is not None and (n > bound).any():
        raise Rejected(f"{what}: a count exceeds the site's {bound} training rows from the stats phase")
    if ((n > 0) & (n < min_count)).any():
        raise Rejected(f"{what}: a column with fewer than min_stat_count={min_count} rows was sent (it must not be)")


def check_sums(params, n_cols: int, dim: int, n_train: int | None, min_count: int):
    """(G [A, D, D], b [A, D], n [A]) of one site's `ridge-sums` answer (D = embedding dim + 1), or Rejected."""
    if not isinstance(params, dict):
        raise Rejected("the ridge sums are not a parameter dict")
    extra = sorted(set(params) - set(KEYS) - {"fedtune.marker"})
    if extra:
        raise Rejected(f"unexpected keys in the ridge sums: {extra[:3]}")
    gram = _array(params, "ridge.gram", (n_cols, dim, dim))
    xty = _array(params, "ridge.xty", (n_cols, dim))
    n = _array(params, "ridge.n", (n_cols,))
    _counts(n, "ridge.n", n_train, min_count)
    scale = np.abs(gram).max(axis=(1, 2), keepdims=True) + 1e-300
    if (np.abs(gram - gram.transpose(0, 2, 1)) > 1e-9 * scale).any():
        raise Rejected("ridge.gram is not symmetric")
    diag = np.diagonal(gram, axis1=1, axis2=2)
    if (diag < 0).any():
        raise Rejected("ridge.gram has a negative diagonal entry (not a sum of squares)")
    if (gram[:, -1, -1] != n).any():
        raise Rejected("ridge.n does not match the row count inside ridge.gram (its intercept entry)")
    empty = n == 0
    if np.abs(gram[empty]).sum() or np.abs(xty[empty]).sum():
        raise Rejected("ridge sums for a column without rows must be zero")
    return gram, xty, n


def check_val(params, n_cols: int, n_alphas: int, n_val: int, min_count: int):
    """(sse [A, L], n [A], overall sse [L], overall n) of one site's `ridge-val` answer, or Rejected. `n_val` is
    the site's validation row count from the stats phase: no column can have more rows, nor all columns
    together more than n_cols * n_val."""
    if not isinstance(params, dict):
        raise Rejected("the validation errors are not a parameter dict")
    err = _array(params, "ridge.sse", (n_cols, n_alphas))
    n = _array(params, "ridge.n", (n_cols,))
    overall = _array(params, "ridge.overall", (n_alphas,))
    n_all = _array(params, "ridge.overall_n", (1,))
    _counts(n, "ridge.n", None, min_count)
    _counts(n_all, "ridge.overall_n", None, min_count)
    if (n > n_val).any():
        raise Rejected(f"ridge.n: a column claims more than the site's {n_val} validation rows from the stats phase")
    if n_all[0] > n_cols * n_val or (n_all[0] and n_all[0] < n.sum()):
        raise Rejected(f"ridge.overall_n={int(n_all[0])} does not fit {n_val} validation rows of {n_cols} columns "
                       f"and the per-column counts")
    if (err < 0).any() or (overall < 0).any():
        raise Rejected("squared errors must be non-negative")
    if (err[n == 0] != 0).any() or (n_all[0] == 0 and overall.any()):
        raise Rejected("errors sent for a column without validation rows")
    return err, n, overall, float(n_all[0])


def linear_shape(model) -> tuple[int, int]:
    """(output columns, embedding dim + 1) of a model whose heads have linear terms (head type ridge / ridge-mlp)."""
    heads = list(model.heads.values())
    return sum(h.linear.out_features for h in heads), heads[0].linear.in_features + 1


# ---- site side (called by fedtune.fl.client for the two phases) ----------------------------------------------
def _site_xy(runner, meta: dict, data):
    trainer = runner._trainer(meta)
    x = trainer.embeddings(data)
    y = runner.task.targets(data, np.arange(len(data)), trainer.stats)
    return x, y


def site_sums(runner, params: dict, meta: dict) -> tuple[dict, dict, dict]:
    """This site's `ridge-sums` answer: sums over its training rows only."""
    gram, xty, n = ridge.sums(*_site_xy(runner, meta, runner.train), runner.job.min_stat_count)
    return {"ridge.gram": gram, "ridge.xty": xty, "ridge.n": n}, {}, runner.task.count_rows(runner.train)


def val_errors(x: np.ndarray, y: np.ndarray, cand: np.ndarray, least: int) -> dict:
    """A site's `ridge-val` answer from its validation embeddings `x` and targets `y`: per column the squared
    errors of every candidate (zeros under `least` rows) and the same over every column together."""
    err, n = np.zeros(cand.shape[:2]), np.zeros(cand.shape[0])
    if len(x):
        err, n = ridge.sse(x, y, cand)
    total = n.sum()
    shared = n >= least
    return {"ridge.sse": np.where(shared[:, None], err, 0.0), "ridge.n": np.where(shared, n, 0.0),
            "ridge.overall": err.sum(0) if total >= least else np.zeros(cand.shape[1]),
            "ridge.overall_n": np.array([total if total >= least else 0.0])}


def site_errors(runner, params: dict, meta: dict) -> tuple[dict, dict, dict]:
    """This site's `ridge-val` answer: the candidates' squared errors on its validation rows only."""
    cand = np.asarray(params["ridge.candidates"], dtype=np.float64)
    x, y = _site_xy(runner, meta, runner.val) if len(runner.val) else (np.zeros((0, 0)), None)
    return val_errors(x, y, cand, runner.job.min_stat_count), {}, {"n_val": len(runner.val)}


SITE_PHASES = {SUMS: site_sums, VAL: site_errors}


# ---- server side -------------------------------------------------------------------------------------
def solve_sums(parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(summed G, rows per column, candidate solutions [A, L, D]) from the checked sums of every site."""
    gram = sum(g for g, _, _ in parts)
    return gram, sum(n for _, _, n in parts), ridge.solve(gram, sum(b for _, b, _ in parts))


def pick_solution(cand: np.ndarray, answers: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(W [A, D], grid index per column, validation rows per column, rows of the overall errors) from the
    candidates and every site's checked validation errors (`check_val`)."""
    err = sum(e for e, _, _, _ in answers)
    val_rows = sum(n for _, n, _, _ in answers)
    overall_n = sum(m for _, _, _, m in answers)
    overall = sum(o for _, _, o, _ in answers) / max(overall_n, 1.0)
    pick = ridge.choose(err, val_rows, overall if overall_n else None)
    return cand[np.arange(len(pick)), pick], pick, val_rows, overall_n


# ---- the phase on the server ------------------------------------------------------------------------------
def ridge_phase(ctrl, model, meta: dict, bounds: dict, summary: dict) -> dict[str, torch.Tensor]:
    """Run both exchanges on the controller `ctrl`; put the chosen solutions into `model`'s heads and return the
    heads' state (`heads.*`); record the solution in `<fedtune>/ridge.safetensors` and `summary["ridge"]`."""
    from safetensors.numpy import save_file

    job, task = ctrl.job, ctrl.job.task()
    n_cols, dim = linear_shape(model)
    alphas = np.asarray(ridge.ALPHAS)

    results, _ = ctrl._ask(SUMS, {}, meta, 0)
    good, bad = ctrl._screen(SUMS, SUMS, results, lambda site, r: check_sums(
        r.params, n_cols, dim, stats_bound(bounds.get(site))["n_train"], job.min_stat_count), summary)
    gram, rows, cand = solve_sums(list(good.values()))
    ctrl._progress({"event": SUMS, "sites": sorted(good), "rejected": bad, "rows": rows.tolist()})

    results, _ = ctrl._ask(VAL, {"ridge.candidates": torch.from_numpy(cand)}, meta, 0)

    def check_site_val(site: str, r):
        if site not in good:      # its sums are not in the candidates: its errors must not choose among them
            raise Rejected("its ridge sums were rejected or missing, so its validation errors are not used")
        return check_val(r.params, n_cols, len(alphas), stats_bound(bounds.get(site))["n_val"], job.min_stat_count)

    answers, bad_val = ctrl._screen(VAL, VAL, results, check_site_val, summary)
    w, pick, val_rows, overall_n = pick_solution(cand, list(answers.values()))
    lams = np.array([ridge.lambdas(gram[a], alphas)[pick[a]] for a in range(n_cols)])

    save_file({"weight": np.ascontiguousarray(w), "alpha": alphas[pick], "lambda": lams, "rows": rows,
               "val_rows": val_rows}, str(ctrl._out_dir() / "ridge.safetensors"))
    summary["ridge"] = {"sites": sorted(good), "val_sites": sorted(answers), "alpha": alphas[pick].tolist(),
                        "rows": rows.tolist(), "val_rows": val_rows.tolist(), "val_overall_rows": overall_n}
    ctrl._progress({"event": VAL, "sites": sorted(answers), "rejected": bad_val, "alpha": alphas[pick].tolist()})
    task.set_linear_outputs(model, torch.from_numpy(w[:, :-1]), torch.from_numpy(w[:, -1]))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith("heads.")}

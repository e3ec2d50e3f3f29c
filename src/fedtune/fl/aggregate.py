"""What the server accepts from a site, and how it combines what it accepted.

Nothing a site sends is trusted unchecked. An update must hold exactly the global parameters' keys, each with
the global tensor's shape, a real numeric dtype (floating where the global tensor is floating) and only finite
values. The row counts that weight FedAvg are claims: each must be a finite non-negative integer (`n_train`
positive), no larger than what the same site reported in the job's count phase, and a task's rows no larger
than the site's rows. Whatever fails is rejected with a reason (`Rejected`); the controller drops that site
from the round and records the reason.

Aggregators (`AGGREGATORS`), coordinate-wise over the sites that trained a tensor:
- `fedavg`: the mean weighted by training rows (a task head by the site's labelled rows for that task).
- `median`: the coordinate-wise median (the mean of the two middle values for an even number of sites).
- `trimmed-mean`: per coordinate, drop the `t` largest and `t` smallest values and average the rest, with
  t = ceil(trim * n) capped at (n - 1) // 2 (so with 3 sites and trim 0.2 one value is dropped each side;
  with 2 sites nothing can be trimmed and it is the plain mean).
The robust two ignore the row counts: a site cannot buy influence by claiming rows, only by being many sites.
NVFlare 2.9 ships no robust aggregator; these are a few lines of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

AGGREGATORS = ("fedavg", "median", "trimmed-mean")
MARKER = "fedtune.marker"   # the placeholder tensor a task carries when it has no parameters


class Rejected(ValueError):
    """A site's answer that the server does not use; the message is the reason."""


def as_tensor(v) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    arr = np.asarray(v)
    if arr.dtype.kind not in "fiu":
        raise Rejected(f"not a real numeric array (dtype {arr.dtype})")
    return torch.as_tensor(arr)


def check_count(value, name: str, bound: float | None = None, positive: bool = False) -> int:
    """A row count claimed by a site: a finite integer >= 0 (> 0 when `positive`), at most `bound`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise Rejected(f"{name} is not a number: {value!r:.40}")
    if not math.isfinite(float(value)) or float(value) != int(value):
        raise Rejected(f"{name} is not a finite integer: {value!r}")
    value = int(value)
    if value < (1 if positive else 0):
        raise Rejected(f"{name} must be {'positive' if positive else 'non-negative'}: {value}")
    if bound is not None and value > bound:
        raise Rejected(f"{name}={value} exceeds its bound {int(bound)} (the site's own earlier report)")
    return value


def check_counts(meta: dict, bound: dict | None, tasks: list[str]) -> dict:
    """The validated counts of one answer: {"n_train": int, "task_rows": {task: int}}. `bound` is what the
    site reported in the count phase (same shape), or None while that phase runs."""
    n = check_count(meta.get("n_train"), "n_train", (bound or {}).get("n_train"), positive=True)
    rows = meta.get("task_rows") or {}
    if not isinstance(rows, dict) or not set(rows) <= set(tasks):
        raise Rejected(f"task_rows may only name the job's tasks {tasks}")
    limits = (bound or {}).get("task_rows", {})
    task_rows = {t: check_count(rows.get(t, 0), f"task_rows[{t}]", min(n, limits.get(t, n))) for t in tasks}
    return {"n_train": n, "task_rows": task_rows}


def check_split_counts(meta: dict, bound: dict | None, keys=("n_val", "n_test")) -> dict:
    """The validated validation / test row counts `keys` of one answer ({key: int}); `bound` is the site's
    stats-phase report (each key at most what it said then), or None while that phase runs."""
    return {k: check_count(meta.get(k), k, (bound or {}).get(k)) for k in keys}


def check_update(params: dict, global_params: dict) -> dict[str, torch.Tensor]:
    """The update as tensors of the global dtype, or Rejected (keys, shape, dtype, non-finite values)."""
    if not isinstance(params, dict):
        raise Rejected("the update is not a parameter dict")
    got = set(params) - {MARKER}
    missing, extra = sorted(set(global_params) - got), sorted(got - set(global_params))
    if missing or extra:
        raise Rejected(f"keys differ from the global parameters (missing {missing[:3]}, unexpected {extra[:3]})")
    out = {}
    for key, ref in global_params.items():
        try:
            t = as_tensor(params[key])
        except Rejected as exc:
            raise Rejected(f"{key}: {exc}") from None
        ref = as_tensor(ref)
        if tuple(t.shape) != tuple(ref.shape):
            raise Rejected(f"{key}: shape {tuple(t.shape)} instead of {tuple(ref.shape)}")
        if ref.is_floating_point() and not t.is_floating_point():
            raise Rejected(f"{key}: dtype {t.dtype} instead of a floating type")
        if not torch.isfinite(t.double()).all():
            raise Rejected(f"{key}: non-finite values (NaN or inf)")
        if not ref.is_floating_point() and not torch.equal(t.double(), t.double().round()):
            raise Rejected(f"{key}: non-integral values for an integer tensor")
        out[key] = t.to(ref.dtype)
    return out


def stats_bound(bound: dict | None) -> dict:
    """What a site reported in the stats phase, the bound on its later claims; a site that reported nothing
    cannot have its claims bounded, so none of its answers is accepted."""
    if bound is None:
        raise Rejected("reported no row counts in the stats phase, so its claims cannot be bounded")
    return bound


def check_train_result(result, global_params: dict, bound: dict | None, tasks: list[str]) -> tuple[dict, dict]:
    """(update, counts) of one site's training answer (an FLModel: params + meta), or Rejected. `bound` is
    what that site reported in the stats phase (`stats_bound`)."""
    return check_update(result.params, global_params), check_counts(result.meta or {}, stats_bound(bound), tasks)


def check_moments(moments, n_assays: int, n_train: int, min_count: int) -> tuple[list, list, list]:
    """One site's per-assay moments (n, sum, sum of squares) from the stats phase. Counts must be integers in
    [0, n_train]; values finite; an assay with fewer than `min_count` rows is treated as not shared (a site
    should not send those: it would reveal near-single measurements)."""
    try:
        arr = np.asarray(moments, dtype=np.float64)
    except (TypeError, ValueError):
        raise Rejected("moments are not numbers") from None
    if arr.shape != (3, n_assays):
        raise Rejected(f"moments have shape {arr.shape} instead of (3, {n_assays})")
    if not np.isfinite(arr).all():
        raise Rejected("moments hold non-finite values")
    n, s, ss = arr
    if (n < 0).any() or (n != np.round(n)).any() or (n > n_train).any():
        raise Rejected(f"assay counts must be integers between 0 and n_train={n_train}")
    if (ss < 0).any():
        raise Rejected("negative sum of squares")
    shared = n >= max(min_count, 1)
    return [np.where(shared, v, 0.0).tolist() for v in (n, s, ss)]


def clean_metrics(obj, depth: int = 0):
    """A site's reported metrics as they may be stored and published (summary, bundle model card): nested
    dicts of short string keys holding finite numbers, booleans, None or short strings; a non-finite number
    becomes None; anything else (and anything too deep or too large) is left out."""
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, str):
        return obj if len(obj) <= 100 else None
    if isinstance(obj, dict) and depth < 5:
        items = [(k, clean_metrics(v, depth + 1)) for k, v in list(obj.items())[:200]
                 if isinstance(k, str) and len(k) <= 100]
        return {k: v for k, v in items if v is not None or not isinstance(obj[k], (dict, list))}
    return None


@dataclass
class Aggregator:
    name: str = "fedavg"
    trim: float = 0.2

    def __post_init__(self):
        if self.name not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {self.name!r}; choose one of {AGGREGATORS}")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"trim fraction must be in [0, 0.5): {self.trim}")

    def combine(self, values: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        stack = torch.stack([v.double() for v in values])
        n = len(values)
        if self.name == "fedavg":
            w = torch.tensor(weights, dtype=torch.float64).reshape(-1, *([1] * (stack.dim() - 1)))
            return (stack * w).sum(0) / w.sum()
        ordered = stack.sort(dim=0).values
        if self.name == "median":
            return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        t = min(math.ceil(self.trim * n), (n - 1) // 2)
        return ordered[t:n - t].mean(0)

    def __call__(self, updates: list[tuple[dict, dict]], global_params: dict) -> dict:
        """Combine validated updates [(params, counts)] into new global parameters. A tensor no site trained
        (every weight 0: a head whose task no site has labels for) keeps its global value."""
        out = {}
        for key, ref in global_params.items():
            task = key.split(".")[1] if key.startswith("heads.") else None
            values, weights = [], []
            for params, counts in updates:
                w = counts["task_rows"].get(task, counts["n_train"]) if task else counts["n_train"]
                if w > 0:
                    values.append(params[key])
                    weights.append(float(w))
            ref = as_tensor(ref)
            out[key] = self.combine(values, weights).to(ref.dtype) if values else ref
        return out


SERVER_OPTS = ("none", "momentum", "adam")


@dataclass
class ServerOptimizer:
    """FedOpt on the server (Reddi et al. 2021, "Adaptive Federated Optimization"): the aggregate's change to the
    global model, d = aggregate - global, is a pseudo-gradient step; `momentum` (FedAvgM) keeps m = b1 m + d and
    moves the global model by lr * m, `adam` (FedAdam) keeps m = b1 m + (1 - b1) d, v = b2 v + (1 - b2) d^2 and
    moves it by lr * m / (sqrt(v) + tau). `none` takes the aggregate as it is (lr is then unused). The state
    lives for one job on the server (a resumed job starts it afresh); non-float tensors pass through."""
    name: str = "none"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    state: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.name not in SERVER_OPTS:
            raise ValueError(f"unknown server optimiser {self.name!r}; choose one of {SERVER_OPTS}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise ValueError(f"server learning rate must be a positive finite number: {self.lr!r}")

    def __call__(self, global_params: dict, aggregated: dict) -> dict:
        if self.name == "none":
            return aggregated
        out = {}
        for key, new in aggregated.items():
            ref = as_tensor(global_params[key])
            if not (ref.is_floating_point() and new.is_floating_point()):
                out[key] = new
                continue
            d = new.double() - ref.double()
            m = self.state.get(("m", key), torch.zeros_like(d))
            if self.name == "momentum":
                m = self.beta1 * m + d
                step = m
            else:
                m = self.beta1 * m + (1 - self.beta1) * d
                v = self.beta2 * self.state.get(("v", key), torch.zeros_like(d)) + (1 - self.beta2) * d * d
                self.state[("v", key)] = v
                step = m / (v.sqrt() + self.tau)
            self.state[("m", key)] = m
            out[key] = (ref.double() + self.lr * step).to(ref.dtype)
        return out

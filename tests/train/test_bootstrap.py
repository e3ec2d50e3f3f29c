"""Bootstrap intervals over split units: seeded, around the point estimate, units drawn whole."""

import numpy as np

from fedtune.data import synthetic_sentiment
from fedtune.train.bootstrap import bootstrap, mean_interval, metric_at
from fedtune.tasks import get


def _predictions(data, right: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(len(data)) < right, data.labels, (data.labels + 1) % 3)
    return np.eye(3, dtype=np.float32)[labels]


def test_bootstrap_interval_is_seeded_and_covers_the_estimate():
    task = get("sentiment")
    data = synthetic_sentiment(90, seed=0)
    pred = _predictions(data, 0.7, seed=1)
    point = task.evaluate(pred, data, None)
    boot = bootstrap(task, pred, data, None, ["accuracy", "macro_f1"], n_boot=100, seed=3)
    assert boot["n"] == len(set(data.split_ids())) and boot["n_boot"] == 100
    lo, hi = boot["ci"]["accuracy"]["lo"], boot["ci"]["accuracy"]["hi"]
    assert lo < point["accuracy"] < hi and hi - lo < 0.5
    def again(seed):
        return bootstrap(task, pred, data, None, ["accuracy"], n_boot=100, seed=seed)["ci"]["accuracy"]
    assert again(3) == boot["ci"]["accuracy"] and again(4) != boot["ci"]["accuracy"]


def test_rows_of_one_unit_are_drawn_together():
    task = get("sentiment")
    one = synthetic_sentiment(30, seed=2)
    dup = type(one).concat([one, one, one])                 # each sentence three times: still 30 units
    pred = _predictions(dup, 0.6, seed=0)
    boot = bootstrap(task, pred, dup, None, ["accuracy"], n_boot=20, seed=0)
    assert boot["n"] == 30


def test_mean_interval_over_sites_and_metric_paths():
    task = get("sentiment")
    boots = [bootstrap(task, _predictions(d, r, 0), d, None, ["accuracy"], n_boot=50, seed=0)
             for d, r in ((synthetic_sentiment(60, seed=1), 0.9), (synthetic_sentiment(60, seed=2), 0.5))]
    lo, hi = mean_interval(boots, "accuracy").values()
    assert lo < hi and 0.6 < (lo + hi) / 2 < 0.8         # the mean of a ~0.9 site and a ~0.5 site
    assert metric_at({"tasks": {"binding": {"pearson": 0.3}}}, "tasks.binding.pearson") == 0.3
    assert metric_at({"tasks": {}}, "tasks.binding.pearson") is None

"""The server's checks on what sites send and its aggregators, on real FLModel objects (no federation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedtune.data import AssayStats
from fedtune.fl.aggregate import (Aggregator, Rejected, check_counts, check_moments, check_split_counts,
                                  check_train_result, check_update, clean_metrics)
from fedtune.fl.config import JobConfig

GLOBAL = {"trunk.w": torch.zeros(2, 3), "heads.tm.b": torch.zeros(1), "heads.hic.b": torch.zeros(1)}
TASKS = ["tm", "hic"]
BOUND = {"n_train": 100, "task_rows": {"tm": 80, "hic": 20}}


def answer(params: dict, n_train=100, task_rows=None) -> FLModel:
    """A site's answer as the server receives it: numpy arrays on the wire."""
    return FLModel(params_type=ParamsType.FULL, params={k: np.asarray(v, dtype=np.float32) for k, v in params.items()},
                   meta={"n_train": n_train, "task_rows": task_rows if task_rows is not None else {"tm": 80, "hic": 20}})


def filled(value: float) -> dict:
    return {k: torch.full_like(v, value) for k, v in GLOBAL.items()}


def test_fedavg_weights_by_rows_and_heads_by_task_rows_by_hand():
    site_a = check_train_result(answer(filled(1.0), n_train=10, task_rows={"tm": 10, "hic": 0}), GLOBAL,
                                {"n_train": 10, "task_rows": {"tm": 10, "hic": 0}}, TASKS)
    site_b = check_train_result(answer(filled(5.0), n_train=30, task_rows={"tm": 10, "hic": 30}), GLOBAL,
                                {"n_train": 30, "task_rows": {"tm": 10, "hic": 30}}, TASKS)
    out = Aggregator("fedavg")([site_a, site_b], GLOBAL)
    # trunk: (10 * 1 + 30 * 5) / 40 = 4.0; tm head: (10 * 1 + 10 * 5) / 20 = 3.0; hic head: only site b trained it
    torch.testing.assert_close(out["trunk.w"], torch.full((2, 3), 4.0))
    torch.testing.assert_close(out["heads.tm.b"], torch.tensor([3.0]))
    torch.testing.assert_close(out["heads.hic.b"], torch.tensor([5.0]))
    assert out["trunk.w"].dtype == torch.float32


def test_a_tensor_no_site_trained_keeps_its_global_value():
    site = check_train_result(answer(filled(2.0), task_rows={"tm": 80, "hic": 0}), GLOBAL, BOUND, TASKS)
    out = Aggregator("fedavg")([site], {**GLOBAL, "heads.hic.b": torch.tensor([7.0])})
    assert out["heads.hic.b"].item() == 7.0


@pytest.mark.parametrize("bad, reason", [
    ({"trunk.w": np.full((2, 3), np.nan)}, "non-finite"),
    ({"trunk.w": np.full((2, 3), np.inf)}, "non-finite"),
    ({"trunk.w": np.zeros((3, 2))}, "shape"),
    ({"trunk.w": np.zeros((2, 3), dtype=np.int64)}, "dtype"),
    ({"trunk.w": np.array([["a", "b", "c"]] * 2)}, "real numeric"),
    ({"extra.key": np.zeros(1)}, "unexpected"),
])
def test_bad_updates_are_rejected_with_the_reason(bad, reason):
    params = {k: v.numpy() for k, v in GLOBAL.items()}
    params.update(bad)
    with pytest.raises(Rejected, match=reason):
        check_update(params, GLOBAL)


def test_missing_key_is_rejected():
    with pytest.raises(Rejected, match="missing"):
        check_update({"trunk.w": np.zeros((2, 3))}, GLOBAL)


@pytest.mark.parametrize("n_train, reason", [
    (1e12, "exceeds"), (101, "exceeds"), ("lots", "not a number"), (float("nan"), "finite integer"),
    (2.5, "finite integer"), (0, "positive"), (-3, "positive"), (True, "not a number"), (None, "not a number"),
])
def test_bad_row_counts_are_rejected(n_train, reason):
    with pytest.raises(Rejected, match=reason):
        check_train_result(answer(filled(0.0), n_train=n_train), GLOBAL, BOUND, TASKS)


def test_task_rows_are_bounded_by_the_stats_phase_and_the_site_rows():
    with pytest.raises(Rejected, match="task_rows\\[hic\\]"):
        check_counts({"n_train": 100, "task_rows": {"tm": 80, "hic": 21}}, BOUND, TASKS)
    with pytest.raises(Rejected, match="only name"):
        check_counts({"n_train": 100, "task_rows": {"other": 1}}, BOUND, TASKS)
    assert check_counts({"n_train": 60.0, "task_rows": {"tm": 50}}, BOUND, TASKS) == \
        {"n_train": 60, "task_rows": {"tm": 50, "hic": 0}}


def test_validation_and_test_counts_are_bounded_by_the_stats_phase():
    assert check_split_counts({"n_val": 7, "n_test": 5.0}, None) == {"n_val": 7, "n_test": 5}
    assert check_split_counts({"n_val": 7}, {"n_val": 7, "n_test": 5}, ("n_val",)) == {"n_val": 7}
    with pytest.raises(Rejected, match="n_val=8 exceeds"):
        check_split_counts({"n_val": 8, "n_test": 5}, {"n_val": 7, "n_test": 5})
    for bad, reason in [({"n_test": 5}, "n_val is not a number"), ({"n_val": -1, "n_test": 5}, "non-negative"),
                        ({"n_val": 2.5, "n_test": 5}, "finite integer")]:
        with pytest.raises(Rejected, match=reason):
            check_split_counts(bad, None)


def test_a_site_without_a_stats_phase_report_is_rejected():
    with pytest.raises(Rejected, match="stats phase"):
        check_train_result(answer(filled(0.0)), GLOBAL, None, TASKS)


def test_moments_nan_counts_rejected_small_counts_not_shared():
    with pytest.raises(Rejected, match="non-finite"):
        check_moments([[float("nan"), 5], [1, 1], [1, 1]], 2, 100, 5)
    with pytest.raises(Rejected, match="shape"):
        check_moments([[5], [1], [1]], 2, 100, 5)
    with pytest.raises(Rejected, match="between 0 and n_train"):
        check_moments([[500, 5], [1, 1], [1, 1]], 2, 100, 5)
    n, s, ss = check_moments([[3, 6], [3.0, 6.0], [5.0, 8.0]], 2, 100, 5)
    assert (n, s, ss) == ([0.0, 6.0], [0.0, 6.0], [0.0, 8.0])


def test_an_assay_nobody_shared_pools_to_count_zero_mean_zero_std_one():
    site = check_moments([[2, 10], [4.0, 10.0], [9.0, 14.0]], 2, 50, 5)
    stats = AssayStats.pool(["t/a", "t/b"], [1, 1], [site, site])
    assert stats.count.tolist() == [0.0, 20.0]
    assert stats.mean[0] == 0.0 and stats.std[0] == 1.0 and stats.mean[1] == 1.0


def test_robust_aggregators_resist_one_scaled_update_fedavg_does_not():
    torch.manual_seed(0)
    start = {"trunk.w": torch.randn(4, 5)}
    honest_delta = torch.randn(4, 5) * 0.1
    honest = [{"trunk.w": start["trunk.w"] + honest_delta + 0.01 * torch.randn(4, 5)} for _ in range(4)]
    poisoned = {"trunk.w": start["trunk.w"] - 50 * honest_delta}
    counts = {"n_train": 100, "task_rows": {}}
    updates = [(u, counts) for u in honest] + [(poisoned, counts)]
    honest_mean = torch.stack([u["trunk.w"] for u in honest]).mean(0)
    scale = honest_delta.norm()
    for name in ("median", "trimmed-mean"):
        err = (Aggregator(name, trim=0.2)(updates, start)["trunk.w"] - honest_mean).norm()
        assert err < 0.2 * scale, (name, float(err), float(scale))
    err = (Aggregator("fedavg")(updates, start)["trunk.w"] - honest_mean).norm()
    assert err > 5 * scale


def test_median_and_trimmed_mean_by_hand():
    vals = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([10.0]), torch.tensor([4.0])]
    assert Aggregator("median").combine(vals, [1] * 4).item() == 3.0
    assert Aggregator("trimmed-mean", trim=0.25).combine(vals, [1] * 4).item() == 3.0
    assert Aggregator("trimmed-mean", trim=0.1).combine(vals[:2], [1, 1]).item() == 1.5   # nothing to trim


def test_job_config_rejects_unknown_aggregator_and_bad_settings():
    base = dict(kind="sentiment")
    with pytest.raises(ValueError, match="aggregator"):
        JobConfig(**base, aggregator="mean-ish")
    with pytest.raises(ValueError, match="trim"):
        JobConfig(**base, aggregator="trimmed-mean", trim=0.5)
    with pytest.raises(ValueError, match="min_stat_count"):
        JobConfig(**base, min_stat_count=0)
    with pytest.raises(ValueError, match="keep_checkpoints"):
        JobConfig(**base, keep_checkpoints=0)


def test_reported_metrics_are_cleaned_before_they_are_stored_or_published():
    reported = {"n": 30, "mean_pearson": float("nan"), "accuracy": np.float32(0.5), "note": "x" * 5000,
                "tasks": {"tm": {"pearson": 0.25, "raw": [1, 2, 3], "measure": "Tm"}}, 7: "numeric key",
                "deep": {"a": {"b": {"c": {"d": {"e": 1.0}}}}}}
    assert clean_metrics(reported) == {"n": 30, "mean_pearson": None, "accuracy": 0.5, "note": None,
                                       "tasks": {"tm": {"pearson": 0.25, "measure": "Tm"}},
                                       "deep": {"a": {"b": {"c": {}}}}}
    assert clean_metrics("not a dict") == "not a dict" and clean_metrics([1]) is None

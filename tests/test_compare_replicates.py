"""compare takes bootstrap replicates for a federated run's mean-over-sites interval only from a rescoring that
reproduces what the site reported (`fedtune.compare.with_replicates`)."""

from __future__ import annotations

import pytest

from fedtune.compare import with_replicates
from fedtune.train.bootstrap import mean_interval


def _reported(acc: float, f1: float) -> dict:
    return {"accuracy": acc, "macro_f1": f1, "bootstrap": {"n": 3, "ci": {"accuracy": {"lo": 0.1, "hi": 0.9}}}}


def _rescored(acc: float, f1: float, reps: list[float]) -> dict:
    return {"accuracy": acc, "macro_f1": f1,
            "bootstrap": {"n": 3, "replicates": {"accuracy": reps, "macro_f1": reps}}}


def test_replicates_are_taken_only_where_the_rescored_numbers_are_the_sites_own():
    reported = {"site-1": _reported(0.8, 0.7), "site-2": _reported(0.6, 0.5), "site-3": _reported(0.9, 0.9)}
    rescored = {"site-1": _rescored(0.8, 0.7, [0.7, 0.8, 0.9]),
                "site-2": _rescored(0.61, 0.5, [0.5, 0.6, 0.7])}        # differs from what site-2 reported
    out = with_replicates("sentiment", reported, rescored)
    assert out["site-1"]["bootstrap"]["replicates"]["accuracy"] == [0.7, 0.8, 0.9]
    assert out["site-1"]["bootstrap"]["ci"] == reported["site-1"]["bootstrap"]["ci"]     # the site's own kept
    assert "replicates" not in out["site-2"]["bootstrap"]                # numbers disagree: not taken
    assert "replicates" not in out["site-3"]["bootstrap"]                # not rescored: as reported
    assert "replicates" not in reported["site-1"]["bootstrap"]           # the input is not modified
    # with every site's replicates the mean over sites gets its interval
    both = with_replicates("sentiment", {k: reported[k] for k in ("site-1",)}, rescored)
    assert mean_interval([m["bootstrap"] for m in both.values()], "accuracy") == pytest.approx({"lo": 0.705, "hi": 0.895})

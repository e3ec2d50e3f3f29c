"""Classification metrics follow scikit-learn's definitions, including when a class is absent."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from fedtune.train.metrics import classification_metrics

NAMES = ("negative", "neutral", "positive")


def one_hot(pred, c=3):
    return np.eye(c)[np.asarray(pred)]


def test_a_class_absent_from_labels_and_predictions_is_not_counted_as_zero():
    labels, pred = np.array([0, 0, 2, 2]), np.array([0, 2, 2, 2])      # "neutral" nowhere
    m = classification_metrics(one_hot(pred), labels, NAMES)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)          # two classes, not three


def test_perfect_predictions_on_two_of_three_classes_score_one():
    labels = np.array([0, 2, 2, 0, 2])
    m = classification_metrics(one_hot(labels), labels, NAMES)
    assert m["macro_f1"] == pytest.approx(1.0)
    assert m["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 0}


@pytest.mark.parametrize("seed", range(12))
def test_matches_scikit_learn_on_random_cases_with_absent_classes(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    present = rng.choice(3, size=int(rng.integers(1, 4)), replace=False)   # some classes may never appear
    labels = rng.choice(present, size=n)
    probs = rng.random((n, 3))
    probs[:, [c for c in range(3) if c not in present]] = 0.0
    pred = probs.argmax(-1)
    m = classification_metrics(probs, labels, NAMES)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro", zero_division=0))
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=[0, 1, 2], zero_division=0)
    for c, name in enumerate(NAMES):
        assert m["per_class"][name]["precision"] == pytest.approx(p[c])
        assert m["per_class"][name]["recall"] == pytest.approx(r[c])
        assert m["per_class"][name]["f1"] == pytest.approx(f[c])
        assert m["per_class"][name]["n"] == int((labels == c).sum())


def test_no_rows_gives_no_scores():
    m = classification_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int), NAMES)
    assert m["n"] == 0 and m["accuracy"] is None and m["macro_f1"] is None

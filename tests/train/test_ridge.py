"""Exact federated ridge (issue 13): the solution from summed per-site sums is the pooled ridge; the minimum-count
rule; malformed sums are rejected; ridge and ridge-mlp heads start as the linear map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtune.fl.aggregate import Rejected
from fedtune.fl.ridge import check_sums, check_val
from fedtune.models.heads import make_head, set_linear
from fedtune.train import ridge


def _data(n=90, dim=12, cols=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * rng.uniform(0.5, 3, dim) + rng.normal(size=dim)
    y = x @ rng.normal(size=(dim, cols)) + rng.normal(size=cols) + 0.3 * rng.normal(size=(n, cols))
    y[rng.random((n, cols)) < 0.25] = np.nan              # not every row is labelled for every column
    return x, y


def pooled_ridge(x, y, lam):
    """The textbook ridge with an unpenalised intercept on pooled rows: centre, solve, intercept from the means."""
    xm, ym = x.mean(0), y.mean()
    xc, yc = x - xm, y - ym
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ yc)
    return np.append(w, ym - xm @ w)


def test_summed_site_sums_solve_to_the_pooled_ridge():
    x, y = _data()
    parts = np.array_split(np.arange(len(x)), [25, 60])      # three sites of unequal size
    site = [ridge.sums(x[p], y[p]) for p in parts]
    gram, xty = sum(s[0] for s in site), sum(s[1] for s in site)
    w = ridge.solve(gram, xty)
    for a in range(y.shape[1]):
        rows = np.isfinite(y[:, a])
        for j, lam in enumerate(ridge.lambdas(gram[a])):
            np.testing.assert_allclose(w[a, j], pooled_ridge(x[rows], y[rows, a], lam), rtol=1e-9, atol=1e-11)
    # the penalty grid spans small to large: the smallest nearly least squares, the largest shrinks hard
    assert np.linalg.norm(w[0, 0, :-1]) > 5 * np.linalg.norm(w[0, -1, :-1])


def test_min_count_rule_a_site_sends_nothing_for_a_thin_column():
    x, y = _data(n=12)
    y[:, 1] = np.nan
    y[:3, 1] = 1.0                                          # 3 labelled rows: below a minimum of 5
    gram, xty, n = ridge.sums(x, y, min_count=5)
    assert n[1] == 0 and not gram[1].any() and not xty[1].any()
    assert n[0] == np.isfinite(y[:, 0]).sum() and gram[0, -1, -1] == n[0]
    # the server refuses sums of a column under the minimum
    g2, b2, n2 = ridge.sums(x, y, min_count=1)
    with pytest.raises(Rejected, match="fewer than min_stat_count"):
        check_sums({"ridge.gram": g2, "ridge.xty": b2, "ridge.n": n2}, 3, 13, 12, min_count=5)


def _good(seed=0):
    x, y = _data(n=40, seed=seed)
    g, b, n = ridge.sums(x, y)
    return {"ridge.gram": g, "ridge.xty": b, "ridge.n": n}


@pytest.mark.parametrize("break_it, reason", [
    (lambda p: p["ridge.gram"].__setitem__((0, 1, 2), p["ridge.gram"][0, 1, 2] + 1.0), "not symmetric"),
    (lambda p: p["ridge.xty"].__setitem__((1, 0), np.nan), "non-finite"),
    (lambda p: p.__setitem__("ridge.gram", p["ridge.gram"][:, :-1]), "shape"),
    (lambda p: p["ridge.n"].__setitem__(0, p["ridge.n"][0] + 1), "does not match"),
    (lambda p: p["ridge.n"].__setitem__(2, 2.5), "integers"),
    (lambda p: p.__setitem__("ridge.n", p["ridge.n"] * 0 + 41), "exceeds"),
    (lambda p: p.__setitem__("ridge.gram", -p["ridge.gram"]), "negative diagonal"),
    (lambda p: p.__setitem__("ridge.xty", p["ridge.xty"].astype(np.int64)), "dtype"),
    (lambda p: p.pop("ridge.xty"), "missing"),
    (lambda p: p.__setitem__("heads.x", np.zeros(1)), "unexpected"),
])
def test_malformed_sums_are_rejected_with_a_reason(break_it, reason):
    params = _good()
    assert check_sums(params, 3, 13, 40, 1)[2].sum() > 0          # the intact answer passes
    break_it(params)
    with pytest.raises(Rejected, match=reason):
        check_sums(params, 3, 13, 40, 1)


def test_malformed_validation_errors_are_rejected():
    ok = {"ridge.sse": np.ones((3, 4)), "ridge.n": np.array([5.0, 6, 7]), "ridge.overall": np.ones(4),
          "ridge.overall_n": np.array([18.0])}
    check_val(ok, 3, 4, 7, 5)                                # 7 validation rows at the stats phase
    for key, bad, reason in [("ridge.sse", -np.ones((3, 4)), "non-negative"), ("ridge.n", np.array([2.0, 6, 7]),
                             "fewer than"), ("ridge.overall", np.full(4, np.inf), "non-finite"),
                             ("ridge.n", np.array([5.0, 6, 8]), "more than the site's 7 validation rows"),
                             ("ridge.overall_n", np.array([22.0]), "does not fit"),
                             ("ridge.overall_n", np.array([17.0]), "does not fit")]:
        with pytest.raises(Rejected, match=reason):
            check_val({**ok, key: bad}, 3, 4, 7, 5)


def test_alpha_is_chosen_on_the_validation_rows_given():
    x, y = _data(n=200, seed=3)
    xv, yv = _data(n=60, seed=4)                           # another linear map: validation disagrees with training
    w, alpha = ridge.fit(x, y, xv, yv)
    cand = ridge.solve(*ridge.sums(x, y)[:2])
    err, n = ridge.sse(xv, yv, cand)
    assert list(alpha) == [ridge.ALPHAS[i] for i in np.argmin(err, axis=1)]
    np.testing.assert_array_equal(w, cand[np.arange(3), np.argmin(err, axis=1)])


def test_choose_falls_back_to_the_overall_best_for_columns_without_validation_rows():
    err = np.array([[3.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    assert list(ridge.choose(err, np.array([4.0, 0.0]))) == [1, 1]
    assert list(ridge.choose(err, np.array([4.0, 0.0]), overall=np.array([0.5, 0.9, 0.1]))) == [1, 2]


@pytest.mark.parametrize("head_type", ["ridge", "ridge-mlp"])
def test_ridge_heads_start_as_the_linear_map(head_type):
    torch.manual_seed(0)
    head = make_head(head_type, 8, 2, (16, 8), 0.1).train()     # dropout on: the MLP term is still zero
    w, b = torch.randn(2, 8), torch.randn(2)
    set_linear(head, w, b)
    x = torch.randn(5, 8)
    torch.testing.assert_close(head(x), x @ w.T + b)
    if head_type == "ridge-mlp":      # the MLP keeps the MLP heads' hidden sizes and learns from the first step
        head(x).pow(2).sum().backward()
        assert head.mlp.net[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fields, reason", [
    (dict(kind="fitness", head_type="ridge", heads="private"), "use shared heads"),
    (dict(kind="fitness", head_type="ridge", trunk={"mode": "full"}), "frozen"),
    (dict(kind="fitness", head_type="forest"), "no head type"),
    (dict(kind="sentiment", head_type="ridge"), "no head type"),
])
def test_a_job_with_an_impossible_head_type_is_refused(fields, reason):
    from fedtune.data import SYNTHETIC_ASSAYS
    from fedtune.fl.config import JobConfig

    assays = [a.to_dict() for a in SYNTHETIC_ASSAYS] if fields["kind"] == "fitness" else []
    with pytest.raises(ValueError, match=reason):
        JobConfig(**{"trunk": {"mode": "frozen"}, "assays": assays, **fields})
    table = [a.to_dict() for a in SYNTHETIC_ASSAYS]
    JobConfig(kind="fitness", head_type="ridge-mlp", trunk={"mode": "full"}, assays=table)   # may train the trunk

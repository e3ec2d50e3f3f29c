"""Assay order is enforced, not assumed: a job may list its assays in any order, yet every head output
meets its own label column at the site and the pooled statistics name the columns they were computed on."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.data import SYNTHETIC_ASSAYS, AssayStats, synthetic_fitness
from fedtune.fl.client import SiteRunner
from fedtune.fl.config import JobConfig
from fedtune.tasks import get

REVERSED = [a.to_dict() for a in reversed(SYNTHETIC_ASSAYS)]


def test_job_assays_are_kept_in_the_canonical_order():
    job = JobConfig(kind="fitness", assays=REVERSED)
    assert [a.key for a in job.assay_list()] == [a.key for a in SYNTHETIC_ASSAYS]
    again = JobConfig.from_dict(job.to_dict())
    assert again.assays == job.assays


def test_an_assay_listed_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        JobConfig(kind="fitness", assays=REVERSED + REVERSED[:1])


def test_reversed_job_assays_train_each_head_against_its_own_column(tmp_path, tiny_antibody_trunk):
    data = synthetic_fitness(80, seed=3)
    site = get("fitness").write(data, tmp_path / "site-1")
    job = JobConfig(kind="fitness", assays=REVERSED, trunk={"source": str(tiny_antibody_trunk), "mode": "frozen"},
                    train={"batch_size": 16, "progress": False})
    runner = SiteRunner(job, "site-1", site, tmp_path / "runs")
    model_keys = [a.key for a in runner.model.assays]
    assert model_keys == [a.key for a in runner.train.assays] == [a.key for a in job.assay_list()]
    # column j of the site's labels holds the values of the model's assay j (the synthetic assays have
    # distinct units, so a swapped column cannot pass)
    source = {a.key: np.sort(data.labels[:, j][~np.isnan(data.labels[:, j])]) for j, a in enumerate(data.assays)}
    site_labels = np.concatenate([runner.train.labels, runner.val.labels, runner.test.labels])
    for j, key in enumerate(model_keys):
        col = site_labels[:, j]
        np.testing.assert_allclose(np.sort(col[~np.isnan(col)]), source[key], rtol=1e-6)
    # the head outputs come out in the same order, one per assay of each task
    with __import__("torch").no_grad():
        out = runner.model.assay_outputs(runner.model.embed(runner.train.heavy[:2], runner.train.light[:2]))
    assert out.shape == (2, len(model_keys))
    # the statistics the server pools are keyed in the order the site computes its moments
    assert AssayStats.fit(runner.train).keys == [a.key for a in job.assay_list()]

"""What a site reports as NUM_STEPS_CURRENT_ROUND is NVFlare's meaning: the optimiser steps it took this
round (epochs run x batches per epoch), not epochs x rows."""

from __future__ import annotations

import math

from fedtune.data import synthetic_sentiment
from fedtune.fl.client import SiteRunner
from fedtune.fl.config import JobConfig
from fedtune.tasks import get


def test_num_steps_is_epochs_times_batches(tmp_path, tiny_text_trunk):
    site = get("sentiment").write(synthetic_sentiment(47, seed=1), tmp_path / "site-1")
    batch = 8
    job = JobConfig(kind="sentiment", local_epochs=3, trunk={"source": str(tiny_text_trunk), "mode": "frozen"},
                    train={"batch_size": batch, "progress": False, "patience": 100})
    runner = SiteRunner(job, "site-1", site, tmp_path / "runs")
    rows = len(runner.train)
    assert rows % batch, "a last partial batch makes the count distinguishable"
    try:
        _, _, meta = runner.train_round({}, {"round": 0})
        _, _, meta2 = runner.train_round({}, {"round": 1})
    finally:
        runner.trainer.writer.close()
    epochs = meta["summary"]["epochs"]
    assert epochs == job.local_epochs
    assert meta["NUM_STEPS_CURRENT_ROUND"] == epochs * math.ceil(rows / batch)
    assert meta["NUM_STEPS_CURRENT_ROUND"] != epochs * rows
    # counted per round, not since the job started
    assert meta2["NUM_STEPS_CURRENT_ROUND"] == meta2["summary"]["epochs"] * math.ceil(rows / batch)

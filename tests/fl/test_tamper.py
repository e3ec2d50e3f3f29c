"""The test-only misbehaviour hook of the site script (FEDTUNE_TEST_TAMPER): which site, in which jobs."""

from __future__ import annotations

import math

import torch

from fedtune.fl.client import tamper

SPEC = "site-2@poison*:n_train=1e12;site-3@poison*:nan;site-3@scaled-*:scale=-40;site-1:shape"


def _send(site: str, job: str) -> tuple[dict, dict]:
    update, meta = {"w": torch.ones(3, 2)}, {"n_train": 10}
    received = {"w": torch.zeros(3, 2).numpy()}
    return tamper(SPEC, site, update, meta, received, job), meta


def test_a_job_pattern_limits_the_tampering_to_the_jobs_it_names():
    update, meta = _send("site-2", "poison-k")
    assert meta["n_train"] == 1e12 and torch.equal(update["w"], torch.ones(3, 2))
    assert math.isnan(_send("site-3", "poison")[0]["w"][0, 0])
    assert torch.equal(_send("site-3", "scaled-median")[0]["w"], torch.full((3, 2), -40.0))
    for site, job in (("site-2", "scaled-fedavg"), ("site-3", "ridge-asym"), ("site-4", "poison")):
        update, meta = _send(site, job)        # other jobs, other sites: untouched
        assert meta["n_train"] == 10 and torch.equal(update["w"], torch.ones(3, 2))


def test_an_entry_without_a_job_pattern_applies_to_every_job():
    for job in ("poison", "anything"):
        assert _send("site-1", job)[0]["w"].shape == (2, 2)

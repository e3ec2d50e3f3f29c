"""Job settings that cannot hold together are refused when the job is built, before anything runs: what a
site would be promised (DP covers its rows) must be true of every phase the job has."""

from __future__ import annotations

from dataclasses import replace

import pytest


def frozen(make_job, trunk, **fields):
    return replace(make_job("fitness", trunk), trunk={"source": str(trunk), "mode": "frozen"}, **fields)


@pytest.mark.parametrize("head_type", ["ridge", "ridge-mlp"])
def test_dp_is_refused_with_ridge_heads_whose_sums_it_would_not_cover(make_job, tiny_antibody_trunk, head_type):
    assert frozen(make_job, tiny_antibody_trunk, dp={"epsilon": 4.0}).dp        # DP alone: fine
    assert frozen(make_job, tiny_antibody_trunk, head_type=head_type).head_type == head_type
    with pytest.raises(ValueError, match="ridge phase sends exact sums"):
        frozen(make_job, tiny_antibody_trunk, dp={"epsilon": 4.0}, head_type=head_type)


def test_best_round_with_ridge_mlp_is_allowed_and_with_private_heads_refused(make_job, tiny_antibody_trunk):
    assert frozen(make_job, tiny_antibody_trunk, head_type="ridge-mlp", select_round="best").select_round == "best"
    with pytest.raises(ValueError, match="needs shared heads"):
        frozen(make_job, tiny_antibody_trunk, heads="private", select_round="best")

"""Rounds chosen on validation (`select_round best`): the final model is the round whose global model has the
lowest median validation loss over sites, never a model the test split chose."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from fedtune.bundle import load_bundle
from fedtune.fl.config import JobConfig
from fedtune.fl.export import export_bundle
from fedtune.fl.submit import find_fedtune_dir


def test_best_round_needs_shared_heads_and_a_known_rule(make_job, tiny_antibody_trunk):
    with pytest.raises(ValueError, match="select_round best needs shared heads"):
        make_job("fitness", tiny_antibody_trunk, heads="private", select_round="best")
    with pytest.raises(ValueError, match="select_round must be one of"):
        make_job("fitness", tiny_antibody_trunk, select_round="first")
    assert make_job("fitness", tiny_antibody_trunk).select_round == "last"


@pytest.mark.slow
def test_a_diverging_job_ends_with_the_round_validation_chose(federation, make_job, tiny_antibody_trunk, tmp_path):
    """A step size far too large makes every trained round worse than the initial model on validation: the job
    ends with round 0's model (bit for bit the model the job started from), says so, and exports it."""
    job = replace(make_job("fitness", tiny_antibody_trunk, name="select-best", rounds=2, select_round="best",
                           train={"batch_size": 16, "progress": False, "head_lr": 50.0, "lr": 1e-3, "dropout": 0.0}),
                  trunk={"source": str(tiny_antibody_trunk), "mode": "frozen", "max_length": 160})
    result = federation.run(job, timeout=600)
    fed_dir = find_fedtune_dir(result)
    summary = json.loads((fed_dir / "summary.json").read_text())
    sel = summary["selected_round"]
    losses = {int(r): v for r, v in sel["val_loss"].items()}
    assert sorted(losses) == [0, 1, 2]                  # round 0 from round 1's start, round 2 from the validate phase
    assert sel["round"] == min(losses, key=lambda r: (losses[r], -r)) == 0, losses
    assert [r["received_val_loss"] for r in summary["rounds"]] == [losses[0], losses[1]]

    torch.manual_seed(job.seed)       # the model the server started from (same seed, same build)
    start = JobConfig.from_dict(job.to_dict()).build_model()
    final = load_file(str(fed_dir / "global.safetensors"))
    last = load_file(str(fed_dir / "checkpoints" / "round-2.safetensors"))
    heads = [k for k in final if k.startswith("heads.")]
    assert heads and all(torch.equal(final[k], start.state_dict()[k]) for k in heads)
    assert any(not torch.equal(final[k], last[k]) for k in heads)      # not the last round's model
    bundle = load_bundle(export_bundle(result, tmp_path / "bundle"))
    assert bundle.manifest["provenance"]["selected_round"]["round"] == 0

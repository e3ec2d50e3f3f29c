"""Starting a job from earlier weights (`--init-from`): what is read from a bundle or checkpoint, what the
controller refuses, and the CLI's errors on bad input (fast: no federation)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from fedtune.bundle import save_bundle
from fedtune.data import SYNTHETIC_ASSAYS, AssayStats, synthetic_fitness
from fedtune.fl.federation import fedtune_command
from fedtune.fl.resume import INIT_FILE, build_job_from, fit_init_state, load_init_state
from fedtune.models import TrunkConfig, travelling_keys
from fedtune.tasks import build_model


@pytest.fixture()
def model_and_keys(tiny_antibody_trunk):
    torch.manual_seed(1)
    model = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="full"), SYNTHETIC_ASSAYS)
    return model, travelling_keys(model)


def fresh_state(tiny_antibody_trunk) -> dict:
    torch.manual_seed(2)
    model = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="full"), SYNTHETIC_ASSAYS)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_bundle_gives_its_trunk_and_global_heads(tmp_path, tiny_antibody_trunk, model_and_keys):
    model, keys = model_and_keys
    stats = AssayStats.fit(synthetic_fitness(30, seed=5))
    path = save_bundle(tmp_path / "bundle", model, trunk_cfg=TrunkConfig(str(tiny_antibody_trunk), mode="full"),
                       stats=stats, provenance={"job_name": "earlier"})
    init, described = load_init_state(path)
    assert "bundle" in described and "earlier" in described
    state = fresh_state(tiny_antibody_trunk)
    loaded = fit_init_state(init, state, keys)
    for k in keys:
        torch.testing.assert_close(loaded[k], model.state_dict()[k], msg=k)


def test_weights_that_do_not_fit_are_refused(tiny_antibody_trunk, model_and_keys):
    _, keys = model_and_keys
    state = fresh_state(tiny_antibody_trunk)
    trunk_key = next(k for k in keys if k.startswith("trunk."))
    with pytest.raises(ValueError, match="unknown keys"):
        fit_init_state({**state, "trunk.other": torch.zeros(1)}, state, keys)
    with pytest.raises(ValueError, match="other shapes"):
        fit_init_state({**state, trunk_key: torch.zeros(1)}, state, keys)
    with pytest.raises(ValueError, match="missing"):
        fit_init_state({k: v for k, v in state.items() if k != trunk_key}, state, keys)
    with pytest.raises(ValueError, match="non-finite"):
        fit_init_state({**state, trunk_key: torch.full_like(state[trunk_key], float("nan"))}, state, keys)
    heads_absent = {k: v for k, v in state.items() if not k.startswith("heads.")}
    assert set(fit_init_state(heads_absent, state, keys)) == set(heads_absent)


def test_checkpoint_file_ships_in_the_job(tmp_path, tiny_antibody_trunk, make_job):
    state = fresh_state(tiny_antibody_trunk)
    save_file(state, str(tmp_path / "round-3.safetensors"))
    job_dir = build_job_from(make_job("fitness", tiny_antibody_trunk, name="from-ckpt"), tmp_path / "jobs",
                             tmp_path / "round-3.safetensors")
    assert (job_dir / "app" / "config" / INIT_FILE).is_file()
    assert "round-3.safetensors" in (job_dir / "app" / "config" / "config_fed_server.json").read_text()


def test_bad_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_init_state(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="safetensors"):
        load_init_state(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="summary.json"):
        load_init_state(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--init-from", "/nonexistent/ckpt"], "no such checkpoint"),
    (["--aggregator", "average"], "unknown aggregator"),
    (["--aggregator", "trimmed-mean", "--trim", "0.7"], "trim fraction"),
])
def test_submit_refuses_bad_options_before_touching_a_server(tmp_path, args, message):
    res = subprocess.run(fedtune_command("submit", "sentiment", "--admin-kit", str(tmp_path / "no-kit"),
                                         "--out", str(tmp_path / "out"), *args), capture_output=True, text=True)
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]


def test_a_corrupt_checkpoint_in_a_result_is_a_clear_error(tmp_path, make_job, tiny_antibody_trunk):
    fed_dir = tmp_path / "result" / "workspace" / "app_server" / "fedtune"
    (fed_dir / "checkpoints").mkdir(parents=True)
    (fed_dir / "job.json").write_text(json.dumps(make_job("fitness", tiny_antibody_trunk).to_dict()))
    (fed_dir / "summary.json").write_text(json.dumps({"status": "failed", "last_round": 1,
                                                      "checkpoint": "checkpoints/round-1.safetensors"}))
    (fed_dir / "checkpoints" / "round-1.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="unreadable weights"):
        load_init_state(tmp_path / "result")

"""FFA-LoRA through a real federation (NVFlare over loopback, mTLS): every site uploads its B matrices and
never an A; the global model and every site's final model hold the same A, the one the shared seed draws;
the job exports to a bundle that loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fedtune.bundle import load_bundle
from fedtune.fl.export import export_bundle
from fedtune.fl.submit import find_fedtune_dir
from fedtune.tasks import build_model

pytestmark = pytest.mark.slow


def test_ffa_lora_job_sends_only_b_and_shares_a(federation, make_job, tiny_text_trunk, tmp_path):
    job = make_job("sentiment", tiny_text_trunk, name="ffa-lora", rounds=1)
    job.trunk = {"source": str(tiny_text_trunk), "mode": "lora", "lora_freeze_a": True, "max_length": 64}
    job_ids = []
    result = federation.run(job, timeout=600, on_submit=job_ids.append)
    out = find_fedtune_dir(result)
    expected = build_model("sentiment", job.trunk_config()).state_dict()
    a_keys = [k for k in expected if ".lora_A." in k]
    assert a_keys
    global_state = load_file(str(out / "global.safetensors"))
    finals = list(federation.workdir.rglob(f"fedtune-runs/{job_ids[0]}/*/final_model.safetensors"))
    updates = list(federation.workdir.rglob(f"fedtune-runs/{job_ids[0]}/*/update-round-*.safetensors"))
    assert len(finals) == len(federation.site_data) and updates
    for path in updates:
        sent = load_file(str(path))
        assert not any(".lora_A." in k for k in sent), f"{path}: an A matrix left the site"
        assert any(".lora_B." in k for k in sent)
    for state in [global_state, *(load_file(str(p)) for p in finals)]:
        for k in a_keys:
            assert torch.equal(state[k], expected[k])
    bundle = load_bundle(export_bundle(result, tmp_path / "bundle"))
    assert bundle.kind == "sentiment"

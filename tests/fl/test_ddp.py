"""Multi-GPU sites: a site started with `fedtune client --gpus N` trains every job with N DistributedDataParallel
processes under torchrun (gloo on CPU here), only rank 0 talks to the server, and the result equals
single-process training on the same data up to floating-point noise."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from fedtune.fl.federation import LocalFederation
from fedtune.fl.submit import find_fedtune_dir

pytestmark = pytest.mark.slow


class MixedFederation(LocalFederation):
    """A local federation whose sites run with different process counts (`fedtune client --gpus N`)."""

    def __init__(self, *args, gpus: dict[str, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.gpus = gpus

    def start_site(self, site, data, kit=None, startup_deadline: float = 120.0) -> None:
        self._start(site, ["client", "--kit", str(kit or self.kits.sites[site]), "--data", str(data),
                           "--startup-deadline", str(startup_deadline), "--gpus", str(self.gpus.get(site, 1))])


def updates(fed: LocalFederation, job_id: str, site: str) -> dict[int, dict[str, torch.Tensor]]:
    found = list(fed.workdir.rglob(f"fedtune-runs/{job_id}/{site}/update-round-*.safetensors"))
    return {int(p.stem.rsplit("-", 1)[1]): load_file(str(p)) for p in found}


def test_ddp_site_and_single_process_site_in_one_job(tmp_path, make_sites, make_job, tiny_antibody_trunk):
    data = make_sites(tmp_path / "data", 2)["site-1"]
    # both sites hold the SAME folder: the 2-process site and the 1-process site must upload the same update
    with MixedFederation(tmp_path / "fed", {"site-1": data, "site-2": data}, quiet=True,
                         gpus={"site-1": 2, "site-2": 1}, env={"FEDTUNE_SAVE_UPDATES": "1"}) as fed:
        job = make_job("fitness", tiny_antibody_trunk, name="ddp", rounds=2, local_epochs=2,
                       # batch 7: uneven halves (4 + 3 rows) and a last batch of one row, which one rank lacks
                       train={"batch_size": 7, "progress": False, "head_lr": 5e-3, "lr": 1e-3, "dropout": 0.0})
        job_ids = []
        result = fed.run(job, timeout=600, on_submit=job_ids.append)
        logs = {s: (fed.workdir / "logs" / f"{s}.log").read_text(errors="replace") for s in ("site-1", "site-2")}
        ddp, single = updates(fed, job_ids[0], "site-1"), updates(fed, job_ids[0], "site-2")

    summary = json.loads((find_fedtune_dir(result) / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and not summary["missing"]
    assert sorted(summary["sites"]) == ["site-1", "site-2"]
    # site-1 really trained with two processes under torchrun, site-2 with one
    assert "(2 DDP processes)" in logs["site-1"] and "DDP processes" not in logs["site-2"]

    assert sorted(ddp) == sorted(single) == [1, 2]
    for rnd in (1, 2):
        assert ddp[rnd].keys() == single[rnd].keys() and any(k.startswith("trunk.") for k in ddp[rnd])
        for k, v in single[rnd].items():
            torch.testing.assert_close(ddp[rnd][k], v, atol=2e-4, rtol=1e-3, msg=f"round {rnd}: {k}")
    # and training moved the weights: the match is not two untouched copies of the initial model
    moved = [k for k in single[1] if not torch.allclose(single[1][k], single[2][k])]
    assert moved
    r1 = summary["rounds"][0]["sites"]
    assert r1["site-1"]["loss"] == pytest.approx(r1["site-2"]["loss"], rel=1e-4)


SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from safetensors.torch import save_file
    from fedtune.data import SYNTHETIC_ASSAYS, AssayStats, synthetic_fitness, synthetic_sentiment
    from fedtune.models import TrunkConfig
    from fedtune.tasks import build_model
    from fedtune.train import TrainConfig, Trainer
    from fedtune.train.ddp import DDPTrainer, DistContext, set_dropout

    torch.set_num_threads(1)
    kind, trunk, mode, out = sys.argv[1:5]
    make = synthetic_fitness if kind == "fitness" else synthetic_sentiment
    train, val = make(45, seed=1), make(15, seed=2)
    stats = AssayStats.fit(train) if kind == "fitness" else None
    dist = DistContext.from_env().init()
    torch.manual_seed(0)
    model = build_model(kind, TrunkConfig(trunk, mode=mode), SYNTHETIC_ASSAYS if kind == "fitness" else None)
    set_dropout(model, 0.0)
    cfg = TrainConfig(epochs=2, batch_size=6, lr=1e-3, head_lr=5e-3, progress=False, device="cpu")
    trainer = DDPTrainer(model, cfg, stats, dist=dist) if dist.enabled else Trainer(model, cfg, stats)
    trainer.fit(train, val)
    if dist.is_main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    dist.close()
''')


@pytest.mark.parametrize("kind,mode", [("fitness", "full"), ("sentiment", "lora")])
def test_ddp_trainer_equals_single_process(tmp_path, tiny_antibody_trunk, tiny_text_trunk, kind, mode):
    """Without NVFlare: 2 gloo ranks with half batches take the same steps as one process with whole ones."""
    trunk = str(tiny_antibody_trunk if kind == "fitness" else tiny_text_trunk)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    one = subprocess.run([sys.executable, str(script), kind, trunk, mode, str(tmp_path / "one.st")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*env_cmd, str(script), kind, trunk, mode, str(tmp_path / "two.st")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one.st")), load_file(str(tmp_path / "two.st"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-3, msg=k)

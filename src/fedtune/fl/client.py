"""Site side of a fedtune job: the NVFlare Client API around the ordinary training loop.

Strip the `flare.*` calls and what is left is local training: the site's folder is loaded with
`fedtune.data.load_site`, the model built with `fedtune.models.build_model`, and every round trains with
`fedtune.train.Trainer` (the exact step `fedtune train-local` uses). The data folder comes from the
environment (`FEDTUNE_DATA`, set by `fedtune client --data`).

What leaves the site: per-assay moments once (fitness), then each round only the parameters that travel
(`fedtune.models.travelling_keys`: the trainable trunk parts, plus the heads when they are shared), the
row counts used as averaging weights, and validation metrics. With private heads an NVFlare output filter
also drops every `heads.` entry, so they cannot leave by mistake; at the end, when publishing is on, the final
heads go out once under `published.heads.` for the export bundle.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..data import AssayStats, load_site, moments
from ..models import build_model, travelling_keys
from .config import JobConfig

log = logging.getLogger("fedtune.client")
PUBLISHED = "published."


def flat_metrics(metrics: dict) -> dict:
    keys = ("loss", "mean_pearson", "mean_spearman", "accuracy", "macro_f1")
    return {k: float(metrics[k]) for k in keys if metrics.get(k) is not None}


class SiteRunner:
    """One site's state across the rounds of a job."""

    def __init__(self, job: JobConfig, site: str, data_dir: Path, run_dir: Path):
        from ..train import Trainer
        self.job, self.site = job, site
        assays = job.assay_list() or None
        self.train, self.val = load_site(job.kind, data_dir, assays, seed=job.seed, val_fraction=job.val_fraction)
        torch.manual_seed(job.seed)
        self.model = build_model(job.kind, job.trunk_config(), assays)
        self.keys = travelling_keys(self.model, private_heads=job.private)
        self.run_dir = run_dir
        self._trainer_cls = Trainer
        self.trainer = None
        log.info("%s: %d training / %d validation samples from %s", site, len(self.train), len(self.val), data_dir)

    def _trainer(self, meta: dict):
        if self.trainer is None:
            from torch.utils.tensorboard import SummaryWriter
            stats = AssayStats.from_dict(meta["stats"]) if self.job.kind == "fitness" else None
            self.trainer = self._trainer_cls(self.model, self.job.train_config(), stats,
                                             writer=SummaryWriter(str(self.run_dir / "tb" / self.site)),
                                             total_epochs=self.job.rounds * self.job.local_epochs,
                                             tag=f"{self.site}/")
        return self.trainer

    def _load(self, params: dict) -> None:
        if not params:
            return
        state = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
                 for k, v in params.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected:
            raise RuntimeError(f"global model has keys this site's model lacks: {unexpected[:5]}")

    def _counts(self) -> dict:
        if self.job.kind != "fitness":
            return {"n_train": len(self.train)}
        rows = {t: int((~np.isnan(self.train.labels[:, self.train.task_assays(t)])).any(1).sum())
                for t in self.train.tasks}
        return {"n_train": len(self.train), "task_rows": rows}

    def stats(self) -> tuple[dict, dict, dict]:
        n, s, ss = moments(self.train.labels)
        meta = {"moments": [n.tolist(), s.tolist(), ss.tolist()], "digest": self.train.digest()}
        return {}, {}, meta

    def train_round(self, params: dict, meta: dict) -> tuple[dict, dict, dict]:
        trainer = self._trainer(meta)
        self._load(params)
        history = trainer.fit(self.train, self.val, epochs=self.job.local_epochs)
        final = trainer.evaluate(self.val)
        state = self.model.state_dict()
        out = {k: state[k].detach().cpu() for k in self.keys}
        summary = {**flat_metrics(final), "epochs": len(history)}
        log.info("%s round %s: %s", self.site, meta.get("round"), summary)
        return out, flat_metrics(final), {**self._counts(), "summary": summary,
                                          "NUM_STEPS_CURRENT_ROUND": len(history) * max(1, len(self.train))}

    def save_model(self) -> Path:
        """The model this site ends the job with (global trunk + its own heads), kept on site."""
        from safetensors.torch import save_file
        path = self.run_dir / self.site / "final_model.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(path))
        log.info("%s: final model saved to %s", self.site, path)
        return path

    def final(self, params: dict, meta: dict) -> tuple[dict, dict, dict]:
        trainer = self._trainer(meta)
        self._load(params)
        final = trainer.evaluate(self.val)
        self.save_model()
        out = {}
        if self.job.private and self.job.publish_heads:
            out = {PUBLISHED + k: v.detach().cpu() for k, v in self.model.state_dict().items()
                   if k.startswith("heads.")}
        if trainer.writer is not None:
            trainer.writer.close()
        return out, flat_metrics(final), {**self._counts(), "n_val": len(self.val), "final_val": final}


def main() -> None:
    import nvflare.client as flare
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    logging.basicConfig(level=logging.INFO)
    flare.init()
    site = flare.get_site_name()
    data = os.environ.get("FEDTUNE_DATA")
    if not data:
        raise RuntimeError(f"{site}: no data folder: start the client with `fedtune client --data DIR`")
    run_dir = Path.cwd() / "fedtune-runs" / str(flare.get_job_id())
    runner = None
    while flare.is_running():
        msg = flare.receive()
        if msg is None:
            break
        meta = dict(msg.meta or {})
        job = JobConfig.from_dict(meta["fedtune"])
        if runner is None:
            runner = SiteRunner(job, site, Path(data), run_dir)
        phase = meta.get("phase", "train")
        meta["round"] = msg.current_round
        if phase == "stats":
            params, metrics, out_meta = runner.stats()
        elif phase == "final":
            params, metrics, out_meta = runner.final(msg.params or {}, meta)
        else:
            params, metrics, out_meta = runner.train_round(msg.params or {}, meta)
        if not params:   # the Client API needs something to send; an empty marker tensor carries no data
            params = {"fedtune.marker": torch.zeros(1)}
        params = {k: v.detach().cpu().float().numpy() for k, v in params.items()}   # numpy on the wire
        flare.send(FLModel(params_type=ParamsType.FULL, params=params, metrics=metrics, meta=out_meta))


if __name__ == "__main__":
    main()

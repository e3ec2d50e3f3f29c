"""Site side of a fedtune job: the NVFlare Client API around the ordinary training loop.

Strip the `flare.*` calls and what is left is local training: the site's folder is split with
`Task.load_split` (train / validation / test, the split every local and pooled run makes), the model built with
`Task.build_model`, and every round trains with
`fedtune.train.Trainer` (the exact step `fedtune train-local` uses). The data folder comes from the
environment (`FEDTUNE_DATA`, set by `fedtune client --data`).

What leaves the site: row counts and, for a kind whose targets are standardised (`Task.needs_stats`),
per-column label moments once, then each round only the parameters that travel
(`fedtune.models.travelling_keys`: the trainable trunk parts, plus the heads when they are shared), the
row counts used as averaging weights, and validation metrics; in the final phase also the metrics of the site's
final model on its test split (scored once, never used for a decision: n and bootstrap intervals, no rows).
With private heads an NVFlare output filter also drops every `heads.` entry, so they cannot leave by mistake;
at the end, when publishing is on, the final heads go out once under `published.heads.` for the export bundle.

Several GPUs on one site: `fedtune client --gpus N` makes `fedtune.fl.launch` start this script with
`torchrun` (N processes). Only rank 0 talks to NVFlare; it broadcasts each task (phase + meta) to the other
ranks and, after loading the received parameters, their values; every rank then runs the same phase, the
training step over DistributedDataParallel (`fedtune.train.ddp.DDPTrainer`), and rank 0 sends the result.

N ranks with about B/N rows each take the step one process takes with B rows; for an exact match (tests) a
job can switch dropout off with `train={"dropout": 0.0}` (masks are drawn per process).

Site-local environment: `FEDTUNE_DATA` (the data folder), `FEDTUNE_RUNS` (where per-job outputs go;
`fedtune client` sets `<kit>/fedtune-runs`), `FEDTUNE_SAVE_UPDATES=1` (also keep every round's upload as
`<runs>/<job>/<site>/update-round-<n>.safetensors`, for checks), `FEDTUNE_EMBEDDING_CACHE` (a frozen
trunk's embeddings of this site's rows, kept across jobs: `fedtune client` sets `<kit>/fedtune-embeddings`; `off`
switches it off; see `fedtune.train.embeddings`), `FEDTUNE_TEST_TAMPER` (tests only: one
named site sends a scaled, NaN or misshapen update or a false count, in every job or in the named ones, see
`tamper`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..data.split import TEST_FRACTION
from ..models import travelling_keys
from ..train.bootstrap import score_test
from ..train import embeddings
from ..train.ddp import DistContext, set_dropout
from .config import PUBLISHED, JobConfig
from .ridge import SITE_PHASES as RIDGE_PHASES
from .privacy import SitePrivacy

log = logging.getLogger("fedtune.client")
TAMPER = "FEDTUNE_TEST_TAMPER"   # test-only misbehaviour of one site, see `tamper`


def flat_metrics(metrics: dict) -> dict:
    """The top-level scores of an evaluation (loss, key metric, ...): its real numbers, without the row count
    `n` and the nested per-task / per-class tables."""
    return {k: float(v) for k, v in metrics.items()
            if k != "n" and isinstance(v, (float, np.floating)) and not isinstance(v, bool)}


def check_assay_order(model, data) -> None:
    """Each head output must meet its own label column: the model's assays and the data's, key by key."""
    mine, theirs = [a.key for a in getattr(model, "assays", [])], [a.key for a in getattr(data, "assays", [])]
    if mine != theirs:
        raise RuntimeError(f"assay order of the model {mine} does not match the site's label columns {theirs}")


class SiteRunner:
    """One site's state across the rounds of a job."""

    def __init__(self, job: JobConfig, site: str, data_dir: Path, run_dir: Path, dist: DistContext | None = None):
        from ..train import Trainer
        from ..train.ddp import DDPTrainer
        self.job, self.site = job, site
        self.dist = dist or DistContext()
        self.task = job.task()
        assays = job.assay_list() or None
        split = self.task.load_split(data_dir, assays, seed=job.seed, val_fraction=job.val_fraction,
                                     test_fraction=TEST_FRACTION)
        self.train, self.val, self.test = split.train, split.val, split.test   # test: scored once, in final
        torch.manual_seed(job.seed)
        self.model = job.build_model()
        check_assay_order(self.model, self.train)
        if job.train.get("dropout") is not None:     # e.g. 0: every process draws the same (no) masks
            set_dropout(self.model, job.train["dropout"])
        self.keys = travelling_keys(self.model, private_heads=job.private)
        self.run_dir = run_dir
        self.job_id = run_dir.name
        self._trainer_cls = DDPTrainer if self.dist.enabled else Trainer
        self.privacy = SitePrivacy(job, len(self.train), distributed=self.dist.enabled)
        self.trainer = None
        if self.dist.is_main:
            log.info("%s: %d training / %d validation samples from %s%s", site, len(self.train), len(self.val),
                     data_dir, f" ({self.dist.world} DDP processes)" if self.dist.enabled else "")

    def _trainer(self, meta: dict):
        if self.trainer is None:
            from torch.utils.tensorboard import SummaryWriter
            stats = self.task.stats_from_dict(meta["stats"]) if self.task.needs_stats else None
            if self.task.needs_stats and self.privacy.plan is not None:   # DP: this site's own, never sent
                stats = self.task.fit_stats(self.train)
            writer = SummaryWriter(str(self.run_dir / "tb" / self.site)) if self.dist.is_main else None
            extra = {"dist": self.dist} if self.dist.enabled else {}
            if self.privacy.plan is not None:
                from ..train.dp import DPTrainer
                self.trainer = DPTrainer(self.model, self.job.train_config(), stats, dp=self.privacy.plan,
                                         writer=writer, total_epochs=self.job.rounds * self.job.local_epochs,
                                         tag=f"{self.site}/")
                return self.trainer
            self.trainer = self._trainer_cls(self.model, self.job.train_config(), stats, writer=writer,
                                             total_epochs=self.job.rounds * self.job.local_epochs,
                                             tag=f"{self.site}/", **extra)
        return self.trainer

    def _load(self, params: dict, keys: list[str] | None = None) -> None:
        """Load the received parameters (rank 0 receives them); with DDP, copy their values to every rank.
        `keys`: the names received, known on every rank (rank 0 broadcasts them with the task)."""
        if params:
            state = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
                     for k, v in params.items() if k != "fedtune.marker"}
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected:
                raise RuntimeError(f"global model has keys this site's model lacks: {unexpected[:5]}")
        if self.dist.enabled:
            current = self.model.state_dict()
            names = sorted(k for k in (keys if keys is not None else params) if k in current)
            self.dist.broadcast_tensors([current[k] for k in names])

    def stats(self) -> tuple[dict, dict, dict]:
        """The count phase: row counts (they bound this site's later claims) and, for a kind with target
        statistics, per-column moments of the training labels, sent only for columns with at least
        `min_stat_count` labelled rows here (fewer would come close to revealing single measurements; those go
        out as zeros)."""
        meta = {**self.task.count_rows(self.train), "n_val": len(self.val), "n_test": len(self.test),
                "digest": self.train.digest()}
        if self.privacy.plan is not None:
            meta["dp"] = self.privacy.plan.to_dict()     # planned; the labels' moments stay here (see fl.privacy)
        if self.task.needs_stats:
            n, s, ss = self.task.label_moments(self.train)
            shared = (n >= self.job.min_stat_count) & (self.privacy.plan is None)
            meta["moments"] = [np.where(shared, v, 0.0).tolist() for v in (n, s, ss)]
        return {}, {}, meta

    def train_round(self, params: dict, meta: dict, keys: list[str] | None = None) -> tuple[dict, dict, dict]:
        trainer = self._trainer(meta)
        self._load(params, keys)
        # the model as received (the global model after the previous round; with private heads, this site's
        # own heads on the global trunk), on this site's validation split: the global model's per-round curve
        received = trainer.evaluate(self.val)
        if self.job.prox_mu:        # FedProx: local training is pulled towards the model this round started from
            state = self.model.state_dict()
            trainer.set_prox(self.job.prox_mu, {k: state[k].detach().clone() for k in self.keys})
        start = trainer.step
        history = trainer.fit(self.train, self.val, epochs=self.job.local_epochs)
        steps = trainer.step - start    # optimiser steps this round (epochs run x batches), NVFlare's meaning
        final = trainer.evaluate(self.val)
        state = self.model.state_dict()
        out = {k: state[k].detach().cpu() for k in self.keys}
        summary = {**flat_metrics(final), "epochs": len(history), "received": flat_metrics(received)}
        if self.dist.is_main:
            log.info("%s round %s: %s", self.site, meta.get("round"), summary)
            if os.environ.get("FEDTUNE_SAVE_UPDATES", "") not in ("", "0"):
                self.save_update(out, meta.get("round"))
        meta_out = {**self.task.count_rows(self.train), "summary": summary,
                    "NUM_STEPS_CURRENT_ROUND": steps,
                    **self.privacy.after_round(trainer, os.environ.get("FEDTUNE_KIT"), self.job_id)}
        if self.dist.is_main and os.environ.get(TAMPER):
            out = tamper(os.environ[TAMPER], self.site, out, meta_out, params, self.job.name)
        return out, flat_metrics(final), meta_out

    def save_update(self, params: dict, rnd) -> Path:
        """Keep what this site sends in a round (FEDTUNE_SAVE_UPDATES=1): checks compare sites' uploads."""
        from safetensors.torch import save_file
        path = self.run_dir / self.site / f"update-round-{rnd}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(path))
        return path

    def save_model(self, name: str = "final_model.safetensors") -> Path:
        """The model this site ends the job with (global trunk + its own heads; `personal_model.safetensors`:
        with its personalised heads), kept on site."""
        from safetensors.torch import save_file
        path = self.run_dir / self.site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(path))
        log.info("%s: model saved to %s", self.site, path)
        return path

    def published_heads(self) -> dict:
        """This site's current heads, as it sends them once at the end (`published.heads.*`)."""
        return {PUBLISHED + k: v.detach().cpu() for k, v in self.model.state_dict().items() if k.startswith("heads.")}

    def validate(self, params: dict, meta: dict, keys: list[str] | None = None) -> tuple[dict, dict, dict]:
        """The validate phase (job.select_round best): the received model on this site's validation split."""
        trainer = self._trainer(meta)
        self._load(params, keys)
        val = flat_metrics(trainer.evaluate(self.val))
        return {}, val, {"val": val, "n_val": len(self.val)}

    def final(self, params: dict, meta: dict, keys: list[str] | None = None) -> tuple[dict, dict, dict]:
        trainer = self._trainer(meta)
        self._load(params, keys)
        final = trainer.evaluate(self.val)
        if self.dist.is_main:
            self.save_model()
        out = {}
        if self.job.private and self.job.publish_heads:
            out = self.published_heads()
        if trainer.writer is not None:
            trainer.writer.close()
        scored = {}
        if len(self.test) and self.dist.is_main:      # the test split, scored once: this site's final model
            scored = {"n_test": len(self.test),
                      "final_test": score_test(trainer, self.test, self.task.interval_paths(),
                                               seed=self.job.seed, replicates=False)}
        if self.job.personal_epochs and self.dist.is_main:
            scored.update(self.personalise())
            if self.job.publish_heads:     # the personalised heads replace what this site publishes
                out = self.published_heads()
        return out, flat_metrics(final), {**self.task.count_rows(self.train), "n_val": len(self.val),
                                          "final_val": final, **scored, **self.privacy.report(trainer)}

    def personalise(self) -> dict:
        """Fine-tune this site's copy of the final heads on its own training rows (trunk frozen; early stopping
        on its validation split, the best epoch restored), then score validation and, once, test. The model
        keeps the personalised heads (kept on site as personal_model.safetensors)."""
        from dataclasses import replace

        from ..train import Trainer

        trunk = [p for p in self.model.trunk.parameters() if p.requires_grad]
        for p in trunk:
            p.requires_grad_(False)
        try:
            cfg = replace(self.job.train_config(), epochs=self.job.personal_epochs, patience=self.job.personal_epochs)
            trainer = Trainer(self.model, cfg, self.trainer.stats, tag=f"{self.site}/personal/")   # rank 0 alone
            history = trainer.fit(self.train, self.val, epochs=self.job.personal_epochs)
            val = trainer.evaluate(self.val)
            test = (score_test(trainer, self.test, self.task.interval_paths(), seed=self.job.seed, replicates=False)
                    if len(self.test) else None)
        finally:
            for p in trunk:
                p.requires_grad_(True)
        self.save_model("personal_model.safetensors")
        log.info("%s: personalised heads (%d epochs): %s", self.site, len(history), self.task.headline(val))
        return {"personal_val": val, "personal_epochs_run": len(history),
                **({"personal_test": test} if test is not None else {})}


def tamper(spec: str, site: str, update: dict, meta: dict, received: dict, job: str = "") -> dict:
    """Test-only: make this site misbehave as a poisoned or broken site would, over the real federation.
    `spec` = "<who>:<how>[;<who>:<how>...]" with who = <site> (every job) or <site>@<job name pattern> (only
    the jobs whose name matches the shell-style pattern, so one federation can serve several cases) and how =
    scale=<f> (the site's change to the global model times f), nan, shape (one tensor one row short),
    n_train=<value> (a false row count) or asym (ridge sums with a non-symmetric Gram matrix). Other sites
    and jobs are untouched; the first matching entry wins."""
    hows = [h for who, _, h in (part.partition(":") for part in spec.split(";"))
            if _tamper_targets(who.strip(), site, job)]
    if not hows:
        return update
    how = hows[0]
    log.warning("%s: %s=%s: sending a deliberately bad update", site, TAMPER, how)
    update = dict(update)
    key = next(iter(update))
    if how.startswith("scale="):
        f = float(how.split("=", 1)[1])
        start = {k: torch.as_tensor(np.asarray(received[k])) for k in update}
        update = {k: start[k] + f * (v - start[k]) for k, v in update.items()}
    elif how == "nan":
        update[key] = update[key].clone().fill_(float("nan"))
    elif how == "shape":
        update[key] = update[key][:-1].clone()
    elif how.startswith("n_train="):
        meta["n_train"] = float(how.split("=", 1)[1])
    elif how == "asym" and "ridge.gram" in update:      # ridge sums whose Gram matrices are not symmetric
        gram = np.array(update["ridge.gram"])
        gram[..., 0, 1] += 1.0
        update["ridge.gram"] = gram
    return update


def _tamper_targets(who: str, site: str, job: str) -> bool:
    target, at, pattern = who.partition("@")
    return target == site and (not at or fnmatch.fnmatchcase(job, pattern))


def run_dir_for(job_id: str) -> Path:
    return Path(os.environ.get("FEDTUNE_RUNS") or Path.cwd() / "fedtune-runs") / str(job_id)


def main() -> None:
    """The site's training script: one process, or every rank of a torchrun launch (rank 0 talks to NVFlare).

    On an error the process exits at once (exit code 1, traceback printed): the Client API's threads would
    otherwise keep it alive, and NVFlare (or torchrun, for the other ranks) only notices a process that ends."""
    logging.basicConfig(level=logging.INFO)
    try:
        dist = DistContext.from_env().init()
        _serve(dist)
        dist.close()
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _serve(dist: DistContext) -> None:
    flare = None
    if dist.is_main:
        import nvflare.client as flare
        flare.init(rank="0")
        site, job_id = flare.get_site_name(), flare.get_job_id()
    site, job_id = dist.broadcast_object((site, job_id) if dist.is_main else None)
    data = os.environ.get("FEDTUNE_DATA")
    if not data:
        raise RuntimeError(f"{site}: no data folder: start the client with `fedtune client --data DIR`")
    run_dir = run_dir_for(job_id)
    embeddings.use_disk_from_env()      # a frozen trunk's embeddings, reused by this site's later jobs
    runner = None
    while True:
        msg, task = None, None
        if dist.is_main:
            msg = flare.receive() if flare.is_running() else None
            if msg is not None:
                task = {"meta": dict(msg.meta or {}), "round": msg.current_round, "keys": sorted(msg.params or {})}
        task = dist.broadcast_object(task)     # the other ranks learn the task (None: the job is over)
        if task is None:
            break
        meta = task["meta"]
        job = JobConfig.from_dict(meta["fedtune"])
        if runner is None:
            runner = SiteRunner(job, site, Path(data), run_dir, dist=dist)
        phase = meta.get("phase", "train")
        meta["round"] = task["round"]
        params = (msg.params or {}) if msg is not None else {}
        refused = runner.privacy.admit(os.environ.get("FEDTUNE_KIT"), job_id, phase)
        if refused:
            params, metrics, out_meta = {}, {}, {"refused": refused}
            log.error("%s: refusing the %s task of job %s: %s", site, phase, job_id, refused)
        elif phase == "stats":
            params, metrics, out_meta = runner.stats()
        elif phase == "final":
            params, metrics, out_meta = runner.final(params, meta, task["keys"])
        elif phase == "validate":
            params, metrics, out_meta = runner.validate(params, meta, task["keys"])
        elif phase in RIDGE_PHASES:     # exact federated ridge heads: sums, then validation errors
            params, metrics, out_meta = RIDGE_PHASES[phase](runner, params, meta)
            if dist.is_main and os.environ.get(TAMPER) and "ridge.gram" in params:
                params = tamper(os.environ[TAMPER], site, params, out_meta, {}, runner.job.name)
        else:
            params, metrics, out_meta = runner.train_round(params, meta, task["keys"])
        if not dist.is_main:
            continue
        from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
        if not params:   # the Client API needs something to send; an empty marker tensor carries no data
            params = {"fedtune.marker": torch.zeros(1)}
        # numpy on the wire (ridge sums are numpy float64 already and keep their precision)
        params = {k: v if isinstance(v, np.ndarray) else v.detach().cpu().float().numpy() for k, v in params.items()}
        flare.send(FLModel(params_type=ParamsType.FULL, params=params, metrics=metrics, meta=out_meta))


if __name__ == "__main__":
    main()

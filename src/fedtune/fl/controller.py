"""Server side of a fedtune job: FedAvg with k-of-n rounds and a deadline.

Phases (each a "train" task whose FLModel.meta["phase"] says what the site does):
1. stats: every site reports its training row counts (the bound on every later count claim) and, for a
   kind whose targets are standardised (`Task.needs_stats`, e.g. per assay), per-column moments (count, sum,
   sum of squares) of its training labels: aggregates, never rows, and only for columns with at least
   `min_stat_count` labelled rows there. The server pools them (`Task.pool_stats`), so standardisation is
   identical everywhere (a column no site shared gets mean 0, std 1, count 0).
2. rounds 1..R: the global parameters that travel (trainable trunk parts, plus heads when shared) go out; each
   site trains `local_epochs` with the same Trainer as local training and returns its update; the server
   checks every update and count (`fedtune.fl.aggregate`: a bad one is dropped from the round, logged with
   the site and reason, and listed under `rejected` in the summary) and combines the rest with the job's
   aggregator (weighted FedAvg, median or trimmed mean). After every round the global model is written as a
   checkpoint (`checkpoints/round-<n>.safetensors`, the last `keep_checkpoints` kept) with the summary so far,
   so a job that fails later still has its training.
   With `select_round best`, each site's validation loss of the model it received (the previous round's
   global model) is the per-round record; after the last round a "validate" phase scores the last global
   model the same way, and the round whose model has the lowest median validation loss over sites (round 0:
   the initial model) becomes the final model (`summary["selected_round"]`). The median keeps one site's
   claimed losses from choosing alone; a site can only choose among global models, never add one.
With head type ridge or ridge-mlp, the ridge phase (`fedtune.fl.ridge`: two exchanges of sums and validation
errors, exact pooled ridge heads) runs between 1 and 2; ridge heads are then final and the job skips 2.
3. final: the final global parameters go out once more; each site evaluates them on its validation split and
   returns the metrics and, with private heads and publishing on, its own heads (under `published.heads.`,
   which the private-head filter lets through on purpose: turn publishing off to keep heads on site).

A round never hangs on a dead site: it closes once `min_sites` answered and `grace` more seconds passed (or
every site answered, or `round_timeout` elapsed); the log names the sites that did not answer. Fewer than
`min_sites` usable answers stops the job with an error (summary status "failed"; the checkpoints stay).

A job may start from earlier weights: `fedtune submit --init-from` ships them in the job
(`app/config/fedtune_init.safetensors`); they must fit this job's model.

Everything the export needs is written to `<app_server>/fedtune/` and comes back with the job result.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController
from safetensors.torch import load_file, save_file

from ..models import travelling_keys
from .aggregate import (Aggregator, Rejected, ServerOptimizer, as_tensor, check_counts, check_moments,
                        check_split_counts, check_train_result, check_update, clean_metrics, stats_bound)
from .config import PUBLISHED, JobConfig
from .resume import INIT_FILE, fit_init_state
from .ridge import ridge_phase


def _wire(params: dict) -> dict:
    """numpy arrays on the wire: every NVFlare process can (de)serialise them without extra decomposers."""
    return {k: as_tensor(v).float().numpy() if as_tensor(v).is_floating_point() else as_tensor(v).numpy()
            for k, v in params.items()}


def _nbytes(params: dict) -> int:
    try:
        return int(sum(as_tensor(v).numel() * as_tensor(v).element_size() for v in params.values()))
    except Rejected:
        return 0


def _metrics(reported) -> dict:
    """A site's reported metrics, cleaned (see clean_metrics); anything but a dict counts as none."""
    return clean_metrics(reported) if isinstance(reported, dict) else {}


def _val_loss(metrics) -> float:
    """A site's reported validation loss: a finite number, or the answer is not used for the choice."""
    loss = _metrics(metrics).get("loss") if isinstance(metrics, dict) else None
    if not isinstance(loss, (int, float)) or isinstance(loss, bool):
        raise Rejected("no finite validation loss")
    return float(loss)


def _median_loss(losses: dict) -> float | None:
    return float(np.median(list(losses.values()))) if losses else None


def _save_atomic(tensors: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class FedtuneController(ModelController):
    def __init__(self, job: dict):
        super().__init__(persistor_id="", ignore_result_error=True)
        self.job = JobConfig.from_dict(job)
        self.aggregate = Aggregator(self.job.aggregator, self.job.trim)
        self.server_opt = ServerOptimizer(self.job.server_opt, self.job.server_lr)

    # ---- helpers ---------------------------------------------------------------------------------------
    def _out_dir(self) -> Path:
        job_id = self.fl_ctx.get_job_id()
        out = Path(self.engine.get_workspace().get_app_dir(job_id)) / "fedtune"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def _progress(self, event: dict) -> None:
        event = {"time": time.time(), **event}
        with (self._out_dir() / "progress.log").open("a") as f:
            f.write(json.dumps(event) + "\n")
        self.info(f"fedtune progress: {json.dumps(event)}")

    def _ask(self, phase: str, params: dict, meta: dict, current_round: int) -> tuple[list[FLModel], list[str]]:
        targets = [c.name for c in self.engine.get_clients()]
        params = params or {"fedtune.marker": torch.zeros(1)}   # the task must carry something
        model = FLModel(params_type=ParamsType.FULL, params=_wire(params), current_round=current_round,
                        total_rounds=self.job.rounds,
                        meta={"phase": phase, "fedtune": self.job.to_dict(), **meta})
        min_responses = min(self.job.min_sites, len(targets))
        wait_after = self.job.grace if self.job.min_sites < len(targets) else 0
        results = self.broadcast_model(data=model, task_name="train", targets=targets, min_responses=min_responses,
                                       timeout=self.job.round_timeout, wait_time_after_min_received=wait_after)
        answered = [r.meta.get("client_name", "?") for r in results]
        missing = sorted(set(targets) - set(answered))
        if missing:
            self.warning(f"fedtune: {phase} round {current_round}: no answer from {missing}; "
                         f"closing with {sorted(answered)}")
        if len(results) < min_responses:
            raise RuntimeError(f"{phase} round {current_round}: only {len(results)} site(s) answered "
                               f"({sorted(answered)}); min_sites={self.job.min_sites}")
        return results, missing

    def _screen(self, phase: str, rnd: str, results: list[FLModel], check, summary: dict) -> tuple[dict, dict]:
        """({site: check(result)} for the answers that pass, {site: reason} for those that do not, also
        recorded as summary["rejected"][rnd]); fewer usable answers than the round needs stops the job, as
        missing sites do."""
        good, bad = {}, {}
        for r in results:
            site = str(r.meta.get("client_name", "?"))
            if r.meta.get("refused"):      # the site's own policy refused the job or this round
                why = str(r.meta["refused"])[:400]
                bad[site] = f"refused by the site: {why}"
                summary["refused"].setdefault(site, why)
                self.warning(f"fedtune: {phase} round {rnd}: {site} refused: {why}")
                continue
            self._privacy(site, r, summary)
            try:
                good[site] = check(site, r)
            except Exception as exc:   # whatever a site sends must not crash the server
                bad[site] = str(exc) if isinstance(exc, Rejected) else f"malformed answer: {exc!r:.200}"
                self.warning(f"fedtune: {phase} round {rnd}: dropped the answer of {site}: {bad[site]}")
        if bad:
            summary["rejected"][rnd] = bad
        need = min(self.job.min_sites, len(self.engine.get_clients()))
        if len(good) < need:
            raise RuntimeError(f"{phase} round {rnd}: only {len(good)} usable answer(s) ({sorted(good)}); "
                               f"rejected {bad}; min_sites={self.job.min_sites}")
        return good, bad

    def _privacy(self, site: str, r: FLModel, summary: dict) -> None:
        """The DP guarantee a site reports (planned in the stats phase, spent so far after every round)."""
        dp = r.meta.get("dp")
        if isinstance(dp, dict):
            summary["privacy"][site] = _metrics(dp)

    # ---- state on disk ---------------------------------------------------------------------------------
    def _init_state(self, state: dict, keys: list[str]) -> bool:
        """Load the weights shipped with the job (--init-from) into `state`; False when there are none."""
        path = Path(self.engine.get_workspace().get_app_dir(self.fl_ctx.get_job_id())) / "config" / INIT_FILE
        if not path.exists():
            return False
        state.update(fit_init_state(load_file(str(path)), state, keys))
        return True

    def _checkpoint(self, state: dict, global_params: dict, rnd: int, summary: dict) -> None:
        out = self._out_dir() / "checkpoints"
        out.mkdir(exist_ok=True)
        name = f"round-{rnd}.safetensors"
        _save_atomic({**state, **global_params}, out / name)
        for old in sorted(out.glob("round-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))[:-self.job.keep_checkpoints]:
            old.unlink()
        summary.update(last_round=rnd, checkpoint=f"checkpoints/{name}")
        self._write_summary(summary)

    def _write_summary(self, summary: dict) -> None:
        rounds = summary["rounds"]
        summary["bytes_per_round"] = max((r["bytes_up_per_site"] for r in rounds), default=0)
        summary["seconds_per_round"] = float(np.mean([r["seconds"] for r in rounds])) if rounds else 0.0
        _write_json_atomic(summary, self._out_dir() / "summary.json")

    # ---- phases ----------------------------------------------------------------------------------------
    def _count_phase(self, model, summary: dict) -> tuple[dict, dict]:
        """Every site's row counts (the bound on its later claims) and, for a kind with target statistics,
        the pooled statistics."""
        job, task, meta = self.job, self.job.task(), {}
        table, tasks = job.assay_list(), list(getattr(model, "tasks", []))
        keys = task.stat_keys(table) if task.needs_stats else []
        results, missing = self._ask("stats", {}, {}, 0)

        def check(site, r):
            counts = {**check_counts(r.meta, None, tasks), **check_split_counts(r.meta, None)}
            moments = (check_moments(r.meta.get("moments"), len(keys), counts["n_train"], job.min_stat_count)
                       if task.needs_stats else None)
            return counts, moments, _metrics({"digest": r.meta.get("digest")}).get("digest")

        good, bad = self._screen("stats", "stats", results, check, summary)
        if missing:
            summary["missing"]["stats"] = missing
        bounds = {site: counts for site, (counts, _, _) in good.items()}
        summary["site_rows"] = bounds
        summary["data_digests"] = {site: digest for site, (_, _, digest) in good.items()}   # admin side only
        if task.needs_stats:
            shared = [m for _, m, _ in good.values()]
            meta["stats"] = summary["stats"] = task.pool_stats(table, shared).to_dict()
            unshared = [k for j, k in enumerate(keys) if sum(m[0][j] for m in shared) == 0]
            if unshared:
                self.warning(f"fedtune: no site shared statistics for {unshared} (fewer than "
                             f"{job.min_stat_count} labelled rows each): mean 0, std 1")
        self._progress({"event": "stats", "sites": sorted(good), "missing": missing, "rejected": bad,
                        "pooled": task.needs_stats})
        return bounds, meta

    def _round(self, rnd: int, global_params: dict, meta: dict, bounds: dict, tasks: list,
               summary: dict) -> tuple[dict, dict]:
        start = time.time()
        results, missing = self._ask("train", global_params, meta, rnd)

        def check(site, r):
            return (*check_train_result(r, global_params, bounds.get(site), tasks), r)

        good, bad = self._screen("train", str(rnd), results, check, summary)
        new_params = self.server_opt(global_params,
                                     self.aggregate([(p, c) for p, c, _ in good.values()], global_params))
        up = [_nbytes(r.params) for _, _, r in good.values()]
        record = {"round": rnd, "seconds": time.time() - start, "missing": missing, "rejected": bad,
                  "bytes_down_per_site": _nbytes(global_params), "bytes_up_per_site": max(up) if up else 0,
                  "sites": {site: _metrics(r.meta.get("summary")) for site, (_, _, r) in good.items()}}
        return new_params, record

    def _validate(self, global_params: dict, meta: dict, summary: dict) -> dict:
        """The validate phase: {site: validation loss} of `global_params` (the last round's global model)."""
        results, missing = self._ask("validate", global_params, meta, self.job.rounds + 1)
        good, _ = self._screen("validate", "validate", results, lambda site, r: _val_loss(r.meta.get("val")),
                               summary)
        if missing:
            summary["missing"]["validate"] = missing
        return good

    @staticmethod
    def _keep_best(candidates: dict, losses: dict, rnd: int, params: dict) -> dict:
        """Hold only the best round's parameters so far (one extra copy of the model, not one per round)."""
        held = next(iter(candidates), None)
        if losses.get(rnd) is None:
            return candidates
        if held is None or losses[rnd] <= losses[held]:
            return {rnd: params}
        return candidates

    def _select(self, candidates: dict, losses: dict, last: dict, summary: dict) -> dict:
        """The global model `_keep_best` held: the round with the lowest median validation loss (ties: the later
        round); the last round's when no site reported a loss."""
        if not candidates:
            self.warning("fedtune: no validation loss reported: the final model is the last round's")
            summary["selected_round"] = {"round": self.job.rounds, "of": self.job.rounds, "by": "last (no losses)"}
            return last
        best = next(iter(candidates))
        scored = {rnd: loss for rnd, loss in losses.items() if loss is not None}
        summary["selected_round"] = {"round": best, "of": self.job.rounds, "by": "median validation loss over sites",
                                     "val_loss": {str(r): v for r, v in sorted(scored.items())}}
        self.info(f"fedtune: final model = round {best} of {self.job.rounds} (median validation loss "
                  f"{scored[best]:.4f}; last round {scored.get(self.job.rounds, float('nan')):.4f})")
        return candidates[best]

    def _final(self, global_params: dict, meta: dict, state: dict, bounds: dict, summary: dict) -> list:
        job, out = self.job, self._out_dir()
        results, missing = self._ask("final", global_params, meta, job.rounds + 1)
        head_refs = {k: v for k, v in state.items() if k.startswith("heads.")}

        def check(site, r):
            meta = r.meta or {}
            counts = check_split_counts(meta, stats_bound(bounds.get(site)),
                                        ("n_val", "n_test") if "n_test" in meta else ("n_val",))
            published = {k[len(PUBLISHED):]: v for k, v in (r.params or {}).items() if k.startswith(PUBLISHED)}
            return check_update(published, head_refs) if published else {}, counts, r

        good, bad = self._screen("final", "final", results, check, summary)
        (out / "site_heads").mkdir(exist_ok=True)
        for site, (heads, counts, r) in good.items():
            summary["sites"][site] = {"final_val": _metrics(r.meta.get("final_val")),
                                      "n_train": bounds[site]["n_train"], "n_val": counts["n_val"]}
            if isinstance(r.meta.get("final_test"), dict):     # the site's test split, scored once
                summary["sites"][site].update(final_test=_metrics(r.meta.get("final_test")),
                                              n_test=counts.get("n_test"))
            for key in ("personal_val", "personal_test"):       # personalised heads (job.personal_epochs)
                if isinstance(r.meta.get(key), dict):
                    summary["sites"][site][key] = _metrics(r.meta.get(key))
            if heads:
                _save_atomic(heads, out / "site_heads" / f"{site}.safetensors")
        if missing:
            summary["missing"]["final"] = missing
        return missing

    # ---- the workflow ----------------------------------------------------------------------------------
    def run(self) -> None:
        job = self.job
        out = self._out_dir()
        (out / "job.json").write_text(json.dumps(job.to_dict(), indent=2))
        torch.manual_seed(job.seed)
        model = job.build_model()
        keys = travelling_keys(model, private_heads=job.private)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        summary = {"job": job.to_dict(), "status": "running", "last_round": 0, "rounds": [], "missing": {},
                   "rejected": {}, "sites": {}, "bytes_per_round": 0, "refused": {}, "privacy": {}}
        try:
            if self._init_state(state, keys):
                summary["init_from"] = job.init_from or "weights shipped with the job"
            global_params = {k: state[k] for k in keys}
            self._progress({"event": "start", "rounds": job.rounds, "travelling_tensors": len(keys),
                            "bytes_down": _nbytes(global_params), "aggregator": job.aggregator})
            bounds, meta = self._count_phase(model, summary)
            if job.head_type != "mlp":        # exact federated ridge heads (fedtune.fl.ridge)
                heads = ridge_phase(self, model, meta, bounds, summary)
                state.update(heads)
                global_params.update({k: v for k, v in heads.items() if k in global_params})
            tasks = list(getattr(model, "tasks", []))
            best = job.select_round == "best" and job.head_type != "ridge"
            candidates, losses = {}, {}      # select_round best: the best round so far and every round's loss
            for rnd in range(1, (0 if job.head_type == "ridge" else job.rounds) + 1):   # ridge heads: solved
                if self.abort_signal.triggered:
                    return
                previous = global_params
                global_params, record = self._round(rnd, global_params, meta, bounds, tasks, summary)
                if best:       # what the sites received this round is the previous round's global model
                    received = {}
                    for site, metrics in record["sites"].items():
                        try:
                            received[site] = _val_loss(metrics.get("received"))
                        except Rejected:
                            pass
                    losses[rnd - 1] = record["received_val_loss"] = _median_loss(received)
                    candidates = self._keep_best(candidates, losses, rnd - 1, previous)
                summary["rounds"].append(record)
                if record["missing"]:
                    summary["missing"][str(rnd)] = record["missing"]
                self._checkpoint(state, global_params, rnd, summary)
                self._progress({"event": "round", **record})
            if best:
                losses[job.rounds] = _median_loss(self._validate(global_params, meta, summary))
                candidates = self._keep_best(candidates, losses, job.rounds, global_params)
                global_params = self._select(candidates, losses, global_params, summary)
            missing = self._final(global_params, meta, state, bounds, summary)
            state.update(global_params)
            _save_atomic(state, out / "global.safetensors")
            summary["status"] = "complete"
            self._write_summary(summary)
            self._progress({"event": "done", "sites": sorted(summary["sites"]), "missing": missing})
        except Exception as exc:
            summary.update(status="failed", error=str(exc))
            self._write_summary(summary)
            self._progress({"event": "failed", "error": str(exc), "last_round": summary["last_round"]})
            raise

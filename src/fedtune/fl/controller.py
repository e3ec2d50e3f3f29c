"""Server side of a fedtune job: FedAvg with k-of-n rounds and a deadline.

Phases (each a "train" task whose FLModel.meta["phase"] says what the site does):
1. stats (fitness only): every site returns per-assay moments (count, sum, sum of squares) of its training
   labels: aggregates, never rows. The server pools them, so assay standardisation is identical everywhere.
2. rounds 1..R: the global parameters that travel (trainable trunk parts, plus heads when shared) go out; each
   site trains `local_epochs` with the same Trainer as local training and returns its update; the server
   averages weighted by training rows (a task head by the site's labelled rows for that task).
3. final: the final global parameters go out once more; each site evaluates them on its validation split and
   returns the metrics and, with private heads and publishing on, its own heads (under `published.heads.`,
   which the private-head filter lets through on purpose: turn publishing off to keep heads on site).

A round never hangs on a dead site: it closes once `min_sites` answered and `grace` more seconds passed (or
every site answered, or `round_timeout` elapsed); the log names the sites that did not answer. Fewer than
`min_sites` answers stops the job with an error.

Everything the export needs is written to `<app_server>/fedtune/` and comes back with the job result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController
from safetensors.torch import save_file

from ..data import AssayStats
from ..models import build_model, travelling_keys
from .config import PUBLISHED, JobConfig



def _tensor(v) -> torch.Tensor:
    return v.detach().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))


def _wire(params: dict) -> dict:
    """numpy arrays on the wire: every NVFlare process can (de)serialise them without extra decomposers."""
    return {k: _tensor(v).float().numpy() if _tensor(v).is_floating_point() else _tensor(v).numpy()
            for k, v in params.items()}


def _nbytes(params: dict) -> int:
    return int(sum(_tensor(v).numel() * _tensor(v).element_size() for v in params.values()))


class FedtuneController(ModelController):
    def __init__(self, job: dict):
        super().__init__(persistor_id="", ignore_result_error=True)
        self.job = JobConfig.from_dict(job)

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

    # ---- aggregation -----------------------------------------------------------------------------------
    def _aggregate(self, results: list[FLModel], global_params: dict) -> dict:
        out = {}
        for key in global_params:
            num, den = None, 0.0
            for r in results:
                if key not in r.params:
                    continue
                if key.startswith("heads."):
                    w = float(r.meta.get("task_rows", {}).get(key.split(".")[1], r.meta.get("n_train", 1)))
                else:
                    w = float(r.meta.get("n_train", 1))
                if w <= 0:
                    continue
                t = _tensor(r.params[key]).double() * w
                num = t if num is None else num + t
                den += w
            out[key] = (num / den).to(_tensor(global_params[key]).dtype) if num is not None else global_params[key]
        return out

    # ---- the workflow ----------------------------------------------------------------------------------
    def run(self) -> None:
        job = self.job
        out = self._out_dir()
        (out / "job.json").write_text(json.dumps(job.to_dict(), indent=2))
        torch.manual_seed(job.seed)
        model = build_model(job.kind, job.trunk_config(), job.assay_list() or None)
        keys = travelling_keys(model, private_heads=job.private)
        state = model.state_dict()
        global_params = {k: state[k].detach().cpu() for k in keys}
        summary = {"job": job.to_dict(), "rounds": [], "missing": {}, "sites": {}, "bytes_per_round": 0}
        self._progress({"event": "start", "rounds": job.rounds, "travelling_tensors": len(keys),
                        "bytes_down": _nbytes(global_params)})

        meta: dict = {}
        if job.kind == "fitness":
            results, missing = self._ask("stats", {}, {}, 0)
            assays = job.assay_list()
            stats = AssayStats.pool([a.key for a in assays], [a.sign for a in assays],
                                    [r.meta["moments"] for r in results])
            meta["stats"] = stats.to_dict()
            summary["stats"] = meta["stats"]
            summary["data_digests"] = {r.meta["client_name"]: r.meta.get("digest") for r in results}
            self._progress({"event": "stats", "sites": sorted(summary["data_digests"]), "missing": missing})

        for rnd in range(1, job.rounds + 1):
            if self.abort_signal.triggered:
                return
            start = time.time()
            results, missing = self._ask("train", global_params, meta, rnd)
            global_params = self._aggregate(results, global_params)
            up = [_nbytes(r.params) for r in results]
            record = {"round": rnd, "seconds": time.time() - start, "missing": missing,
                      "bytes_down_per_site": _nbytes(global_params), "bytes_up_per_site": max(up) if up else 0,
                      "sites": {r.meta["client_name"]: r.meta.get("summary", {}) for r in results}}
            summary["rounds"].append(record)
            if missing:
                summary["missing"][str(rnd)] = missing
            self._progress({"event": "round", **record})

        results, missing = self._ask("final", global_params, meta, job.rounds + 1)
        state.update(global_params)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "global.safetensors"))
        (out / "site_heads").mkdir(exist_ok=True)
        for r in results:
            site = r.meta["client_name"]
            summary["sites"][site] = {"final_val": r.meta.get("final_val"), "n_train": r.meta.get("n_train"),
                                      "n_val": r.meta.get("n_val")}
            heads = {k[len(PUBLISHED):]: _tensor(v).contiguous() for k, v in r.params.items()
                     if k.startswith(PUBLISHED)}
            if heads:
                save_file(heads, str(out / "site_heads" / f"{site}.safetensors"))
        if missing:
            summary["missing"]["final"] = missing
        summary["bytes_per_round"] = max((r["bytes_up_per_site"] for r in summary["rounds"]), default=0)
        summary["seconds_per_round"] = float(np.mean([r["seconds"] for r in summary["rounds"]])) if summary["rounds"] else 0
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        self._progress({"event": "done", "sites": sorted(summary["sites"]), "missing": missing})

"""Start a job from earlier weights (`fedtune submit --init-from PATH`), so that a failed job or a server
restart resumes instead of starting over.

PATH is one of:
- a job result, downloaded by `fedtune submit` (also a failed job's) or the server's own job folder
  (`<server kit>/<job_id>/app_server/fedtune`, which survives a server crash): its final global model, or the
  checkpoint of its last complete round;
- a checkpoint file (`checkpoints/round-<n>.safetensors`, or any full-state `.safetensors`);
- an export bundle (verified on load): its trunk and, when it has them, its global heads.

The weights travel inside the job folder (`app/config/fedtune_init.safetensors`); the controller loads them
into the job's model and refuses weights that do not fit it (other keys or shapes). The job's summary and the
exported bundle's provenance name where they came from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import JobConfig
from .job import build_job

INIT_FILE = "fedtune_init.safetensors"


def load_init_state(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in the training model's key names, a one-line description of where it came from)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint, job result or bundle")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: a checkpoint file must be a .safetensors file")
        return load_file(str(path)), f"checkpoint {path}"
    if (path / "manifest.json").is_file():
        from ..bundle import load_bundle
        bundle = load_bundle(path)
        state = {f"trunk.encoder.{k}": v for k, v in bundle.model.trunk.encoder.state_dict().items()}
        if bundle.has_global:
            state.update({f"heads.{k}": v for k, v in bundle.head_sets["global"].state_dict().items()})
        return state, f"bundle {path} ({bundle.manifest.get('provenance', {}).get('job_name', 'unnamed')})"
    from .export import load_job_result
    job, summary, state, _ = load_job_result(path)
    done = "final" if summary.get("status", "complete") == "complete" else f"round {summary.get('last_round')}"
    return state, f"job result {path} (job {job.name}, {done} of {job.rounds} rounds)"


def build_job_from(job: JobConfig, out_dir: str | Path, init_from: str | Path | None = None) -> Path:
    """`build_job`, plus the initial weights from `init_from` (see the module doc) shipped in the job."""
    if init_from is None:
        return build_job(job, out_dir)
    state, described = load_init_state(init_from)
    target = build_job(replace(job, init_from=described), out_dir)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target / "app" / "config" / INIT_FILE))
    return target

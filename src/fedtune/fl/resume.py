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


def fit_init_state(init: dict[str, torch.Tensor], state: dict[str, torch.Tensor], keys: list[str]) -> dict:
    """`init` cast to `state`'s dtypes, or ValueError when it does not fit the job's model: a key the model
    lacks, another shape, a non-finite value, or a travelling trunk tensor it does not provide (heads may be
    absent, e.g. from a private-heads bundle: those start fresh)."""
    unknown = sorted(set(init) - set(state))
    wrong = sorted(k for k in set(init) & set(state) if tuple(init[k].shape) != tuple(state[k].shape))
    absent = sorted(k for k in keys if k not in init and not k.startswith("heads."))
    if unknown or wrong or absent:
        raise ValueError(f"the initial weights do not fit this job's model: unknown keys {unknown[:3]}, other "
                         f"shapes {wrong[:3]}, missing {absent[:3]}")
    bad = sorted(k for k, v in init.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise ValueError(f"the initial weights hold non-finite values: {bad[:3]}")
    return {k: v.to(state[k].dtype) for k, v in init.items()}


def build_job_from(job: JobConfig, out_dir: str | Path, init_from: str | Path | None = None) -> Path:
    """`build_job`, plus the initial weights from `init_from` (see the module doc) shipped in the job."""
    if init_from is None:
        return build_job(job, out_dir)
    state, described = load_init_state(init_from)
    target = build_job(replace(job, init_from=described), out_dir)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target / "app" / "config" / INIT_FILE))
    return target

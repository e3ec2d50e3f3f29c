"""Turn a finished job's result into an export bundle: the global trunk, the global heads (shared) or every
site's published heads (private), the pooled target statistics (for a kind that has them), per-site final
validation metrics and the job's provenance."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from ..bundle import save_bundle
from .config import JobConfig
from .submit import find_fedtune_dir


def load_job_result(result: str | Path):
    """(job config, summary, full global state dict, {site: head state}) of a downloaded result. A job that
    did not complete gives the global model of its last complete round (summary "status" says which)."""
    src = find_fedtune_dir(Path(result))
    job = JobConfig.from_dict(json.loads((src / "job.json").read_text()))
    summary = json.loads((src / "summary.json").read_text())
    if summary.get("status", "complete") == "complete":
        weights = src / "global.safetensors"
    elif summary.get("checkpoint"):
        weights = src / str(summary["checkpoint"])
        if not weights.resolve().is_relative_to(src.resolve()):
            raise ValueError(f"{result}: the summary's checkpoint {summary['checkpoint']!r} is outside the result")
    else:
        raise ValueError(f"{result}: the job ended ({summary.get('status')}: {summary.get('error', '')}) before "
                         "its first round completed: there is no trained model to export")
    try:
        state = load_file(str(weights))
        heads = {p.stem: load_file(str(p)) for p in sorted((src / "site_heads").glob("*.safetensors"))}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{result}: unreadable weights: {exc}") from None
    return job, summary, state, heads


def export_bundle(result: str | Path, out: str | Path) -> Path:
    job, summary, state, site_heads = load_job_result(result)
    task = job.task()
    model = job.build_model(weights=False)
    model.load_state_dict(state, strict=True)
    stats = task.stats_from_dict(summary["stats"]) if task.needs_stats else None
    include_global = not job.private
    if job.private and not site_heads:
        raise ValueError("private heads were not published by any site (publish_heads was off, or the job "
                         "ended before its final phase): the bundle would hold no trained heads")
    complete = summary.get("status", "complete") == "complete"
    if complete:
        sites = sorted(summary["sites"])
        metrics = {site: s["final_val"] for site, s in summary["sites"].items()}
    else:   # no final evaluation of the global model happened: no metrics rather than the wrong ones
        sites = sorted(summary["rounds"][-1]["sites"]) if summary.get("rounds") else []
        metrics = {}
    provenance = {"how": f"federated (NVFlare, {job.aggregator}, provisioned mTLS), heads {job.heads}",
                  "job_name": job.name, "job_id": Path(result).name, "rounds": job.rounds,
                  "local_epochs": job.local_epochs, "sites": sites,
                  "missing": summary.get("missing", {}), "rejected": summary.get("rejected", {}),
                  "bytes_per_round": summary.get("bytes_per_round"), "job": job.to_dict()}
    if summary.get("init_from"):
        provenance["init_from"] = summary["init_from"]
    if complete and summary.get("selected_round"):      # select_round best: which round's model this is
        provenance["selected_round"] = summary["selected_round"]
    if job.dp or summary.get("refused"):
        provenance["privacy"] = privacy_card(job, summary)
    if not complete:
        provenance["partial"] = (f"the job ended {summary.get('status')} ({summary.get('error', 'no error recorded')}); "
                                 f"exported from its last complete round, {summary['last_round']} of {job.rounds}, "
                                 "without a final evaluation")
    if job.personal_epochs and site_heads:
        provenance["personalised"] = (f"each site's heads were fine-tuned on its own data for up to "
                                      f"{job.personal_epochs} epochs after the rounds (trunk frozen); "
                                      "`site` selects them")
    return save_bundle(out, model, trunk_cfg=job.trunk_config(), stats=stats, include_global=include_global,
                       site_heads=site_heads if (job.private or job.personal_epochs) else None,
                       heads_mode=job.heads,
                       sites=sites, metrics=metrics, provenance=provenance)


def dp_scope(mode: str) -> str:
    """What DP-SGD trained in a job of this trunk mode (its per-row gradients were clipped under one norm)."""
    return ("the LoRA adapters and heads together (frozen base weights)" if mode == "lora"
            else "the heads (frozen trunk)")


def privacy_card(job, summary: dict) -> dict:
    """The model card's privacy section: the job's DP settings, the epsilon each site spent (its own
    accountant's figure, as it reported it) and the sites whose policy refused the job."""
    card = {"differential_privacy": bool(job.dp), "refused": summary.get("refused", {})}
    if job.dp:
        card.update(settings=job.dp, epsilon_per_site={s: p.get("epsilon") for s, p in summary.get("privacy", {}).items()},
                    per_site=summary.get("privacy", {}),
                    scope=f"DP-SGD on {dp_scope(job.trunk_config().mode)}, per training row (add/remove), over "
                          "every round; label moments were not shared (each site standardised its targets itself)")
    return card

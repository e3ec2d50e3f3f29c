"""Local vs federated vs pooled, on the same site folders and the same train/validation splits.

- local:  each site trains alone (same total epochs as the federated run: rounds x local epochs)
- pooled: one model on the union of every site's training rows (the upper bound federated learning chases)
- fedavg: the federated job (run by the caller, e.g. through fedtune.fl), its final per-site metrics

Every run is evaluated on each site's own validation split. TensorBoard logs for every run land under
`<out>/tb/<run>/<site>`; `fedtune.report.write_report` turns the collected numbers into the report.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .models import TrunkConfig
from .tasks import get
from .train import TrainConfig, Trainer

log = logging.getLogger(__name__)


def load_sites(kind: str, site_dirs: dict[str, Path], assays=None, seed: int = 0, val_fraction: float = 0.2):
    """{site: (train, val)} with the very split each site's client makes (same seed, same fraction)."""
    task = get(kind)
    return {site: task.load_site(d, assays, seed=seed, val_fraction=val_fraction) for site, d in site_dirs.items()}


def concat(parts):
    """The union of several sites' data (of one kind)."""
    parts = list(parts)
    return type(parts[0]).concat(parts)


def _writer(out: Path | None, run: str, site: str):
    if out is None:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(out / "tb" / run / site))


def train_and_evaluate(kind: str, train, vals: dict, trunk_cfg: TrunkConfig, cfg: TrainConfig, writer=None,
                       early_stop_on=None):
    """Train on `train` (early stopping on `early_stop_on`, default the union of `vals`) and evaluate on each
    validation split. Returns (model, stats, {site: metrics})."""
    task = get(kind)
    stats = task.fit_stats(train)
    model = task.build_model(trunk_cfg, task.label_table(train))
    trainer = Trainer(model, cfg, stats, writer=writer)
    trainer.fit(train, early_stop_on if early_stop_on is not None else concat(vals.values()))
    if writer is not None:
        writer.close()
    return model, stats, {site: trainer.evaluate(v) for site, v in vals.items()}


def run_local(kind: str, sites: dict, trunk_cfg: TrunkConfig, cfg: TrainConfig, out: Path | None = None) -> dict:
    """Each site alone, evaluated on its own validation split."""
    results = {}
    for site, (train, val) in sites.items():
        log.info("local: training %s alone (%d samples)", site, len(train))
        _, _, metrics = train_and_evaluate(kind, train, {site: val}, trunk_cfg, cfg, _writer(out, "local", site))
        results[site] = metrics[site]
    return results


def run_pooled(kind: str, sites: dict, trunk_cfg: TrunkConfig, cfg: TrainConfig, out: Path | None = None) -> dict:
    """One model on every site's training rows, evaluated on each site's validation split."""
    log.info("pooled: training on the union of %d sites", len(sites))
    train = concat(t for t, _ in sites.values())
    _, _, metrics = train_and_evaluate(kind, train, {s: v for s, (_, v) in sites.items()}, trunk_cfg, cfg,
                                       _writer(out, "pooled", "all"))
    return metrics


# ---- the whole comparison ----------------------------------------------------------------------------------
def federated_run(fed, job, out: Path | None = None) -> dict:
    """Run `job` on the live federation `fed`; returns its final per-site metrics, per-round curve, costs and
    the result folder (TensorBoard scalars per site and round under `<out>/tb/<job.name>/`)."""
    import json

    from .fl.submit import find_fedtune_dir

    result = fed.run(job)
    summary = json.loads((find_fedtune_dir(result) / "summary.json").read_text())
    key = get(job.kind).key_metric
    curves = {site: [r["sites"].get(site, {}).get(key) for r in summary["rounds"]] for site in summary["sites"]}
    if out is not None:
        for site, ys in curves.items():
            writer = _writer(out, job.name, site)
            for rnd, y in enumerate(ys, 1):
                if y is not None:
                    writer.add_scalar(f"val/{key}", y, rnd)
            writer.close()
    return {"metrics": {s: v["final_val"] for s, v in summary["sites"].items()}, "curve": curves,
            "costs": {"bytes_per_round": summary.get("bytes_per_round"),
                      "seconds_per_round": summary.get("seconds_per_round")},
            "result": str(result), "missing": summary.get("missing", {})}


def compare(fed, site_dirs: dict[str, Path], jobs: list, out: Path, baselines: bool = True) -> dict:
    """Local-only and pooled runs (with the first job's trunk and training settings, `rounds x local_epochs`
    epochs) plus every federated job in `jobs` (named runs: job.name), all on the same site splits; writes the
    report into `out` and returns the collected results."""
    from dataclasses import replace

    from .report import write_report

    first = jobs[0]
    kind = first.kind
    results = {"kind": kind, "sites": sorted(site_dirs), "runs": {}, "curves": {}, "costs": {}, "results": {},
               "notes": [f"{len(site_dirs)} sites; validation: each site's own split ({first.val_fraction:.0%} "
                         f"of its {get(kind).sample_noun}, seed {first.seed})",
                         f"trunk {first.trunk.get('source')} ({first.trunk.get('mode')}); federated: "
                         f"{first.rounds} rounds x {first.local_epochs} local epochs; local and pooled: "
                         f"{first.rounds * first.local_epochs} epochs with early stopping"]}
    if baselines:
        sites = load_sites(kind, site_dirs, first.assay_list() or None, seed=first.seed,
                           val_fraction=first.val_fraction)
        cfg = replace(first.train_config(), epochs=first.rounds * first.local_epochs)
        trunk_cfg = first.trunk_config()
        results["runs"]["local"] = run_local(kind, sites, trunk_cfg, cfg, out)
    for job in jobs:
        log.info("federated: job %s", job.name)
        run = federated_run(fed, job, out)
        results["runs"][job.name] = run["metrics"]
        results["curves"][job.name] = run["curve"]
        results["costs"][job.name] = run["costs"]
        results["results"][job.name] = run["result"]
        if run["missing"]:
            results["notes"].append(f"{job.name}: sites missing in some rounds: {run['missing']}")
    if baselines:
        results["runs"]["pooled"] = run_pooled(kind, sites, trunk_cfg, cfg, out)
    write_report(results, out)
    return results

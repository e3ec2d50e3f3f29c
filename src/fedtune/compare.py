"""Local vs federated vs pooled, on the same site folders and the same train / validation / test splits.

- local:  each site trains alone (same total epochs as the federated run: rounds x local epochs)
- pooled: one model on the union of every site's training rows (the upper bound federated learning chases)
- fedavg: the federated job (run by the caller, e.g. through fedtune.fl), its final per-site metrics
- with a job of head type ridge or ridge-mlp also local-ridge and pooled-ridge: ridge heads on the frozen trunk,
  each site alone and on the pooled rows (`run_ridge`)

Validation alone drives early stopping (pooled: the union of the sites' validation parts); every run's model
is then scored once on each site's own test split, with n and a bootstrap 95% interval
(`fedtune.train.bootstrap`); the report quotes those test numbers. TensorBoard logs for every run land under
`<out>/tb/<run>/<site>`; `fedtune.report.write_report` turns the collected numbers into the report.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .models import TrunkConfig
from .data.split import TEST_FRACTION
from .tasks import get
from .train import TrainConfig, Trainer
from .train.bootstrap import score_test

log = logging.getLogger(__name__)


def load_sites(kind: str, site_dirs: dict[str, Path], assays=None, seed: int = 0, val_fraction: float = 0.2,
               test_fraction: float = TEST_FRACTION):
    """{site: Split} (train, val, test) with the very split each site's client makes (same seed, fractions)."""
    task = get(kind)
    return {site: task.load_split(d, assays, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
            for site, d in site_dirs.items()}


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
                       early_stop_on=None, tests: dict | None = None):
    """Train on `train` (early stopping on `early_stop_on`, default the union of `vals`) and evaluate on each
    validation split; then score each non-empty test split in `tests` once (n, bootstrap intervals).
    Returns (model, stats, {site: val metrics}, {site: test metrics})."""
    import torch

    task = get(kind)
    stats = task.fit_stats(train)
    torch.manual_seed(cfg.seed)                      # the heads' initialisation too: repeatable per seed
    model = task.build_model(trunk_cfg, task.label_table(train))
    trainer = Trainer(model, cfg, stats, writer=writer)
    trainer.fit(train, early_stop_on if early_stop_on is not None else concat(vals.values()))
    if writer is not None:
        writer.close()
    val_metrics = {site: trainer.evaluate(v) for site, v in vals.items()}
    test_metrics = {site: score_test(trainer, t, task.interval_paths(), seed=cfg.seed)
                    for site, t in (tests or {}).items() if len(t)}
    return model, stats, val_metrics, test_metrics


def cross_site_row(trainer: Trainer, sites: dict) -> dict:
    """One model's (its Trainer's) key metric on every site's test split ({test site: value}): a row of the
    cross-site matrix."""
    key = trainer.task.key_metric
    return {site: trainer.evaluate(split.test).get(key) for site, split in sites.items() if len(split.test)}


def run_local(kind: str, sites: dict, trunk_cfg: TrunkConfig, cfg: TrainConfig, out: Path | None = None) -> dict:
    """Each site alone (`sites`: {site: Split}), early stopping on its validation split, scored on its test split
    and, for the cross-site matrix, on every other site's. Returns {"val": {site: metrics}, "test": {site:
    metrics}, "cross_site": {model site: {test site: key metric}}}."""
    results = {"val": {}, "test": {}, "cross_site": {}}
    for site, split in sites.items():
        log.info("local: training %s alone (%d samples)", site, len(split.train))
        model, stats, val, test = train_and_evaluate(kind, split.train, {site: split.val}, trunk_cfg, cfg,
                                                     _writer(out, "local", site), tests={site: split.test})
        results["val"][site] = val[site]
        if site in test:
            results["test"][site] = test[site]
        results["cross_site"][site] = cross_site_row(Trainer(model, cfg, stats), sites)
    return results


def federated_cross_site(fed, job, job_id: str, summary: dict, sites: dict,
                         filename: str = "final_model.safetensors") -> tuple[dict, dict]:
    """Each site's final model of a federated job (the global trunk with, for private heads, the site's own
    heads; kept on site under its kit's fedtune-runs/) on every site's test split. This runs where compare runs
    the whole federation on one machine; across organisations it would be NVFlare's cross-site evaluation.
    Returns (rows, own): the cross-site matrix rows and each model rescored on its own site's test split with
    its bootstrap replicates (`with_replicates` uses them)."""
    from safetensors.torch import load_file

    task = get(job.kind)
    stats = task.stats_from_dict(summary.get("stats")) if task.needs_stats else None
    rows, own = {}, {}
    for site in summary.get("sites", {}):
        found = list(fed.workdir.rglob(f"fedtune-runs/{job_id}/{site}/{filename}"))
        if not found:
            continue
        model = job.build_model()
        model.load_state_dict(load_file(str(found[0])))
        trainer = Trainer(model, job.train_config(), stats)      # one per model: its embeddings computed once
        rows[site] = cross_site_row(trainer, sites)
        if site in sites and len(sites[site].test):
            own[site] = score_test(trainer, sites[site].test, task.interval_paths(), seed=job.seed)
    return rows, own


def with_replicates(kind: str, reported: dict, rescored: dict) -> dict:
    """The sites report n and each interval but keep their bootstrap replicates (the mean over sites needs them:
    `train.bootstrap.mean_interval`). Where compare rescored a site's final model on that site's test split
    (`federated_cross_site`) and got the very numbers the site reported, the site's metrics take the replicates
    of that rescoring; elsewhere they stay as reported (the report then gives the mean without an interval)."""
    import math

    from .train.bootstrap import metric_at

    paths = get(kind).interval_paths()
    out = {}
    for site, m in reported.items():
        r = rescored.get(site)
        same = r is not None and "bootstrap" in m and all(
            (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, abs_tol=1e-6))
            for a, b in ((metric_at(m, p), metric_at(r, p)) for p in paths))
        out[site] = ({**m, "bootstrap": {**m["bootstrap"], "replicates": r["bootstrap"]["replicates"]}}
                     if same else m)
    return out


def membership_attack(fed, job, job_id: str, summary: dict, sites: dict) -> dict:
    """The loss-threshold membership-inference attack (`fedtune.membership`) on each site's final model: its
    training rows against its test rows, with the statistics the site trained with (its own under DP).
    {"auc": AUC over every site's rows together, "sites": {site: that site's attack}}."""
    from safetensors.torch import load_file

    from .membership import attack_auc, row_losses

    task = get(job.kind)
    shared = task.stats_from_dict(summary.get("stats")) if task.needs_stats else None
    per_site, members, others = {}, [], []
    for site in summary.get("sites", {}):
        found = list(fed.workdir.rglob(f"fedtune-runs/{job_id}/{site}/final_model.safetensors"))
        if not found or site not in sites or not len(sites[site].test):
            continue
        split = sites[site]
        stats = task.fit_stats(split.train) if (job.dp and task.needs_stats) else shared
        model = job.build_model()      # the job's head type (mlp, ridge, ridge-mlp) as the sites built it
        model.load_state_dict(load_file(str(found[0])))
        m, o = (row_losses(model, stats, job.train_config(), d) for d in (split.train, split.test))
        per_site[site] = {"auc": attack_auc(m, o), "members": len(m), "nonmembers": len(o)}
        members.append(m)
        others.append(o)
    import numpy as np
    auc = attack_auc(np.concatenate(members), np.concatenate(others)) if members else None
    return {"auc": auc, "sites": per_site}


def run_pooled(kind: str, sites: dict, trunk_cfg: TrunkConfig, cfg: TrainConfig, out: Path | None = None) -> dict:
    """One model on the union of every site's training part, early stopping on the union of their validation
    parts, scored on each site's test part. Returns {"val": {site: metrics}, "test": {site: metrics}}."""
    log.info("pooled: training on the union of %d sites", len(sites))
    train = concat(s.train for s in sites.values())
    _, _, val, test = train_and_evaluate(kind, train, {site: s.val for site, s in sites.items()}, trunk_cfg, cfg,
                                         _writer(out, "pooled", "all"),
                                         tests={site: s.test for site, s in sites.items()})
    return {"val": val, "test": test}


def run_ridge(kind: str, sites: dict, job) -> dict:
    """Ridge heads on the job's frozen trunk, without a federation: `local`, each site solves from its own
    training rows (its own target statistics, penalty on its own validation split) and `pooled`, one solve on the
    union of every site's training rows (penalty on the union of their validation splits). Scored on each site's
    test split like every other run. The federated job (head type ridge) reaches the pooled solution exactly from
    the sites' sums (`fedtune.fl.ridge`), less what the minimum-count rule keeps on site.
    Returns {"local": {"val", "test"}, "pooled": {"val", "test"}}."""
    import numpy as np
    import torch

    from .train import ridge

    task = get(kind)
    torch.manual_seed(job.seed)
    model = task.build_model(job.trunk_config(), job.assay_list() or None, head_type="ridge")
    cfg = job.train_config()
    first = next(iter(sites.values()))
    trainer = Trainer(model, cfg, task.fit_stats(first.train))   # one trainer: the embeddings are computed once

    def xy(data, stats):
        return trainer.embeddings(data), task.targets(data, np.arange(len(data)), stats)

    def fitted(train_parts, val_parts, stats, tests):
        xs, ys = zip(*(xy(d, stats) for d in train_parts))
        xv, yv = zip(*(xy(d, stats) for d in val_parts))
        w, _ = ridge.fit(np.vstack(xs), np.vstack(ys), np.vstack(xv), np.vstack(yv))
        task.set_linear_outputs(model, torch.from_numpy(w[:, :-1]), torch.from_numpy(w[:, -1]))
        trainer.stats = stats
        return ({site: trainer.evaluate(split.val) for site, split in tests.items()},
                {site: score_test(trainer, split.test, task.interval_paths(), seed=cfg.seed)
                 for site, split in tests.items() if len(split.test)})

    results = {"local": {"val": {}, "test": {}}}
    for site, split in sites.items():
        log.info("local ridge: %s", site)
        val, test = fitted([split.train], [split.val], task.fit_stats(split.train), {site: split})
        results["local"]["val"].update(val)
        results["local"]["test"].update(test)
    log.info("pooled ridge: the union of %d sites", len(sites))
    stats = task.fit_stats(concat(s.train for s in sites.values()))
    val, test = fitted([s.train for s in sites.values()], [s.val for s in sites.values()], stats, sites)
    results["pooled"] = {"val": val, "test": test}
    return results


# ---- the whole comparison ----------------------------------------------------------------------------------
def global_curves(summary: dict, key: str) -> dict[str, list]:
    """{site: [the global model's validation `key` on that site after round 1, 2, ..., R]} from a job summary:
    the model each site received at the start of round r + 1 (`received`) is the global model after round r,
    and the final phase scores the one after round R (`final_val`). None where a site did not answer."""
    rounds = summary.get("rounds", [])
    out = {}
    for site, final in summary.get("sites", {}).items():
        ys = [(r.get("sites", {}).get(site) or {}).get("received", {}).get(key) for r in rounds[1:]]
        out[site] = ys + [(final.get("final_val") or {}).get(key)]
    return out


def local_round_curves(summary: dict, key: str) -> dict[str, list]:
    """{site: [validation `key` of the site's own model after its local epochs of round 1, ..., R]}."""
    return {site: [(r.get("sites", {}).get(site) or {}).get(key) for r in summary.get("rounds", [])]
            for site in summary.get("sites", {})}


def federated_run(fed, job, out: Path | None = None, sites: dict | None = None, cross_site: bool = True) -> dict:
    """Run `job` on the live federation `fed`; returns its final per-site metrics, per-round curve, costs, the
    result folder (TensorBoard scalars per site and round under `<out>/tb/<job.name>/`) and, given the sites'
    splits, the membership-inference attack on the sites' final models and (`cross_site`) their cross-site
    matrix."""
    import json

    from .fl.submit import find_fedtune_dir

    job_ids: list[str] = []
    result = fed.run(job, on_submit=job_ids.append)
    summary = json.loads((find_fedtune_dir(result) / "summary.json").read_text())
    key = get(job.kind).key_metric
    curves, local_curves = global_curves(summary, key), local_round_curves(summary, key)
    if out is not None:
        for site in curves:
            writer = _writer(out, job.name, site)
            for tag, ys in ((f"val/{key}", curves[site]), (f"val_after_local/{key}", local_curves.get(site, []))):
                for rnd, y in enumerate(ys, 1):
                    if y is not None:
                        writer.add_scalar(tag, y, rnd)
            writer.close()
    scored = sites and job_ids and cross_site
    cross, own = federated_cross_site(fed, job, job_ids[0], summary, sites) if scored else ({}, {})
    personal_cross, personal_own = (federated_cross_site(fed, job, job_ids[0], summary, sites,
                                                         "personal_model.safetensors")
                                    if scored and job.personal_epochs else ({}, {}))
    metrics = {s: v["final_test"] for s, v in summary["sites"].items() if v.get("final_test")}
    personal = {s: v["personal_test"] for s, v in summary["sites"].items() if v.get("personal_test")}
    return {"metrics": with_replicates(job.kind, metrics, own),
            "val": {s: v["final_val"] for s, v in summary["sites"].items()}, "curve": curves,
            "local_curve": local_curves,
            "costs": {"bytes_per_round": summary.get("bytes_per_round"),
                      "seconds_per_round": summary.get("seconds_per_round")},
            "result": str(result), "missing": summary.get("missing", {}),
            "selected_round": summary.get("selected_round"),
            "cross_site": cross,
            # personalised heads (job.personal_epochs): each site's fine-tuned copy, scored on its test split once
            "personal": with_replicates(job.kind, personal, personal_own),
            "personal_val": {s: v["personal_val"] for s, v in summary["sites"].items() if v.get("personal_val")},
            "personal_cross_site": personal_cross,
            "privacy": {"dp": job.dp, "sites": summary.get("privacy", {}), "refused": summary.get("refused", {}),
                        **({"membership": membership_attack(fed, job, job_ids[0], summary, sites)}
                           if sites and job_ids else {})}}


def compare(fed, site_dirs: dict[str, Path], jobs: list, out: Path, baselines: bool = True) -> dict:
    """Local-only and pooled runs (with the first job's trunk and training settings, `rounds x local_epochs`
    epochs) plus every federated job in `jobs` (named runs: job.name), all on the same site splits; writes the
    report into `out` and returns the collected results."""
    from dataclasses import replace

    from .report import write_report

    first = jobs[0]
    kind = first.kind
    noun = get(kind).sample_noun
    results = {"kind": kind, "sites": sorted(site_dirs), "runs": {}, "val_runs": {}, "curves": {}, "costs": {},
               "results": {},
               "notes": [f"{len(site_dirs)} sites, each split by {noun} (seed {first.seed}) into train / validation "
                         f"({first.val_fraction:.0%}) / test ({TEST_FRACTION:.0%}); validation alone drives early "
                         f"stopping; every number below is on the test splits, scored once, with n = {noun} scored "
                         f"and a bootstrap 95% interval ({noun} resampled)",
                         f"trunk {first.trunk.get('source')} ({first.trunk.get('mode')}); federated: "
                         f"{first.rounds} rounds x {first.local_epochs} local epochs; local and pooled: "
                         f"{first.rounds * first.local_epochs} epochs with early stopping"]}
    sites = load_sites(kind, site_dirs, first.assay_list() or None, seed=first.seed,
                       val_fraction=first.val_fraction)
    if baselines:
        # the sites' config has no progress bars (their logs); here a person watches the baselines train
        cfg = replace(first.train_config(), epochs=first.rounds * first.local_epochs, progress=True)
        trunk_cfg = first.trunk_config()
        results["splits"] = {site: split.record() for site, split in sites.items()}   # which rows were scored
        local = run_local(kind, sites, trunk_cfg, cfg, out)
        results["runs"]["local"], results["val_runs"]["local"] = local["test"], local["val"]
        results["cross_site"] = {"local": local["cross_site"]}
    for job in jobs:
        log.info("federated: job %s", job.name)
        run = federated_run(fed, job, out, sites, cross_site=baselines)
        results["runs"][job.name] = run["metrics"]
        results["val_runs"][job.name] = run["val"]
        results["curves"][job.name] = run["curve"]
        results.setdefault("local_curves", {})[job.name] = run["local_curve"]
        results["costs"][job.name] = run["costs"]
        results["results"][job.name] = run["result"]
        if run["cross_site"]:
            results.setdefault("cross_site", {})[job.name] = run["cross_site"]
        if run["personal"]:
            name = f"{job.name}-personalised"
            results["runs"][name], results["val_runs"][name] = run["personal"], run["personal_val"]
            if run["personal_cross_site"]:
                results.setdefault("cross_site", {})[name] = run["personal_cross_site"]
        results.setdefault("privacy", {})[job.name] = run["privacy"]
        for site, why in run["privacy"]["refused"].items():
            results["notes"].append(f"{job.name}: {site} refused the job: {why}")
        if run["missing"]:
            results["notes"].append(f"{job.name}: sites missing in some rounds: {run['missing']}")
        if run["selected_round"]:
            sel = run["selected_round"]
            results["notes"].append(f"{job.name}: final model = round {sel['round']} of {sel['of']}, chosen by "
                                    f"{sel['by']} (round 0: the initial model)")
    if baselines:
        pooled = run_pooled(kind, sites, trunk_cfg, cfg, out)
        results["runs"]["pooled"], results["val_runs"]["pooled"] = pooled["test"], pooled["val"]
        ridge_job = next((j for j in jobs if j.head_type != "mlp"), None)
        if ridge_job is not None:      # ridge heads alone and pooled, beside the federated ridge
            for name, run in run_ridge(kind, sites, ridge_job).items():
                results["runs"][f"{name}-ridge"], results["val_runs"][f"{name}-ridge"] = run["test"], run["val"]
    write_report(results, out)
    return results

"""Ridge heads per assay on a frozen trunk (default AntiBERTy), on site folders from `fedtune prepare-data`:
the pooled ridge (numpy on the union of the sites' training rows), the federated ridge as `fedtune.fl.ridge`
computes it from the sites' sums (with the minimum-count rule off, it must equal the pooled one; with the job's
default of 5 it leaves thin assays on site) and each site alone. Penalties are chosen on validation rows; every
number is the mean over sites of the test-split mean Pearson (each site's test split, scored once).

    fedtune prepare-data fitness --source /work/shared/data/flab --sites 6 --alpha 1 --out /tmp/ridge-flab
    python benchmarks/ridge_flab.py --data /tmp/ridge-flab --seed 0 --out benchmarks/results/ridge_flab-cpu-seed0.json

Seed 0 here (AntiBERTy frozen, 6 sites, alpha 1; 5 to 17 test antibodies per site): pooled ridge 0.672, the
federated ridge 0.672 (largest relative difference of a solution to the pooled one 7e-12), with the minimum-count
rule of 5: 0.671, each site alone: 0.399.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fedtune.compare import concat, load_sites
from fedtune.fl.config import JobConfig
from fedtune.fl.ridge import check_sums, check_val, pick_solution, solve_sums, val_errors
from fedtune.tasks import get
from fedtune.train import Trainer, ridge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--trunk", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args()

    task = get("fitness")
    dirs = {p.name: p for p in sorted(args.data.glob("site-*")) if p.is_dir()}
    assays = task.assays_from(next(iter(dirs.values())))
    job = JobConfig.create("fitness", trunk=args.trunk, mode="frozen", assays=assays, seed=args.seed,
                           head_type="ridge", name="ridge-flab")
    sites = load_sites("fitness", dirs, job.assay_list(), seed=args.seed, val_fraction=job.val_fraction)
    torch.manual_seed(args.seed)
    model = job.build_model()
    trainer = Trainer(model, job.train_config(), task.fit_stats(concat(s.train for s in sites.values())))

    def xy(data, stats):
        return trainer.embeddings(data), task.targets(data, np.arange(len(data)), stats)

    def test_pearson(w, stats, which) -> dict:
        task.set_linear_outputs(model, torch.from_numpy(w[:, :-1]), torch.from_numpy(w[:, -1]))
        trainer.stats = stats
        return {s: trainer.evaluate(sites[s].test)["mean_pearson"] for s in which}

    def federated(least: int):
        """What the job computes: pooled statistics from the shared moments, summed sums, summed validation errors."""
        moments = []
        for split in sites.values():
            n, s, ss = task.label_moments(split.train)
            moments.append([np.where(n >= least, v, 0.0) for v in (n, s, ss)])
        stats = task.pool_stats(job.assay_list(), moments)
        parts = []
        for split in sites.values():
            g, b, n = ridge.sums(*xy(split.train, stats), least)
            parts.append(check_sums({"ridge.gram": g, "ridge.xty": b, "ridge.n": n}, g.shape[0], g.shape[1],
                                    len(split.train), least))
        _, rows, cand = solve_sums(parts)
        answers = [check_val(val_errors(*xy(split.val, stats), cand, least), cand.shape[0], cand.shape[1], least)
                   for split in sites.values()]
        w, _, _, _ = pick_solution(cand, answers)
        return w, stats, rows

    out = {"sites": {s: {"train": len(v.train), "val": len(v.val), "test": len(v.test)} for s, v in sites.items()}}
    w_fed1, stats1, rows1 = federated(1)
    # pooled: numpy on the union of the rows, with the same statistics and the same validation choice
    xs, ys = zip(*(xy(s.train, stats1) for s in sites.values()))
    xv, yv = zip(*(xy(s.val, stats1) for s in sites.values()))
    w_pool, alpha = ridge.fit(np.vstack(xs), np.vstack(ys), np.vstack(xv), np.vstack(yv))
    out["max_relative_difference_federated_vs_pooled"] = float(
        np.max(np.linalg.norm(w_fed1 - w_pool, axis=1) / np.maximum(np.linalg.norm(w_pool, axis=1), 1e-300)))
    out["pooled_alpha"] = alpha.tolist()
    runs = {"pooled ridge": test_pearson(w_pool, stats1, sites),
            "federated ridge (min count 1)": test_pearson(w_fed1, stats1, sites)}
    w_fed5, stats5, rows5 = federated(5)
    runs["federated ridge (min count 5, the job default)"] = test_pearson(w_fed5, stats5, sites)
    out["rows_min_count_1"], out["rows_min_count_5"] = rows1.tolist(), rows5.tolist()
    local = {}
    for name, split in sites.items():
        stats = task.fit_stats(split.train)
        w, _ = ridge.fit(*xy(split.train, stats), *xy(split.val, stats))
        local.update(test_pearson(w, stats, [name]))
    runs["each site alone, ridge"] = local
    out["runs"] = {r: {"per_site": v, "mean": float(np.mean([x for x in v.values() if x is not None]))}
                   for r, v in runs.items()}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

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

import numpy as np

from .data import AssayStats, FitnessData, SentimentData, load_site
from .models import TrunkConfig, build_model
from .train import TrainConfig, Trainer

log = logging.getLogger(__name__)


def load_sites(kind: str, site_dirs: dict[str, Path], assays=None, seed: int = 0, val_fraction: float = 0.2):
    """{site: (train, val)} with the very split each site's client makes (same seed, same fraction)."""
    return {site: load_site(kind, d, assays, seed=seed, val_fraction=val_fraction) for site, d in site_dirs.items()}


def concat(parts):
    parts = list(parts)
    if isinstance(parts[0], FitnessData):
        return FitnessData([h for p in parts for h in p.heavy], [lt for p in parts for lt in p.light],
                           np.concatenate([p.labels for p in parts]), list(parts[0].assays))
    return SentimentData([t for p in parts for t in p.texts], np.concatenate([p.labels for p in parts]))


def _writer(out: Path | None, run: str, site: str):
    if out is None:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(out / "tb" / run / site))


def train_and_evaluate(kind: str, train, vals: dict, trunk_cfg: TrunkConfig, cfg: TrainConfig, writer=None,
                       early_stop_on=None):
    """Train on `train` (early stopping on `early_stop_on`, default the union of `vals`) and evaluate on each
    validation split. Returns (model, stats, {site: metrics})."""
    stats = AssayStats.fit(train) if kind == "fitness" else None
    model = build_model(kind, trunk_cfg, getattr(train, "assays", None))
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

"""One site trained alone: load its folder, standardise on its training rows, train, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

from ..data import AssayStats, load_site
from ..models import TrunkConfig, build_model
from .config import TrainConfig
from .loop import Trainer


def train_local(kind: str, data_dir: str | Path, out_dir: str | Path, trunk_cfg: TrunkConfig,
                train_cfg: TrainConfig, assays=None, val_fraction: float = 0.2, tag: str = ""):
    """Train on one site's folder; writes TensorBoard events under out_dir/tb and out_dir/metrics.json.
    Returns (model, stats, result) where result holds the final validation metrics and the history."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = load_site(kind, data_dir, assays, seed=train_cfg.seed, val_fraction=val_fraction)
    return train_on(kind, train, val, out_dir, trunk_cfg, train_cfg, tag=tag,
                    extra={"data": str(data_dir)}, writer=SummaryWriter(str(out_dir / "tb")))


def train_on(kind: str, train, val, out_dir: Path, trunk_cfg: TrunkConfig, train_cfg: TrainConfig,
             tag: str = "", extra: dict | None = None, writer=None):
    stats = AssayStats.fit(train) if kind == "fitness" else None
    model = build_model(kind, trunk_cfg, getattr(train, "assays", None))
    trainer = Trainer(model, train_cfg, stats, writer=writer, tag=tag)
    history = trainer.fit(train, val)
    final = trainer.evaluate(val)
    if writer is not None:
        writer.close()
    result = {"kind": kind, "trunk": trunk_cfg.to_dict(), "train": train_cfg.to_dict(),
              "n_train": len(train), "n_val": len(val), "data_digest": {"train": train.digest(), "val": val.digest()},
              "epochs_run": len(history), "final_val": final, "history": history, **(extra or {})}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return model, stats, result

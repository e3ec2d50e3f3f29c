"""One site trained alone: load its folder, fit the target statistics on its training rows, train, evaluate.
`task` is the kind's object from `fedtune.tasks.get(kind)`."""

from __future__ import annotations

import json
from pathlib import Path

from ..models import TrunkConfig
from .config import TrainConfig
from .loop import Trainer


def train_local(task, data_dir: str | Path, out_dir: str | Path, trunk_cfg: TrunkConfig,
                train_cfg: TrainConfig, assays=None, val_fraction: float = 0.2, tag: str = ""):
    """Train on one site's folder; writes TensorBoard events under out_dir/tb and out_dir/metrics.json.
    Returns (model, stats, result) where result holds the final validation metrics and the history."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = task.load_site(data_dir, assays, seed=train_cfg.seed, val_fraction=val_fraction)
    return train_on(task, train, val, out_dir, trunk_cfg, train_cfg, tag=tag,
                    extra={"data": str(data_dir)}, writer=SummaryWriter(str(out_dir / "tb")))


def train_on(task, train, val, out_dir: Path, trunk_cfg: TrunkConfig, train_cfg: TrainConfig,
             tag: str = "", extra: dict | None = None, writer=None):
    stats = task.fit_stats(train)
    model = task.build_model(trunk_cfg, task.label_table(train))
    trainer = Trainer(model, train_cfg, stats, writer=writer, tag=tag)
    history = trainer.fit(train, val)
    final = trainer.evaluate(val)
    if writer is not None:
        writer.close()
    result = {"kind": task.name, "trunk": trunk_cfg.to_dict(), "train": train_cfg.to_dict(),
              "n_train": len(train), "n_val": len(val), "data_digest": {"train": train.digest(), "val": val.digest()},
              "epochs_run": len(history), "final_val": final, "history": history, **(extra or {})}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return model, stats, result

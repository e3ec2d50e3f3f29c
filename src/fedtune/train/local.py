"""One site trained alone: load its folder, fit the target statistics on its training rows, train (early stopping
on validation only), then score the test split once. `task` is the kind's object from `fedtune.tasks.get(kind)`."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.split import TEST_FRACTION
from ..models import TrunkConfig
from .bootstrap import score_test
from .config import TrainConfig
from .loop import Trainer


def train_local(task, data_dir: str | Path, out_dir: str | Path, trunk_cfg: TrunkConfig,
                train_cfg: TrainConfig, assays=None, val_fraction: float = 0.2, tag: str = "",
                test_fraction: float = TEST_FRACTION):
    """Train on one site's folder; writes TensorBoard events under out_dir/tb and out_dir/metrics.json.
    Returns (model, stats, result) where result holds the final validation and test metrics, the history and
    the split record (seed, fractions, hashes of the split units per part)."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = task.load_split(data_dir, assays, seed=train_cfg.seed, val_fraction=val_fraction,
                            test_fraction=test_fraction)
    return train_on(task, split.train, split.val, out_dir, trunk_cfg, train_cfg, tag=tag, test=split.test,
                    extra={"data": str(data_dir), "split": split.record()},
                    writer=SummaryWriter(str(out_dir / "tb")))


def train_on(task, train, val, out_dir: Path, trunk_cfg: TrunkConfig, train_cfg: TrainConfig,
             tag: str = "", extra: dict | None = None, writer=None, test=None):
    """Fit on `train` with early stopping on `val` alone; `test` (when given and not empty) is scored once,
    after training, and never seen before."""
    import torch

    stats = task.fit_stats(train)
    torch.manual_seed(train_cfg.seed)              # the heads' initialisation too: a run is repeatable per seed
    model = task.build_model(trunk_cfg, task.label_table(train))
    trainer = Trainer(model, train_cfg, stats, writer=writer, tag=tag)
    history = trainer.fit(train, val)
    final = trainer.evaluate(val)
    scored = {} if test is None or len(test) == 0 else {
        "n_test": len(test), "final_test": score_test(trainer, test, task.interval_paths(), seed=train_cfg.seed)}
    if writer is not None:
        writer.close()
    result = {"kind": task.name, "trunk": trunk_cfg.to_dict(), "train": train_cfg.to_dict(),
              "n_train": len(train), "n_val": len(val), "data_digest": {"train": train.digest(), "val": val.digest(),
                                                              **({"test": test.digest()} if scored else {})},
              "epochs_run": len(history), "final_val": final, **scored, "history": history, **(extra or {})}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return model, stats, result

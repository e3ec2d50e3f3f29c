"""A loss-threshold membership-inference attack (Yeom et al. 2018) on a site's final model: the attacker
scores every row by minus the model's loss on it and guesses "trained on" above a threshold; the AUC over all
thresholds of members (the site's training rows) against non-members (its untouched test rows) measures what
the model gives away about single rows. 0.5: nothing; 1: every member told apart. With DP-SGD at epsilon e the
attack's advantage is bounded (TPR <= e^eps FPR + delta), so its AUC is driven towards 0.5."""

from __future__ import annotations

import numpy as np
import torch


def row_losses(model, stats, cfg, data) -> np.ndarray:
    """The model's loss on each row of `data` (the kind's own loss over that row's labelled targets)."""
    from .train import Trainer
    from .train.dp import per_row_loss

    trainer = Trainer(model, cfg, stats)
    model.eval()
    out = np.zeros(len(data), dtype=np.float64)
    with torch.inference_mode():
        for idx in trainer._batches(data, cfg.eval_batch_size, shuffle=False):
            pred = trainer._outputs(data, idx).float()
            out[idx] = per_row_loss(trainer.task.loss, pred, trainer._targets(data, idx)).double().cpu().numpy()
    return out


def attack_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the loss-threshold attack: the chance that a random member has a lower loss than a random
    non-member (ties count half)."""
    from scipy.stats import rankdata

    scores = -np.concatenate([member_losses, nonmember_losses])
    ranks = rankdata(scores)
    m, n = len(member_losses), len(nonmember_losses)
    if not m or not n:
        return float("nan")
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


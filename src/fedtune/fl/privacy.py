"""A site's side of differential privacy in a job: its DP plan, its policy check, and what it reports.

When a job asks for DP (`JobConfig.dp`, see `fedtune.train.dp`), the site plans its DP-SGD (sampling rate
batch_size / n_train, the steps of rounds x local_epochs epochs, the noise multiplier for the target
epsilon) and checks the plan against its own policy (`fedtune.fl.policy`, read from the kit named by
FEDTUNE_KIT, which `fedtune client` sets). A job the policy does not allow is refused for good: the site
answers every task of it with `{"refused": reason}` and nothing else. Before every round the site checks the
epsilon it would have spent after that round (and, with a total budget, what other jobs spent); once that is
over its limits it refuses further rounds.

What DP covers: every training row, through every parameter update the site sends (the heads on a frozen
trunk, which never travels; or the LoRA adapters and heads, clipped together per row). The statistics phase
sends row counts only: with DP the labels' per-column moments stay at the site (each site standardises its
targets with its own statistics, which are never sent; the pooled statistics are the neutral mean 0, std 1,
so the model card's outputs are in those units). Row counts (the averaging weights and the sampling rate) are treated as public, as the accountant
does. Validation and test metrics are computed on rows that never train; they are outside the guarantee.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from ..train.dp import DPPlan, accounted_epsilon, plan
from .config import JobConfig
from .policy import PolicyError, read_policy, record_spent, refusal, spent

log = logging.getLogger("fedtune.client")


class SitePrivacy:
    def __init__(self, job: JobConfig, n_train: int, distributed: bool = False):
        self.job = job
        cfg = job.dp_config()
        self.plan: DPPlan | None = None
        self._error = None
        if cfg is not None:
            if distributed:
                self._error = "differential privacy is not supported with several GPU processes per site"
            else:
                self.plan = plan(cfg, n_train, job.train_config().batch_size, job.rounds * job.local_epochs)
        self.steps = 0                    # DP steps taken so far in this job
        self.refused: str | None = None   # set once: the job is refused for good
        self.checked = False

    def _dp(self, steps: int) -> dict | None:
        if self.plan is None:
            return None
        p = self.plan
        return {"epsilon": accounted_epsilon(p.noise_multiplier, p.sample_rate, steps, p.delta, p.accountant),
                "delta": p.delta, "noise_multiplier": p.noise_multiplier, "max_grad_norm": p.max_grad_norm}

    def admit(self, kit: str | None, job_id: str, phase: str) -> str | None:
        """The reason this site refuses the task (None: it runs it): the job against its policy (once, at the
        first task), then, before every training round, the epsilon it would have spent after the round."""
        if self.refused:
            return self.refused
        try:
            policy = read_policy(kit) if kit else None
            elsewhere = sum(v for k, v in spent(kit).items() if k != str(job_id)) if kit and policy else 0.0
        except PolicyError as exc:
            self.refused = f"this site's privacy policy is invalid, so it refuses every job: {exc}"
            return self.refused
        if not self.checked:
            self.checked = True
            self.refused = self._error or refusal(policy, self._dp(self.plan.max_steps) if self.plan else None,
                                                  elsewhere)
            if self.refused:
                return self.refused
        if phase == "train" and self.plan is not None:
            after = self._dp(self.steps + self.plan.steps_per_epoch * self.job.local_epochs)
            why = refusal(policy, after, elsewhere)
            if why:     # budget spent: no more rounds (the final evaluation costs no epsilon)
                return f"no further rounds: {why}"
        return None

    def after_round(self, trainer, kit: str | None = None, job_id: str | None = None) -> dict:
        """What the site adds to a round's answer: the epsilon spent so far (recorded in the site's ledger)."""
        if self.plan is None:
            return {}
        self.steps = trainer.dp_steps
        report = trainer.spent()
        if kit and math.isfinite(report["epsilon"]):
            try:
                record_spent(kit, job_id, report["epsilon"])
            except PolicyError as exc:
                log.error("could not record the epsilon spent: %s", exc)
        return {"dp": report}

    def report(self, trainer) -> dict:
        return {"dp": trainer.spent()} if self.plan is not None and trainer is not None else {}

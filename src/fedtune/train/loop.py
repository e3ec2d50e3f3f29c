"""The training loop shared by local runs and the federated client (one code path).

AdamW (fused on CUDA) with separate learning rates for trunk and heads, linear warm-up + cosine decay,
gradient clipping, bf16 autocast on CUDA, length-bucketed batches, early stopping on validation loss that
restores the best weights. A frozen trunk is run once per dataset and its embeddings are cached: only the
heads train, which is both faster and, on little data, stronger.

Nothing here knows a task kind: the model carries its task (`model.task`, see `fedtune.tasks`), which says
how rows become targets and outputs, which loss trains and which metrics evaluate; the data containers give
their lengths and model inputs (`data.lengths()`, `data.inputs(idx)`).
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.stats import AssayStats
from . import embeddings as shared_embeddings
from .config import TrainConfig, resolve_device


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainConfig, stats: AssayStats | None = None, writer=None,
                 total_epochs: int | None = None, tag: str = ""):
        self.task = model.task
        if self.task.needs_stats and stats is None:
            raise ValueError(f"a {self.task.name} Trainer needs the target statistics (AssayStats)")
        self.model, self.cfg, self.stats, self.writer, self.tag = model, cfg, stats, writer, tag
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        model.to(self.device)
        self.total_epochs = total_epochs or cfg.epochs
        self.frozen = not any(p.requires_grad for p in model.trunk.parameters())
        self.optimizer = self._optimizer()
        self.scheduler = None
        self.step = 0
        self.epoch = 0
        self._cache: dict[int, torch.Tensor] = {}
        self._shared_key: tuple | None = None       # frozen trunk: key into train.embeddings (computed once)
        self.prox: tuple[float, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def set_prox(self, mu: float, reference: dict[str, torch.Tensor]) -> None:
        """FedProx (Li et al. 2020): add mu/2 * ||w - w_ref||^2 over the trainable parameters named in `reference`
        (the global model a federated round started from) to every training loss; mu = 0 turns it off."""
        if not mu:
            self.prox = None
            return
        pairs = [(p, reference[n].detach().to(p.device, p.dtype)) for n, p in self.model.named_parameters()
                 if p.requires_grad and n in reference]
        self.prox = (float(mu), pairs)

    # ---- setup -------------------------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        adapters = getattr(self.model, "trunk_mode", "full") in ("lora", "ptuning")
        trunk_lr = self.cfg.adapter_lr if adapters else self.cfg.lr
        groups = [
            {"params": [p for p in self.model.trunk.parameters() if p.requires_grad], "lr": trunk_lr},
            {"params": [p for p in self.model.heads.parameters() if p.requires_grad], "lr": self.cfg.head_lr},
        ]
        groups = [g for g in groups if g["params"]]
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay, fused=fused)

    def _schedule(self, steps_per_epoch: int):
        total = max(1, self.total_epochs * steps_per_epoch)
        warmup = int(total * self.cfg.warmup_ratio)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def autocast(self):
        if self.device.type == "cuda" and self.cfg.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def reset_cache(self) -> None:
        """Forget cached embeddings (call after loading new trunk weights into a frozen trunk)."""
        self._cache.clear()
        self._shared_key = None

    # ---- data -> tensors ---------------------------------------------------------------------------
    def _batches(self, data, batch_size: int, shuffle: bool) -> list[np.ndarray]:
        """Length-bucketed batches: similar lengths together so little padding is computed."""
        n = len(data)
        lengths = data.lengths()
        if not shuffle:
            order = np.argsort(lengths, kind="stable")
            return [order[i:i + batch_size] for i in range(0, n, batch_size)]
        order = self.rng.permutation(n)
        chunk = batch_size * 16
        batches = []
        for i in range(0, n, chunk):
            part = order[i:i + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
        return [batches[i] for i in self.rng.permutation(len(batches))]

    def _targets(self, data, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.task.targets(data, idx, self.stats)).to(self.device)

    def _embed(self, data, idx: np.ndarray) -> torch.Tensor:
        return self.model.embed(*data.inputs(idx))

    def _cached_embeddings(self, data) -> torch.Tensor:
        key = id(data)
        if key not in self._cache and self.frozen:      # another Trainer of this process may have run this trunk
            if self._shared_key is None:
                self._shared_key = shared_embeddings.model_key(
                    self.model, self.device, self.device.type == "cuda" and self.cfg.bf16, self.cfg.eval_batch_size)
            hit = shared_embeddings.get(self._shared_key, data)
            if hit is not None:
                self._cache[key] = hit
        if key not in self._cache:
            self.model.trunk.eval()
            chunks = []
            with torch.inference_mode(), self.autocast():
                for idx in self._batches(data, self.cfg.eval_batch_size, shuffle=False):
                    chunks.append((idx, self._embed(data, idx).float()))
            emb = torch.empty(len(data), chunks[0][1].shape[-1], device=self.device) if chunks else None
            for idx, e in chunks:
                emb[torch.as_tensor(idx, device=self.device)] = e
            self._cache[key] = emb
            if self.frozen and emb is not None:
                shared_embeddings.put(self._shared_key, data, emb)
        return self._cache[key]

    def embeddings(self, data) -> np.ndarray:
        """Every row's pooled embedding, float64 numpy [N, dim] (trunk in eval mode, no gradient; cached per data
        object as for frozen-trunk training): what ridge heads are solved on (`fedtune.train.ridge`)."""
        emb = self._cached_embeddings(data)
        return np.zeros((0, 0)) if emb is None else emb.double().cpu().numpy()

    def _outputs(self, data, idx: np.ndarray) -> torch.Tensor:
        if self.frozen:
            emb = self._cached_embeddings(data)[torch.as_tensor(idx, device=self.device)]
        else:
            emb = self._embed(data, idx)
        return self.task.outputs(self.model, emb)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task's loss (e.g. masked MSE over the labelled targets only, or cross-entropy)."""
        return self.task.loss(out, target)

    # ---- training ----------------------------------------------------------------------------------
    def train_step(self, data, idx: np.ndarray) -> float:
        """One optimisation step on the rows `idx` of `data`."""
        self.model.train()
        if self.frozen:
            self.model.trunk.eval()
        with self.autocast():
            out = self._outputs(data, idx)
        loss = self.loss(out, self._targets(data, idx))
        self.optimise(loss)
        return self.log_loss(loss.item())

    def optimise(self, loss: torch.Tensor) -> None:
        """Backward, clip, optimizer and schedule step (shared with the DDP trainer)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.prox is not None:
            mu, pairs = self.prox
            loss = loss + mu / 2 * sum(((p - ref) ** 2).sum() for p, ref in pairs)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                     self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1

    def log_loss(self, value: float) -> float:
        if self.writer is not None:
            self.writer.add_scalar(f"{self.tag}train/loss", value, self.step)
        return value

    def train_epoch(self, data) -> float:
        batches = self._batches(data, self.cfg.batch_size, shuffle=True)
        if self.scheduler is None:
            self._schedule(len(batches))
        losses = [self.train_step(data, idx) for idx in batches]
        self.epoch += 1
        return float(np.mean(losses)) if losses else float("nan")

    @torch.inference_mode()
    def predict(self, data) -> np.ndarray:
        """The task's predictions per row, e.g. oriented z [N, A] or class probabilities [N, C]."""
        self.model.eval()
        out = np.zeros((len(data), 0), dtype=np.float32)
        parts = []
        for idx in self._batches(data, self.cfg.eval_batch_size, shuffle=False):
            with self.autocast():
                o = self._outputs(data, idx).float()
            o = self.task.activate(o)
            parts.append((idx, o.cpu().numpy()))
        if parts:
            out = np.zeros((len(data), parts[0][1].shape[1]), dtype=np.float32)
            for idx, o in parts:
                out[idx] = o
        return out

    def evaluate(self, data) -> dict:
        """{"loss": validation loss, **the task's metrics} on `data`."""
        return self.task.evaluate(self.predict(data), data, self.stats)

    def fit(self, train, val, epochs: int | None = None) -> list[dict]:
        """Train for up to `epochs` (default cfg.epochs) with early stopping on validation loss; the best
        validation weights are restored at the end. Returns one record per epoch."""
        epochs = epochs or self.cfg.epochs
        best, best_state, bad, history = float("inf"), None, 0, []
        bar = tqdm(range(epochs), desc=f"{self.tag}train", disable=not self.cfg.progress, leave=False)
        for _ in bar:
            train_loss = self.train_epoch(train)
            record = {"epoch": self.epoch, "train_loss": train_loss, "val": self.evaluate(val)}
            history.append(record)
            self._log(record)
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{record['val']['loss']:.3f}")
            if record["val"]["loss"] < best - 1e-6:
                best, bad = record["val"]["loss"], 0
                best_state = copy.deepcopy({k: v.detach().clone() for k, v in self.model.state_dict().items()})
            else:
                bad += 1
                if bad >= self.cfg.patience:
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return history

    def _log(self, record: dict) -> None:
        if self.writer is None:
            return
        for name, value in self.task.scalars(record["val"]).items():
            self.writer.add_scalar(f"{self.tag}{name}", value, self.epoch)
        self.writer.add_scalar(f"{self.tag}train/epoch_loss", record["train_loss"], self.epoch)

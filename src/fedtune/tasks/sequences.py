"""sequences: your own labelled sequences. A CSV of one or two sequence columns (protein chains or text) and
label columns, described by a task card (`task.json`, see `sequences_card`): regression labels (one or more,
each with its favourable direction and units, missing values allowed) or one classification label.

Site folder: `data.csv` + `task.json`. Split unit: the sequence tuple. Sites are split IID or label-skewed
(Dirichlet per class, or per tertile of the first regression label). Heads: one MLP on the pooled trunk
embedding (concatenated for two sequence columns) under `heads.sequences.`, one output per regression label
(oriented z-scores fitted on training rows, higher = more favourable) or per class (logits).
Metrics: per label RMSE (own units), Pearson, Spearman and their means; or accuracy, macro-F1 and per-class
scores. The key metric `score` is the mean Pearson of a regression card and the accuracy of a classification
card (the card, not the kind, says which; both are reported under their own names too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.stats import AssayStats, moments
from ..models.heads import MLPHead
from ..models.trunk import Trunk
from .base import Task, classification_table, fmt
from .sequences_card import CARD_FILE, Card, ColumnSpec, card_of
from .sequences_check import check_folder
from .sequences_data import (DATA_FILE, SYNTHETIC_REGRESSION, SequenceData, read_table, split_sites,
                             synthetic_sequences, write_table)

HIDDEN = (128, 64)
KIND = "sequences"


class SequencesModel(nn.Module):
    """Trunk + one MLP head under `heads.sequences.` on the pooled embedding of each sequence column,
    concatenated ([B, S * H])."""

    kind = KIND

    def __init__(self, trunk: Trunk, card: Card, hidden=HIDDEN, dropout: float = 0.1):
        super().__init__()
        self.trunk = trunk
        self.card = card
        self.head_hidden, self.dropout = tuple(hidden), dropout
        self.heads = self.new_heads()

    def new_heads(self) -> nn.ModuleDict:
        dim = len(self.card.sequence_columns) * self.trunk.hidden_size
        head = MLPHead(dim, self.card.n_outputs, self.head_hidden, self.dropout)
        return nn.ModuleDict({self.kind: head}).to(next(self.trunk.parameters()).device)

    def tokenize(self, *columns: list[str]) -> list[dict[str, torch.Tensor]]:
        if len(columns) != len(self.card.sequence_columns):
            raise ValueError(f"expected {len(self.card.sequence_columns)} sequence column(s), got {len(columns)}")
        prep = self.trunk.prepare if self.card.alphabet == "protein" else str
        return [self.trunk.tokenize([prep(s) for s in col]) for col in columns]

    def embed_tokens(self, tokens: list[dict]) -> torch.Tensor:
        dev = next(self.parameters()).device
        return torch.cat([self.trunk(**{k: v.to(dev, non_blocking=True) for k, v in t.items()}) for t in tokens],
                         dim=-1)

    def embed(self, *columns: list[str]) -> torch.Tensor:
        return self.embed_tokens(self.tokenize(*columns))

    def apply_heads(self, emb: torch.Tensor, heads: nn.ModuleDict | None = None) -> torch.Tensor:
        return (self.heads if heads is None else heads)[self.kind](emb)

    def forward(self, *columns: list[str]) -> torch.Tensor:
        return self.apply_heads(self.embed(*columns))


def _loss():
    """Masked MSE for float (z-score) targets, cross-entropy for int64 class targets: the card decides which
    targets `Sequences.targets` gives, and the loss follows them."""
    from ..train.losses import CROSS_ENTROPY, MASKED_MSE, Loss

    def pick(target):
        return MASKED_MSE if target.is_floating_point() else CROSS_ENTROPY

    return Loss("masked_mse|cross_entropy", lambda out, t: pick(t).terms(out, t), lambda t: pick(t).count(t))


def _regression(card: Card) -> list[ColumnSpec]:
    return [c for c in card.label_columns if c.role == "regression"]


def _is_regression(metrics: dict) -> bool:
    return "labels" in metrics


def _site_metrics(results: dict) -> list[dict]:
    return [m for per_site in results["runs"].values() for m in per_site.values() if isinstance(m, dict)]


class Sequences(Task):
    name = KIND
    summary = "your own labelled sequences: a CSV + task card (task.json), regression or classification"
    sample_noun = "sequences"
    default_trunk = "antiberty"       # a protein card's; a text card's is minilm (`default_trunk_for`)
    default_mode = "frozen"
    train_defaults = dict(epochs=60, batch_size=32, lr=1e-5, patience=10)
    needs_stats = True                # regression labels' z-scores (a classification card's statistics are empty)
    key_metric = "score"
    key_metric_label = "score (mean Pearson or accuracy)"
    interval_metrics = ("score", "mean_pearson", "mean_spearman", "accuracy", "macro_f1")
    model_class = SequencesModel

    # ---- data
    def read(self, folder, assays=None) -> SequenceData:
        folder = Path(folder)
        return read_table(folder, card_of(assays) if assays else Card.read(folder))

    def write(self, data: SequenceData, folder) -> Path:
        return write_table(data, folder)

    def read_source(self, source, agreement: str = "50") -> SequenceData:
        return self.read(source)

    def synthetic(self, n: int, seed: int) -> SequenceData:
        return synthetic_sequences(n, seed)

    def split_sites(self, data, n_sites, alpha, split, seed) -> list[SequenceData]:
        return split_sites(data, n_sites, alpha, split, seed)

    def site_rows(self, data: SequenceData) -> dict:
        return data.rows()

    def assays_from(self, source) -> list[dict]:
        return Card.read(source).to_dicts() if source else Card.from_dicts(SYNTHETIC_REGRESSION).to_dicts()

    def label_table(self, data: SequenceData) -> list[dict]:
        return data.card.to_dicts()

    def default_trunk_for(self, table) -> str:
        """The trunk a card's alphabet calls for: antiberty for protein, minilm for text."""
        return card_of(table).default_trunk

    # ---- target scaling: per regression label, oriented z (none for a classification card)
    def fit_stats(self, train: SequenceData) -> AssayStats:
        return self.pool_stats(train.card, [self.label_moments(train)])

    def stats_from_dict(self, d):
        return AssayStats.from_dict(d or {})

    # ---- federation (fl/): the job's label table is the card; statistics pool per regression label
    needs_label_table = True
    label_table_noun = "task card"

    def table_from_dicts(self, rows: list) -> list[ColumnSpec]:
        return list(card_of(rows).columns)

    def table_to_dicts(self, table: list) -> list[dict]:
        return card_of(table).to_dicts()

    def stat_keys(self, table) -> list[str]:
        return [c.name for c in _regression(card_of(table))]

    def label_moments(self, train: SequenceData):
        if train.card.classification:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        return moments(train.labels)

    def pool_stats(self, table, site_moments: list) -> AssayStats:
        cols = _regression(card_of(table))
        if not cols:
            return AssayStats.from_moments([], [], np.zeros(0), np.zeros(0), np.zeros(0))
        return AssayStats.pool([c.name for c in cols], [c.sign for c in cols], site_moments)

    # ---- site data checks (`fedtune check-data`)
    site_files = f"{DATA_FILE} + {CARD_FILE}"

    def detect(self, folder) -> bool:
        folder = Path(folder)
        return folder.is_dir() and (folder / CARD_FILE).exists()

    def check(self, folder, report) -> None:
        check_folder(Path(folder), report)

    # ---- model
    def new_model(self, trunk, assays=None) -> SequencesModel:
        if not assays:
            raise ValueError("a sequences model needs its task card (the label table)")
        return SequencesModel(trunk, card_of(assays))

    # ---- training (train/ imported here, not at module level: see base.py)
    @property
    def loss(self):
        return _loss()

    def targets(self, data: SequenceData, idx, stats: AssayStats) -> np.ndarray:
        return data.labels[idx] if data.card.classification else stats.to_z(data.labels[idx])

    def outputs(self, model: SequencesModel, emb):
        return model.apply_heads(emb)

    def evaluate(self, pred, data: SequenceData, stats: AssayStats) -> dict:
        """`pred`: oriented z [N, L], or class logits [N, C] (softmaxed here: a card, not the kind, says which)."""
        from ..train.metrics import classification_metrics, log_loss, masked_mse, regression_metrics
        cls_col = data.card.classification
        if cls_col:
            z = pred - pred.max(-1, keepdims=True) if len(pred) else pred
            probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True) if len(pred) else pred
            m = classification_metrics(probs, data.labels, cls_col.classes)
            return {"loss": log_loss(probs, data.labels), **m, "score": m["accuracy"]}
        from ..data.flab import Assay
        cols = data.card.label_columns
        assays = [Assay(c.name, c.name, c.favourable, c.units) for c in cols]
        m = regression_metrics(pred, data.labels, assays, stats)
        labels = {c.name: {k: v for k, v in m["tasks"][c.name]["assays"][c.name].items() if k != "measure"}
                  | {"units": c.units, "rmse_z": m["tasks"][c.name]["rmse_z"]} for c in cols}
        return {"loss": masked_mse(pred, stats.to_z(data.labels)), "n": m["n"], "mean_pearson": m["mean_pearson"],
                "mean_spearman": m["mean_spearman"], "labels": labels, "score": m["mean_pearson"]}

    def scalars(self, metrics: dict) -> dict[str, float]:
        keys = ("loss", "score", "mean_pearson", "mean_spearman", "accuracy", "macro_f1")
        out = {f"val/{k}": metrics[k] for k in keys if metrics.get(k) is not None}
        out.update({f"val_pearson/{name}": m["pearson"] for name, m in metrics.get("labels", {}).items()
                    if m.get("pearson") is not None})
        return out

    def headline(self, metrics: dict) -> str:
        if _is_regression(metrics):
            return f"mean Pearson {fmt(metrics.get('mean_pearson'))}, mean Spearman {fmt(metrics.get('mean_spearman'))}"
        return f"accuracy {fmt(metrics.get('accuracy'))}, macro-F1 {fmt(metrics.get('macro_f1'))}"

    # ---- report
    def run_summary(self, per_site: list[dict], results: dict) -> dict:
        from ..train.metrics import mean_or_none
        summ = {k: mean_or_none(m.get(k) for m in per_site)
                for k in ("score", "mean_pearson", "mean_spearman", "accuracy", "macro_f1")}
        names = next((list(m["labels"]) for m in _site_metrics(results) if "labels" in m), [])
        summ["labels"] = {n: {k: mean_or_none(m.get("labels", {}).get(n, {}).get(k) for m in per_site)
                              for k in ("pearson", "spearman", "rmse")} for n in names}
        return summ

    def report_tables(self, results, runs, titles, summ) -> list[str]:
        regression = any(_is_regression(m) for m in _site_metrics(results))
        if not regression:
            return classification_table(results, runs, titles, summ)
        names = list(summ[runs[0]]["labels"])
        lines = ["## Mean over sites (test split of each site, scored once)", "",
                 "| label | " + " | ".join(f"{t} Pearson / Spearman" for t in titles) + " |",
                 "|---|" + "---|" * len(runs)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(f"{fmt(summ[r]['labels'][n]['pearson'])} / "
                                                  f"{fmt(summ[r]['labels'][n]['spearman'])}" for r in runs) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{fmt(summ[r]['mean_pearson'])}** / "
                                                  f"{fmt(summ[r]['mean_spearman'])}" for r in runs) + " |")
        lines += ["", "## Per site and label (test split)", "", "RMSE in the label's own units; Pearson of predictions vs labels.",
                  "", "| site | label | n | " + " | ".join(f"{t} RMSE / Pearson" for t in titles) + " |",
                  "|---|---|---|" + "---|" * len(runs)]
        for site in results["sites"]:
            for n in names:
                cells = [results["runs"][r].get(site, {}).get("labels", {}).get(n, {}) for r in runs]
                lines.append(f"| {site} | {n} | {cells[0].get('n', '–')} | "
                             + " | ".join(f"{fmt(c.get('rmse'))} / {fmt(c.get('pearson'))}" for c in cells) + " |")
        return lines

    def plot_bars(self, plt, runs, titles, summ, results):
        regression = any(_is_regression(m) for m in _site_metrics(results))
        names = list(summ[runs[0]]["labels"]) if regression else ["accuracy", "macro_f1"]
        fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 4))
        width = 0.8 / len(runs)
        for i, (r, title) in enumerate(zip(runs, titles)):
            vals = ([summ[r]["labels"][n]["pearson"] or 0.0 for n in names] if regression
                    else [summ[r][n] or 0.0 for n in names])
            ax.bar(np.arange(len(names)) + i * width, vals, width, label=title)
        ax.set_xticks(np.arange(len(names)) + width * (len(runs) - 1) / 2, names, rotation=20)
        ax.set_ylabel("Pearson (mean over sites)" if regression else "mean over sites")
        ax.set_title("Per-label test Pearson" if regression else "Test accuracy and macro-F1")
        ax.axhline(0, color="grey", lw=0.5)
        return fig, ax

    # ---- bundle: the task card in the manifest
    def manifest_fields(self, model: SequencesModel) -> dict:
        return {"card": model.card.to_dicts()}

    def model_from_manifest(self, trunk, manifest: dict, hidden) -> SequencesModel:
        return SequencesModel(trunk, Card.from_dicts(manifest["card"]), hidden)

    # ---- serving: an item is a row's sequences by column name, checked against the model's card by the API
    # (`Card.item_columns`)
    api_module = "sequences_api"

    def warmup_items(self, model: SequencesModel) -> list:
        return [model.card.warmup_item()]

    def tokenize(self, model: SequencesModel, items: list):
        return model.tokenize(*zip(*(model.card.item_columns(it) for it in items)))

    def item_parts(self, model: SequencesModel, item) -> tuple[str, ...]:
        return tuple(model.card.item_columns(item))

    def part_text(self, model: SequencesModel, part: str) -> str:
        return model.trunk.prepare(part) if model.card.alphabet == "protein" else part

    def head_outputs(self, model: SequencesModel, emb, heads) -> np.ndarray:
        """Oriented z [n, labels], or class probabilities [n, classes]."""
        out = model.apply_heads(emb, heads).float()
        return (out.softmax(-1) if model.card.classification else out).cpu().numpy()


TASK = Sequences()
SequencesModel.task = TASK     # what the Trainer asks (targets, outputs, loss, metrics)

"""sentiment: Financial PhraseBank. A sentence in, one 3-class head (negative, neutral, positive) under
`heads.sentiment.`, trained with cross-entropy.

Site folder: one FPB-format file `Sentences.txt` (latin-1, `sentence@label`), or a folder with the original
FPB files. Split unit: the sentence. Sites are split IID or label-skewed (Dirichlet per class). Metrics:
accuracy (the key metric), macro-F1, per-class precision / recall / F1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.fpb import SENTIMENT_LABELS, SITE_FILE, SentimentData, load_fpb, site_file, write_fpb
from ..data.split import split_sentiment_sites
from ..data.synthetic import synthetic_sentiment
from ..models.heads import MLPHead
from ..models.trunk import Trunk
from .base import DemoDefaults, Task, classification_table

HIDDEN = (256,)
SAMPLE_TEXTS = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
    "The company said it will cut 300 jobs after sales fell sharply.",
    "The annual general meeting will be held in Helsinki on 20 March.",
]


class SentimentModel(nn.Module):
    """Trunk + a 3-class head (negative, neutral, positive) under `heads.sentiment.`."""

    kind = "sentiment"
    labels = SENTIMENT_LABELS

    def __init__(self, trunk: Trunk, hidden=HIDDEN, dropout: float = 0.1):
        super().__init__()
        self.trunk = trunk
        self.head_hidden, self.dropout = tuple(hidden), dropout
        self.heads = self.new_heads()

    def new_heads(self) -> nn.ModuleDict:
        head = MLPHead(self.trunk.hidden_size, len(SENTIMENT_LABELS), self.head_hidden, self.dropout)
        return nn.ModuleDict({self.kind: head}).to(next(self.trunk.parameters()).device)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.trunk.tokenize(texts)

    def embed_tokens(self, tokens: dict) -> torch.Tensor:
        dev = next(self.parameters()).device
        return self.trunk(**{k: v.to(dev, non_blocking=True) for k, v in tokens.items()})

    def embed(self, texts: list[str]) -> torch.Tensor:
        return self.embed_tokens(self.tokenize(texts))

    def apply_heads(self, emb: torch.Tensor, heads: nn.ModuleDict | None = None) -> torch.Tensor:
        return (self.heads if heads is None else heads)[self.kind](emb)

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.apply_heads(self.embed(texts))


class Sentiment(Task):
    name = "sentiment"
    summary = "Financial PhraseBank sentiment: a sentence, 3 classes"
    sample_noun = "sentences"
    default_trunk = "minilm"
    default_mode = "full"
    train_defaults = dict(epochs=4, batch_size=32, lr=5e-5, patience=2)
    key_metric = "accuracy"
    key_metric_label = "accuracy"
    interval_metrics = ("accuracy", "macro_f1")
    model_class = SentimentModel
    demo = DemoDefaults(source="fpb", samples=300, rounds=2, local_epochs=1, mode="lora", max_length=64)

    # ---- data
    def read(self, folder, assays=None) -> SentimentData:
        return load_fpb(site_file(folder))   # Sentences.txt, or the original FPB files (50Agree)

    def write(self, data: SentimentData, folder) -> Path:
        write_fpb(data, Path(folder) / SITE_FILE)
        return Path(folder)

    def read_source(self, source, agreement: str = "50") -> SentimentData:
        return load_fpb(source, agreement)

    def synthetic(self, n: int, seed: int) -> SentimentData:
        return synthetic_sentiment(n, seed)

    def split_sites(self, data, n_sites, alpha, split, seed) -> list[SentimentData]:
        return split_sentiment_sites(data, n_sites, split, alpha, seed)

    def site_rows(self, data: SentimentData) -> dict:
        return {lab: int((data.labels == i).sum()) for i, lab in enumerate(SENTIMENT_LABELS)}

    # ---- model
    def new_model(self, trunk, assays=None) -> SentimentModel:
        return SentimentModel(trunk)

    # ---- training (train/ imported here, not at module level: see base.py)
    @property
    def loss(self):
        from ..train.losses import CROSS_ENTROPY
        return CROSS_ENTROPY

    def targets(self, data: SentimentData, idx, stats=None) -> np.ndarray:
        return data.labels[idx]

    def outputs(self, model: SentimentModel, emb):
        return model.apply_heads(emb)

    def activate(self, out):
        return out.softmax(-1)

    def evaluate(self, pred, data: SentimentData, stats=None) -> dict:
        from ..train.metrics import classification_metrics, log_loss
        return {"loss": log_loss(pred, data.labels), **classification_metrics(pred, data.labels, SENTIMENT_LABELS)}

    def scalars(self, metrics: dict) -> dict[str, float]:
        return {f"val/{k}": metrics[k] for k in ("loss", "accuracy", "macro_f1") if metrics.get(k) is not None}

    def headline(self, metrics: dict) -> str:
        return f"accuracy {metrics.get('accuracy') or 0:.3f}, macro-F1 {metrics.get('macro_f1') or 0:.3f}"

    # ---- report
    def run_summary(self, per_site: list[dict], results: dict) -> dict:
        from ..train.metrics import mean_or_none
        return {"accuracy": mean_or_none(m.get("accuracy") for m in per_site),
                "macro_f1": mean_or_none(m.get("macro_f1") for m in per_site)}

    def report_tables(self, results, runs, titles, summ) -> list[str]:
        return classification_table(results, runs, titles, summ)

    def plot_bars(self, plt, runs, titles, summ, results):
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(runs))
        ax.bar(x - 0.2, [summ[r]["accuracy"] or 0 for r in runs], 0.4, label="accuracy")
        ax.bar(x + 0.2, [summ[r]["macro_f1"] or 0 for r in runs], 0.4, label="macro-F1")
        ax.set_xticks(x, titles)
        ax.set_ylim(0, 1)
        ax.set_title("Test accuracy and macro-F1 (mean over sites)")
        return fig, ax

    # ---- demo
    def show_predictions(self, post, url: str, card: dict) -> dict:
        resp = post(f"{url}/v1/{self.name}/predict", {"texts": SAMPLE_TEXTS})
        print("  sentiment (global model):")
        for text, p in zip(SAMPLE_TEXTS, resp["predictions"]):
            probs = " ".join(f"{k}={v:.2f}" for k, v in p["probabilities"].items())
            print(f"    {p['label']:>8} ({probs})  {text[:60]}")
        return {self.name: resp}

    # ---- bundle: the class labels in the manifest
    def manifest_fields(self, model: SentimentModel) -> dict:
        return {"labels": list(SENTIMENT_LABELS)}

    def model_from_manifest(self, trunk, manifest: dict, hidden) -> SentimentModel:
        return SentimentModel(trunk, hidden)

    # ---- serving: an item is a text; the head's softmax (`activate`) is the prediction
    api_module = "sentiment_api"

    def warmup_items(self, model) -> list[str]:
        return ["Operating profit rose compared with the previous quarter."]

    # ---- site data checks
    site_files = SITE_FILE

    def detect(self, folder: Path) -> bool:
        folder = Path(folder)
        return folder.is_file() or (folder.is_dir() and site_file(folder).exists())

    def check(self, folder: Path, report) -> None:
        from ..data.fpb_check import check_fpb
        check_fpb(Path(folder), report)


TASK = Sentiment()
SentimentModel.task = TASK     # what the Trainer asks (targets, outputs, loss, metrics)

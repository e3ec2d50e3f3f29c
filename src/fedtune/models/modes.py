"""Trunk modes: `full` (everything trains), `frozen` (only heads train), `lora` (low-rank adapters from
`peft` on the attention projections + heads). `travelling_keys` says which state-dict entries a site sends
in a federated round: what can change, minus private heads."""

from __future__ import annotations

from torch import nn

from .trunk import TrunkConfig

LORA_TARGET_CANDIDATES = ("query", "value", "q_proj", "v_proj", "q", "v", "qkv", "Wqkv")


def lora_targets(encoder: nn.Module, requested: list[str]) -> list[str]:
    if requested:
        return list(requested)
    names = {name.rsplit(".", 1)[-1] for name, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    found = [c for c in LORA_TARGET_CANDIDATES if c in names]
    if not found:
        raise ValueError(f"no attention projection found for LoRA among {sorted(names)}; set lora_targets")
    return found[:2] if found[:2] in (["query", "value"], ["q_proj", "v_proj"]) else found[:1]


def apply_trunk_mode(model: nn.Module, cfg: TrunkConfig) -> nn.Module:
    trunk = model.trunk
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=lora_targets(trunk.encoder, cfg.lora_targets), bias="none")
        trunk.encoder = get_peft_model(trunk.encoder, lcfg)
    for name, p in trunk.named_parameters():
        p.requires_grad = cfg.mode == "full" or (cfg.mode == "lora" and "lora_" in name)
    model.trunk_mode = cfg.mode
    return model


def merge_trunk(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the trunk weights (for export): a plain encoder afterwards."""
    enc = model.trunk.encoder
    if hasattr(enc, "merge_and_unload"):
        model.trunk.encoder = enc.merge_and_unload()
    model.trunk_mode = "full" if getattr(model, "trunk_mode", "full") == "lora" else getattr(model, "trunk_mode", "full")
    return model


def is_head_key(key: str) -> bool:
    return key.startswith("heads.")


def head_keys(state: dict) -> list[str]:
    return [k for k in state if is_head_key(k)]


def trunk_keys(state: dict) -> list[str]:
    return [k for k in state if not is_head_key(k)]


def trainable_keys(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def travelling_keys(model: nn.Module, private_heads: bool = False) -> list[str]:
    """State-dict keys a site sends each round: trainable parameters (plus trunk buffers when the whole
    trunk trains), without heads when they are private."""
    keys = set(trainable_keys(model))
    if getattr(model, "trunk_mode", "full") == "full":
        keys |= {k for k, _ in model.named_buffers() if k.startswith("trunk.")}
    return [k for k in model.state_dict() if k in keys and not (private_heads and is_head_key(k))]

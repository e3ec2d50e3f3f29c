"""Trunk modes: `full` (everything trains), `frozen` (only heads train), `lora` (low-rank adapters from
`peft` on the attention projections + heads), `ptuning` (learned virtual prompt tokens from `peft`'s prompt
encoder in front of a frozen trunk + heads). `travelling_keys` says which state-dict entries a site sends
in a federated round: what can change, minus private heads.

LoRA under FedAvg: the server averages A and B separately, and mean(B) @ mean(A) is not mean(B @ A), the
average of the sites' actual updates. `TrunkConfig(lora_freeze_a=True)` is FFA-LoRA (Sun et al., ICLR
2024): every A is drawn from `lora_seed` (not the process's random state, so every site, the server and the
export draw the same A) and frozen; only B trains and travels, and mean(B) @ A == mean(B @ A) exactly."""

from __future__ import annotations

import torch
from torch import nn

from .trunk import TrunkConfig


class PromptTokens(nn.Module):
    """P-tuning: `peft`'s PromptEncoder (embedding + MLP reparameterisation) producing the virtual tokens."""

    def __init__(self, n_tokens: int, dim: int, hidden: int):
        super().__init__()
        from peft.tuners.p_tuning import PromptEncoder, PromptEncoderConfig
        cfg = PromptEncoderConfig(num_virtual_tokens=n_tokens, token_dim=dim, num_transformer_submodules=1,
                                  encoder_hidden_size=hidden, encoder_reparameterization_type="MLP")
        self.encoder = PromptEncoder(cfg)
        self.register_buffer("indices", torch.arange(n_tokens), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.encoder(self.indices)


class FixedPrompt(nn.Module):
    """The virtual tokens computed once (what an export bundle stores for serving)."""

    def __init__(self, tokens: torch.Tensor):
        super().__init__()
        self.tokens = nn.Parameter(tokens.detach().clone(), requires_grad=False)

    def forward(self) -> torch.Tensor:
        return self.tokens

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
        if cfg.lora_freeze_a:
            shared_lora_a(trunk.encoder, cfg.lora_seed)
    elif cfg.mode == "ptuning":
        trunk.prompt = PromptTokens(cfg.virtual_tokens, trunk.hidden_size, cfg.prompt_hidden).to(
            next(trunk.encoder.parameters()).device)
    for name, p in trunk.named_parameters():
        p.requires_grad = (cfg.mode == "full"
                           or (cfg.mode == "lora" and "lora_" in name
                               and not (cfg.lora_freeze_a and ".lora_A." in name))
                           or (cfg.mode == "ptuning" and name.startswith("prompt.")))
    model.trunk_mode = cfg.mode
    return model


def shared_lora_a(encoder: nn.Module, seed: int) -> None:
    """FFA-LoRA: redraw every LoRA A matrix (peft's initialisation, Kaiming uniform) from a generator seeded
    with `seed`, in module-name order: the same A wherever the same configuration is built."""
    import math
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(encoder.named_parameters()):
            if ".lora_A." in name:
                w = torch.empty(p.shape, dtype=torch.float32)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
                p.copy_(w.to(p.device, p.dtype))


def merge_trunk(model: nn.Module) -> nn.Module:
    """For export: fold LoRA adapters into the trunk weights (a plain encoder afterwards) and turn a
    p-tuning prompt encoder into its fixed virtual tokens."""
    enc = model.trunk.encoder
    if hasattr(enc, "merge_and_unload"):
        model.trunk.encoder = enc.merge_and_unload()
    if isinstance(model.trunk.prompt, PromptTokens):
        with torch.no_grad():
            model.trunk.prompt = FixedPrompt(model.trunk.prompt())
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

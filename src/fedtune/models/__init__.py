"""Models: trunks (AntiBERTy, MiniLM, any local HF encoder), masked mean pooling, heads, trunk modes."""

from .heads import FITNESS_HIDDEN, FitnessModel, MLPHead, SentimentModel
from .modes import (apply_trunk_mode, head_keys, is_head_key, merge_trunk, trainable_keys, travelling_keys,
                    trunk_keys)
from .trunk import TRUNK_MODES, Trunk, TrunkConfig, load_trunk, masked_mean, resolve_source


def build_model(kind: str, trunk_cfg: TrunkConfig, assays=None, weights: bool = True):
    """The task model of `kind` ("fitness" needs `assays`) with its trunk mode applied."""
    trunk = load_trunk(trunk_cfg, weights=weights)
    if kind == "fitness":
        if not assays:
            raise ValueError("a fitness model needs its assay list")
        model = FitnessModel(trunk, assays)
    elif kind == "sentiment":
        model = SentimentModel(trunk)
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose 'fitness' or 'sentiment'")
    return apply_trunk_mode(model, trunk_cfg)


__all__ = [
    "FITNESS_HIDDEN", "TRUNK_MODES", "FitnessModel", "MLPHead", "SentimentModel", "Trunk", "TrunkConfig",
    "apply_trunk_mode", "build_model", "head_keys", "is_head_key", "load_trunk", "masked_mean", "merge_trunk",
    "resolve_source", "trainable_keys", "travelling_keys", "trunk_keys",
]

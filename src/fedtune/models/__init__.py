"""Models: trunks (AntiBERTy, MiniLM, any local HF encoder), masked mean pooling, heads, trunk modes.
Each task kind's model class (trunk + its heads) lives with the kind, in `fedtune.tasks`."""

from .heads import HIDDEN, MLPHead
from .modes import (apply_trunk_mode, head_keys, is_head_key, merge_trunk, trainable_keys, travelling_keys,
                    trunk_keys)
from .trunk import TRUNK_MODES, Trunk, TrunkConfig, load_trunk, masked_mean, resolve_source


__all__ = [
    "HIDDEN", "TRUNK_MODES", "MLPHead", "Trunk", "TrunkConfig",
    "apply_trunk_mode", "head_keys", "is_head_key", "load_trunk", "masked_mean", "merge_trunk",
    "resolve_source", "trainable_keys", "travelling_keys", "trunk_keys",
]

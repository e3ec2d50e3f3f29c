"""Models: trunks (AntiBERTy, MiniLM, any local HF encoder), masked mean pooling, heads, trunk modes.
Each task kind's model class (trunk + its heads) lives with the kind, in `fedtune.tasks`."""

from .heads import HIDDEN, MLPHead
from .modes import (apply_trunk_mode, head_keys, is_head_key, merge_trunk, trainable_keys, travelling_keys,
                    trunk_keys)
from .trunk import TRUNK_MODES, Trunk, TrunkConfig, load_trunk, masked_mean, resolve_source


# ---- compatibility shims, to be removed in the next step of issue 14 ----------------------------------------
# `fedtune.fl` and `fedtune.bundle` still build models by kind name or class; the registry owns both now
# (`fedtune.tasks.get(kind).build_model(...)`, `.model_class`). Resolved at call time: tasks/ imports models/.
def build_model(kind: str, trunk_cfg: TrunkConfig, assays=None, weights: bool = True):
    """The task model of `kind` with its trunk mode applied (see `fedtune.tasks.Task.build_model`)."""
    from ..tasks import get
    return get(kind).build_model(trunk_cfg, assays, weights=weights)


_MODEL_CLASSES = {"FitnessModel": "fitness", "SentimentModel": "sentiment"}


def __getattr__(name: str):
    if name in _MODEL_CLASSES:
        from ..tasks import get
        return get(_MODEL_CLASSES[name]).model_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HIDDEN", "TRUNK_MODES", "MLPHead", "Trunk", "TrunkConfig",
    "apply_trunk_mode", "build_model", "head_keys", "is_head_key", "load_trunk", "masked_mean", "merge_trunk",
    "resolve_source", "trainable_keys", "travelling_keys", "trunk_keys",
]

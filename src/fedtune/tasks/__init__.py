"""The task registry: one module per task kind, each declaring everything kind-specific behind one interface
(`base.Task`: site format and split, target scaling, model and heads, loss, metrics and key metric, report
tables, demo inputs). Everything else asks `get(kind)` and names no kind.

Kind modules are imported on first use, so `fedtune --help` (which lists `kinds()`) stays fast.
To add a kind: write `tasks/<kind>.py` with `TASK = <YourTask>()` and add one line to `_MODULES`
(see docs/architecture.md, "How to add a task kind").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Task

_MODULES = {           # kind -> module under fedtune.tasks, in the order the CLI and the demo list them
    "fitness": "fitness",
    "sentiment": "sentiment",
    "sequences": "sequences",
}


class UnknownKind(ValueError):
    """A kind no module in the registry declares."""


def kinds() -> tuple[str, ...]:
    """Every registered kind, in registry order (imports nothing)."""
    return tuple(_MODULES)


def get(kind: str) -> "Task":
    """The task object of `kind`; UnknownKind (a ValueError) names the kinds there are."""
    module = _MODULES.get(kind) if isinstance(kind, str) else None
    if module is None:
        raise UnknownKind(f"unknown task kind {kind!r}; choose one of {', '.join(kinds())}")
    task = importlib.import_module(f"{__name__}.{module}").TASK
    if task.name != kind:     # a module registered under the wrong name would answer for another kind
        raise RuntimeError(f"fedtune.tasks.{module} declares kind {task.name!r}, registered as {kind!r}")
    return task


def build_model(kind: str, trunk_cfg, table=None, weights: bool = True):
    """The model of `kind` on a freshly loaded trunk with the trunk mode of `trunk_cfg` applied
    (`get(kind).build_model`; `table`: the kind's label table, e.g. fitness assays)."""
    return get(kind).build_model(trunk_cfg, table, weights=weights)


def __getattr__(name: str):
    if name == "Task":          # the interface, without importing torch for `kinds()`
        from .base import Task
        return Task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Task", "UnknownKind", "build_model", "get", "kinds"]

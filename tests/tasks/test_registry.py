"""The task registry: which kinds there are, and every kind's side of the interface (`fedtune.tasks.base.Task`),
exercised with real data folders, tiny random trunks and the ordinary Trainer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtune.models import TRUNK_MODES, TrunkConfig
from fedtune.tasks import Task, UnknownKind, get, kinds
from fedtune.train import TrainConfig, Trainer
from fedtune.train.losses import Loss

SRC = Path(__file__).resolve().parents[2] / "src" / "fedtune"


def tiny_trunk(kind: str, tiny_antibody_trunk, tiny_text_trunk) -> str:
    return str(tiny_antibody_trunk if get(kind).default_trunk == "antiberty" else tiny_text_trunk)


def test_registry_lists_the_kinds_and_refuses_others():
    assert kinds() == ("fitness", "sentiment", "sequences")
    for kind in kinds():
        task = get(kind)
        assert isinstance(task, Task) and task.name == kind
        assert get(kind) is task                      # one object per kind
    with pytest.raises(UnknownKind, match="fitness, sentiment, sequences"):
        get("stability")
    assert issubclass(UnknownKind, ValueError)        # the CLI reports it like any bad argument


def test_listing_kinds_imports_no_kind_module():
    code = ("import sys; from fedtune.tasks import kinds; kinds(); "
            "print(sorted(m for m in sys.modules if m.startswith('fedtune.tasks.') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_asking_the_registry_imports_neither_train_nor_fl():
    """serve/ must not import train/ or fl/, yet it will ask the registry for a kind's fields and heads."""
    code = ("import sys; from fedtune.tasks import get, kinds; [get(k).model_class for k in kinds()]; "
            "print(sorted(m for m in sys.modules if m.startswith(('fedtune.train', 'fedtune.fl'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind", kinds())
def test_declarations(kind):
    task = get(kind)
    assert task.default_mode in TRUNK_MODES and task.default_trunk
    assert task.head_modes and set(task.head_modes) <= {"shared", "private"} and task.head_modes[0] == "shared"
    assert isinstance(task.loss, Loss) and task.key_metric and task.key_metric_label and task.sample_noun
    assert task.model_class.task is task and task.model_class.kind == kind
    frozen, full = task.train_config("frozen"), task.train_config("full", lr=1e-3, epochs=None)
    assert isinstance(frozen, TrainConfig) and frozen.epochs >= 60 and frozen.patience == 10
    assert full.lr == 1e-3 and full.epochs == task.train_defaults["epochs"]    # None leaves the default
    if task.demo is not None:
        assert task.demo.mode in TRUNK_MODES and task.demo.source


@pytest.mark.parametrize("kind", kinds())
def test_site_folders_round_trip_and_split_by_the_split_unit(kind, tmp_path):
    task = get(kind)
    summary = task.prepare_sites(tmp_path / "sites", sites=2, samples=60, seed=3)
    assert (tmp_path / "sites" / f"{kind}-split.json").exists()
    assert sum(s["samples"] for s in summary["sites"].values()) == 60
    site = tmp_path / "sites" / "site-1"
    data = task.read(site, task.label_table(task.synthetic(60, 3)))
    assert len(data) == summary["sites"]["site-1"]["samples"]
    assert task.site_rows(data) == summary["sites"]["site-1"]["rows"]
    again = task.write(data, tmp_path / "copy")
    assert task.read(again, task.label_table(data)).digest() == data.digest()
    train, val = task.load_site(site, task.label_table(data), seed=0, val_fraction=0.25)
    assert len(train) + len(val) == len(data) and len(val) > 0
    assert not set(train.split_ids()) & set(val.split_ids())    # duplicates never straddle the split
    assert type(data).concat([train, val]).digest() != "" and len(type(data).concat([train, val])) == len(data)


@pytest.mark.parametrize("kind", kinds())
def test_a_site_with_one_sample_is_refused(kind, tmp_path):
    task = get(kind)
    one = task.synthetic(20, 0)
    one = one.subset([0])
    task.write(one, tmp_path / "site")
    with pytest.raises(ValueError, match="at least 2"):
        task.load_site(tmp_path / "site", task.label_table(one))


@pytest.mark.parametrize("kind", kinds())
def test_model_training_and_metrics_contract(kind, tiny_antibody_trunk, tiny_text_trunk, tmp_path):
    task = get(kind)
    data = task.synthetic(24, 1)
    train, val = data.subset(range(16)), data.subset(range(16, 24))
    stats = task.fit_stats(train)
    assert (stats is not None) == task.needs_stats
    if stats is not None:
        assert task.stats_from_dict(stats.to_dict()).to_dict() == stats.to_dict()
    torch.manual_seed(0)
    model = task.build_model(TrunkConfig(tiny_trunk(kind, tiny_antibody_trunk, tiny_text_trunk), mode="full"),
                             task.label_table(train))
    assert model.task is task and all(k.startswith(("trunk.", "heads.")) for k in model.state_dict())
    idx = np.arange(4)
    emb = model.embed(*train.inputs(idx))
    out, target = task.outputs(model, emb), torch.from_numpy(task.targets(train, idx, stats))
    assert out.shape[0] == target.shape[0] == 4
    loss = task.loss(out, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    total, count = task.loss.terms(out, target)
    assert torch.allclose(loss, total / count.clamp_min(1))
    if task.needs_stats:
        with pytest.raises(ValueError, match="statistics"):
            Trainer(model, TrainConfig(progress=False), None)
    trainer = Trainer(model, TrainConfig(epochs=1, progress=False, device="cpu"), stats)
    trainer.fit(train, val)
    metrics = trainer.evaluate(val)
    assert np.isfinite(metrics["loss"]) and task.key_metric in metrics and metrics["n"] == len(val)
    assert "val/loss" in task.scalars(metrics)
    assert task.headline(metrics)
    pred = trainer.predict(val)
    assert pred.shape[0] == len(val)
    assert task.evaluate(pred, val, stats)["loss"] == pytest.approx(metrics["loss"])


@pytest.mark.parametrize("kind", kinds())
def test_report_parts(kind, tmp_path):
    """A kind's summary, tables and bar chart from evaluation-shaped metrics (through the common report)."""
    from fedtune.report import write_report
    task = get(kind)
    data = task.synthetic(40, 2)
    stats = task.fit_stats(data)
    rng = np.random.default_rng(0)
    probe = task.targets(data, np.arange(len(data)), stats)
    width = probe.shape[1] if probe.ndim == 2 else 3
    metrics = {site: task.evaluate(rng.random((len(data), width)).astype(np.float32), data, stats)
               for site in ("site-1", "site-2")}
    results = {"kind": kind, "sites": ["site-1", "site-2"], "runs": {"local": metrics, "fedavg": metrics},
               "curves": {"fedavg": {s: [m[task.key_metric]] for s, m in metrics.items()}}, "notes": ["n"]}
    report = write_report(results, tmp_path).read_text()
    assert f"# fedtune report: {kind}" in report and "local only" in report and "FedAvg" in report
    assert (tmp_path / "bars.png").stat().st_size > 1000 and (tmp_path / "rounds.png").exists()
    summ = task.run_summary(list(metrics.values()), results)
    assert task.key_metric in summ


FORMATS = {"data/flab.py"}       # the FLAb file format's own value column is called "fitness"


def test_no_kind_is_named_in_code_outside_the_registry():
    """Kinds as string literals (a kind test, a dict keyed by kind, a kind's class) only in fedtune/tasks/, in
    every other module of the package; help texts and a file format's own column name aside."""
    pattern = re.compile(r"""["'](%s)["']|\b(FitnessModel|SentimentModel)\b""" % "|".join(kinds()))
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        if rel.startswith("tasks/") or rel in FORMATS:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "help=" not in line:
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)

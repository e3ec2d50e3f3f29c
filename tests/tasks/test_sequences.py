"""The `sequences` kind: a user's own CSV + task card. The card and the CSV are checked (bad input: a clear
DataError naming file, row and column, and nothing written), split by sequence tuple over sites and into
train / validation / test, and trained with the ordinary Trainer for a regression and a classification card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtune.data import DataError
from fedtune.models import TrunkConfig
from fedtune.tasks import get
from fedtune.tasks.sequences_data import SYNTHETIC_CLASSES, synthetic_sequences, write_table
from fedtune.train import TrainConfig, Trainer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own-sequences"
TASK = get("sequences")
PROTEIN = {"name": "chain", "role": "sequence", "alphabet": "protein"}
TM = {"name": "tm", "role": "regression", "favourable": "higher", "units": "deg C"}


def folder(tmp_path: Path, columns, rows: str) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "task.json").write_text(json.dumps({"columns": columns}))
    (src / "data.csv").write_text(rows)
    return src


def test_the_example_reads_with_its_card_and_missing_labels():
    data = TASK.read(EXAMPLE)
    assert [c["name"] for c in TASK.label_table(data)] == ["heavy", "light", "tm", "viscosity"]
    assert len(data) == 150 and data.labels.shape == (150, 2) and np.isnan(data.labels).any()
    rows = TASK.site_rows(data)
    assert 0 < rows["tm"] < 150 and 0 < rows["viscosity"] < 150
    assert TASK.default_trunk_for(TASK.label_table(data)) == "antiberty"
    assert TASK.default_trunk_for(SYNTHETIC_CLASSES) == "minilm"


@pytest.mark.parametrize("columns, rows, message", [
    ([PROTEIN, TM, {"name": "kd", "role": "regression"}], "chain,tm\nACDE,1\n", r"column\(s\) \['kd'\].*lacks"),
    ([PROTEIN, TM], "chain,tm\nACDE,1.5\nACDF,high\n", r"row 3, column 'tm': 'high' is not a number"),
    ([PROTEIN, {"name": "y", "role": "classification", "classes": ["a", "b"]}], "chain,y\nACDE,a\nACDF,c\n",
     r"row 3, column 'y': unknown class 'c'"),
    ([PROTEIN, TM], "chain,tm\nACDE,1\nACXZ,2\n", r"row 3, column 'chain': invalid residue 'X' at position 3"),
    ([PROTEIN, TM], "", r"empty file"),
    ([PROTEIN, TM], "chain,tm\n", r"no data rows"),
    ([PROTEIN, TM, dict(TM, units="K")], "chain,tm\nACDE,1\n", r"duplicate column spec\(s\) for \['tm'\]"),
    ([PROTEIN, TM, {"name": "y", "role": "classification", "classes": ["a", "b"]}], "chain,tm,y\nACDE,1,a\n",
     "either regression labels or exactly one classification label"),
    ([PROTEIN, dict(PROTEIN, name="b"), dict(PROTEIN, name="c"), TM], "chain,b,c,tm\nA,A,A,1\n", "one or two sequence"),
    ([PROTEIN, dict(PROTEIN, name="b", alphabet="text"), TM], "chain,b,tm\nA,x,1\n", "share one alphabet"),
    ([PROTEIN], "chain\nACDE\n", "at least one label column"),
    ([PROTEIN, dict(TM, favourable="up")], "chain,tm\nACDE,1\n", r"'favourable' must be one of"),
    ([PROTEIN, {"name": "y", "role": "classification", "classes": ["a", "a"]}], "chain,y\nA,a\n", "duplicate class"),
    ([PROTEIN, TM], "chain,tm\nACDE,\n", r"row 2: no label at all"),
    ([PROTEIN, TM], "chain,tm\nACDE,nan\n", r"not a finite number"),
    ([PROTEIN, TM], "chain,tm\nACDE,1,extra\n", r"row 2: the number of cells differs"),
])
def test_bad_cards_and_csvs_get_a_clear_error_and_nothing_is_written(tmp_path, columns, rows, message):
    src = folder(tmp_path, columns, rows)
    with pytest.raises(DataError, match=message):
        TASK.prepare_sites(tmp_path / "sites", sites=2, source=src)
    assert not (tmp_path / "sites").exists()


def test_a_missing_or_malformed_card_is_named(tmp_path):
    (tmp_path / "data.csv").write_text("chain,tm\nACDE,1\n")
    with pytest.raises(DataError, match="no task card"):
        TASK.read_source(tmp_path)
    (tmp_path / "task.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable JSON task card"):
        TASK.read_source(tmp_path)
    (tmp_path / "task.json").write_text(json.dumps([PROTEIN, TM]))
    with pytest.raises(DataError, match='"columns"'):
        TASK.read_source(tmp_path)


def test_the_cli_refuses_a_bad_card_with_exit_2_and_the_reason(tmp_path):
    src = folder(tmp_path, [PROTEIN, TM, TM], "chain,tm\nACDE,1\n")
    proc = subprocess.run([sys.executable, "-m", "fedtune", "prepare-data", "sequences", "--source", str(src),
                           "--out", str(tmp_path / "sites")], capture_output=True, text=True)
    assert proc.returncode == 2 and "duplicate column spec" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sites").exists()


@pytest.mark.parametrize("split", ["iid", "skew"])
def test_sites_and_splits_keep_identical_sequences_together(tmp_path, split):
    data = synthetic_sequences(90, 5)
    dup = data.subset(list(range(90)) + [0, 1, 2, 0])       # the same sequence measured again
    write_table(dup, tmp_path / "src")
    summary = TASK.prepare_sites(tmp_path / "sites", sites=3, source=tmp_path / "src", split=split, alpha=0.5)
    parts = [TASK.read(tmp_path / "sites" / s) for s in summary["sites"]]
    assert sum(len(p) for p in parts) == len(dup)
    units = [set(p.split_ids()) for p in parts]
    assert not (units[0] & units[1] or units[0] & units[2] or units[1] & units[2])
    again = TASK.prepare_sites(tmp_path / "again", sites=3, source=tmp_path / "src", split=split, alpha=0.5)
    assert [s["rows"] for s in again["sites"].values()] == [s["rows"] for s in summary["sites"].values()]
    with pytest.raises(ValueError, match="unknown split mode"):
        TASK.split_sites(dup, 2, 1.0, "zipf", 0)


def test_label_skew_really_skews_the_classes(tmp_path):
    data = synthetic_sequences(300, 0, SYNTHETIC_CLASSES)
    iid = [TASK.site_rows(p)["pass"] / len(p) for p in TASK.split_sites(data, 3, 0.3, "iid", 0)]
    skew = [TASK.site_rows(p)["pass"] / len(p) for p in TASK.split_sites(data, 3, 0.3, "skew", 0)]
    assert max(skew) - min(skew) > max(iid) - min(iid)


def test_the_job_card_fixes_the_label_table_of_a_site(tmp_path):
    """A site reads its data under the job's card (the class order that the heads were built with)."""
    data = synthetic_sequences(30, 0, SYNTHETIC_CLASSES)
    write_table(data, tmp_path / "site")
    flipped = [SYNTHETIC_CLASSES[0], dict(SYNTHETIC_CLASSES[1], classes=["pass", "fail"])]
    again = TASK.read(tmp_path / "site", flipped)
    assert (again.labels == 1 - data.labels).all()


def test_stats_are_fitted_on_training_rows_per_label_and_oriented():
    data = synthetic_sequences(200, 3)
    stats = TASK.fit_stats(data.subset(range(100)))
    assert stats.keys == ["stability", "viscosity"] and list(stats.sign) == [1, -1]
    lab = data.labels[:100]
    assert stats.mean[0] == pytest.approx(np.nanmean(lab[:, 0]), rel=1e-5)
    z = TASK.targets(data, np.arange(100), stats)
    assert np.nanmean(z, 0) == pytest.approx([0, 0], abs=1e-5) and np.isnan(z).sum() == np.isnan(lab).sum()
    empty = TASK.fit_stats(synthetic_sequences(20, 0, SYNTHETIC_CLASSES))
    assert empty.keys == [] and TASK.stats_from_dict(empty.to_dict()).keys == []


def _train(task, data, trunk, epochs: int):
    train, val = data.subset(range(0, len(data) * 3 // 4)), data.subset(range(len(data) * 3 // 4, len(data)))
    stats = task.fit_stats(train)
    torch.manual_seed(0)
    model = task.build_model(TrunkConfig(str(trunk), mode="frozen", max_length=64), task.label_table(train))
    trainer = Trainer(model, TrainConfig(epochs=epochs, patience=epochs, head_lr=3e-3, progress=False,
                                         device="cpu"), stats)
    before = trainer.evaluate(val)
    trainer.fit(train, val)
    return before, trainer.evaluate(val), trainer


def test_a_regression_card_learns_and_reports_per_label(tiny_antibody_trunk):
    before, after, trainer = _train(TASK, synthetic_sequences(160, 0), tiny_antibody_trunk, 40)
    assert after["loss"] < before["loss"]
    assert set(after["labels"]) == {"stability", "viscosity"} and after["score"] == after["mean_pearson"]
    assert after["labels"]["viscosity"]["units"] == "cP" and after["labels"]["stability"]["n"] > 0
    assert "val_pearson/stability" in TASK.scalars(after) and "mean Pearson" in TASK.headline(after)


def test_a_classification_card_with_two_text_columns_learns(tiny_text_trunk):
    card = [SYNTHETIC_CLASSES[0], dict(SYNTHETIC_CLASSES[0], name="note"), SYNTHETIC_CLASSES[1]]
    data = synthetic_sequences(120, 0, card)
    before, after, trainer = _train(TASK, data, tiny_text_trunk, 30)
    model = trainer.model
    assert model.heads["sequences"].net[0].normalized_shape == (2 * model.trunk.hidden_size,)  # two columns, concatenated
    assert after["loss"] < before["loss"] and after["score"] == after["accuracy"] > 0.6
    assert set(after["per_class"]) == {"fail", "pass"} and "macro-F1" in TASK.headline(after)
    logits = trainer.predict(data.subset(range(4)))
    assert logits.shape == (4, 2)


def test_the_card_travels_as_the_job_label_table_and_statistics_pool_from_moments():
    data = synthetic_sequences(120, 4)
    table = TASK.table_from_dicts(TASK.label_table(data))
    assert TASK.table_to_dicts(table) == TASK.label_table(data) == TASK.table_to_dicts(TASK.table_from_dicts(table))
    assert TASK.stat_keys(table) == ["stability", "viscosity"]
    with pytest.raises(ValueError, match="duplicate column spec"):
        TASK.table_from_dicts(TASK.label_table(data) + [TASK.label_table(data)[-1]])
    a, b = data.subset(range(50)), data.subset(range(50, 120))
    pooled = TASK.pool_stats(table, [TASK.label_moments(a), TASK.label_moments(b)])
    whole = TASK.fit_stats(data)
    assert pooled.keys == whole.keys and np.allclose(pooled.mean, whole.mean) and np.allclose(pooled.std, whole.std)
    classes = synthetic_sequences(30, 0, SYNTHETIC_CLASSES)
    assert TASK.stat_keys(TASK.label_table(classes)) == [] and [m.shape for m in TASK.label_moments(classes)] == [(0,)] * 3
    assert TASK.pool_stats(TASK.label_table(classes), [TASK.label_moments(classes)]).keys == []
    # what the server checks of a site's moments (fl.aggregate): the card's shapes pass, for both kinds of card
    from fedtune.fl.aggregate import check_moments
    for d in (a, classes):
        keys = TASK.stat_keys(TASK.label_table(d))
        sent = [m.tolist() for m in TASK.label_moments(d)]
        assert len(check_moments(sent, len(keys), len(d), 5)[0]) == len(keys)


def test_the_site_check_reports_every_bad_row_and_the_loader_agrees(tmp_path):
    from fedtune.data.check import CheckReport
    rows = "chain,tm\nACDE,1\nACXZ,2\nACDE,1\nACDF,warm\nACDG,\nACDH,3\n"
    src = folder(tmp_path, [PROTEIN, TM], rows)
    assert TASK.detect(src) and not TASK.detect(tmp_path / "nothing")
    report = CheckReport("sequences", str(src))
    TASK.check(src, report)
    errors = [(p.row, p.column) for p in report.errors]
    assert errors == [(3, "chain"), (5, "tm"), (6, None)]
    assert any("exact duplicate of row 2" in p.reason for p in report.warnings if p.row == 4)
    assert report.rows == {"tm": 3} and report.samples == 3
    with pytest.raises(DataError, match="row 3, column 'chain'"):
        TASK.read(src)
    (src / "task.json").write_text(json.dumps({"columns": [PROTEIN]}))
    report = CheckReport("sequences", str(src))
    TASK.check(src, report)
    assert [p.file for p in report.errors] == ["task.json"] and "label column" in report.errors[0].reason
    good = CheckReport("sequences", str(EXAMPLE))
    TASK.check(EXAMPLE, good)
    assert good.ok and good.samples == len(TASK.read(EXAMPLE))


def test_jobs_and_local_runs_take_the_trunk_the_card_calls_for():
    from fedtune.fl.config import JobConfig
    from fedtune.tasks.sequences_data import SYNTHETIC_REGRESSION

    assert JobConfig.create("sequences", assays=SYNTHETIC_CLASSES).trunk["source"] == "minilm"
    assert JobConfig.create("sequences", assays=SYNTHETIC_REGRESSION).trunk["source"] == "antiberty"
    assert JobConfig.create("sequences", assays=SYNTHETIC_CLASSES, trunk="/my/encoder").trunk["source"] == "/my/encoder"
    for kind in ("fitness", "sentiment"):      # the other kinds keep their one default
        assert get(kind).default_trunk_for(get(kind).assays_from(None)) == get(kind).default_trunk

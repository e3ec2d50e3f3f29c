"""The test split: disjoint and deterministic per seed, recorded, and never used for a decision.

A site folder is written twice, identical except that every row of its test split carries poisoned labels.
Training on either folder must choose the same epoch and give the same validation numbers (validation alone
drives early stopping); only the test metrics may differ. If early stopping (or model choice) saw the test
rows, the chosen epoch or the validation history would change with the poison."""

import numpy as np
import pytest

from fedtune.data import FitnessData, synthetic_fitness, train_val_split
from fedtune.data.split import train_val_test_split, unit_hashes
from fedtune.models import TrunkConfig
from fedtune.tasks import get
from fedtune.train import TrainConfig
from fedtune.train.local import train_local


def _with_duplicates(n: int, seed: int) -> FitnessData:
    data = synthetic_fitness(n, seed=seed)
    return FitnessData.concat([data, data.subset(range(0, n, 5))])   # some antibodies appear twice


def test_three_way_split_is_disjoint_complete_and_deterministic():
    data = _with_duplicates(120, seed=2)
    split = train_val_test_split(data, 0.15, 0.15, seed=7)
    parts = [set(p.split_ids()) for p in (split.train, split.val, split.test)]
    assert all(parts) and not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(len(p) for p in (split.train, split.val, split.test)) == len(data)
    again = train_val_test_split(data, 0.15, 0.15, seed=7)
    assert again.record() == split.record()
    assert [p.digest() for p in (again.train, again.val, again.test)] == \
           [p.digest() for p in (split.train, split.val, split.test)]
    other = train_val_test_split(data, 0.15, 0.15, seed=8)
    assert other.record()["test"]["units"] != split.record()["test"]["units"]
    # the record names every unit of each part by hash, and the sizes
    rec = split.record()
    assert rec["seed"] == 7 and rec["test"]["n"] == len(split.test)
    assert rec["test"]["units"] == unit_hashes(split.test) and len(rec["test"]["units"]) == len(parts[2])
    # validation is the one the two-way split gives for the same seed and fraction (the clients' split)
    _, val = train_val_split(data, 0.15, seed=7)
    assert val.digest() == split.val.digest()


@pytest.mark.parametrize("units", [3, 4, 5, 8])
def test_a_tiny_site_still_gets_train_validation_and_test(units):
    data = synthetic_fitness(units, seed=0)
    split = train_val_test_split(data, 0.15, 0.15, seed=0)
    assert len(split.train) >= 1 and len(split.val) >= 1 and len(split.test) >= 1


def test_two_units_give_no_test_part_and_bad_fractions_are_refused():
    split = train_val_test_split(synthetic_fitness(2, seed=0), 0.15, 0.15, seed=0)
    assert len(split.train) == 1 and len(split.val) == 1 and len(split.test) == 0
    with pytest.raises(ValueError, match="fractions"):
        train_val_test_split(synthetic_fitness(10, seed=0), 0.5, 0.5, seed=0)


def test_load_split_is_the_site_split_and_load_site_keeps_its_meaning(tmp_path):
    task = get("fitness")
    data = synthetic_fitness(80, seed=1)
    task.write(data, tmp_path / "site")
    split = task.load_split(tmp_path / "site", data.assays, seed=3, val_fraction=0.2, test_fraction=0.15)
    direct = train_val_test_split(data, 0.2, 0.15, seed=3)
    assert split.record() == direct.record()          # the rows' order in the folder does not matter
    assert len(split.test) > 0
    train, val = task.load_site(tmp_path / "site", data.assays, seed=3, val_fraction=0.2)
    assert len(train) + len(val) == len(data) and val.digest() == split.val.digest()


def _poisoned_copy(task, data, split, folder):
    """`data` with the labels of every row whose antibody is in the test split replaced by noise."""
    test_units = set(split.test.split_ids())
    labels = data.labels.copy()
    rows = [i for i, k in enumerate(data.split_ids()) if k in test_units]
    rng = np.random.default_rng(123)
    mask = ~np.isnan(labels[rows])
    labels[rows] = np.where(mask, rng.normal(0, 50, size=labels[rows].shape) - labels[rows] * 5, np.nan)
    poisoned = FitnessData(list(data.heavy), list(data.light), labels.astype(np.float32), list(data.assays))
    task.write(poisoned, folder)
    return poisoned


def test_early_stopping_never_sees_the_test_split(tiny_antibody_trunk, tmp_path):
    task = get("fitness")
    data = synthetic_fitness(160, seed=5)
    task.write(data, tmp_path / "clean")
    cfg = TrainConfig(epochs=40, patience=3, head_lr=3e-3, seed=0, progress=False, device="cpu")
    split = task.load_split(tmp_path / "clean", data.assays, seed=cfg.seed, val_fraction=0.2, test_fraction=0.2)
    _poisoned_copy(task, data, split, tmp_path / "poisoned")
    trunk = TrunkConfig(str(tiny_antibody_trunk), mode="frozen")

    _, _, clean = train_local(task, tmp_path / "clean", tmp_path / "run-clean", trunk, cfg, data.assays,
                              val_fraction=0.2, test_fraction=0.2)
    _, _, bad = train_local(task, tmp_path / "poisoned", tmp_path / "run-poisoned", trunk, cfg, data.assays,
                            val_fraction=0.2, test_fraction=0.2)
    # same split units (the poison changed labels only), same decisions, same validation numbers
    assert clean["split"] == bad["split"]
    assert clean["n_test"] == bad["n_test"] == len(split.test) > 0
    assert clean["epochs_run"] == bad["epochs_run"] and clean["epochs_run"] < cfg.epochs   # it did stop early
    assert [h["val"] for h in clean["history"]] == [h["val"] for h in bad["history"]]
    assert clean["final_val"] == bad["final_val"]
    assert clean["data_digest"]["train"] == bad["data_digest"]["train"]
    # ... while the test split was really scored, on its own (poisoned) labels
    assert clean["data_digest"]["test"] != bad["data_digest"]["test"]
    assert clean["final_test"]["loss"] != pytest.approx(bad["final_test"]["loss"], rel=1e-3)
    assert clean["final_test"]["mean_pearson"] != bad["final_test"]["mean_pearson"]
    # and the split is written beside the metrics
    import json
    written = json.loads((tmp_path / "run-clean" / "metrics.json").read_text())
    assert written["split"]["test"]["units"] == unit_hashes(split.test)
    boot = written["final_test"]["bootstrap"]                  # quoted with n and a 95% interval
    assert boot["n"] == len(set(split.test.split_ids())) and boot["ci"]["mean_pearson"] is not None

"""Frozen-trunk embeddings are computed once per process for a given trunk content and data object (what makes
`compare`'s cross-site matrix and membership attack cheap), and never reused for a trunk whose weights differ."""

from __future__ import annotations

import torch

from fedtune.data import AssayStats, synthetic_fitness
from fedtune.models import TrunkConfig
from fedtune.tasks import build_model
from fedtune.train import TrainConfig, Trainer
from fedtune.train import embeddings as shared


def _counted(model):
    calls = []
    model.trunk.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_a_second_model_with_the_same_frozen_trunk_reuses_the_embeddings_a_changed_trunk_does_not(
        tiny_antibody_trunk):
    shared.clear()
    data = synthetic_fitness(30, seed=2)
    stats = AssayStats.fit(data)
    cfg = TrainConfig(progress=False, eval_batch_size=8)

    def trainer(model):
        return Trainer(model, cfg, stats)

    first = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), data.assays)
    calls_first = _counted(first)
    emb_first = trainer(first).embeddings(data)
    assert calls_first                                       # computed by the trunk

    again = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), data.assays)
    calls_again = _counted(again)
    emb_again = trainer(again).embeddings(data)
    assert not calls_again                                   # same weights, same rows: no trunk pass
    assert (emb_again == emb_first).all()

    other_rows = synthetic_fitness(30, seed=2)               # equal content, another object: not assumed equal
    trainer(again).embeddings(other_rows)
    assert calls_again

    changed = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), data.assays)
    with torch.no_grad():
        next(changed.trunk.parameters()).add_(0.5)
    calls_changed = _counted(changed)
    emb_changed = trainer(changed).embeddings(data)
    assert calls_changed                                     # different weights: its own pass
    assert not (emb_changed == emb_first).all()

    fine_tuned = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="full"), data.assays)
    calls_full = _counted(fine_tuned)
    Trainer(fine_tuned, cfg, stats).embeddings(data)         # a trunk that trains never uses the shared store
    assert calls_full


def _frozen(trunk, data):
    return build_model("fitness", TrunkConfig(str(trunk), mode="frozen"), data.assays)


def test_embeddings_on_disk_are_reused_by_a_later_process_and_only_for_the_same_trunk_and_rows(
        tiny_antibody_trunk, tmp_path, caplog):
    """What a site's next job (a new process) finds: the memory store is empty, the folder holds the file."""
    folder = tmp_path / "cache"
    cfg = TrainConfig(progress=False, eval_batch_size=8)
    data = synthetic_fitness(30, seed=2)
    stats = AssayStats.fit(data)
    try:
        assert shared.use_disk(folder) == folder
        shared.clear()
        first = _frozen(tiny_antibody_trunk, data)
        calls = _counted(first)
        emb = Trainer(first, cfg, stats).embeddings(data)
        assert calls
        files = sorted(folder.glob("emb-*.safetensors"))
        assert len(files) == 1 and oct(folder.stat().st_mode & 0o777) == "0o700"
        assert oct(files[0].stat().st_mode & 0o777) == "0o600"          # derived from private rows: owner only
        assert not list(folder.glob(".emb-*"))                          # no temporary file left

        shared.clear()                                                  # a new process: nothing in memory
        later = _frozen(tiny_antibody_trunk, data)
        calls_later = _counted(later)
        same_rows = synthetic_fitness(30, seed=2)                       # another object, the same content
        assert (Trainer(later, cfg, stats).embeddings(same_rows) == emb).all()
        assert not calls_later                                          # read from disk, no trunk pass

        shared.clear()
        changed_rows = synthetic_fitness(30, seed=2)
        changed_rows.labels[0, 0] = 123.0                               # any change to the rows: another entry
        Trainer(later, cfg, stats).embeddings(changed_rows)
        assert calls_later and len(list(folder.glob("emb-*.safetensors"))) == 2

        shared.clear()
        other = _frozen(tiny_antibody_trunk, data)
        with torch.no_grad():
            next(other.trunk.parameters()).add_(0.5)
        calls_other = _counted(other)
        assert not (Trainer(other, cfg, stats).embeddings(data) == emb).all()
        assert calls_other                                              # other weights: never the stored file

        # a damaged file is ignored with a warning, recomputed and replaced; the job does not fail
        files[0].write_bytes(b"not a safetensors file")
        shared.clear()
        again = _frozen(tiny_antibody_trunk, data)
        calls_again = _counted(again)
        with caplog.at_level("WARNING"):
            assert (Trainer(again, cfg, stats).embeddings(data) == emb).all()
        assert calls_again and "ignoring" in caplog.text
        shared.clear()
        fresh = _frozen(tiny_antibody_trunk, data)
        calls_fresh = _counted(fresh)
        assert (Trainer(fresh, cfg, stats).embeddings(data) == emb).all() and not calls_fresh
    finally:
        shared.use_disk(None)
        shared.clear()


def test_the_cache_folder_setting(tmp_path, monkeypatch, caplog):
    try:
        monkeypatch.setenv(shared.ENV, "off")
        assert shared.use_disk_from_env() is None
        a_file = tmp_path / "file"
        a_file.write_text("mine")
        monkeypatch.setenv(shared.ENV, str(a_file))
        with caplog.at_level("WARNING"):
            assert shared.use_disk_from_env() is None                   # not a folder: memory only, job goes on
        assert "not a folder" in caplog.text and a_file.read_text() == "mine"
        (tmp_path / "link").symlink_to(tmp_path)
        monkeypatch.setenv(shared.ENV, str(tmp_path / "link"))
        assert shared.use_disk_from_env() is None
        monkeypatch.setenv(shared.ENV, str(tmp_path / "new" / "cache"))
        assert shared.use_disk_from_env() == tmp_path / "new" / "cache"
    finally:
        shared.use_disk(None)

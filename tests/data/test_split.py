import numpy as np
import pytest

from fedtune.data import (load_flab, load_fpb, split_fitness_sites, split_sentiment_sites, synthetic_fitness,
                          synthetic_sentiment, train_val_split)


def _rows(data):
    """Every (antibody, assay, value) triple: what 'every row used exactly once' is about."""
    out = []
    for h, l, row in zip(data.heavy, data.light, data.labels):
        out += [(h, l, j, float(v)) for j, v in enumerate(row) if not np.isnan(v)]
    return sorted(out)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 10.0])
def test_fitness_split_properties_on_real_data(flab_dir, alpha):
    data = load_flab(flab_dir)
    parts = split_fitness_sites(data, 6, alpha=alpha, seed=7)
    site_of = {}
    for k, part in enumerate(parts):
        for ab in part.antibody_ids():
            assert site_of.setdefault(ab, k) == k, "an antibody landed on two sites"
    assert sorted(r for p in parts for r in _rows(p)) == _rows(data)
    assert all(len(p) > 0 for p in parts)
    again = split_fitness_sites(data, 6, alpha=alpha, seed=7)
    assert [p.antibody_ids() for p in again] == [p.antibody_ids() for p in parts]
    other = split_fitness_sites(data, 6, alpha=alpha, seed=8)
    assert [p.antibody_ids() for p in other] != [p.antibody_ids() for p in parts]


def test_small_alpha_skews_tasks_over_sites():
    data = synthetic_fitness(600, seed=0)
    skewed = split_fitness_sites(data, 4, alpha=0.1, seed=0)
    even = split_fitness_sites(data, 4, alpha=100.0, seed=0)
    spread = lambda parts: np.std([len(p) for p in parts])  # noqa: E731
    assert spread(skewed) > spread(even)


def test_train_val_split_is_by_antibody_and_complete():
    data = synthetic_fitness(200, seed=2)
    dup = data.subset(list(range(200)) + list(range(20)))       # repeated antibodies
    train, val = train_val_split(dup, 0.2, seed=1)
    assert not set(train.antibody_ids()) & set(val.antibody_ids())
    assert len(train) + len(val) == len(dup)
    assert 0.1 < len(val) / len(dup) < 0.3
    t2, v2 = train_val_split(dup, 0.2, seed=1)
    assert t2.antibody_ids() == train.antibody_ids()


def test_fpb_loads_latin1_and_drops_duplicate_sentences(fpb_dir):
    data = load_fpb(fpb_dir, "50")
    assert len(data) == len(set(data.texts)) == 3870
    assert np.bincount(data.labels).tolist()[0] > 400
    assert any("ä" in t or "ö" in t or "å" in t for t in data.texts)   # latin-1 decoded
    assert len(load_fpb(fpb_dir, "all")) < len(data)


@pytest.mark.parametrize("mode", ["iid", "skew"])
def test_sentiment_site_splits(mode):
    data = synthetic_sentiment(300, seed=0)
    parts = split_sentiment_sites(data, 3, mode=mode, alpha=0.3, seed=0)
    texts = [t for p in parts for t in p.texts]
    assert sorted(texts) == sorted(data.texts) and len(texts) == len(set(texts))
    shares = np.array([np.bincount(p.labels, minlength=3) / len(p) for p in parts])
    if mode == "skew":
        assert shares.std(0).max() > 0.1
    else:
        assert shares.std(0).max() < 0.1

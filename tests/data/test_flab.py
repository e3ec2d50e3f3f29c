import numpy as np
import pytest

from fedtune.data import (FITNESS_TASKS, AssayStats, DataError, load_assays, load_flab, synthetic_fitness,
                          write_flab)


def test_real_flab_loads_every_task_and_row(flab_dir):
    data = load_flab(flab_dir)
    assert data.tasks == list(FITNESS_TASKS)
    counts = data.rows_per_assay()
    table = {a.key: a for a in load_assays(flab_dir)}
    for key, n in counts.items():
        rows = sum(1 for _ in (flab_dir / f"{key}.csv").open()) - 1
        assert n == rows, key
    assert table["aggregation/jain2017biophyscial_HICRT"].favourable == "lower"
    assert table["thermostability/jain2017biophysical_Tm"].favourable == "higher"
    # one sample per antibody (plus repeats of a repeated measurement): fewer samples than rows
    assert len(data) < sum(counts.values())


def test_bad_residue_names_file_row_and_character(tmp_path):
    (tmp_path / "binding").mkdir()
    (tmp_path / "binding" / "kd.csv").write_text("heavy,light,fitness\nEVQL,DIQM,1.0\nEVQLB,DIQM,2.0\n")
    with pytest.raises(DataError) as err:
        load_flab(tmp_path)
    msg = str(err.value)
    assert "kd.csv" in msg and "row 3" in msg and "'B'" in msg and "position 5" in msg and "heavy" in msg


@pytest.mark.parametrize("row, needle", [("EVQL,,1.0", "empty"), ("EVQL,DIQM,abc", "not a number"),
                                         ("E" * 300 + ",DIQM,1", "exceeds the limit")])
def test_other_bad_rows_are_errors_not_drops(tmp_path, row, needle):
    (tmp_path / "binding").mkdir()
    (tmp_path / "binding" / "kd.csv").write_text(f"heavy,light,fitness\n{row}\n")
    with pytest.raises(DataError, match=needle):
        load_flab(tmp_path)


def test_write_then_load_round_trip(tmp_path):
    data = synthetic_fitness(50, seed=3)
    back = load_flab(write_flab(data, tmp_path / "site"))
    assert back.assays == data.assays
    def rows(d):
        return sorted((h, l, tuple(np.nan_to_num(r, nan=-1.0).tolist())) for h, l, r in zip(d.heavy, d.light, d.labels))
    assert rows(back) == rows(data)


def test_repeated_measurement_becomes_a_second_sample(tmp_path):
    (tmp_path / "immunogenicity").mkdir()
    (tmp_path / "immunogenicity" / "ada.csv").write_text(
        "heavy,light,fitness\nEVQL,DIQM,1.0\nEVQL,DIQM,3.0\nQVQL,DIQM,2.0\n")
    data = load_flab(tmp_path)
    assert len(data) == 3
    assert sorted(data.labels[:, 0].tolist()) == [1.0, 2.0, 3.0]


def test_standardisation_round_trip_and_orientation(flab_dir):
    data = load_flab(flab_dir)
    stats = AssayStats.fit(data)
    z = stats.to_z(data.labels)
    back = stats.from_z(z)
    np.testing.assert_allclose(back, data.labels, rtol=1e-4, atol=1e-4, equal_nan=True)
    j = stats.index("aggregation/jain2017biophyscial_HICRT")      # lower is better: sign flips
    col = data.labels[:, j]
    best = np.nanargmin(col)
    assert z[best, j] == np.nanmax(z[:, j])
    assert abs(np.nanmean(z[:, j])) < 1e-5 and abs(np.nanstd(z[:, j], ddof=1) - 1) < 1e-4


def test_pooled_moments_equal_pooled_fit():
    data = synthetic_fitness(120, seed=1)
    a, b = data.subset(range(0, 50)), data.subset(range(50, 120))
    from fedtune.data import moments
    pooled = AssayStats.pool([x.key for x in data.assays], [x.sign for x in data.assays],
                             [moments(a.labels), moments(b.labels)])
    direct = AssayStats.fit(data)
    np.testing.assert_allclose(pooled.mean, direct.mean)
    np.testing.assert_allclose(pooled.std, direct.std)
    assert AssayStats.from_dict(direct.to_dict()).to_dict() == direct.to_dict()

"""`fedtune predict` with Parquet files (real pyarrow files on disk): Parquet in gives CSV's numbers, Parquet
out holds what CSV out holds (typed), bad rows carry their row number over the whole file, an interrupted run
(a real subprocess stopped with SIGINT) leaves a readable partial dataset that --resume completes, and nothing
that exists is overwritten."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serve_helpers import antibodies, texts
from test_predict_file import assert_finished_output_is_kept, column, interrupt_predict, read_csv, write_csv
from typer.testing import CliRunner

from fedtune.cli import app
from fedtune.score.outputs import OutputError, partial_path, state_path
from fedtune.score.run import StrictStop, predict
from fedtune.serve.kinds import FileOptions

REPO = Path(__file__).resolve().parents[2]


def write_parquet(path: Path, columns: dict[str, list], row_group_size: int | None = None, schema=None) -> Path:
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=row_group_size)
    return path


def test_parquet_input_gives_the_csv_numbers_and_keeps_typed_columns(sites_bundle, tmp_path):
    abs_ = antibodies(10, seed=21)
    opts = FileOptions(site="site-1", assays=("synthetic_hic",), raw=True)
    csv_in = write_csv(tmp_path / "lib.csv", ["id", "heavy", "light"],
                       [[a["id"], a["heavy"], a["light"]] for a in abs_])
    predict(sites_bundle, csv_in, tmp_path / "from-csv.csv", opts=opts, batch_size=4, progress=False)
    pq_in = write_parquet(tmp_path / "lib.parquet",
                          {"id": [a["id"] for a in abs_], "heavy": [a["heavy"] for a in abs_],
                           "light": pa.array([a["light"] for a in abs_]).dictionary_encode(),
                           "dose": [0.1 * i + 1e-9 for i in range(10)], "plate": [i // 4 for i in range(10)]},
                          row_group_size=3)                # several row groups, read as one stream
    summary = predict(sites_bundle, pq_in, tmp_path / "from-pq.csv", opts=opts, batch_size=4, progress=False)
    assert (summary.written, summary.skipped) == (10, 0)
    want, got = read_csv(tmp_path / "from-csv.csv"), read_csv(tmp_path / "from-pq.csv")
    assert list(got[0]) == ["id", "heavy", "light", "dose", "plate", *list(want[0])[3:]]
    assert [(r["id"], r["heavy"], r["light"]) for r in got] == [(a["id"], a["heavy"], a["light"]) for a in abs_]
    assert [float(r["dose"]) for r in got] == [0.1 * i + 1e-9 for i in range(10)]       # full precision kept
    assert [r["plate"] for r in got] == [str(i // 4) for i in range(10)]
    for name in list(want[0])[3:]:
        np.testing.assert_array_equal(column(got, name), column(want, name))

    summary = predict(sites_bundle, pq_in, tmp_path / "pq.parquet", opts=opts, batch_size=4, progress=False)
    table = pq.read_table(tmp_path / "pq.parquet")
    assert table.schema.field("dose").type == pa.float64() and table.schema.field("plate").type == pa.int64()
    assert table.schema.field("light").type == pa.string()                # the dictionary's values
    assert table.column("plate").to_pylist() == [i // 4 for i in range(10)]
    for name in list(want[0])[3:]:
        assert table.schema.field(name).type == pa.float64()
        np.testing.assert_allclose(table.column(name).to_numpy(), column(want, name), rtol=1e-6, atol=1e-6)


def test_csv_in_parquet_out_is_readable_and_equal_to_csv_out(sites_bundle, sentiment_bundle, tmp_path):
    abs_ = antibodies(9, seed=22)
    inp = write_csv(tmp_path / "lib.csv", ["id", "heavy", "light", "note"],
                    [[a["id"], a["heavy"], a["light"], f"n{i}"] for i, a in enumerate(abs_)])
    predict(sites_bundle, inp, tmp_path / "out.csv", batch_size=4, progress=False)
    summary = predict(sites_bundle, inp, tmp_path / "out.parquet", batch_size=4, progress=False)
    assert summary.written == 9
    want = read_csv(tmp_path / "out.csv")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == list(want[0]) and table.num_rows == 9
    for name in ("id", "heavy", "light", "note"):
        assert table.schema.field(name).type == pa.string()
        assert table.column(name).to_pylist() == [r[name] for r in want]
    for name in table.column_names[4:]:
        assert table.schema.field(name).type == pa.float64()
        np.testing.assert_allclose(table.column(name).to_numpy(), column(want, name), rtol=1e-6, atol=1e-6)
    assert not partial_path(tmp_path / "out.parquet").exists()               # the parts are gone
    state = json.loads(state_path(tmp_path / "out.parquet").read_text())
    assert state["complete"] and state["written"] == 9

    sentences = texts(4)                        # a label column is a string column
    txt = tmp_path / "news.txt"
    txt.write_text("\n".join(sentences) + "\n")
    predict(sentiment_bundle, txt, tmp_path / "news.parquet", progress=False)
    news = pq.read_table(tmp_path / "news.parquet")
    assert news.column("text").to_pylist() == sentences and news.schema.field("label").type == pa.string()
    assert news.schema.field("p_neutral").type == pa.float64()


def test_bad_parquet_rows_are_reported_with_their_row_number_over_the_whole_file(sites_bundle, tmp_path):
    good = antibodies(6, seed=23)
    heavy = [g["heavy"] for g in good]
    light = [g["light"] for g in good]
    heavy[1] = heavy[1][:10] + "X" + heavy[1][11:]        # row 2
    light[3] = None                                      # row 4 (second row group)
    heavy[4] = ""                                        # row 5
    inp = write_parquet(tmp_path / "bad.parquet", {"id": [g["id"] for g in good], "heavy": heavy, "light": light},
                        row_group_size=3)
    result = CliRunner().invoke(app, ["predict", "--bundle", str(sites_bundle), "--input", str(inp),
                                      "--out", str(tmp_path / "out.parquet"), "--batch-size", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "row 2: heavy: invalid residue 'X' at position 11" in result.output
    assert "row 4: light: missing value (null); skipped" in result.output
    assert "row 5: heavy: empty sequence; skipped" in result.output
    assert "3 rows written, 3 skipped" in result.output
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == ["ab-0", "ab-2", "ab-5"]

    strict = CliRunner().invoke(app, ["predict", "--bundle", str(sites_bundle), "--input", str(inp),
                                      "--out", str(tmp_path / "strict.parquet"), "--batch-size", "1", "--strict",
                                      "--no-progress"])
    assert strict.exit_code == 1 and "row 2: heavy: invalid residue" in strict.output, strict.output
    parts = partial_path(tmp_path / "strict.parquet")
    assert str(parts) in strict.output.replace("\n", "")
    assert pq.read_table(parts).column("id").to_pylist() == ["ab-0"]        # the rows before it, readable


def test_unusable_parquet_files_are_refused_before_anything_is_written(sites_bundle, tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    write_parquet(tmp_path / "nolight.parquet", {"heavy": ["EVQ"]})
    write_parquet(tmp_path / "ints.parquet", {"heavy": ["EVQ"], "light": [3]})
    write_parquet(tmp_path / "clash.parquet", {"heavy": ["EVQ"], "light": ["DIQ"], "binding": [1.0]})
    runner = CliRunner()
    for name, message in (("junk", "not a readable Parquet file"), ("nolight", "missing column(s) ['light']"),
                          ("ints", "light (int64)"), ("clash", "names of output columns")):
        out = tmp_path / f"{name}-out.parquet"
        result = runner.invoke(app, ["predict", "--bundle", str(sites_bundle),
                                     "--input", str(tmp_path / f"{name}.parquet"), "--out", str(out), "--no-progress"])
        assert result.exit_code == 2 and message in result.output, (name, result.output)
        assert not out.exists() and not state_path(out).exists() and not partial_path(out).exists()


def test_an_existing_parquet_output_or_parts_folder_is_never_overwritten(sites_bundle, tmp_path):
    inp = write_csv(tmp_path / "lib.csv", ["heavy", "light"], [[a["heavy"], a["light"]] for a in antibodies(2)])
    mine = tmp_path / "mine.parquet"
    mine.write_bytes(b"my precious results")
    result = CliRunner().invoke(app, ["predict", "--bundle", str(sites_bundle), "--input", str(inp), "--out", str(mine),
                                      "--no-progress"])
    assert result.exit_code == 2 and "never overwrites" in result.output
    assert mine.read_bytes() == b"my precious results"
    with pytest.raises(OutputError, match="no fedtune checkpoint"):
        predict(sites_bundle, inp, mine, resume=True, progress=False)
    other = tmp_path / "other.parquet"
    partial_path(other).mkdir()                        # a folder of the parts' name, not fedtune's
    (partial_path(other) / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="never overwrites"):
        predict(sites_bundle, inp, other, progress=False)
    assert (partial_path(other) / "keep.txt").read_text() == "mine" and not other.exists()
    assert_finished_output_is_kept(sites_bundle, inp, tmp_path / "ours.parquet")


def test_sigint_leaves_a_readable_partial_dataset_and_resume_completes_it(sites_bundle, tmp_path):
    n = 600
    abs_ = antibodies(n, seed=24)
    inp = write_parquet(tmp_path / "lib.parquet", {"id": [a["id"] for a in abs_], "heavy": [a["heavy"] for a in abs_],
                                                   "light": [a["light"] for a in abs_]}, row_group_size=128)
    out = tmp_path / "out.parquet"
    output = interrupt_predict([sys.executable, "-m", "fedtune", "predict", "--bundle", str(sites_bundle), "--input",
                         str(inp), "--out", str(out), "--batch-size", "20", "--embedding-cache-mb", "0"], out, 40)
    assert "--resume" in output and str(partial_path(out)) in output.replace("\n", "")
    state = json.loads(state_path(out).read_text())
    assert not state["complete"] and 40 <= state["written"] < n and not out.exists()
    partial = pq.read_table(partial_path(out))                    # every part a whole Parquet file
    assert partial.num_rows == state["written"] == 20 * state["parts"]
    assert partial.column("id").to_pylist() == [a["id"] for a in abs_[:partial.num_rows]]
    assert partial.column("thermostability").null_count == 0

    # a part whose write was cut short (as by a crash) is written again; the recorded ones are kept
    partial_path(out).joinpath(f"part-{state['parts']:06d}.parquet").write_bytes(b"PAR1 cut short")
    summary = predict(sites_bundle, inp, out, resume=True, batch_size=200, progress=False)
    assert summary.resumed_from == state["rows_read"] and summary.written == n and not summary.interrupted
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [a["id"] for a in abs_]          # every row exactly once
    assert not partial_path(out).exists()
    fresh = tmp_path / "fresh.parquet"
    sample = abs_[:30] + abs_[-30:]
    predict(sites_bundle, write_parquet(tmp_path / "sample.parquet",
                                        {"id": [a["id"] for a in sample], "heavy": [a["heavy"] for a in sample],
                                         "light": [a["light"] for a in sample]}), fresh, progress=False)
    by_id = dict(zip(table.column("id").to_pylist(), table.column("binding").to_pylist()))
    again = pq.read_table(fresh)
    np.testing.assert_allclose([by_id[i] for i in again.column("id").to_pylist()], again.column("binding").to_numpy(),
                               atol=1e-5)


def test_resume_refuses_changed_parts(sites_bundle, tmp_path):
    abs_ = antibodies(6, seed=25)
    abs_[4]["heavy"] = "X" + abs_[4]["heavy"][1:]         # row 5: --strict stops there, after two chunks of two
    inp = write_csv(tmp_path / "lib.csv", ["id", "heavy", "light"], [[a["id"], a["heavy"], a["light"]] for a in abs_])
    out = tmp_path / "out.parquet"
    with pytest.raises(StrictStop):
        predict(sites_bundle, inp, out, batch_size=2, strict=True, progress=False)
    state = json.loads(state_path(out).read_text())
    assert state["parts"] == 2 and state["written"] == 4 and not state["complete"]
    first = partial_path(out) / "part-000000.parquet"
    data = first.read_bytes()
    first.write_bytes(data[:-1] + b"X")                  # edited by someone else
    with pytest.raises(OutputError, match="not those fedtune wrote"):
        predict(sites_bundle, inp, out, resume=True, progress=False)
    assert first.read_bytes() == data[:-1] + b"X" and not out.exists()
    first.write_bytes(data)
    summary = predict(sites_bundle, inp, out, resume=True, progress=False)     # the bad row skipped this time
    assert (summary.written, summary.skipped) == (5, 1)
    assert pq.read_table(out).column("id").to_pylist() == [a["id"] for i, a in enumerate(abs_) if i != 4]

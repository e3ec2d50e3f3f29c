"""`fedtune predict` on files: the same numbers as the REST API over a real uvicorn server, CSV / FASTA / text
inputs, bad rows (row number and reason), --strict, refusing to overwrite, and resuming after Ctrl-C (a real
subprocess interrupted with SIGINT)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import antibodies, settings, texts
from typer.testing import CliRunner

from fedtune.cli import app
from fedtune.score.outputs import OutputError, state_path
from fedtune.score.run import StrictStop, predict
from fedtune.serve.kinds import FileOptions
from fedtune.serve.server import BackgroundServer

ATOL = 1e-4
REPO = Path(__file__).resolve().parents[2]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], name: str) -> np.ndarray:
    return np.array([float(r[name]) for r in rows])


@pytest.fixture(scope="module")
def rest(sites_bundle, sentiment_bundle, sequences_bundle):
    with BackgroundServer(settings([sites_bundle, sentiment_bundle, sequences_bundle])) as srv:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            yield c


def assert_finished_output_is_kept(bundle, inp, ours):
    """A finished run's output is neither overwritten by a new run nor resumed onto."""
    predict(bundle, inp, ours, progress=False)
    before = ours.read_bytes()
    with pytest.raises(OutputError, match="exists"):
        predict(bundle, inp, ours, progress=False)
    with pytest.raises(OutputError, match="already complete"):
        predict(bundle, inp, ours, resume=True, progress=False)
    assert ours.read_bytes() == before


def interrupt_predict(cmd: list[str], out: Path, rows: int) -> str:
    """Run `cmd`, SIGINT it once the checkpoint records `rows` rows written; its output (exit code 130)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while True:
            if state_path(out).exists() and json.loads(state_path(out).read_text() or "{}").get("written", 0) >= rows:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    return output


def test_csv_gives_the_rest_numbers_and_keeps_the_input_columns(rest, sites_bundle, tmp_path):
    abs_ = antibodies(12, seed=7)
    inp = write_csv(tmp_path / "lib.csv", ["id", "heavy", "light", "note"],
                    [[a["id"], a["heavy"], a["light"], f"n{i}"] for i, a in enumerate(abs_)])
    opts = FileOptions(site="site-2", assays=("synthetic_hic", "thermostability/synthetic_tm"), raw=True)
    summary = predict(sites_bundle, inp, tmp_path / "scores.csv", opts=opts, batch_size=5, progress=False)
    assert (summary.written, summary.skipped, summary.interrupted) == (12, 0, False)
    rows = read_csv(tmp_path / "scores.csv")
    assert [r["id"] for r in rows] == [a["id"] for a in abs_] and [r["note"] for r in rows] == [f"n{i}" for i in range(12)]
    assert rows[0]["heavy"] == abs_[0]["heavy"]
    body = {"site": "site-2", "assays": list(opts.assays), "antibodies": abs_}
    resp = rest.post("/v1/fitness/predict", json=body).json()
    for task in resp["tasks"]:
        np.testing.assert_allclose(column(rows, task), [p["scores"][task] for p in resp["predictions"]], atol=ATOL)
    for key in ("aggregation/synthetic_hic", "thermostability/synthetic_tm"):
        np.testing.assert_allclose(column(rows, key), [p["assays"][key]["z"] for p in resp["predictions"]], atol=ATOL)
        np.testing.assert_allclose(column(rows, f"{key}:raw"), [p["assays"][key]["value"] for p in resp["predictions"]],
                                   rtol=1e-4, atol=ATOL)
    state = json.loads(state_path(tmp_path / "scores.csv").read_text())
    assert state["complete"] and state["written"] == 12


def test_tsv_with_a_task_subset_and_the_mean_over_sites(rest, sites_bundle, tmp_path):
    abs_ = antibodies(4, seed=8)
    inp = tmp_path / "lib.tsv"
    inp.write_text("heavy\tlight\n" + "".join(f"{a['heavy']}\t{a['light']}\n" for a in abs_))
    predict(sites_bundle, inp, tmp_path / "out.tsv", opts=FileOptions(tasks=("binding", "expression")),
            progress=False)
    with (tmp_path / "out.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == ["heavy", "light", "binding", "expression"]
    resp = rest.post("/v1/fitness/predict", json={"tasks": ["binding", "expression"], "antibodies": abs_}).json()
    assert resp["heads"] == "mean-over-sites"
    np.testing.assert_allclose(column(rows, "binding"), [p["scores"]["binding"] for p in resp["predictions"]],
                               atol=ATOL)


def test_fasta_pairs_by_id_suffix(sites_bundle, tmp_path):
    abs_ = antibodies(3, seed=9)
    a, b, c = abs_
    inp = tmp_path / "lib.fasta"
    inp.write_text(f">{a['id']}_H some description\n{a['heavy'][:40]}\n{a['heavy'][40:]}\n>{a['id']}_L\n{a['light']}\n"
                   f">{b['id']}_l\n{b['light']}\n>{b['id']}_h\n{b['heavy']}\n"      # light first, lower case
                   f">lonely_H\n{c['heavy']}\n"                                     # no light chain next to it
                   f">{c['id']}_heavy\n{c['heavy']}\n>{c['id']}_light\n{c['light']}\n")
    problems = []
    summary = predict(sites_bundle, inp, tmp_path / "out.csv", progress=False, report=problems.append)
    assert (summary.written, summary.skipped) == (3, 1)
    assert len(problems) == 1 and problems[0].startswith("row 3: record 'lonely': no light record")
    rows = read_csv(tmp_path / "out.csv")
    assert [(r["id"], r["heavy"], r["light"]) for r in rows] == [(x["id"], x["heavy"], x["light"]) for x in abs_]
    csv_in = write_csv(tmp_path / "same.csv", ["id", "heavy", "light"], [[x["id"], x["heavy"], x["light"]] for x in abs_])
    predict(sites_bundle, csv_in, tmp_path / "same-out.csv", progress=False)
    same = read_csv(tmp_path / "same-out.csv")
    np.testing.assert_allclose(column(rows, "binding"), column(same, "binding"), atol=1e-5)


def test_sentiment_from_a_text_file(rest, sentiment_bundle, tmp_path):
    sentences = texts(5)
    inp = tmp_path / "news.txt"
    inp.write_text("\n".join(sentences[:2] + ["   "] + sentences[2:]) + "\n")
    problems = []
    summary = predict(sentiment_bundle, inp, tmp_path / "out.csv", progress=False, report=problems.append)
    assert (summary.written, summary.skipped) == (5, 1) and problems == ["row 3: empty text; skipped"]
    rows = read_csv(tmp_path / "out.csv")
    assert list(rows[0]) == ["text", "label", "p_negative", "p_neutral", "p_positive"]
    assert [r["text"] for r in rows] == sentences
    resp = rest.post("/v1/sentiment/predict", json={"texts": sentences}).json()
    assert [r["label"] for r in rows] == [p["label"] for p in resp["predictions"]]
    np.testing.assert_allclose(column(rows, "p_neutral"), [p["probabilities"]["neutral"] for p in resp["predictions"]],
                               atol=ATOL)
    with pytest.raises(ValueError, match="--raw: the sentiment kind"):
        predict(sentiment_bundle, inp, tmp_path / "raw.csv", opts=FileOptions(raw=True), progress=False)
    assert not (tmp_path / "raw.csv").exists()


def test_sequences_kind_reads_its_card_columns(rest, sequences_bundle, tmp_path):
    chains = [a["heavy"] for a in antibodies(3, seed=10)]           # the card has one protein column, "chain"
    inp = tmp_path / "seqs.fasta"
    inp.write_text("".join(f">s{i}\n{c}\n" for i, c in enumerate(chains)))
    predict(sequences_bundle, inp, tmp_path / "out.csv", opts=FileOptions(raw=True), progress=False)
    rows = read_csv(tmp_path / "out.csv")
    assert list(rows[0]) == ["id", "chain", "stability", "viscosity", "stability:raw", "viscosity:raw"]
    resp = rest.post("/v1/sequences/predict", json={"items": [{"sequences": {"chain": c}} for c in chains]}).json()
    for label in ("stability", "viscosity"):
        np.testing.assert_allclose(column(rows, label), [p["values"][label]["z"] for p in resp["predictions"]], atol=ATOL)
        np.testing.assert_allclose(column(rows, f"{label}:raw"),
                                   [p["values"][label]["value"] for p in resp["predictions"]], rtol=1e-4, atol=ATOL)


def _bad_library(tmp_path: Path) -> Path:
    good = antibodies(4, seed=11)
    rows = [[g["id"], g["heavy"], g["light"]] for g in good]
    rows.insert(1, ["bad-residue", good[0]["heavy"][:10] + "X" + good[0]["heavy"][11:], good[0]["light"]])
    rows.insert(3, ["no-light", good[1]["heavy"], ""])
    rows.insert(4, ["short"])
    return write_csv(tmp_path / "bad.csv", ["id", "heavy", "light"], rows)


def test_bad_rows_are_reported_with_row_number_and_reason_and_skipped(sites_bundle, tmp_path):
    result = CliRunner().invoke(app, ["predict", "--bundle", str(sites_bundle), "--input", str(_bad_library(tmp_path)),
                                      "--out", str(tmp_path / "out.csv"), "--batch-size", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "row 2: heavy: invalid residue 'X' at position 11" in result.output
    assert "row 4: light: empty sequence; skipped" in result.output
    assert "row 5: 1 fields, the header has 3; skipped" in result.output
    assert "4 rows written, 3 skipped" in result.output
    assert [r["id"] for r in read_csv(tmp_path / "out.csv")] == ["ab-0", "ab-1", "ab-2", "ab-3"]


def test_strict_stops_at_the_first_bad_row_with_exit_1(sites_bundle, tmp_path):
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["predict", "--bundle", str(sites_bundle), "--input", str(_bad_library(tmp_path)),
                                      "--out", str(out), "--batch-size", "1", "--strict", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "row 2: heavy: invalid residue 'X' at position 11" in result.output and "--strict" in result.output
    assert [r["id"] for r in read_csv(out)] == ["ab-0"]          # what came before the bad row is kept
    with pytest.raises(StrictStop):
        predict(sites_bundle, _bad_library(tmp_path), tmp_path / "again.csv", strict=True, progress=False)


def test_an_existing_output_is_never_overwritten(sites_bundle, tmp_path):
    inp = write_csv(tmp_path / "lib.csv", ["heavy", "light"], [[a["heavy"], a["light"]] for a in antibodies(2)])
    mine = tmp_path / "mine.csv"
    mine.write_text("my precious results\n")
    result = CliRunner().invoke(app, ["predict", "--bundle", str(sites_bundle), "--input", str(inp), "--out", str(mine),
                                      "--no-progress"])
    assert result.exit_code == 2 and "never overwrites" in result.output
    assert mine.read_text() == "my precious results\n"
    with pytest.raises(OutputError, match="no fedtune checkpoint"):        # --resume onto a file fedtune did not write
        predict(sites_bundle, inp, mine, resume=True, progress=False)
    assert mine.read_text() == "my precious results\n"
    assert_finished_output_is_kept(sites_bundle, inp, tmp_path / "ours.csv")


def test_resume_refuses_a_changed_output_or_another_input(sites_bundle, tmp_path):
    inp = write_csv(tmp_path / "lib.csv", ["heavy", "light"], [[a["heavy"], a["light"]] for a in antibodies(4)])
    out = tmp_path / "out.csv"
    predict(sites_bundle, inp, out, progress=False)
    state = json.loads(state_path(out).read_text())
    state["complete"] = False                        # as if interrupted
    state_path(out).write_text(json.dumps(state))
    other = write_csv(tmp_path / "other.csv", ["heavy", "light"], [[a["heavy"], a["light"]] for a in antibodies(5)])
    with pytest.raises(OutputError, match="another input"):
        predict(sites_bundle, other, out, resume=True, progress=False)
    with pytest.raises(OutputError, match="another options"):
        predict(sites_bundle, inp, out, resume=True, opts=FileOptions(site="site-1"), progress=False)
    out.write_text(out.read_text().replace("heavy", "HEAVY", 1))       # edited by someone else
    with pytest.raises(OutputError, match="not the file fedtune wrote"):
        predict(sites_bundle, inp, out, resume=True, progress=False)
    assert out.read_text().startswith("HEAVY")


def test_sigint_leaves_whole_rows_and_resume_completes_the_run(sites_bundle, tmp_path):
    n = 600
    abs_ = antibodies(n, seed=12)
    inp = write_csv(tmp_path / "lib.csv", ["id", "heavy", "light"], [[a["id"], a["heavy"], a["light"]] for a in abs_])
    out = tmp_path / "out.csv"
    cmd = [sys.executable, "-m", "fedtune", "predict", "--bundle", str(sites_bundle), "--input", str(inp),
           "--out", str(out), "--batch-size", "20", "--embedding-cache-mb", "0"]
    output = interrupt_predict(cmd, out, 40)           # once the first chunks are checkpointed
    assert "--resume" in output
    state = json.loads(state_path(out).read_text())
    assert not state["complete"] and 40 <= state["written"] < n
    partial = read_csv(out)
    assert len(partial) == state["written"] and out.read_bytes().endswith(b"\n")
    assert [r["id"] for r in partial] == [a["id"] for a in abs_[:len(partial)]]
    assert all(r["thermostability"] for r in partial)              # whole rows only

    summary = predict(sites_bundle, inp, out, resume=True, batch_size=200, progress=False)
    assert summary.resumed_from == state["rows_read"] and summary.written == n and not summary.interrupted
    rows = read_csv(out)
    assert [r["id"] for r in rows] == [a["id"] for a in abs_]
    fresh = tmp_path / "fresh.csv"
    sample = abs_[:30] + abs_[-30:]
    predict(sites_bundle, write_csv(tmp_path / "sample.csv", ["id", "heavy", "light"],
                                    [[a["id"], a["heavy"], a["light"]] for a in sample]), fresh, progress=False)
    by_id = {r["id"]: r for r in rows}
    np.testing.assert_allclose(column([by_id[r["id"]] for r in read_csv(fresh)], "binding"),
                               column(read_csv(fresh), "binding"), atol=1e-5)


def test_unusable_files_and_options_are_refused_before_anything_is_written(sites_bundle, tmp_path):
    inp = write_csv(tmp_path / "lib.csv", ["heavy", "light"], [[a["heavy"], a["light"]] for a in antibodies(2)])
    runner = CliRunner()
    for args, message in ((["--input", str(tmp_path / "lib.xlsx")], "no such file"),
                          (["--input", str(inp), "--out", str(tmp_path / "out.xlsx")], "unknown output format"),
                          (["--input", str(inp), "--tasks", "binding,nonsense"], "unknown tasks ['nonsense']"),
                          (["--input", str(inp), "--site", "site-9"], "unknown site 'site-9'"),
                          (["--input", str(inp), "--backend", "int4"], "unknown backend 'int4'")):
        out = args[args.index("--out") + 1] if "--out" in args else str(tmp_path / "out.csv")
        argv = ["predict", "--bundle", str(sites_bundle), "--no-progress", *args] + ([] if "--out" in args else ["--out", out])
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert not Path(out).exists() and not state_path(Path(out)).exists()


def test_int8_backend_scores_a_file_close_to_fp32_and_records_it(sites_bundle, tmp_path):
    """`--backend int8` runs the trunk through torch's dynamic int8 path (`fedtune.models.backends`): same
    rows, scores that agree with fp32, the backend named in the checkpoint record (a resume cannot mix them)."""
    abs_ = antibodies(24, seed=11)
    inp = write_csv(tmp_path / "lib.csv", ["id", "heavy", "light"], [[a["id"], a["heavy"], a["light"]] for a in abs_])
    out = {}
    for backend in ("fp32", "int8"):
        summary = predict(sites_bundle, inp, tmp_path / f"{backend}.csv", opts=FileOptions(), batch_size=8,
                          backend=backend, progress=False)
        assert summary.written == 24
        out[backend] = read_csv(tmp_path / f"{backend}.csv")
        assert json.loads(state_path(tmp_path / f"{backend}.csv").read_text())["backend"] == backend
    tasks = [c for c in out["fp32"][0] if c not in ("id", "heavy", "light")]
    assert tasks
    for task in tasks:
        a, b = column(out["fp32"], task), column(out["int8"], task)
        assert np.corrcoef(a, b)[0, 1] > 0.999, task

"""`fedtune check-data` and the same check at `fedtune client` start, through the installed entry point."""

import json
import subprocess

import pytest
from test_help import fedtune_cmd

from fedtune.data import synthetic_fitness, synthetic_sentiment
from fedtune.tasks import get


@pytest.fixture
def site(tmp_path):
    folder = tmp_path / "site"
    get("fitness").write(synthetic_fitness(60, seed=4), folder)
    get("sentiment").write(synthetic_sentiment(60, seed=4), folder)
    return folder


def break_site(folder):
    """Two bad residues in one file, a NaN label in another, an unknown sentiment label."""
    kd = folder / "binding" / "synthetic_kd.csv"
    lines = kd.read_text().splitlines()
    lines[1] = "EVQLB," + lines[1].split(",", 1)[1]
    lines[2] = lines[2].split(",")[0] + ",DIQM1," + lines[2].split(",")[2]
    kd.write_text("\n".join(lines) + "\n")
    tm = folder / "thermostability" / "synthetic_tm.csv"
    lines = tm.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",nan"
    tm.write_text("\n".join(lines) + "\n")
    sentences = folder / "Sentences.txt"
    lines = sentences.read_text(encoding="latin-1").splitlines()
    lines[0] = lines[0].rpartition("@")[0] + "@bullish"
    sentences.write_text("\n".join(lines) + "\n", encoding="latin-1")


def run(*args):
    return subprocess.run([*fedtune_cmd(), *map(str, args)], capture_output=True, text=True)


def test_good_site_exits_0_with_counts(site):
    res = run("check-data", site)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"fitness data in {site}: 60 samples; 0 error(s)" in res.stdout
    assert "binding/synthetic_kd:" in res.stdout and "negative:" in res.stdout
    res = run("check-data", site, "--kind", "sentiment", "--json")
    assert res.returncode == 0
    out = json.loads(res.stdout)
    assert out["ok"] is True and [r["kind"] for r in out["reports"]] == ["sentiment"]
    assert sum(out["reports"][0]["rows"].values()) == out["reports"][0]["samples"] == 60


def test_broken_site_exits_2_listing_every_problem(site):
    break_site(site)
    res = run("check-data", site)
    assert res.returncode == 2
    for needle in ("binding/synthetic_kd.csv row 2, column heavy: invalid residue 'B'",
                   "binding/synthetic_kd.csv row 3, column light: invalid residue '1'",
                   "thermostability/synthetic_tm.csv row 2, column fitness: not finite",
                   "Sentences.txt line 1: expected 'sentence@label'"):
        assert needle in res.stdout, res.stdout
    out = json.loads(run("check-data", site, "--json").stdout)
    assert out["ok"] is False
    assert [(p["file"], p["row"], p["column"]) for r in out["reports"] for p in r["problems"]
            if p["severity"] == "error"] == [("binding/synthetic_kd.csv", 2, "heavy"),
                                             ("binding/synthetic_kd.csv", 3, "light"),
                                             ("thermostability/synthetic_tm.csv", 2, "fitness"),
                                             ("Sentences.txt", 1, None)]


def test_missing_folder_is_a_clear_error(tmp_path):
    res = run("check-data", tmp_path / "nope")
    assert res.returncode == 2 and "no such folder" in res.stdout


def test_client_refuses_bad_data_before_it_needs_a_kit_or_server(site, tmp_path):
    break_site(site)
    res = run("client", "--kit", tmp_path / "no-kit", "--data", site)
    assert res.returncode == 2
    assert "refusing to join" in res.stderr and "invalid residue 'B'" in res.stderr
    assert "startup kit" not in res.stderr      # refused on the data, before the kit was even looked at


def test_client_with_good_data_goes_on_to_the_kit(site, tmp_path):
    res = run("client", "--kit", tmp_path / "no-kit", "--data", site)
    assert res.returncode == 2
    assert "0 error(s)" in res.stdout and "refusing" not in res.stderr
    assert "not a client startup kit" in res.stderr

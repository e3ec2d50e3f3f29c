"""A job name or a server's job id becomes a folder name: it is checked before anything touches the disk, and
only folders fedtune wrote are ever replaced."""

from __future__ import annotations

import json
import subprocess

import pytest

from fedtune.fl.federation import fedtune_command
from fedtune.fl.job import build_job, check_name
from fedtune.fl.submit import is_job_result

UNSAFE = ["../../victim", "/tmp", "..", ".", ".hidden", "a/b", "a\\b", "", "x" * 101, "name\n", "-rf"]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_job_name_is_refused_before_the_disk_is_touched(tmp_path, make_job, tiny_antibody_trunk, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    out = tmp_path / "out" / "jobs"
    out.mkdir(parents=True)                  # an earlier run made it: `../../victim` resolves to the victim
    with pytest.raises(ValueError, match="not a safe name"):
        build_job(make_job("fitness", tiny_antibody_trunk, name=name), out)
    assert [p.name for p in victim.iterdir()] == ["precious.txt"]
    assert (victim / "precious.txt").read_text() == "mine" and not any(out.iterdir())


@pytest.mark.parametrize("job_id", ["../../etc", "/", "a/../../b", "..", None, 7])
def test_unsafe_job_id_from_a_server_is_refused(job_id):
    with pytest.raises(ValueError, match="job id"):
        check_name(job_id, "job id from the server")


def test_nvflare_job_ids_and_usual_names_pass():
    for ok in ["0b6f1c4e-3a0e-4c5f-9d7b-3f2a1c9e8d7a", "fedtune-fitness", "run_2.v3"]:
        assert check_name(ok) == ok


def test_an_earlier_job_folder_is_replaced_but_a_foreign_one_is_kept(tmp_path, make_job, tiny_antibody_trunk):
    out = tmp_path / "jobs"
    job = make_job("fitness", tiny_antibody_trunk, name="mine")
    first = build_job(job, out)
    (first / "stale.txt").write_text("from an older build")
    again = build_job(job, out)
    assert again == first and not (first / "stale.txt").exists()
    assert json.loads((again / "meta.json").read_text())["name"] == "mine"
    theirs = out / "theirs"
    theirs.mkdir()
    (theirs / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="not a fedtune job folder"):
        build_job(make_job("fitness", tiny_antibody_trunk, name="theirs"), out)
    assert (theirs / "data.csv").read_text() == "a,b\n"


def test_is_job_result_wants_the_controller_output(tmp_path):
    assert not is_job_result(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    assert not is_job_result(tmp_path)
    fed = tmp_path / "workspace" / "app_server" / "fedtune"
    fed.mkdir(parents=True)
    (fed / "summary.json").write_text("{}")
    (fed / "job.json").write_text("{}")
    assert is_job_result(tmp_path)


def test_submit_command_refuses_an_unsafe_name_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(fedtune_command("submit", "sentiment", "--admin-kit", str(tmp_path / "no-kit"),
                                          "--out", str(out), "--name", "../../escape"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not a safe name" in proc.stderr, proc.stderr
    assert not out.exists() and not (tmp_path / "escape").exists()

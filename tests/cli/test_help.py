"""`fedtune --help` and every subcommand's `--help` work, through the installed entry point."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def fedtune_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "fedtune"
    return [str(exe)] if exe.exists() else [shutil.which("fedtune") or "fedtune"]


def commands() -> list[str]:
    from fedtune.cli import app
    import typer.main
    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_top_level_help_lists_every_command():
    out = subprocess.run([*fedtune_cmd(), "--help"], capture_output=True, text=True, check=True).stdout
    for name in commands():
        assert name in out
    assert {"prepare-data", "train-local"} <= set(commands())


@pytest.mark.parametrize("name", commands())
def test_subcommand_help(name):
    res = subprocess.run([*fedtune_cmd(), name, "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout and name in res.stdout


def test_prepare_then_train_local_end_to_end(tmp_path, tiny_antibody_trunk):
    subprocess.run([*fedtune_cmd(), "prepare-data", "fitness", "--out", str(tmp_path / "sites"), "--sites", "2",
                    "--samples", "160"], check=True, capture_output=True)
    res = subprocess.run([*fedtune_cmd(), "train-local", "fitness", "--data", str(tmp_path / "sites" / "site-1"),
                          "--out", str(tmp_path / "run"), "--trunk", str(tiny_antibody_trunk), "--epochs", "1"],
                         capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "validation: mean Pearson" in res.stdout
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "bundle" / "manifest.json").exists()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents*"))


def test_bad_data_is_a_clear_cli_error(tmp_path):
    (tmp_path / "binding").mkdir()
    (tmp_path / "binding" / "kd.csv").write_text("heavy,light,fitness\nEVQL*,DIQM,1\n")
    res = subprocess.run([*fedtune_cmd(), "train-local", "fitness", "--data", str(tmp_path), "--out",
                          str(tmp_path / "run")], capture_output=True, text=True)
    assert res.returncode == 2 and "row 2" in res.stderr and "'*'" in res.stderr

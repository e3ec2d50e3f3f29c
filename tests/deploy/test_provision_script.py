"""services/base/provision.sh (the compose/k8s init step), run as it is with the installed fedtune: demo data
goes only into an empty data folder or one fedtune marked; a site's own data is kept and checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy_helpers import REPO

SCRIPT = REPO / "services" / "base" / "provision.sh"


def run_script(root: Path, sites: int, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "FEDTUNE_SITES": str(sites),
           "FEDTUNE_PROFILE": "tiny", "FEDTUNE_SAMPLES": "60", "OMP_NUM_THREADS": "1", "TMPDIR": str(root.parent),
           **env}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)


def run_data_step(root: Path, sites: int = 3) -> subprocess.CompletedProcess:
    return run_script(root, sites, FEDTUNE_PROVISION="0", FEDTUNE_DATA_ROOT=str(root))


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def test_demo_data_only_into_empty_or_marked_folders_and_own_data_is_kept(tmp_path):
    root = tmp_path / "data"
    for i in (1, 2, 3):
        (root / f"site-{i}").mkdir(parents=True)
    proc = run_data_step(root)
    assert proc.returncode == 0, proc.stderr
    assert all((root / f"site-{i}" / ".fedtune-data").is_file() for i in (1, 2, 3))
    (root / "site-2" / ".fedtune-data").unlink()   # site-2: the site's own valid data, unmarked
    (root / "site-2" / "extra-notes.txt").write_text("the site's own file")
    own = tree(root / "site-2")
    (root / "site-1" / ".fedtune-data").unlink()
    for p in sorted((root / "site-1").rglob("*"), reverse=True):     # site-1: an emptied volume again
        p.rmdir() if p.is_dir() else p.unlink()
    proc = run_data_step(root)
    assert proc.returncode == 0, proc.stderr
    assert tree(root / "site-2") == own                    # kept, nothing added or removed
    assert "site's own data, kept and checked" in proc.stdout
    assert (root / "site-1" / ".fedtune-data").is_file() and len(tree(root / "site-1")) > 1


def test_a_foreign_folder_with_bad_data_fails_the_step_and_is_untouched(tmp_path):
    root = tmp_path / "data"
    (root / "site-1").mkdir(parents=True)
    (root / "site-2" / "fitness").mkdir(parents=True)
    (root / "site-2" / "fitness" / "data.csv").write_text("not,what,fedtune,expects\n1,2,3,4\n")
    (root / "site-2" / "lab-notebook.txt").write_text("irreplaceable")
    before = tree(root / "site-2")
    proc = run_data_step(root, sites=2)
    assert proc.returncode != 0 and "fedtune did not write" in proc.stderr, proc.stdout + proc.stderr
    assert tree(root / "site-2") == before
    assert not (root / "site-2" / ".fedtune-data").exists()
    assert tree(root / "site-1") == {}                     # nothing written anywhere when a site is refused


def test_an_interrupted_demo_copy_is_redone(tmp_path):
    root = tmp_path / "data"
    (root / "site-1").mkdir(parents=True)
    (root / "site-1" / ".fedtune-data.partial").touch()
    (root / "site-1" / "half-written.csv").write_text("a,b\n")
    proc = run_data_step(root, sites=1)
    assert proc.returncode == 0, proc.stderr
    assert (root / "site-1" / ".fedtune-data").is_file() and not (root / "site-1" / "half-written.csv").exists()
    assert not (root / "site-1" / ".fedtune-data.partial").exists()


def test_kits_go_only_into_empty_or_earlier_kit_volumes(tmp_path):
    kits = tmp_path / "kits"
    for name in ("server", "admin", "site-1"):
        (kits / name).mkdir(parents=True)
    (kits / "site-1" / "their-kit.txt").write_text("an operator's own kit")
    env = dict(FEDTUNE_PREPARE_DATA="0", FEDTUNE_PKI=str(tmp_path / "pki"), FEDTUNE_KITS=str(kits),
               FEDTUNE_SERVER_NAME="fl-server")
    proc = run_script(tmp_path / "pki", 1, **env)
    assert proc.returncode != 0 and "not replaced" in proc.stderr, proc.stdout + proc.stderr
    assert tree(kits / "site-1") == {"their-kit.txt": b"an operator's own kit"}
    assert (kits / "server" / "startup" / "fed_server.json").is_file() and (kits / "server" / ".fedtune-kit").is_file()
    (kits / "site-1" / "their-kit.txt").unlink()
    proc = run_script(tmp_path / "pki", 1, **env)
    assert proc.returncode == 0, proc.stderr
    assert (kits / "site-1" / "startup" / "fed_client.json").is_file() and "unchanged" in proc.stdout

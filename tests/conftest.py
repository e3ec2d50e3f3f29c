"""Shared fixtures: real data under ../shared/data (skipped with a reason where absent, as in a user's
clone), tiny random trunks saved as local Hugging Face folders, and modest thread counts for 2-core CI."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A suite started under nohup, or in the background of a non-interactive shell, inherits SIGHUP or SIGINT
# ignored, and so would every process a test starts: the tests that send those signals (reload, Ctrl-C) need
# the defaults back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

pytest_plugins = ["prebuild"]      # container images built in the background (tests/prebuild.py)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def flab_dir() -> Path:
    path = SHARED_DATA / "flab"
    if not (path / "assays.csv").exists():
        pytest.skip(f"real FLAb data not found at {path} (set FEDTUNE_SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def fpb_dir() -> Path:
    path = SHARED_DATA / "fpb"
    if not (path / "Sentences_50Agree.txt").exists():
        pytest.skip(f"real Financial PhraseBank data not found at {path} (set FEDTUNE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def tiny_antibody_trunk(tmp_path_factory) -> Path:
    from fedtune.models.tiny import make_tiny_trunk
    return make_tiny_trunk(tmp_path_factory.mktemp("tiny-ab"), "antibody")


@pytest.fixture(scope="session")
def tiny_text_trunk(tmp_path_factory) -> Path:
    from fedtune.models.tiny import make_tiny_trunk
    return make_tiny_trunk(tmp_path_factory.mktemp("tiny-text"), "text")

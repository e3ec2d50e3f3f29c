"""A real federation on loopback (NVFlare provisioning, mTLS gRPC, server + site processes) shared by the
tests of this folder; every site folder holds both a fitness and a sentiment data set (synthetic, tiny
trunks) so one federation runs every kind of job."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtune.data import SYNTHETIC_ASSAYS, split_fitness_sites, split_sentiment_sites, synthetic_fitness, \
    synthetic_sentiment
from fedtune.fl.config import JobConfig
from fedtune.fl.federation import LocalFederation
from fedtune.tasks import get

SITES = ["site-1", "site-2", "site-3"]


def write_sites(root: Path, n: int, seed: int = 0) -> dict[str, Path]:
    fitness = split_fitness_sites(synthetic_fitness(60 * n, seed=seed), n, alpha=5.0, seed=seed)
    sentiment = split_sentiment_sites(synthetic_sentiment(60 * n, seed=seed), n, seed=seed)
    out = {}
    for i, (f, s) in enumerate(zip(fitness, sentiment)):
        folder = root / f"site-{i + 1}"
        get("fitness").write(f, folder)
        get("sentiment").write(s, folder)
        out[f"site-{i + 1}"] = folder
    return out


def job_config(kind: str, trunk: Path, **overrides) -> JobConfig:
    base = dict(kind=kind, name=f"test-{kind}", rounds=2, local_epochs=1, min_sites=2,
                trunk={"source": str(trunk), "mode": "full", "max_length": 160},
                train={"batch_size": 16, "progress": False, "head_lr": 5e-3, "lr": 1e-3},
                assays=[a.to_dict() for a in SYNTHETIC_ASSAYS] if kind == "fitness" else [])
    return JobConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def make_job():
    return job_config


@pytest.fixture(scope="session")
def make_sites():
    return write_sites


@pytest.fixture(scope="session")
def site_data(tmp_path_factory) -> dict[str, Path]:
    return write_sites(tmp_path_factory.mktemp("sites"), 2)


@pytest.fixture(scope="session")
def federation(tmp_path_factory, site_data):
    """One federation for every test that only submits jobs to it (each job has its own id and result folder;
    a federation starts in about a minute on 2 cores). Sites keep every upload (FEDTUNE_SAVE_UPDATES=1) so a
    test can check what left them. Tests that kill, poison or reconfigure processes start their own."""
    with LocalFederation(tmp_path_factory.mktemp("fed"), site_data, quiet=True,
                         env={"FEDTUNE_SAVE_UPDATES": "1"}) as fed:
        yield fed


# What each site of `tampering_federation` does wrong, per job name (FEDTUNE_TEST_TAMPER, see
# fedtune.fl.client.tamper): the poisoning and malformed-sums tests each name their jobs to match.
TAMPERING = {"site-2@poison*": "n_train=1e12", "site-3@poison*": "nan", "site-3@scaled-*": "scale=-40",
             "site-2@ridge-asym": "asym"}


@pytest.fixture(scope="session")
def tampering_federation(tmp_path_factory):
    """One three-site federation whose sites misbehave in the jobs named in TAMPERING (and only there); sites
    keep every upload. Shared by the tests of bad updates, which only submit jobs to it."""
    root = tmp_path_factory.mktemp("tampering")
    env = {"FEDTUNE_TEST_TAMPER": ";".join(f"{who}:{how}" for who, how in TAMPERING.items()),
           "FEDTUNE_SAVE_UPDATES": "1"}
    with LocalFederation(root / "fed", write_sites(root / "data", 3), quiet=True, env=env) as fed:
        yield fed

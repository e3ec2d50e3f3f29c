"""Deterministic synthetic data with a learnable signal, for the offline demo and fast tests.

Fitness labels are linear in the residue composition of the chains (hydrophobic, charged, aromatic
fractions) plus noise, in each assay's own units and direction, so a trunk that pools residue embeddings
can learn them. Sentiment sentences carry positive / negative / neutral financial phrasing.
"""

from __future__ import annotations

import numpy as np

from .flab import Assay, FitnessData
from .fpb import SentimentData
from .sequences import AMINO_ACIDS

SYNTHETIC_ASSAYS = [
    Assay("aggregation", "synthetic_acsins", "lower", "AC-SINS shift (nm)"),
    Assay("aggregation", "synthetic_hic", "lower", "HIC retention time (min)"),
    Assay("binding", "synthetic_kd", "higher", "-log10 KD (M)"),
    Assay("expression", "synthetic_titer", "higher", "titer (mg/L)"),
    Assay("immunogenicity", "synthetic_ada", "lower", "% patients with ADA"),
    Assay("polyreactivity", "synthetic_elisa", "lower", "ELISA score"),
    Assay("polyreactivity", "synthetic_psr", "lower", "PSR score"),
    Assay("thermostability", "synthetic_tm", "higher", "Tm (deg C)"),
]  # sorted by task, then name: the order load_flab gives back
# (offset, scale) of each assay's own units
_UNITS = [(8.0, 6.0), (10.0, 1.5), (8.5, 1.0), (120.0, 40.0), (5.0, 4.0), (1.5, 1.0), (0.2, 0.15), (70.0, 5.0)]

_HEAVY_PARENT = ("EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSL"
                 "RAEDTAVYYCAKDRGYSSGWYFDYWGQGTLVTVSS")
_LIGHT_PARENT = ("DIQMTQSPSSLSASVGDRVTITCRASQSISSYLNWYQQKPGKAPKLLIYAASSLQSGVPSRFSGSGSGTDFTLTISSLQPEDFATYY"
                 "CQQSYSTPLTFGQGTKVEIK")
_ALPHABET = np.array(sorted(AMINO_ACIDS))
_GROUPS = ("AILMFVW", "KR", "DE", "FWY")


def _features(seq: str) -> np.ndarray:
    n = len(seq)
    return np.array([sum(seq.count(c) for c in g) / n for g in _GROUPS])


def _mutate(parent: str, rng: np.random.Generator, rate: float) -> str:
    seq = np.array(list(parent))
    hit = rng.random(len(seq)) < rate
    seq[hit] = rng.choice(_ALPHABET, size=int(hit.sum()))
    # a short variable-length CDR-like insertion keeps lengths realistic (104-130)
    ins = "".join(rng.choice(_ALPHABET, size=int(rng.integers(0, 8))))
    mid = len(seq) // 2 + 10
    return "".join(seq[:mid]) + ins + "".join(seq[mid:])


def synthetic_fitness(n: int = 400, seed: int = 0, label_fraction: float = 0.7, noise: float = 0.2) -> FitnessData:
    rng = np.random.default_rng(seed)
    heavy = [_mutate(_HEAVY_PARENT, rng, 0.15) for _ in range(n)]
    light = [_mutate(_LIGHT_PARENT, rng, 0.15) for _ in range(n)]
    feats = np.array([np.concatenate([_features(h), _features(l)]) for h, l in zip(heavy, light)])
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-9)
    weights = np.random.default_rng(12345).normal(size=(feats.shape[1], len(SYNTHETIC_ASSAYS)))
    signal = feats @ weights / np.sqrt(feats.shape[1])
    signal = (signal - signal.mean(0)) / (signal.std(0) + 1e-9)
    raw = signal + noise * rng.normal(size=signal.shape)
    units = np.array(_UNITS)
    signs = np.array([a.sign for a in SYNTHETIC_ASSAYS])
    labels = units[:, 0] + signs * raw * units[:, 1]
    tasks = sorted({a.task for a in SYNTHETIC_ASSAYS})
    task_of = np.array([tasks.index(a.task) for a in SYNTHETIC_ASSAYS])
    has = rng.random((n, len(tasks))) < label_fraction
    has[np.arange(n), rng.integers(0, len(tasks), n)] = True     # every antibody has some label
    labels = np.where(has[:, task_of], labels, np.nan).astype(np.float32)
    return FitnessData(heavy, light, labels, list(SYNTHETIC_ASSAYS))


_SUBJECTS = ["The company", "Net sales", "Operating profit", "The group", "Quarterly revenue", "The bank",
             "Earnings per share", "The retailer", "Order intake", "The insurer"]
_POSITIVE = ["rose sharply", "increased to a record", "improved significantly", "grew strongly",
             "beat expectations", "jumped", "climbed", "doubled"]
_NEGATIVE = ["fell sharply", "decreased", "dropped to a loss", "declined", "missed expectations",
             "plunged", "slumped", "halved"]
_NEUTRAL = ["was reported", "is scheduled for release", "was discussed at the meeting", "remained listed",
            "was announced", "is based in Helsinki", "will be published", "was unchanged"]
_TAILS = ["in the third quarter .", "compared with last year .", "according to the statement .",
          "in 2008 .", "the company said .", "in the period ."]


def synthetic_sentiment(n: int = 300, seed: int = 0) -> SentimentData:
    rng = np.random.default_rng(seed)
    texts, labels, seen = [], [], set()
    phrases = (_NEGATIVE, _NEUTRAL, _POSITIVE)
    while len(texts) < n:
        y = int(rng.choice(3, p=[0.2, 0.5, 0.3]))
        text = " ".join([rng.choice(_SUBJECTS), rng.choice(phrases[y]), rng.choice(_TAILS)])
        text = f"{text[:-2]} (ref {int(rng.integers(0, 10**6))}) ."
        if text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(y)
    return SentimentData(texts, np.asarray(labels, dtype=np.int64))

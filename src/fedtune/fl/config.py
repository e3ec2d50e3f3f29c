"""The federated job's configuration: one object, identical at every site (the server sends it with the
model), stored with the result so that export needs nothing else."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..data import Assay
from ..data.flab import sort_assays
from ..models import TrunkConfig
from ..train import TrainConfig
from .aggregate import Aggregator

HEADS_MODES = ("shared", "private")
PUBLISHED = "published."   # prefix of the heads a site publishes at the end of a private-heads job


@dataclass
class JobConfig:
    kind: str                                  # fitness | sentiment
    name: str = "fedtune"
    rounds: int = 3
    local_epochs: int = 2
    heads: str = "shared"                      # shared: averaged by the server; private: never leave the site
    publish_heads: bool = True                 # private heads: each site sends its final heads once, at the end
    min_sites: int = 2                         # a round closes once this many sites answered ...
    round_timeout: int = 0                     # ... and this many seconds passed (0: wait for every site)
    grace: int = 20                            # after min_sites answered, wait this long for the rest
    val_fraction: float = 0.2
    seed: int = 0
    trunk: dict = field(default_factory=dict)  # TrunkConfig
    train: dict = field(default_factory=dict)  # TrainConfig
    assays: list = field(default_factory=list)  # fitness: [Assay dict], the same at every site
    aggregator: str = "fedavg"                 # fedavg (weighted by rows) | median | trimmed-mean
    trim: float = 0.2                          # trimmed-mean: fraction trimmed at each end
    min_stat_count: int = 5                    # an assay with fewer labelled rows at a site is not shared
    keep_checkpoints: int = 3                  # the server keeps the global model of this many last rounds
    init_from: str = ""                        # what the job starts from (provenance; the tensors ship in the job)

    def __post_init__(self):
        if self.kind not in ("fitness", "sentiment"):
            raise ValueError(f"unknown kind {self.kind!r}")
        if self.heads not in HEADS_MODES:
            raise ValueError(f"unknown heads mode {self.heads!r}; choose one of {HEADS_MODES}")
        if self.kind == "fitness" and not self.assays:
            raise ValueError("a fitness job needs its assay list")
        # One canonical assay order everywhere (`sort_assays`, the order `load_flab` gives a site's label
        # columns): heads, label columns and pooled statistics then line up whatever order the job was given.
        assays = sort_assays([Assay.from_dict(a) if isinstance(a, dict) else a for a in self.assays])
        keys = [a.key for a in assays]
        if len(set(keys)) != len(keys):
            raise ValueError(f"the job's assay list names an assay twice: {sorted({k for k in keys if keys.count(k) > 1})}")
        self.assays = [a.to_dict() for a in assays]
        Aggregator(self.aggregator, self.trim)     # raises on an unknown name or a bad fraction
        if self.min_stat_count < 1:
            raise ValueError(f"min_stat_count must be at least 1: {self.min_stat_count}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1: {self.keep_checkpoints}")

    @classmethod
    def create(cls, kind: str, *, trunk: str | None = None, mode: str | None = None, max_length: int | None = None,
               assays: list | None = None, seed: int = 0, lr: float | None = None,
               batch_size: int | None = None, **fields) -> "JobConfig":
        """A job with the per-task defaults (trunk, trunk mode, training settings) for whatever is not given;
        `assays` are Assay objects; `fields` are the other JobConfig fields."""
        from ..train.config import DEFAULT_MODE, DEFAULT_TRUNK, default_train_config
        mode = mode or DEFAULT_MODE[kind]
        trunk_cfg = {"source": trunk or DEFAULT_TRUNK[kind], "mode": mode}
        if max_length:
            trunk_cfg["max_length"] = max_length
        train = default_train_config(kind, mode, lr=lr, batch_size=batch_size, seed=seed, progress=False)
        return cls(kind=kind, seed=seed, trunk=trunk_cfg, train=train.to_dict(),
                   assays=[a.to_dict() for a in assays or []], **fields)

    @property
    def private(self) -> bool:
        return self.heads == "private"

    def trunk_config(self) -> TrunkConfig:
        return TrunkConfig.from_dict(self.trunk)

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict({**self.train, "epochs": self.local_epochs})

    def assay_list(self) -> list[Assay]:
        return [Assay.from_dict(a) for a in self.assays]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JobConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

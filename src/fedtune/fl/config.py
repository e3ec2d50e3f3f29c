"""The federated job's configuration: one object, identical at every site (the server sends it with the
model), stored with the result so that export needs nothing else."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..models import TrunkConfig
from ..tasks import get
from ..train import TrainConfig
from ..train.dp import DPConfig, check_trunk_mode
from .aggregate import Aggregator, ServerOptimizer

HEADS_MODES = ("shared", "private")
PUBLISHED = "published."   # prefix of the heads a site publishes at the end of a private-heads job


SELECT_ROUND = ("last", "best")


@dataclass
class JobConfig:
    kind: str                                  # a kind of `fedtune.tasks.kinds()`
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
    assays: list = field(default_factory=list)  # the kind's label table as JSON dicts, the same at every site
    aggregator: str = "fedavg"                 # fedavg (weighted by rows) | median | trimmed-mean
    trim: float = 0.2                          # trimmed-mean: fraction trimmed at each end
    min_stat_count: int = 5                    # an assay with fewer labelled rows at a site is not shared
    keep_checkpoints: int = 3                  # the server keeps the global model of this many last rounds
    init_from: str = ""                        # what the job starts from (provenance; the tensors ship in the job)
    server_opt: str = "none"                   # FedOpt on the server: none (plain aggregate) | momentum | adam
    server_lr: float = 1.0                     # its step size on the pseudo-gradient (aggregate - global)
    prox_mu: float = 0.0                       # FedProx: mu/2 ||w - w_global||^2 added to each site's loss
    personal_epochs: int = 0                   # > 0: after the rounds each site fine-tunes a copy of the final heads
                                               # on its own data (trunk frozen, early stopping on its validation)
    select_round: str = "last"                 # last: the model after the last round; best: the round (0 = the
                                               # initial model) with the lowest mean validation loss over sites
    head_type: str = "mlp"                     # mlp | ridge (exact federated ridge, no training rounds) | ridge-mlp
                                               # (MLP heads initialised from the ridge): see fedtune.fl.ridge
    dp: dict = field(default_factory=dict)     # differential privacy (train.dp.DPConfig); {}: off

    def __post_init__(self):
        task = get(self.kind)                      # UnknownKind (a ValueError) names the kinds there are
        if self.heads not in HEADS_MODES:
            raise ValueError(f"unknown heads mode {self.heads!r}; choose one of {HEADS_MODES}")
        if task.needs_label_table and not self.assays:
            raise ValueError(f"a {self.kind} job needs its {task.label_table_noun}")
        # validated, in the kind's one canonical order (heads, label columns and pooled statistics line up)
        self.assays = task.table_to_dicts(task.table_from_dicts(self.assays))
        Aggregator(self.aggregator, self.trim)     # raises on an unknown name or a bad fraction
        ServerOptimizer(self.server_opt, self.server_lr)   # raises on an unknown name or a bad step size
        if not (isinstance(self.prox_mu, (int, float)) and 0 <= self.prox_mu < float("inf")):
            raise ValueError(f"prox_mu must be a finite non-negative number: {self.prox_mu!r}")
        if not isinstance(self.personal_epochs, int) or self.personal_epochs < 0:
            raise ValueError(f"personal_epochs must be a non-negative integer: {self.personal_epochs!r}")
        if self.select_round not in SELECT_ROUND:
            raise ValueError(f"select_round must be one of {SELECT_ROUND}: {self.select_round!r}")
        if self.select_round == "best" and self.private:
            raise ValueError("select_round best needs shared heads: a site's private heads are not kept per "
                             "round, so an earlier round's trunk would meet later heads")
        if self.head_type not in task.head_types:
            raise ValueError(f"a {self.kind} job has no head type {self.head_type!r}; choose one of {task.head_types}")
        if self.head_type != "mlp" and self.private:
            raise ValueError(f"head type {self.head_type} solves one shared ridge per assay: use shared heads")
        if self.head_type == "ridge" and self.trunk.get("mode", task.default_mode) != "frozen":
            raise ValueError("ridge heads are solved on a frozen trunk's embeddings: use trunk mode frozen "
                             "(or head type ridge-mlp to train on from the ridge)")
        self.dp = self._check_dp()
        if self.min_stat_count < 1:
            raise ValueError(f"min_stat_count must be at least 1: {self.min_stat_count}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1: {self.keep_checkpoints}")

    def _check_dp(self) -> dict:
        """The DP settings, validated ({} when off): DP-SGD trains heads on a frozen trunk or LoRA adapters +
        heads, and nothing may train on the rows outside it (personalisation) or add to its gradients (FedProx)."""
        cfg = DPConfig.from_dict(self.dp or {})
        if not cfg.enabled:
            return {}
        check_trunk_mode(TrunkConfig.from_dict(self.trunk).mode)
        if self.personal_epochs:
            raise ValueError("differential privacy and personal_epochs: personalisation would train without DP")
        if self.prox_mu:
            raise ValueError("differential privacy and prox_mu: the proximal term is not part of DP-SGD")
        if self.head_type != "mlp":
            raise ValueError(f"differential privacy and head type {self.head_type}: the ridge phase sends exact "
                             "sums over the training rows, which DP-SGD does not cover")
        return cfg.to_dict()

    def dp_config(self) -> DPConfig | None:
        """The job's DP settings, None when the job has no differential privacy."""
        return DPConfig.from_dict(self.dp) if self.dp else None

    @classmethod
    def create(cls, kind: str, *, trunk: str | None = None, mode: str | None = None, max_length: int | None = None,
               assays: list | None = None, seed: int = 0, lr: float | None = None,
               batch_size: int | None = None, **fields) -> "JobConfig":
        """A job with the kind's defaults (trunk, trunk mode, training settings) for whatever is not given;
        `assays` is the kind's label table (e.g. Assay objects); `fields` are the other JobConfig fields."""
        task = get(kind)
        mode = mode or task.default_mode
        trunk_cfg = {"source": trunk or task.default_trunk_for(assays or []), "mode": mode}
        if max_length:
            trunk_cfg["max_length"] = max_length
        train = task.train_config(mode, lr=lr, batch_size=batch_size, seed=seed, progress=False)
        return cls(kind=kind, seed=seed, trunk=trunk_cfg, train=train.to_dict(),
                   assays=task.table_to_dicts(assays or []), **fields)

    @property
    def private(self) -> bool:
        return self.heads == "private"

    def trunk_config(self) -> TrunkConfig:
        return TrunkConfig.from_dict(self.trunk)

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict({**self.train, "epochs": self.local_epochs})

    def task(self):
        """The job's task kind (`fedtune.tasks.Task`)."""
        return get(self.kind)

    def build_model(self, weights: bool = True):
        """This job's model (trunk, trunk mode, label table, head type), as the server and every site build it."""
        return self.task().build_model(self.trunk_config(), self.assay_list() or None, weights=weights,
                                       head_type=self.head_type)

    def assay_list(self) -> list:
        """The job's label table as the kind's objects (e.g. Assay), in canonical order; [] for none."""
        return self.task().table_from_dicts(self.assays)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JobConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

"""The interface every task kind implements: everything that differs from one kind to another, in one place.

A kind module (`fitness.py`, `sentiment.py`) subclasses `Task`, fills in the declarations and the abstract
methods, and exposes one instance as `TASK`; `fedtune.tasks.get(kind)` returns it. Everything else (train,
compare, report, demo, cli) asks that object and never tests a kind's name.

The kind modules import train/ only inside the members that train or evaluate (and `loss` is a property), so
a caller that only serves (serve/ must not import train/) can still ask the registry.

The concerns, in the order data flows:
- data: the site folder's format (reader, writer), the real and synthetic sources it is split from, how it
  is split over sites, what a site summary counts. The data container itself (e.g. `FitnessData`) gives the
  split unit, lengths and model inputs (`split_ids()`, `lengths()`, `inputs(idx)`, `concat(parts)`).
- target scaling: statistics fitted on training rows (`fit_stats`), or none.
- model: the model class (trunk + heads) and how it is built from a trunk and the label table.
- training: targets of rows, model outputs, activation for predictions, loss, evaluation metrics, the key
  metric (what "better" means) and the scalars logged per epoch.
- report: per-run summary over sites, the Markdown tables, the bar plot.
- demo: defaults for `fedtune demo` and its sample predictions against the running service.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.sequences import DataError
from ..data.site import MIN_SAMPLES
from ..data.split import TEST_FRACTION, Split, site_names, train_val_test_split
from ..models import TrunkConfig, apply_trunk_mode, load_trunk

if TYPE_CHECKING:
    from ..train.config import TrainConfig
    from ..train.losses import Loss


def fmt(x, digits: int = 3) -> str:
    """A number for a report table ('–' when undefined)."""
    return "–" if x is None else f"{x:.{digits}f}"


def classification_table(results: dict, runs: list[str], titles: list[str], summ: dict) -> list[str]:
    """Markdown lines of a classification kind's report table: test accuracy / macro-F1 per site and run, and
    the mean over sites (`summ[run]` holds "accuracy" and "macro_f1")."""
    lines = ["## Test accuracy and macro-F1 per site (scored once)", "",
             "| site | " + " | ".join(f"{t} acc / F1" for t in titles) + " |", "|---|" + "---|" * len(runs)]
    for site in results["sites"]:
        lines.append(f"| {site} | " + " | ".join(
            f"{fmt(results['runs'][r].get(site, {}).get('accuracy'))} / "
            f"{fmt(results['runs'][r].get(site, {}).get('macro_f1'))}" for r in runs) + " |")
    lines.append("| **mean** | " + " | ".join(
        f"**{fmt(summ[r]['accuracy'])}** / {fmt(summ[r]['macro_f1'])}" for r in runs) + " |")
    return lines


@dataclass(frozen=True)
class DemoDefaults:
    """How `fedtune demo` runs this kind (sized for a 2-core CPU machine)."""
    source: str            # name of the real-data folder under `--data` and of the demo's option (e.g. flab)
    samples: int = 300     # synthetic data only
    rounds: int = 2
    local_epochs: int = 1
    mode: str = "frozen"
    max_length: int | None = None


class Task(ABC):
    # ---- declarations ----------------------------------------------------------------------------------
    name: str                            # the kind: CLI argument, job and bundle "kind", REST path segment
    summary: str                         # one line for help texts
    sample_noun: str                     # what a row is, plural ("antibodies"): the split unit in reports
    default_trunk: str                   # trunk source when none is given
    default_mode: str                    # trunk mode when none is given
    train_defaults: dict                 # TrainConfig fields for this kind
    head_modes: tuple[str, ...] = ("shared",)   # what `--heads` may be; more than one: a comparison axis
    head_types: tuple[str, ...] = ("mlp",)      # what `--head-type` may be (`models.heads.HEAD_TYPES`); a type
                                                # other than mlp needs `new_model(..., head_type=)` and, for the
                                                # ridge types, `set_linear_outputs`
    needs_stats: bool = False            # the targets are standardised with statistics fitted on training rows
    key_metric: str                      # the validation metric that says "better" (higher is better)
    key_metric_label: str                # its name in prose ("mean Pearson")
    interval_metrics: tuple[str, ...] = ()   # metric paths quoted on the test split with a bootstrap 95% interval
                                             # (`fedtune.train.bootstrap`); empty: the key metric alone
    model_class: type                    # the nn.Module of this kind (trunk + heads)
    demo: DemoDefaults | None = None     # None: `fedtune demo` does not run this kind

    # ---- data ------------------------------------------------------------------------------------------
    @abstractmethod
    def read(self, folder: str | Path, assays=None):
        """A site folder's data (`assays` fixes the label table where the kind has one)."""

    @abstractmethod
    def write(self, data, folder: str | Path) -> Path:
        """Write `data` as a site folder that `read` reads back."""

    @abstractmethod
    def read_source(self, source: str | Path, agreement: str = "50"):
        """A real data set to split over sites (`fedtune prepare-data --source`)."""

    @abstractmethod
    def synthetic(self, n: int, seed: int):
        """Deterministic synthetic data with a learnable signal."""

    @abstractmethod
    def split_sites(self, data, n_sites: int, alpha: float, split: str, seed: int) -> list:
        """`data` over `n_sites` sites, deterministically under `seed`."""

    @abstractmethod
    def site_rows(self, data) -> dict:
        """What a site's summary counts (rows per assay, samples per class)."""

    def assays_from(self, source: str | Path | None) -> list:
        """The label table a job of this kind uses, read from a data folder (None: the synthetic data's);
        empty for a kind without one."""
        return []

    def default_trunk_for(self, table) -> str:
        """The trunk a job or run with this label table uses when none is given (e.g. a text card's text
        trunk); `default_trunk` unless the kind's table says otherwise."""
        return self.default_trunk

    def label_table(self, data) -> list | None:
        """The label table of loaded data (what `build_model` needs), or None for a kind without one."""
        return None

    def load_site(self, folder: str | Path, assays=None, seed: int = 0, val_fraction: float = 0.2):
        """(train, validation) of one site's folder, split by the data's split unit under `seed` (no test part;
        runs that report a score use `load_split`)."""
        split = self.load_split(folder, assays, seed=seed, val_fraction=val_fraction, test_fraction=0.0)
        return split.train, split.val

    def load_split(self, folder: str | Path, assays=None, seed: int = 0, val_fraction: float = TEST_FRACTION,
                   test_fraction: float = TEST_FRACTION) -> Split:
        """One site's folder split into train / validation / test by split unit under `seed`
        (`data.split.train_val_test_split`): validation drives early stopping, test is scored once at the end.
        The validation part is the one `load_site` gives for the same seed and fraction."""
        data = self.read(folder, assays)
        if len(data) < MIN_SAMPLES:
            raise DataError(f"{folder}: only {len(data)} sample(s); a site needs at least {MIN_SAMPLES}")
        return train_val_test_split(data, val_fraction, test_fraction, seed)

    def prepare_sites(self, out: str | Path, sites: int = 3, source: str | Path | None = None, alpha: float = 1.0,
                      split: str = "iid", agreement: str = "50", samples: int = 600, seed: int = 0) -> dict:
        """Split a data set (real `source`, else synthetic data) over sites and write one folder per site under
        `out` (site-1 ... site-N), plus `<kind>-split.json` describing the split. Returns that summary.
        A site folder can hold the data of several kinds side by side."""
        out = Path(out)
        full = self.read_source(source, agreement) if source else self.synthetic(samples, seed)
        parts = self.split_sites(full, sites, alpha, split, seed)
        summary = {"kind": self.name, "source": str(source) if source else "synthetic", "alpha": alpha,
                   "split": split, "seed": seed, "sites": {}}
        for name, part in zip(site_names(sites), parts):
            self.write(part, out / name)
            summary["sites"][name] = {"folder": str(out / name), "samples": len(part), "rows": self.site_rows(part)}
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{self.name}-split.json").write_text(json.dumps(summary, indent=2))
        return summary

    # ---- target scaling --------------------------------------------------------------------------------
    def fit_stats(self, train):
        """Target statistics fitted on training rows (None for a kind without target scaling)."""
        return None

    def stats_from_dict(self, d: dict | None):
        return None

    # ---- model -----------------------------------------------------------------------------------------
    @abstractmethod
    def new_model(self, trunk, assays=None):
        """This kind's model on `trunk` (the trunk mode is applied by `build_model`)."""

    def build_model(self, trunk_cfg: TrunkConfig, assays=None, weights: bool = True, head_type: str = "mlp"):
        """The model with a freshly loaded trunk and the trunk mode of `trunk_cfg` applied; `head_type` one of
        `head_types`."""
        if head_type not in self.head_types:
            raise ValueError(f"a {self.name} model has no head type {head_type!r}; choose one of {self.head_types}")
        extra = {} if head_type == "mlp" else {"head_type": head_type}
        return apply_trunk_mode(self.new_model(load_trunk(trunk_cfg, weights=weights), assays, **extra), trunk_cfg)

    def set_linear_outputs(self, model, weight, bias) -> None:
        """Put a linear map of the pooled embeddings (weight [outputs, dim], bias [outputs], one row per column of
        `outputs(model, emb)`) into the linear terms of the model's heads (head types ridge and ridge-mlp), so
        that `outputs(model, emb)` is `emb @ weight.T + bias` for ridge heads (plus the MLP term for ridge-mlp)."""
        raise NotImplementedError(f"{self.name} has no linear (ridge) heads")

    def train_config(self, mode: str, **overrides) -> "TrainConfig":
        """This kind's training defaults for a trunk mode, with `overrides` that are not None."""
        from ..train.config import train_config_for
        return train_config_for(self.train_defaults, mode, **overrides)

    # ---- training --------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def loss(self) -> "Loss":
        """The training loss (from `fedtune.train.losses`)."""

    @abstractmethod
    def targets(self, data, idx: np.ndarray, stats) -> np.ndarray:
        """Training targets of rows `idx` (scaled with `stats` where the kind scales them)."""

    @abstractmethod
    def outputs(self, model, emb):
        """The model's training outputs for pooled embeddings `emb` (what `loss` compares with targets)."""

    def activate(self, out):
        """Outputs -> predictions (e.g. softmax); identity by default."""
        return out

    @abstractmethod
    def evaluate(self, pred: np.ndarray, data, stats) -> dict:
        """{"loss": validation loss, **metrics} of predictions `pred` on `data`; JSON-ready."""

    def scalars(self, metrics: dict) -> dict[str, float]:
        """TensorBoard scalars of one evaluation (name -> value)."""
        return {f"val/{k}": metrics[k] for k in ("loss", self.key_metric) if metrics.get(k) is not None}

    @abstractmethod
    def headline(self, metrics: dict) -> str:
        """One line of validation metrics for the CLI."""

    # ---- report ----------------------------------------------------------------------------------------
    @abstractmethod
    def run_summary(self, per_site: list[dict], results: dict) -> dict:
        """Mean over sites of one run's headline metrics (`results`: the whole comparison)."""

    @abstractmethod
    def report_tables(self, results: dict, runs: list[str], titles: list[str], summ: dict) -> list[str]:
        """Markdown lines of this kind's tables (`titles`: the runs' display names, `summ`: run summaries)."""

    @abstractmethod
    def plot_bars(self, plt, runs: list[str], titles: list[str], summ: dict, results: dict):
        """The bar chart comparing runs; returns (figure, axes)."""

    def interval_paths(self) -> list[str]:
        """The metric paths a test score carries bootstrap intervals for."""
        return list(self.interval_metrics or (self.key_metric,))

    @property
    def curve_label(self) -> str:
        """Y label of the per-round curves (the global model's `key_metric` after each round)."""
        return f"global model: validation {self.key_metric_label}"

    # ---- demo ------------------------------------------------------------------------------------------
    def show_predictions(self, post, url: str, card: dict) -> dict:
        """Ask the running service (`post(url, body)`) for the demo's sample predictions, print them and return
        the responses by name; `card` is this kind's model card from /v1/models."""
        return {}

    def try_it(self, url: str) -> str | None:
        """A curl command line a user can paste to try the service on this kind."""
        return None

    # ---- bundle (bundle.py): the kind's manifest fields and how a bundle's model is rebuilt --------------
    def manifest_fields(self, model) -> dict:
        """The kind's own manifest fields of a bundle of `model` (the label table, the class labels); JSON-ready,
        what `model_from_manifest` reads back."""
        raise NotImplementedError(f"a {self.name} model cannot be exported")

    def model_from_manifest(self, trunk, manifest: dict, hidden: tuple[int, ...]):
        """This kind's model on a bundle's `trunk`, its heads shaped by the manifest's own fields and the heads'
        `hidden` sizes (the weights are loaded afterwards). Any KeyError, TypeError or ValueError on a bad
        manifest is reported by the loader as a BundleError."""
        raise NotImplementedError(f"a {self.name} bundle cannot be loaded")

    # ---- serving (bundle.predict, serve/): items in, head outputs out ----------------------------------
    # An item is one request row as the kind's API validated it (a text, a (heavy, light) pair, ...).
    api_module: str | None = None        # module under fedtune.tasks holding `API`, the kind's REST side

    def warmup_items(self, model) -> list:
        """Valid items for `model` that the service predicts once per head set before serving it."""
        return []

    def tokenize(self, model, items: list) -> dict:
        """The trunk's tokens of `items` (what `model.embed_tokens` takes)."""
        return model.tokenize(items)

    def item_parts(self, model, item) -> tuple[str, ...]:
        """The parts of `item` the trunk embeds one at a time (the chains of a (heavy, light) pair, one text), in
        the order `model.embed_tokens` concatenates their pooled embeddings. `serve.cache.embed_items` embeds
        and caches each part on its own, keyed by (bundle digest, part): the trunk is deterministic in eval
        mode, so a part's embedding does not depend on the item it came with."""
        return tuple(item) if isinstance(item, tuple) else (item,)

    def part_text(self, model, part: str) -> str:
        """A part as the trunk's tokenizer takes it (e.g. residues spaced for AntiBERTy); unchanged by default."""
        return part

    def head_outputs(self, model, emb, heads, **opts):
        """Predictions of one head set for pooled embeddings `emb`, as float32 numpy: one array [n, ...], or a
        dict of them (`opts`: the kind's request options, e.g. which heads to apply)."""
        return self.activate(model.apply_heads(emb, heads).float()).cpu().numpy()

    @property
    def api(self):
        """The kind's REST side (`fedtune.serve.kinds.KindApi`): request and response bodies, validation, response
        assembly, KServe v2 tensors. Imported on first use: only the service needs it."""
        if self.api_module is None:
            raise NotImplementedError(f"the {self.name} kind has no REST API")
        return importlib.import_module(f"{__package__}.{self.api_module}").API

    # ---- federation (fl/): the job's label table, the count phase, pooled target statistics -------------
    needs_label_table: bool = False      # a job of this kind cannot run without its label table
    label_table_noun: str = "label table"   # what that table is called in messages ("assay list")

    def table_from_dicts(self, rows: list) -> list:
        """A job's label table from its JSON form (`JobConfig.assays`; objects pass through), validated and in
        the one canonical order every site and the server use. A kind without a table accepts none."""
        if rows:
            raise ValueError(f"a {self.name} job has no {self.label_table_noun}; got {len(rows)} entries")
        return []

    def table_to_dicts(self, table: list) -> list[dict]:
        """The JSON form of a label table (what `table_from_dicts` reads back)."""
        return [t.to_dict() for t in table]

    def count_rows(self, train) -> dict:
        """What a site reports as its training row counts: {"n_train": rows, ...}; the server bounds every
        later claim of the site by these (`fl.aggregate.check_counts`)."""
        return {"n_train": len(train)}

    def stat_keys(self, table: list) -> list[str]:
        """The label columns target statistics are pooled for, in the model's output order (needs_stats)."""
        return []

    def label_moments(self, train) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, sum, sum of squares) per `stat_keys` column of training labels: aggregates, never rows."""
        raise NotImplementedError(f"{self.name} has no target statistics")

    def pool_stats(self, table: list, site_moments: list):
        """One set of target statistics (what `fit_stats` gives) from several sites' `label_moments`."""
        raise NotImplementedError(f"{self.name} has no target statistics")

    # ---- site data checks (data/check.py, `fedtune check-data`) -----------------------------------------
    site_files: str = ""                 # what a site folder of this kind holds, for messages ("Sentences.txt")

    def detect(self, folder: Path) -> bool:
        """Whether `folder` (a site folder, or a file) holds data of this kind."""
        return False

    def check(self, folder: Path, report) -> None:
        """Add every problem of this kind's data in an existing `folder` to `report` (`data.check.CheckReport`:
        file, row, column, reason), its rows per label (for good data what `site_rows` counts) and what those
        rows are (`report.unit`); never raises on bad data. The common part (`data.check.check_site`) then has
        the loader confirm a folder without errors. By default nothing beyond the loader is checked."""

"""fitness: FLAb antibody developability. Heavy + light chains in, one regression head per FLAb task with
one output per assay, trained on oriented z-scores (higher = more favourable) of each assay's own units.

Site folder: FLAb layout (`assays.csv` + `<task>/<assay>.csv` with heavy,light,fitness). Split unit: the
antibody. Sites are split by a Dirichlet draw per task. Metrics: per assay RMSE (own units), Pearson,
Spearman; per task means; key metric `mean_pearson` over tasks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.flab import (FITNESS_TASKS, Assay, FitnessData, load_assays, load_flab, ordered_tasks, sort_assays,
                         write_flab)
from ..data.split import split_fitness_sites
from ..data.stats import AssayStats
from ..data.synthetic import SYNTHETIC_ASSAYS, synthetic_fitness
from ..models.heads import HEAD_TYPES, make_head, set_linear
from ..models.trunk import Trunk
from .base import DemoDefaults, Task, fmt

HIDDEN = (128, 64, 32)
SAMPLE_ANTIBODIES = [
    {"id": "trastuzumab",
     "heavy": "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGG"
              "DGFYAMDYWGQGTLVTVSS",
     "light": "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFG"
              "QGTKVEIK"},
    {"id": "pembrolizumab",
     "heavy": "QVQLVQSGVEVKKPGASVKVSCKASGYTFTNYYMYWVRQAPGQGLEWMGGINPSNGGTNFNEKFKNRVTLTTDSSTTTAYMELKSLQFDDTAVYYCARRD"
              "YRFDMGFDYWGQGTTVTVSS",
     "light": "EIVLTQSPATLSLSPGERATLSCRASKGVSTSGYSYLHWYQQKPGQAPRLLIYLASYLESGVPARFSGSGSGTDFTLTISSLEPEDFAVYYCQHSRDLP"
              "LTFGGGTKVEIK"},
]


class FitnessModel(nn.Module):
    """Trunk + one regression head per task, one output per assay of the task (oriented z-scores).

    Heavy and light chains are encoded separately, pooled, and concatenated ([B, 2H]). Heads live under
    `heads.<FLAb task>.`; `head_type` (`models.heads.HEAD_TYPES`): MLP heads, linear heads holding a ridge
    solution, or ridge + MLP (the MLP's output layer starts at zero)."""

    kind = "fitness"

    def __init__(self, trunk: Trunk, assays: list[Assay], hidden=HIDDEN, dropout: float = 0.1,
                 head_type: str = "mlp"):
        super().__init__()
        self.head_type = head_type
        self.trunk = trunk
        self.assays = sort_assays(assays)   # the order of load_flab's label columns, whatever order was given
        self.tasks = ordered_tasks(self.assays)
        self.head_hidden, self.dropout = tuple(hidden), dropout
        self.heads = self.new_heads()

    def new_heads(self) -> nn.ModuleDict:
        """A fresh head set of this model's shapes (e.g. to hold another site's heads)."""
        dim = 2 * self.trunk.hidden_size
        heads = nn.ModuleDict({t: make_head(self.head_type, dim, sum(a.task == t for a in self.assays),
                                            self.head_hidden, self.dropout) for t in self.tasks})
        return heads.to(next(self.trunk.parameters()).device)

    def tokenize(self, heavy: list[str], light: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        return {"heavy": self.trunk.tokenize([self.trunk.prepare(s) for s in heavy]),
                "light": self.trunk.tokenize([self.trunk.prepare(s) for s in light])}

    def embed_tokens(self, tokens: dict) -> torch.Tensor:
        dev = next(self.parameters()).device
        parts = [self.trunk(**{k: v.to(dev, non_blocking=True) for k, v in tokens[c].items()})
                 for c in ("heavy", "light")]
        return torch.cat(parts, dim=-1)

    def embed(self, heavy: list[str], light: list[str]) -> torch.Tensor:
        return self.embed_tokens(self.tokenize(heavy, light))

    def apply_heads(self, emb: torch.Tensor, heads: nn.ModuleDict | None = None, tasks=None) -> dict:
        heads = self.heads if heads is None else heads
        return {t: heads[t](emb) for t in (tasks or self.tasks)}

    def assay_outputs(self, emb: torch.Tensor, heads: nn.ModuleDict | None = None) -> torch.Tensor:
        """[B, A] in assay order (assays are grouped by task in the same order as the heads)."""
        out = self.apply_heads(emb, heads)
        return torch.cat([out[t] for t in self.tasks], dim=-1)

    def forward(self, heavy: list[str], light: list[str]) -> dict:
        return self.apply_heads(self.embed(heavy, light))


def task_names(results: dict) -> list[str]:
    """The FLAb tasks that appear in a comparison's metrics."""
    for per_site in results["runs"].values():
        for m in per_site.values():
            if "tasks" in m:
                return list(m["tasks"])
    return []


class Fitness(Task):
    name = "fitness"
    summary = "FLAb antibody fitness: heavy + light chains, one regression head per task"
    sample_noun = "antibodies"
    default_trunk = "antiberty"
    default_mode = "frozen"
    train_defaults = dict(epochs=60, batch_size=32, lr=1e-5, patience=10)
    head_modes = ("shared", "private")
    head_types = HEAD_TYPES
    needs_stats = True
    key_metric = "mean_pearson"
    key_metric_label = "mean Pearson"
    interval_metrics = ("mean_pearson", *(f"tasks.{t}.pearson" for t in FITNESS_TASKS))
    model_class = FitnessModel
    demo = DemoDefaults(source="flab", samples=300, rounds=3, local_epochs=10, mode="frozen")

    # ---- data
    def read(self, folder, assays=None) -> FitnessData:
        return load_flab(folder, assays)

    def write(self, data: FitnessData, folder) -> Path:
        return write_flab(data, folder)

    def read_source(self, source, agreement: str = "50") -> FitnessData:
        return load_flab(source)

    def synthetic(self, n: int, seed: int) -> FitnessData:
        return synthetic_fitness(n, seed)

    def split_sites(self, data, n_sites, alpha, split, seed) -> list[FitnessData]:
        return split_fitness_sites(data, n_sites, alpha, seed)

    def site_rows(self, data: FitnessData) -> dict:
        return data.rows_per_assay()

    def assays_from(self, source) -> list[Assay]:
        return load_assays(source) if source else list(SYNTHETIC_ASSAYS)

    def label_table(self, data: FitnessData) -> list[Assay]:
        return data.assays

    # ---- target scaling: per assay, oriented z
    def fit_stats(self, train: FitnessData) -> AssayStats:
        return AssayStats.fit(train)

    def stats_from_dict(self, d):
        return AssayStats.from_dict(d)

    # ---- model
    def new_model(self, trunk, assays=None, head_type: str = "mlp") -> FitnessModel:
        if not assays:
            raise ValueError("a fitness model needs its assay list")
        return FitnessModel(trunk, assays, head_type=head_type)

    def set_linear_outputs(self, model: FitnessModel, weight, bias) -> None:
        # output column j is assay j; the heads hold the assays of their task in the same order
        start = 0
        for t in model.tasks:
            k = sum(a.task == t for a in model.assays)
            set_linear(model.heads[t], weight[start:start + k], bias[start:start + k])
            start += k

    # ---- training (train/ imported here, not at module level: see base.py)
    @property
    def loss(self):
        from ..train.losses import MASKED_MSE
        return MASKED_MSE

    def targets(self, data: FitnessData, idx, stats: AssayStats) -> np.ndarray:
        return stats.to_z(data.labels[idx])

    def outputs(self, model: FitnessModel, emb):
        return model.assay_outputs(emb)

    def evaluate(self, pred, data: FitnessData, stats: AssayStats) -> dict:
        from ..train.metrics import masked_mse, regression_metrics
        return {"loss": masked_mse(pred, stats.to_z(data.labels)),
                **regression_metrics(pred, data.labels, data.assays, stats)}

    def scalars(self, metrics: dict) -> dict[str, float]:
        out = {f"val/{k}": metrics[k] for k in ("loss", "mean_pearson", "mean_spearman")
               if metrics.get(k) is not None}
        out.update({f"val_pearson/{t}": m["pearson"] for t, m in metrics.get("tasks", {}).items()
                    if m.get("pearson") is not None})
        return out

    def headline(self, metrics: dict) -> str:
        return f"mean Pearson {fmt(metrics.get('mean_pearson'))}"

    # ---- report
    def run_summary(self, per_site: list[dict], results: dict) -> dict:
        from ..train.metrics import mean_or_none
        return {"mean_pearson": mean_or_none(m.get("mean_pearson") for m in per_site),
                "mean_spearman": mean_or_none(m.get("mean_spearman") for m in per_site),
                "tasks": {t: {k: mean_or_none(m["tasks"].get(t, {}).get(k) for m in per_site)
                              for k in ("pearson", "spearman", "rmse_z")} for t in task_names(results)}}

    def report_tables(self, results, runs, titles, summ) -> list[str]:
        lines = ["## Mean over sites (test split of each site, scored once)", "",
                 "| task | " + " | ".join(f"{t} Pearson" for t in titles) + " | "
                 + " | ".join(f"{t} Spearman" for t in titles) + " |",
                 "|---|" + "---|" * (2 * len(runs))]
        for t in task_names(results):
            lines.append(f"| {t} | " + " | ".join(fmt(summ[r]["tasks"][t]["pearson"]) for r in runs) + " | "
                         + " | ".join(fmt(summ[r]["tasks"][t]["spearman"]) for r in runs) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{fmt(summ[r]['mean_pearson'])}**" for r in runs) + " | "
                     + " | ".join(fmt(summ[r]["mean_spearman"]) for r in runs) + " |")
        lines += ["", "## Per site, task and assay", "",
                  "RMSE in each assay's own units; Pearson / Spearman of predictions vs measurements.", "",
                  "| site | task | assay | n | " + " | ".join(f"{t} RMSE / Pearson / Spearman" for t in titles)
                  + " |", "|---|---|---|---|" + "---|" * len(runs)]
        for site in results["sites"]:
            for t in task_names(results):
                ref = results["runs"][runs[0]].get(site, {}).get("tasks", {}).get(t, {})
                for assay, am in ref.get("assays", {}).items():
                    if not am.get("n"):
                        continue
                    cells = []
                    for r in runs:
                        a = results["runs"][r].get(site, {}).get("tasks", {}).get(t, {}).get("assays", {}).get(assay, {})
                        cells.append(f"{fmt(a.get('rmse'))} / {fmt(a.get('pearson'))} / {fmt(a.get('spearman'))}")
                    lines.append(f"| {site} | {t} | {assay} | {am['n']} | " + " | ".join(cells) + " |")
        return lines

    def plot_bars(self, plt, runs, titles, summ, results):
        tasks = task_names(results)
        fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 4))
        width = 0.8 / len(runs)
        for i, (r, title) in enumerate(zip(runs, titles)):
            vals = [summ[r]["tasks"][t]["pearson"] or 0.0 for t in tasks]
            ax.bar(np.arange(len(tasks)) + i * width, vals, width, label=title)
        ax.set_xticks(np.arange(len(tasks)) + width * (len(runs) - 1) / 2, tasks, rotation=20)
        ax.set_ylabel("Pearson (mean over sites)")
        ax.set_title("Per-task test Pearson")
        ax.axhline(0, color="grey", lw=0.5)
        return fig, ax

    # ---- demo
    def show_predictions(self, post, url: str, card: dict) -> dict:
        sets = card["head_sets"]
        asks = ([None] if "global" in sets else []) + [s for s in sets if s != "global"][:2]
        out = {}
        for site in asks:
            body = {"antibodies": SAMPLE_ANTIBODIES, **({"site": site} if site else {})}
            resp = post(f"{url}/v1/{self.name}/predict", body)
            out[site or "global"] = resp
            print(f"  fitness scores (oriented z, higher = better), heads: {site or resp['heads']}")
            for p in resp["predictions"]:
                scores = " ".join(f"{t}={v:+.2f}" for t, v in p["scores"].items())
                print(f"    {p['id']:>14}: {scores}")
        return out

    def try_it(self, url: str) -> str:
        import json
        example = json.dumps({"antibodies": SAMPLE_ANTIBODIES[:1]})
        return f"curl -s {url}/v1/{self.name}/predict -H 'Content-Type: application/json' -d '{example}'"

    # ---- bundle: the label table in the manifest
    def manifest_fields(self, model: FitnessModel) -> dict:
        return {"tasks": list(model.tasks), "assays": [a.to_dict() for a in model.assays]}

    def model_from_manifest(self, trunk, manifest: dict, hidden) -> FitnessModel:
        return FitnessModel(trunk, [Assay.from_dict(a) for a in manifest["assays"]], hidden,
                            head_type=manifest["heads"].get("type", "mlp"))

    # ---- serving: an item is a (heavy, light) pair; `tasks` picks the heads to apply
    api_module = "fitness_api"

    def warmup_items(self, model) -> list[tuple[str, str]]:
        return [("EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVS",
                 "DIQMTQSPSSLSASVGDRVTITCRASQSISSYLNWYQQKPGKAPKLLIY")]

    def tokenize(self, model: FitnessModel, items: list) -> dict:
        return model.tokenize([h for h, _ in items], [lt for _, lt in items])

    def part_text(self, model: FitnessModel, part: str) -> str:
        return model.trunk.prepare(part)

    def head_outputs(self, model: FitnessModel, emb, heads, tasks=None) -> dict:
        """{task: oriented z [n, n_assays of the task]} for `tasks` (default: all)."""
        out = model.apply_heads(emb, heads, list(tasks) if tasks else None)
        return {t: v.float().cpu().numpy() for t, v in out.items()}

    # ---- federation
    needs_label_table = True
    label_table_noun = "assay list"

    def table_from_dicts(self, rows: list) -> list[Assay]:
        # One canonical assay order everywhere (`sort_assays`, the order `load_flab` gives a site's label
        # columns): heads, label columns and pooled statistics then line up whatever order the job was given.
        assays = sort_assays([Assay.from_dict(a) if isinstance(a, dict) else a for a in rows])
        keys = [a.key for a in assays]
        if len(set(keys)) != len(keys):
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"the job's assay list names an assay twice: {twice}")
        return assays

    def count_rows(self, train: FitnessData) -> dict:
        rows = {t: int((~np.isnan(train.labels[:, train.task_assays(t)])).any(1).sum()) for t in train.tasks}
        return {"n_train": len(train), "task_rows": rows}

    def stat_keys(self, table: list[Assay]) -> list[str]:
        return [a.key for a in table]

    def label_moments(self, train: FitnessData):
        from ..data.stats import moments
        return moments(train.labels)

    def pool_stats(self, table: list[Assay], site_moments: list) -> AssayStats:
        return AssayStats.pool([a.key for a in table], [a.sign for a in table], site_moments)

    # ---- site data checks
    site_files = "assays.csv / <task>/<assay>.csv"

    def detect(self, folder: Path) -> bool:
        folder = Path(folder)
        return folder.is_dir() and ((folder / "assays.csv").exists() or any(folder.glob("*/*.csv")))

    def check(self, folder: Path, report) -> None:
        from ..data.flab_check import check_flab
        check_flab(Path(folder), report)


TASK = Fitness()
FitnessModel.task = TASK     # what the Trainer asks (targets, outputs, loss, metrics)

"""The local-vs-federated report: a Markdown summary table, PNG plots and the raw numbers as JSON.

Input is one dict (what `fedtune compare` collects):

    {"kind": <a task kind>,
     "sites": ["site-1", ...],
     "runs": {"local": {site: metrics}, "fedavg": {site: metrics}, "pooled": {site: metrics}, ...},
     "curves": {run: {site: [the global model's validation key metric on that site after round 1, 2, ...]}},
     "local_curves": {run: {site: [the site's own model after its local epochs of round 1, 2, ...]}},  (optional)
     "cross_site": {run: {model site: {test site: key metric}}},          (optional)
     "costs": {run: {"bytes_per_round": int, "seconds_per_round": float}}, (optional)
     "notes": [str, ...]}                                                 (optional)

`metrics` are what `fedtune.train.Trainer.evaluate` returns on that site's TEST split (scored once, after
training; `fedtune compare` keeps the validation numbers under "val_runs"), with a `bootstrap` entry
(`fedtune.train.bootstrap`: n split units and 95% intervals) where the run had one. The tables and the bar chart
are the kind's own (`fedtune.tasks`); notes, costs, the interval table and the per-round curves are common.
"""

from __future__ import annotations

import json
from pathlib import Path

from .privacy_report import plot_privacy, privacy_lines
from .tasks import get
from .tasks.base import fmt
from .train.bootstrap import mean_interval, metric_at
from .train.metrics import mean_or_none

RUN_TITLES = {"local": "local only", "fedavg": "FedAvg", "pooled": "pooled (upper bound)",
              "fedavg-ridge": "FedAvg, ridge heads", "fedavg-ridge-mlp": "FedAvg, MLP heads from ridge",
              "local-ridge": "local only, ridge heads", "pooled-ridge": "pooled, ridge heads"}


def _title(run: str) -> str:
    if run in RUN_TITLES:
        return RUN_TITLES[run]
    if run.startswith("fedavg-"):
        return f"FedAvg {run[len('fedavg-'):]}"
    return RUN_TITLES.get(run, run)


def summary(results: dict) -> dict:
    """Mean over sites of each run's headline metrics (the kind's own, e.g. per task)."""
    task = get(results["kind"])
    return {run: task.run_summary(list(per_site.values()), results) for run, per_site in results["runs"].items()}


def _ci(ci: dict | None) -> str:
    return "–" if not ci else f"[{fmt(ci.get('lo'))}, {fmt(ci.get('hi'))}]"


def interval_table(results: dict) -> list[str]:
    """Markdown lines: per run, each site's test metrics with n and the bootstrap 95% interval, and the mean over
    sites (its interval from the sites' bootstrap replicates, where the run kept them)."""
    task = get(results["kind"])
    paths = task.interval_paths()
    rows = []
    for run, per_site in results["runs"].items():
        boots = {site: m.get("bootstrap") for site, m in per_site.items() if isinstance(m, dict)}
        if not any(boots.values()):
            continue
        for site, m in sorted(per_site.items()):
            b = boots.get(site) or {}
            cells = [f"{fmt(metric_at(m, p))} {_ci((b.get('ci') or {}).get(p))}" for p in paths]
            rows.append(f"| {_title(run)} | {site} | {b.get('n', '–')} | " + " | ".join(cells) + " |")
        found = [b for b in boots.values() if b]
        n = sum(b.get("n", 0) for b in found)
        cells = [f"{fmt(mean_or_none(metric_at(m, p) for m in per_site.values()))} "
                 f"{_ci(mean_interval(found, p) if all('replicates' in b for b in found) else None)}" for p in paths]
        rows.append(f"| {_title(run)} | mean over sites | {n} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return (["", f"## Test split: value [95% bootstrap interval], n = {task.sample_noun} scored", "",
             "| run | site | n | " + " | ".join(paths) + " |", "|---|---|---|" + "---|" * len(paths)] + rows)


def cross_site_tables(results: dict) -> list[str]:
    """Markdown lines: per run, each site's final model (rows) on every site's test split (columns)."""
    matrices = {run: m for run, m in (results.get("cross_site") or {}).items() if m}
    if not matrices:
        return []
    task = get(results["kind"])
    sites = results["sites"]
    lines = ["", f"## Cross-site: each site's final model (row) on every site's test split (column), test "
                 f"{task.key_metric_label}", ""]
    for run, m in matrices.items():
        lines += [f"**{_title(run)}**", "", "| model of | " + " | ".join(sites) + " |",
                  "|---|" + "---|" * len(sites)]
        for row in sites:
            if row in m:
                lines.append(f"| {row} | " + " | ".join(fmt(m[row].get(col)) for col in sites) + " |")
        lines.append("")
    return lines


def plot_cross_site(results: dict, out: Path, plt) -> list[str]:
    matrices = {run: m for run, m in (results.get("cross_site") or {}).items() if m}
    if not matrices:
        return []
    import numpy as np

    sites = results["sites"]
    task = get(results["kind"])
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.2 * len(matrices) + 1.5, 3.4), squeeze=False)
    for ax, (run, m) in zip(axes[0], matrices.items()):
        grid = np.array([[np.nan if (v := m.get(r, {}).get(c)) is None else v for c in sites] for r in sites])
        im = ax.imshow(grid, cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0,
                       vmax=np.nanmax(grid) if np.isfinite(grid).any() else 1)
        for i in range(len(sites)):
            for j in range(len(sites)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="white", fontsize=8)
        ax.set_xticks(range(len(sites)), sites, rotation=30, fontsize=8)
        ax.set_yticks(range(len(sites)), sites, fontsize=8)
        ax.set_xlabel("test split of")
        ax.set_title(_title(run))
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0][0].set_ylabel("final model of")
    fig.suptitle(f"Cross-site test {task.key_metric_label}")
    fig.tight_layout()
    fig.savefig(out / "cross_site.png", dpi=120)
    plt.close(fig)
    return ["cross_site.png"]


def markdown(results: dict, plots: list[str]) -> str:
    kind, runs = results["kind"], list(results["runs"])
    summ = summary(results)
    lines = [f"# fedtune report: {kind}, local vs federated", ""]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    lines += get(kind).report_tables(results, runs, [_title(r) for r in runs], summ)
    lines += interval_table(results)
    lines += cross_site_tables(results)
    lines += privacy_lines(results)
    costs = results.get("costs") or {}
    if costs:
        lines += ["", "## Communication and time", "", "| run | bytes sent per site per round | seconds per round |",
                  "|---|---|---|"]
        for run, c in costs.items():
            mb = c.get("bytes_per_round")
            lines.append(f"| {_title(run)} | {'–' if mb is None else f'{mb / 1e6:.2f} MB'} | "
                         f"{fmt(c.get('seconds_per_round'), 1)} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    runs = list(results["runs"])
    summ = summary(results)
    task = get(results["kind"])
    fig, ax = task.plot_bars(plt, runs, [_title(r) for r in runs], summ, results)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bars.png", dpi=120)
    plt.close(fig)
    names.append("bars.png")

    curves = {run: per_site for run, per_site in (results.get("curves") or {}).items()
              if any(per_site.values())}
    if curves:
        sites = sorted({site for per_site in curves.values() for site in per_site})
        colours = {site: plt.cm.tab10(i % 10) for i, site in enumerate(sites)}
        fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves) + 1.5, 3.8), sharey=True,
                                 squeeze=False)
        for ax, (run, per_site) in zip(axes[0], curves.items()):
            rounds = 0
            for site, ys in sorted(per_site.items()):
                pts = [(i + 1, y) for i, y in enumerate(ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, lw=1, color=colours[site], label=site)
                rounds = max(rounds, len(ys))
            local = (results.get("local_curves") or {}).get(run) or {}
            for curves_of, style in ((per_site, dict(color="black", lw=2.5, label="global model, mean over sites")),
                                     (local, dict(color="grey", lw=1.5, ls="--",
                                                  label="after local epochs, mean over sites"))):
                mean = [mean_or_none(ys[i] if i < len(ys) else None for ys in curves_of.values())
                        for i in range(rounds)]
                pts = [(i + 1, y) for i, y in enumerate(mean) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), **style)
            ax.set_xticks(range(1, rounds + 1))
            ax.set_xlabel("round")
            ax.set_title(_title(run))
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(task.curve_label)
        handles, labels = axes[0][-1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
        fig.savefig(out / "rounds.png", dpi=120)
        plt.close(fig)
        names.append("rounds.png")
    return names + plot_cross_site(results, out, plt) + plot_privacy(results, out, plt)


# ---- over split seeds (`fedtune compare --seeds 0,1,2`) ------------------------------------------------------
def seed_summary(per_seed: dict) -> dict:
    """{run: {path: {"mean", "sd", "min", "max", "seeds", "values"}}}: per split seed, the mean over sites of each
    interval metric on the test splits (`per_seed`: {seed: results of one comparison})."""
    import numpy as np

    first = next(iter(per_seed.values()))
    paths = get(first["kind"]).interval_paths()
    out: dict = {}
    for run in first["runs"]:
        out[run] = {}
        for p in paths:
            values = {s: mean_or_none(metric_at(m, p) for m in r["runs"].get(run, {}).values())
                      for s, r in per_seed.items()}
            vals = np.array([v for v in values.values() if v is not None], dtype=float)
            out[run][p] = {"values": values, "seeds": len(vals),
                           "mean": float(vals.mean()) if len(vals) else None,
                           "sd": float(vals.std(ddof=1)) if len(vals) > 1 else None,
                           "min": float(vals.min()) if len(vals) else None,
                           "max": float(vals.max()) if len(vals) else None}
    return out


def seeds_markdown(per_seed: dict, summ: dict, plots: list[str]) -> str:
    first = next(iter(per_seed.values()))
    task = get(first["kind"])
    paths = task.interval_paths()
    seeds = ", ".join(str(s) for s in per_seed)
    lines = [f"# fedtune report: {first['kind']}, local vs federated over {len(per_seed)} split seeds ({seeds})", "",
             f"- each seed re-splits every site into train / validation / test and retrains every run; per seed, "
             f"the number is the mean over sites of the test-split metric (scored once), and the table gives the "
             f"mean ± standard deviation over seeds [min, max], n = seeds",
             "- one report per seed, with per-site n and bootstrap intervals: "
             + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in per_seed), "",
             "| run | " + " | ".join(paths) + " |", "|---|" + "---|" * len(paths)]
    for run, per_path in summ.items():
        cells = []
        for p in paths:
            c = per_path[p]
            sd = "" if c["sd"] is None else f" ± {fmt(c['sd'])}"
            cells.append(f"{fmt(c['mean'])}{sd} [{fmt(c['min'])}, {fmt(c['max'])}] (n={c['seeds']})")
        lines.append(f"| {_title(run)} | " + " | ".join(cells) + " |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plot_seeds(per_seed: dict, summ: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = get(next(iter(per_seed.values()))["kind"])
    key = task.interval_paths()[0]
    runs = list(summ)
    fig, ax = plt.subplots(figsize=(1.4 * len(runs) + 2, 3.8))
    for i, run in enumerate(runs):
        c = summ[run][key]
        if c["mean"] is not None:
            ax.bar(i, c["mean"], 0.6, yerr=c["sd"] or 0, capsize=4, color=plt.cm.tab10(i % 10))
        for v in c["values"].values():
            if v is not None:
                ax.plot(i, v, "k.", ms=5)
    ax.set_xticks(range(len(runs)), [_title(r) for r in runs], rotation=15)
    ax.set_ylabel(f"test {task.key_metric_label} (mean over sites)")
    ax.set_title(f"Over {len(per_seed)} split seeds: mean ± sd, dots = seeds")
    ax.axhline(0, color="grey", lw=0.5)
    fig.tight_layout()
    fig.savefig(out / "seeds.png", dpi=120)
    plt.close(fig)
    return ["seeds.png"]


def write_seeds_report(per_seed: dict, out: str | Path) -> Path:
    """The report over split seeds (`per_seed`: {seed: results}; each seed's own report is in `out/seed-<s>/`):
    report.md, results.json ({"seeds": {seed: results}, "summary": ...}) and seeds.png in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summ = seed_summary(per_seed)
    (out / "results.json").write_text(json.dumps({"kind": next(iter(per_seed.values()))["kind"],
                                                  "seeds": {str(s): r for s, r in per_seed.items()},
                                                  "summary": summ}, indent=2))
    plots = plot_seeds(per_seed, summ, out)
    path = out / "report.md"
    path.write_text(seeds_markdown(per_seed, summ, plots))
    return path


def write_report(results: dict, out: str | Path) -> Path:
    """Write report.md, results.json and the plots into `out`; returns the path of report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plots = plot(results, out)
    path = out / "report.md"
    path.write_text(markdown(results, plots))
    return path

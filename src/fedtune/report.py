"""The local-vs-federated report: a Markdown summary table, PNG plots and the raw numbers as JSON.

Input is one dict (what `fedtune compare` collects):

    {"kind": "fitness" | "sentiment",
     "sites": ["site-1", ...],
     "runs": {"local": {site: metrics}, "fedavg": {site: metrics}, "pooled": {site: metrics}, ...},
     "curves": {run: {site: [key metric after round 1, 2, ...]}},        (optional)
     "costs": {run: {"bytes_per_round": int, "seconds_per_round": float}}, (optional)
     "notes": [str, ...]}                                                 (optional)

`metrics` are what `fedtune.train.Trainer.evaluate` returns on that site's validation split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RUN_TITLES = {"local": "local only", "fedavg": "FedAvg", "pooled": "pooled (upper bound)"}


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _title(run: str) -> str:
    if run.startswith("fedavg-"):
        return f"FedAvg {run[len('fedavg-'):]}"
    return RUN_TITLES.get(run, run)


def task_names(results: dict) -> list[str]:
    for per_site in results["runs"].values():
        for m in per_site.values():
            if "tasks" in m:
                return list(m["tasks"])
    return []


def summary(results: dict) -> dict:
    """Mean over sites of each run's headline metrics (per task for fitness)."""
    out = {}
    for run, per_site in results["runs"].items():
        sites = list(per_site.values())
        if results["kind"] == "fitness":
            out[run] = {"mean_pearson": _mean(m.get("mean_pearson") for m in sites),
                        "mean_spearman": _mean(m.get("mean_spearman") for m in sites),
                        "tasks": {t: {k: _mean(m["tasks"].get(t, {}).get(k) for m in sites)
                                      for k in ("pearson", "spearman", "rmse_z")} for t in task_names(results)}}
        else:
            out[run] = {"accuracy": _mean(m.get("accuracy") for m in sites),
                        "macro_f1": _mean(m.get("macro_f1") for m in sites)}
    return out


def markdown(results: dict, plots: list[str]) -> str:
    kind, runs = results["kind"], list(results["runs"])
    summ = summary(results)
    lines = [f"# fedtune report: {kind}, local vs federated", ""]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    if kind == "fitness":
        lines += ["## Mean over sites (validation split of each site)", "",
                  "| task | " + " | ".join(f"{_title(r)} Pearson" for r in runs) + " | "
                  + " | ".join(f"{_title(r)} Spearman" for r in runs) + " |",
                  "|---|" + "---|" * (2 * len(runs))]
        for t in task_names(results):
            lines.append(f"| {t} | " + " | ".join(_fmt(summ[r]["tasks"][t]["pearson"]) for r in runs) + " | "
                         + " | ".join(_fmt(summ[r]["tasks"][t]["spearman"]) for r in runs) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{_fmt(summ[r]['mean_pearson'])}**" for r in runs) + " | "
                     + " | ".join(_fmt(summ[r]["mean_spearman"]) for r in runs) + " |")
        lines += ["", "## Per site, task and assay", "",
                  "RMSE in each assay's own units; Pearson / Spearman of predictions vs measurements.", "",
                  "| site | task | assay | n | " + " | ".join(f"{_title(r)} RMSE / Pearson / Spearman" for r in runs)
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
                        cells.append(f"{_fmt(a.get('rmse'))} / {_fmt(a.get('pearson'))} / {_fmt(a.get('spearman'))}")
                    lines.append(f"| {site} | {t} | {assay} | {am['n']} | " + " | ".join(cells) + " |")
    else:
        lines += ["## Validation accuracy and macro-F1 per site", "",
                  "| site | " + " | ".join(f"{_title(r)} acc / F1" for r in runs) + " |",
                  "|---|" + "---|" * len(runs)]
        for site in results["sites"]:
            lines.append(f"| {site} | " + " | ".join(
                f"{_fmt(results['runs'][r].get(site, {}).get('accuracy'))} / "
                f"{_fmt(results['runs'][r].get(site, {}).get('macro_f1'))}" for r in runs) + " |")
        lines.append("| **mean** | " + " | ".join(
            f"**{_fmt(summ[r]['accuracy'])}** / {_fmt(summ[r]['macro_f1'])}" for r in runs) + " |")
    costs = results.get("costs") or {}
    if costs:
        lines += ["", "## Communication and time", "", "| run | bytes sent per site per round | seconds per round |",
                  "|---|---|---|"]
        for run, c in costs.items():
            mb = c.get("bytes_per_round")
            lines.append(f"| {_title(run)} | {'–' if mb is None else f'{mb / 1e6:.2f} MB'} | "
                         f"{_fmt(c.get('seconds_per_round'), 1)} |")
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
    if results["kind"] == "fitness":
        tasks = task_names(results)
        fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 4))
        width = 0.8 / len(runs)
        for i, r in enumerate(runs):
            vals = [summ[r]["tasks"][t]["pearson"] or 0.0 for t in tasks]
            ax.bar(np.arange(len(tasks)) + i * width, vals, width, label=_title(r))
        ax.set_xticks(np.arange(len(tasks)) + width * (len(runs) - 1) / 2, tasks, rotation=20)
        ax.set_ylabel("Pearson (mean over sites)")
        ax.set_title("Per-task validation Pearson")
        ax.axhline(0, color="grey", lw=0.5)
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(runs))
        ax.bar(x - 0.2, [summ[r]["accuracy"] or 0 for r in runs], 0.4, label="accuracy")
        ax.bar(x + 0.2, [summ[r]["macro_f1"] or 0 for r in runs], 0.4, label="macro-F1")
        ax.set_xticks(x, [_title(r) for r in runs])
        ax.set_ylim(0, 1)
        ax.set_title("Validation accuracy and macro-F1 (mean over sites)")
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
            mean = [_mean(ys[i] if i < len(ys) else None for ys in per_site.values()) for i in range(rounds)]
            pts = [(i + 1, y) for i, y in enumerate(mean) if y is not None]
            if pts:
                ax.plot(*zip(*pts), color="black", lw=2.5, label="mean over sites")
            ax.set_xticks(range(1, rounds + 1))
            ax.set_xlabel("round")
            ax.set_title(_title(run))
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("validation mean Pearson" if results["kind"] == "fitness" else "validation accuracy")
        handles, labels = axes[0][-1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
        fig.savefig(out / "rounds.png", dpi=120)
        plt.close(fig)
        names.append("rounds.png")
    return names


def write_report(results: dict, out: str | Path) -> Path:
    """Write report.md, results.json and the plots into `out`; returns the path of report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plots = plot(results, out)
    path = out / "report.md"
    path.write_text(markdown(results, plots))
    return path

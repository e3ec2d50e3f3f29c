"""The report's privacy section (`fedtune compare --dp-epsilon ...`): per federated run, the DP target, the
epsilon each site's accountant says it spent, the key metric on the test splits and the membership-inference
attack's AUC (`fedtune.membership`), as a table and a utility-vs-epsilon plot."""

from __future__ import annotations

from pathlib import Path

from .tasks import get
from .train.bootstrap import metric_at
from .train.metrics import mean_or_none


def privacy_rows(results: dict) -> list[dict]:
    """One row per federated run: run, target epsilon (None: no DP), largest epsilon spent by a site, the mean
    over sites of the key metric on the test splits, the attack's AUC, the sites that refused."""
    key = get(results["kind"]).key_metric
    rows = []
    for run, p in (results.get("privacy") or {}).items():
        spent = [s.get("epsilon") for s in (p.get("sites") or {}).values() if s.get("epsilon") is not None]
        dp = p.get("dp") or {}
        rows.append({"run": run, "target": dp.get("epsilon") or None, "noise": dp.get("noise_multiplier") or None,
                     "epsilon": max(spent) if spent else None,
                     "metric": mean_or_none(metric_at(m, key) for m in results["runs"].get(run, {}).values()),
                     "auc": (p.get("membership") or {}).get("auc"), "refused": sorted(p.get("refused") or {})})
    return rows


def privacy_lines(results: dict) -> list[str]:
    rows = privacy_rows(results)
    if not any(r["target"] or r["noise"] or r["refused"] for r in rows):
        return []
    task = get(results["kind"])
    lines = ["", "## Differential privacy: utility and a membership-inference attack", "",
             f"Each site's epsilon is its own accountant's (delta as set, per training row, over every round); "
             f"{task.key_metric_label} is the mean over sites on the test splits; the attack is a loss threshold on "
             f"each site's final model, its training rows against its test rows (AUC 0.5: it learns nothing).", "",
             f"| run | target epsilon | epsilon spent (largest site) | {task.key_metric_label} (test) | "
             f"attack AUC | refused by |", "|---|---|---|---|---|---|"]

    def f(v, spec=".3f"):
        return "–" if v is None else format(v, spec)

    for r in rows:
        target = f(r["target"], "g") if r["target"] else ("noise " + f(r["noise"], ".3g") if r["noise"] else "no DP")
        lines.append(f"| {r['run']} | {target} | {f(r['epsilon'], '.3g')} | {f(r['metric'])} | {f(r['auc'])} | "
                     f"{', '.join(r['refused']) or '–'} |")
    return lines


def plot_privacy(results: dict, out: Path, plt) -> list[str]:
    """privacy.png: the key metric and the attack's AUC against epsilon (no DP drawn at the right)."""
    rows = [r for r in privacy_rows(results) if r["metric"] is not None]
    dp = sorted((r for r in rows if r["epsilon"] is not None), key=lambda r: r["epsilon"])
    plain = [r for r in rows if r["target"] is None and r["noise"] is None]
    if not dp:
        return []
    task = get(results["kind"])
    xs = [r["epsilon"] for r in dp]
    x_plain = max(xs) * 4
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(xs, [r["metric"] for r in dp], "o-", label=f"{task.key_metric_label} (test)")
    ax.plot(xs, [r["auc"] for r in dp], "s--", label="membership attack AUC")
    for r in plain:
        ax.plot([x_plain], [r["metric"]], "o", color="C0")
        if r["auc"] is not None:
            ax.plot([x_plain], [r["auc"]], "s", color="C1")
    ax.set_xscale("log")
    ax.set_xticks(xs + ([x_plain] if plain else []))
    ax.set_xticklabels([f"{x:.2g}" for x in xs] + (["no DP"] if plain else []))
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("epsilon spent (largest site)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "privacy.png", dpi=120)
    plt.close(fig)
    return ["privacy.png"]

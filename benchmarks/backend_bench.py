"""Trunk backends on CPU (`fedtune.models.backends`): speed and agreement with fp32 on the FLAb antibodies.

Every FLAb antibody (heavy + light) is embedded with AntiBERTy under each backend (the same length-sorted
batches for all). Heads: one ridge regression per assay fitted on the fp32 embeddings, 5-fold by antibody
(out-of-fold predictions are the task scores; the frozen trunk + heads shape fedtune trains by default). For
each backend: antibodies/s, Pearson of its task scores against fp32's over every (antibody, assay) score, and
the validation metric (per-assay Pearson of out-of-fold scores vs labels) next to fp32's.

    python benchmarks/backend_bench.py --out benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedtune.data import load_flab  # noqa: E402
from fedtune.models import TrunkConfig  # noqa: E402
from fedtune.models.backends import BACKENDS, apply_backend  # noqa: E402
from fedtune.tasks import build_model  # noqa: E402


def embed(model, heavy, light, batch: int) -> np.ndarray:
    """Pooled [N, 2H] embeddings, in length-sorted batches."""
    order = np.argsort([len(h) + len(lt) for h, lt in zip(heavy, light)])
    out = np.zeros((len(heavy), 2 * model.trunk.hidden_size), np.float32)
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            out[idx] = model.embed([heavy[j] for j in idx], [light[j] for j in idx]).float().numpy()
    return out


def speed(models: dict, heavy, light, batch: int, rounds: int) -> tuple[dict, dict]:
    """Round-robin timing (each round times every backend on the same antibodies, so a change in the load of
    this shared machine hits all of them alike): ({backend: per-round wall seconds}, {backend: per-round CPU
    seconds of this process}). CPU seconds barely move with the load of other processes: on a shared
    machine they are the fairer comparison."""
    wall, cpu = {b: [] for b in models}, {b: [] for b in models}
    for m in models.values():
        embed(m, heavy[:batch], light[:batch], batch)          # first-call overheads off the clock
    for _ in range(rounds):
        for b, m in models.items():
            t0, c0 = time.perf_counter(), time.process_time()
            embed(m, heavy, light, batch)
            wall[b].append(time.perf_counter() - t0)
            cpu[b].append(time.process_time() - c0)
    return wall, cpu


def oof_scores(emb: dict[str, np.ndarray], labels: np.ndarray, folds: int = 5, alpha: float = 10.0) -> dict:
    """Ridge per assay fitted on fp32 embeddings of 4 folds, applied to the held-out fold's embeddings of
    every backend: {backend: [N, A] scores (NaN where unlabelled)}."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler
    n, a = labels.shape
    fold = np.random.default_rng(0).permutation(n) % folds
    scores = {b: np.full((n, a), np.nan) for b in emb}
    for j in range(a):
        has = np.isfinite(labels[:, j])
        for f in range(folds):
            train, test = has & (fold != f), has & (fold == f)
            if train.sum() < 10 or not test.any():
                continue
            scaler = StandardScaler().fit(emb["fp32"][train])
            ridge = Ridge(alpha=alpha).fit(scaler.transform(emb["fp32"][train]), labels[train, j])
            for b, e in emb.items():
                scores[b][test, j] = ridge.predict(scaler.transform(e[test]))
    return scores


def pearson(x, y) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 2 else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flab", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flab")
    ap.add_argument("--trunk", default="antiberty")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--speed-items", type=int, default=32, help="antibodies per timed round")
    ap.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads while timing")
    ap.add_argument("--agree-threads", type=int, default=2, help="torch threads for the agreement pass")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (the median counts)")
    ap.add_argument("--limit", type=int, default=0, help="first N antibodies only (0: all)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default="cpu", help="results file: backend_bench-<tag>.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    data = load_flab(args.flab)
    n = args.limit or len(data)
    heavy, light, labels = list(data.heavy[:n]), list(data.light[:n]), data.labels[:n]
    torch.set_num_threads(args.threads)             # before the backends: ONNX Runtime takes it at creation
    models, rows = {}, {}
    for b in args.backends.split(","):
        model = build_model("fitness", TrunkConfig(source=args.trunk, mode="frozen"), data.assays).eval()
        t0 = time.perf_counter()
        models[b] = apply_backend(model, b)
        rows[b] = {"prepare_seconds": time.perf_counter() - t0}
    rng = np.random.default_rng(1)
    pick = rng.choice(n, args.speed_items, replace=False)
    wall, cpu = speed(models, [heavy[i] for i in pick], [light[i] for i in pick], args.batch, args.rounds)
    for b in models:
        rows[b].update(antibodies_per_s=args.speed_items / float(np.median(wall[b])), round_seconds=wall[b],
                       antibodies_per_cpu_s=args.speed_items / float(np.median(cpu[b])), round_cpu_seconds=cpu[b],
                       speedup_vs_fp32=float(np.median(np.array(wall["fp32"]) / np.array(wall[b]))),
                       cpu_speedup_vs_fp32=float(np.median(np.array(cpu["fp32"]) / np.array(cpu[b]))))
        print(f"{b:10s} {rows[b]['antibodies_per_s']:7.2f} antibodies/s  x{rows[b]['speedup_vs_fp32']:.2f} wall  "
              f"x{rows[b]['cpu_speedup_vs_fp32']:.2f} cpu", flush=True)
    torch.set_num_threads(args.agree_threads)
    slow = [b for b in models if rows[b]["cpu_speedup_vs_fp32"] < 0.5]
    for b in slow:                           # clearly slower than fp32: not a candidate, agreement not measured
        rows[b]["agreement"] = "not measured: under half fp32's speed"
    emb = {b: embed(m, heavy, light, args.batch) for b, m in models.items() if b not in slow}
    scores = oof_scores(emb, labels)
    base = scores["fp32"]
    keys = [a.key for a in data.assays]
    val = {b: {k: pearson(s[:, j], labels[:, j]) for j, k in enumerate(keys)} for b, s in scores.items()}
    for b in emb:
        r = rows[b]
        r["agreement"] = f"the first {n} of the {len(data)} FLAb antibodies"
        r["score_pearson_vs_fp32"] = pearson(scores[b].ravel(), base.ravel())
        r["embedding_pearson_vs_fp32"] = pearson(emb[b].ravel(), emb["fp32"].ravel())
        r["val_pearson_mean"] = float(np.nanmean(list(val[b].values())))
        r["val_pearson_max_abs_diff_vs_fp32"] = float(np.nanmax([abs(val[b][k] - val["fp32"][k]) for k in keys]))
        r["val_pearson"] = val[b]
        print(f"{b:10s} x{r['speedup_vs_fp32']:.2f}  score r={r['score_pearson_vs_fp32']:.5f}  "
              f"val mean {r['val_pearson_mean']:.4f}  max |dval| {r['val_pearson_max_abs_diff_vs_fp32']:.4f}")
    result = {"device": f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)",
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch": torch.__version__, "trunk": args.trunk, "antibodies": n, "batch": args.batch,
              "speed": f"median of {args.rounds} round-robin rounds of {args.speed_items} FLAb antibodies",
              "threads": args.threads, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "heads": "ridge per assay on fp32 embeddings, 5-fold by antibody (out-of-fold scores)",
              "backends": rows}
    try:
        import onnxruntime
        result["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"backend_bench-{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

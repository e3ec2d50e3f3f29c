"""`fedtune predict` at library scale: antibodies/s on a variant library and peak memory on a long input.

Library: `--variants` heavy-chain point mutants of `--parents` real FLAb antibodies (each variant keeps its
parent's light chain, so a library shares a handful of light chains), scored with all six fitness tasks.
Throughput runs (same library, same process, taking turns part by part; ratios within this run):
  - fp32 without the cache: today's path, every chain of every antibody through the trunk;
  - fp32 with the per-chain embedding cache: each light chain once, every heavy chain once.
  (Each further backend adds a run here: `--backends`.)
Memory: `fedtune predict` as its own process on inputs of `--memory-rows` rows (the library cycled, so with the
cache the run is quick and exercises reading, validation, heads and writing), RSS sampled with the rows read so
far (from the checkpoint) and the peak (VmHWM): flat means the peak does not grow with the rows.
`--memory-format parquet` runs them on a Parquet input into a Parquet output instead of CSV.

    python benchmarks/predict_bench.py --trunk tiny --variants 200 --memory-rows 2000 20000    # plumbing
    python benchmarks/predict_bench.py --trunk antiberty                                      # the real thing

The full sizes (20,000 variants; 100,000 and 1,000,000 rows) take hours at fp32 on 2 cores; the sizes run
are recorded in the result. Results go to `<out>/predict_bench-<cpu|cuda>.json`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedtune.bundle import save_bundle  # noqa: E402
from fedtune.data import SYNTHETIC_ASSAYS, AssayStats, synthetic_fitness  # noqa: E402
from fedtune.models import TrunkConfig  # noqa: E402
from fedtune.score.outputs import state_path  # noqa: E402
from fedtune.score.run import predict  # noqa: E402
from fedtune.tasks import build_model  # noqa: E402
from serve_bench import device_name, trunk_source  # noqa: E402

AA = "ACDEFGHIKLMNPQRSTVWY"
REPO = Path(__file__).resolve().parents[1]


def parents(flab: Path, n: int) -> list[tuple[str, str, str]]:
    """(name, heavy, light) of the first `n` distinct antibodies of a FLAb assay file."""
    out, seen = [], set()
    for f in sorted(flab.glob("*/*.csv")):
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row["heavy"] not in seen and len(out) < n:
                    seen.add(row["heavy"])
                    out.append((row.get("name") or f"parent-{len(out)}", row["heavy"], row["light"]))
        if len(out) == n:
            return out
    raise SystemExit(f"{flab}: fewer than {n} antibodies")


def variants(pars: list, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`n` distinct heavy-chain mutants, round-robin over the parents, each with its parent's light chain: point
    mutants of the parent while new ones are found (a parent of ~120 residues has ~2,300), then a further point
    mutation of one of its earlier variants (so 20,000 variants of 5 parents exist)."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    by_parent: dict[int, list[str]] = {i: [] for i in range(len(pars))}
    misses = [0] * len(pars)
    while len(out) < n:
        i = len(out) % len(pars)
        name, heavy, light = pars[i]
        base = heavy if misses[i] < 50 or not by_parent[i] else by_parent[i][int(rng.integers(len(by_parent[i])))]
        pos = int(rng.integers(len(base)))
        aa = str(rng.choice([a for a in AA if a != base[pos]]))
        mutant = base[:pos] + aa + base[pos + 1:]
        if mutant in seen or mutant == heavy:
            misses[i] += 1
            continue
        seen.add(mutant)
        by_parent[i].append(mutant)
        diff = [f"{heavy[j]}{j + 1}{mutant[j]}" for j in range(len(heavy)) if heavy[j] != mutant[j]]
        out.append((f"{name}-{'-'.join(diff)}", mutant, light))
    return out


def write_library(path: Path, rows: list, n_rows: int | None = None) -> Path:
    """The rows (cycled up to `n_rows`) as a CSV of id, heavy, light."""
    n_rows = n_rows or len(rows)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "heavy", "light"])
        for i in range(n_rows):
            w.writerow(rows[i % len(rows)])
    return path


def write_parquet_library(path: Path, rows: list, n_rows: int) -> Path:
    """As `write_library`, a Parquet file of row groups of 65,536 rows (written group by group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("heavy", pa.string()), ("light", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n_rows, 65_536):
            group = [rows[i % len(rows)] for i in range(start, min(start + 65_536, n_rows))]
            writer.write_table(pa.table(list(zip(*group)), schema=schema))
    return path


def make_bundle(trunk: str, tmp: Path) -> Path:
    torch.manual_seed(0)
    cfg = TrunkConfig(trunk_source(trunk, "antibody", tmp), mode="frozen")
    return save_bundle(tmp / "fitness", build_model("fitness", cfg, SYNTHETIC_ASSAYS).eval(), trunk_cfg=cfg,
                       stats=AssayStats.fit(synthetic_fitness(64, seed=0)),
                       provenance={"how": "predict_bench (random heads)"})


def scores(path: Path) -> np.ndarray:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return np.array([[float(v) for v in row[3:]] for row in reader])


def throughput(bundle: Path, parts: list[Path], tmp: Path, configs: list[tuple[str, str, float]], args) -> list[dict]:
    """Each configuration (name, backend, cache MiB) scores each part of the library, the configurations taking
    turns part by part (so a change of load on a shared machine hits them alike). Time: the scoring loop of
    each `predict` call (`Summary.seconds`: bundle loading excluded); the cache starts empty in each call."""
    runs = {name: {"backend": b, "cache_mb": mb, "antibodies": 0, "seconds": 0.0, "cache": {"hits": 0, "misses": 0},
                   "outputs": []} for name, b, mb in configs}
    for i, part in enumerate(parts):
        for name, backend, cache_mb in configs:
            out = tmp / f"{name}-{i}.csv"
            s = predict(bundle, part, out, backend=backend, cache_mb=cache_mb, batch_size=args.batch_size,
                        device=args.device, progress=False)
            r = runs[name]
            r["antibodies"] += s.written
            r["seconds"] += s.seconds
            r["outputs"].append(out)
            for k in ("hits", "misses"):
                r["cache"][k] += s.cache.get(k, 0)
            print(f"part {i + 1}/{len(parts)} {name}: {s.written / s.seconds:.2f} antibodies/s", flush=True)
    base = np.concatenate([scores(o) for o in runs[configs[0][0]]["outputs"]])
    out = []
    for name, r in runs.items():
        got = np.concatenate([scores(o) for o in r.pop("outputs")])
        r.update(name=name, antibodies_per_s=r["antibodies"] / r["seconds"],
                 max_abs_diff_vs_fp32_no_cache=float(np.max(np.abs(got - base))))
        r["speedup_vs_fp32_no_cache"] = r["antibodies_per_s"] / (runs[configs[0][0]]["antibodies"]
                                                                  / runs[configs[0][0]]["seconds"])
        out.append(r)
    return out


def rss_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes (0, 0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
          if line.startswith(("VmRSS", "VmHWM"))}
    return kb.get("VmRSS", 0) * 1024, kb.get("VmHWM", 0) * 1024


def memory(bundle: Path, rows: list, n_rows: int, tmp: Path, args) -> dict:
    fmt = args.memory_format
    write = write_parquet_library if fmt == "parquet" else write_library
    library = write(tmp / f"mem-{n_rows}.{fmt}", rows, n_rows)
    out = tmp / f"mem-{n_rows}-out.{fmt}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "fedtune", "predict", "--bundle", str(bundle), "--input", str(library), "--out",
           str(out), "--batch-size", str(args.batch_size), "--device", args.device, "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples, peak = [], 0
    while proc.poll() is None:
        rss, hwm = rss_of(proc.pid)
        peak = max(peak, hwm)
        try:
            done = json.loads(state_path(out).read_text())["rows_read"]
        except (OSError, ValueError, KeyError):
            done = 0
        if rss:
            samples.append([done, round(rss / 2**20, 1)])
        time.sleep(args.sample_s)
    err = proc.stderr.read()
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"predict on {n_rows} rows failed ({proc.returncode}): {err[-2000:]}")
    print(f"memory, {n_rows} rows: peak {peak / 2**20:.0f} MiB in {secs:.0f} s", flush=True)
    kept = samples[:: max(1, len(samples) // 20)] + samples[-1:]       # about 20 points, with the last
    for p in (library, out):
        p.unlink()
    return {"rows": n_rows, "format": fmt, "seconds": secs, "rows_per_s": n_rows / secs,
            "peak_rss_mib": round(peak / 2**20, 1),
            "rss_mib_by_rows_read": kept, "summary": err.strip().splitlines()[-1] if err.strip() else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trunk", default="antiberty", help="antiberty | tiny | a local HF folder")
    p.add_argument("--flab", type=Path, default=REPO.parent / "shared" / "data" / "flab")
    p.add_argument("--parents", type=int, default=5)
    p.add_argument("--variants", type=int, default=20000, help="library size for the throughput runs")
    p.add_argument("--memory-rows", type=int, nargs="*", default=[100_000, 1_000_000],
                   help="input sizes for the memory runs (the library cycled)")
    p.add_argument("--memory-format", choices=["csv", "parquet"], default="csv",
                   help="input and output format of the memory runs")
    p.add_argument("--memory-library", type=int, default=1000, help="distinct antibodies cycled in the memory runs")
    p.add_argument("--backends", nargs="+", default=["fp32"], help="backends measured with the cache")
    p.add_argument("--rounds", type=int, default=4, help="library parts; the configurations take turns per part")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-mb", type=float, default=256.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling interval")
    p.add_argument("--add-memory", type=Path, help="an earlier result: keep its runs, add the memory runs")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    pars = parents(args.flab, args.parents)
    lib = variants(pars, max(args.variants, args.memory_library))
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(args.trunk, tmp)
        if args.add_memory:              # keep an earlier result's runs, add memory runs to it
            earlier = json.loads(args.add_memory.read_text())
            mem = earlier["memory"]
            for n in args.memory_rows:
                mem.append(memory(bundle, lib[:args.memory_library], n, tmp, args))
                write_result(args, pars, earlier["throughput"], mem, earlier["sizes_run"])
            return
        k = max(1, args.rounds)
        step = -(-args.variants // k)
        parts = [write_library(tmp / f"library-{i}.csv", lib[i * step:(i + 1) * step]) for i in range(k)
                 if lib[i * step:(i + 1) * step]]
        predict(bundle, write_library(tmp / "warm.csv", lib[:16]), tmp / "warm-out.csv", progress=False,
                device=args.device)                                     # kernels, page cache
        configs = [("fp32-no-cache", "fp32", 0.0)] + [(f"{b}-cache", b, args.cache_mb) for b in args.backends]
        runs = throughput(bundle, parts, tmp, configs, args)
        mem = []
        for n in args.memory_rows:       # the result is rewritten after each run: a long one may be stopped
            write_result(args, pars, runs, mem)
            mem.append(memory(bundle, lib[:args.memory_library], n, tmp, args))
    write_result(args, pars, runs, mem)


def write_result(args, pars, runs, mem, sizes: dict | None = None) -> None:
    result = {
        "device": device_name(args.device),
        "torch": torch.__version__,
        "trunk": args.trunk,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1_5_15_min": [round(x, 1) for x in os.getloadavg()],    # the machine may be shared
        "sizes_run": {**(sizes or {"variants": args.variants, "rounds": args.rounds, "parents": args.parents,
                                   "memory_library": args.memory_library, "batch_size": args.batch_size,
                                   "full_sizes": {"variants": 20000, "memory_rows": [100_000, 1_000_000]}}),
                      "memory_rows": [m["rows"] for m in mem]},
        "library": {"parents": [name for name, _, _ in pars],
                    "what": "heavy-chain point mutants (further mutations of them once a parent runs out), each with "
                            "its parent's light chain; all six fitness tasks (random heads on the trunk)"},
        "throughput": runs,
        "memory": mem,
        "memory_peak_ratio_largest_vs_smallest": (mem[-1]["peak_rss_mib"] / mem[0]["peak_rss_mib"]) if mem else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / f"predict_bench-{'cuda' if args.device.startswith('cuda') else 'cpu'}.json"
    dest.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()

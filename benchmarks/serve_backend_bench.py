"""The service with a fast trunk backend vs fp32, and gRPC vs HTTP, measured in the same run.

Three `fedtune serve` processes on the same fitness bundle: `--backend fp32` and the backend given, both with
the embedding cache off (so every antibody costs its trunk passes, whatever was sent before), and fp32 with the
cache on (`--cache-mb`), each also with `--grpc-port`. They are driven in turns: every round sends new antibodies
(no repeats, within or across rounds) to each (server, transport) pair with the same number of concurrent
clients, so a change in the load of a shared machine hits every configuration alike. Reported per
configuration: antibodies/s (median over rounds), p50 / p99 latency over every request; the ratios fp32 ->
backend and HTTP -> gRPC; and, separately, the cache's effect on this workload without repeats (fp32 with the
cache vs without, over HTTP, with the cache's hit and miss counters from /metrics). HTTP requests are /v2
infer with JSON tensors; gRPC requests are ModelInfer from tritonclient.grpc.aio (raw tensor bytes).

    python benchmarks/serve_backend_bench.py --trunk antiberty --backend onnx-int8 --antibodies 32 --rounds 2

Results go to `<out>/serve_backend_bench-<tag>.json` (`--tag`, default cpu).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from serve_bench import chains, free_port, trunk_source  # noqa: E402

from fedtune.bundle import save_bundle  # noqa: E402
from fedtune.data import SYNTHETIC_ASSAYS, AssayStats, synthetic_fitness  # noqa: E402
from fedtune.models import TrunkConfig  # noqa: E402
from fedtune.tasks import build_model  # noqa: E402


CACHED = "fp32+cache"        # the fp32 server with the embedding cache on


def start(bundle: Path, backend: str, args, cache_mb: float = 0.0) -> tuple[subprocess.Popen, str, str]:
    import httpx
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "FEDTUNE_DEVICE": "cpu", "FEDTUNE_MAX_BATCH": str(args.max_batch),
           "FEDTUNE_MAX_ITEMS": "256", "FEDTUNE_MAX_BODY_BYTES": str(16 << 20), "FEDTUNE_LOG_LEVEL": "warning",
           "FEDTUNE_EMBEDDING_CACHE_MB": str(cache_mb)}
    cmd = [sys.executable, "-c", "from fedtune.cli import main; main()", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--grpc-port", str(grpc_port), "--bundle", str(bundle), "--backend", backend]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the {backend} server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return proc, url, f"127.0.0.1:{grpc_port}"
        except httpx.TransportError:
            pass
        time.sleep(0.5)


async def drive_http(url: str, batches: list[tuple[list, list]], concurrency: int) -> tuple[float, list, list]:
    import httpx
    queue, lat, outs = list(enumerate(batches))[::-1], [], [None] * len(batches)
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        async def worker():
            while queue:
                i, (h, lt) = queue.pop()
                body = {"inputs": [{"name": "heavy", "shape": [len(h)], "datatype": "BYTES", "data": h},
                                   {"name": "light", "shape": [len(lt)], "datatype": "BYTES", "data": lt}]}
                t0 = time.perf_counter()
                r = await client.post("/v2/models/fitness/infer", json=body)
                lat.append(time.perf_counter() - t0)
                r.raise_for_status()
                outs[i] = {o["name"]: np.array(o["data"], np.float32) for o in r.json()["outputs"]}
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, lat, outs


async def drive_grpc(address: str, batches: list[tuple[list, list]], concurrency: int) -> tuple[float, list, list]:
    from tritonclient.grpc import InferInput
    from tritonclient.grpc.aio import InferenceServerClient
    queue, lat, outs = list(enumerate(batches))[::-1], [], [None] * len(batches)
    async with InferenceServerClient(address) as client:
        async def worker():
            while queue:
                i, (h, lt) = queue.pop()
                inputs = []
                for name, values in (("heavy", h), ("light", lt)):
                    t = InferInput(name, [len(values)], "BYTES")
                    t.set_data_from_numpy(np.array(values, dtype=object))
                    inputs.append(t)
                t0 = time.perf_counter()
                r = await client.infer("fitness", inputs, client_timeout=900)
                lat.append(time.perf_counter() - t0)
                outs[i] = {o.name: r.as_numpy(o.name) for o in r.get_response().outputs}
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, lat, outs


def max_diff(a: list[dict], b: list[dict]) -> float:
    """The largest absolute difference between two runs' answers to the same requests."""
    return max(float(np.max(np.abs(x[n] - y[n]))) for x, y in zip(a, b) for n in x)


def scrape_cache(url: str) -> dict:
    """The cache's hit and miss counters, from the server's Prometheus text at /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        if fam.name in ("fedtune_embedding_cache_hits", "fedtune_embedding_cache_misses"):
            out[fam.name.rsplit("_", 1)[1]] = sum(s.value for s in fam.samples if s.name.endswith("_total"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trunk", default="tiny", help="tiny | antiberty | a local HF folder")
    p.add_argument("--backend", default="int8", help="the fast backend to compare with fp32")
    p.add_argument("--antibodies", type=int, default=32, help="antibodies per configuration and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--per-request", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--cache-mb", type=float, default=64.0, help="embedding cache of the fp32+cache server")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--tag", default="cpu", help="results file: serve_backend_bench-<tag>.json")
    args = p.parse_args()
    k = args.per_request

    def batches_of(seed: int) -> list[tuple[list, list]]:
        heavy, light = chains(args.antibodies, seed=seed)
        return [(heavy[i:i + k], light[i:i + k]) for i in range(0, args.antibodies, k)]

    with tempfile.TemporaryDirectory(prefix="serve-backend-bench-") as tmp:
        torch.manual_seed(0)
        cfg = TrunkConfig(trunk_source(args.trunk, "antibody", Path(tmp)), mode="frozen")
        bundle = save_bundle(Path(tmp) / "fitness", build_model("fitness", cfg, SYNTHETIC_ASSAYS).eval(),
                             trunk_cfg=cfg, stats=AssayStats.fit(synthetic_fitness(64, seed=0)))
        servers = {b: start(bundle, b, args) for b in ("fp32", args.backend)}
        servers[CACHED] = start(bundle, "fp32", args, cache_mb=args.cache_mb)
        configs = [(b, t) for b in ("fp32", args.backend) for t in ("http", "grpc")] + [(CACHED, "http")]
        runs = {c: {"seconds": [], "latencies": []} for c in configs}
        answers = {}
        try:
            warm = batches_of(1000)[:1]
            for b, (_, url, address) in servers.items():      # first-request overheads off the clock
                asyncio.run(drive_http(url, warm, 1))
                asyncio.run(drive_grpc(address, warm, 1))
            before = scrape_cache(servers[CACHED][1])           # the warm-up's counts are not the workload's
            for r in range(args.rounds):
                batches = batches_of(1 + r)                    # new antibodies every round
                for b, t in configs:
                    _, url, address = servers[b]
                    secs, lat, outs = asyncio.run(drive_http(url, batches, args.concurrency) if t == "http"
                                                  else drive_grpc(address, batches, args.concurrency))
                    runs[(b, t)]["seconds"].append(secs)
                    runs[(b, t)]["latencies"] += lat
                    answers[(b, t)] = outs
                    print(f"round {r}: {b:10s} {t:4s} {args.antibodies / secs:7.2f} antibodies/s", flush=True)
            after = scrape_cache(servers[CACHED][1])
            cache_counts = {k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "misses")}
        finally:
            for proc, _, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)

    def agree(a, b) -> float:
        x = np.concatenate([np.concatenate([o[n].ravel() for n in sorted(o)]) for o in answers[a]])
        y = np.concatenate([np.concatenate([o[n].ravel() for n in sorted(o)]) for o in answers[b]])
        return float(np.corrcoef(x, y)[0, 1])

    rows = {}
    for (b, t), run in runs.items():
        rows[f"{b}/{t}"] = {"backend": b, "transport": t,
                            "antibodies_per_s": args.antibodies / float(np.median(run["seconds"])),
                            "round_seconds": run["seconds"],
                            "latency_p50_ms": float(np.percentile(run["latencies"], 50) * 1000),
                            "latency_p99_ms": float(np.percentile(run["latencies"], 99) * 1000)}
    fast = args.backend
    rate = {c: rows[c]["antibodies_per_s"] for c in rows}
    result = {
        "device": f"cpu ({platform.machine()}, {os.cpu_count()} cores; {torch.backends.cpu.get_cpu_capability()})",
        "torch": torch.__version__, "trunk": args.trunk, "backend": fast,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "size": {"antibodies_per_round": args.antibodies, "rounds": args.rounds, "concurrency": args.concurrency,
                 "items_per_request": k, "chains": "random, heavy 115-130 / light 105-115 residues"},
        "configurations": rows,
        "speedup_backend_vs_fp32": {"http": rate[f"{fast}/http"] / rate["fp32/http"],
                                    "grpc": rate[f"{fast}/grpc"] / rate["fp32/grpc"]},
        "speedup_grpc_vs_http": {b: rate[f"{b}/grpc"] / rate[f"{b}/http"] for b in ("fp32", fast)},
        "cache_effect_no_repeats": {
            "what": "fp32 with the embedding cache vs without, HTTP, every antibody new (no repeats)",
            "cache_mb": args.cache_mb, "speedup": rate[f"{CACHED}/http"] / rate["fp32/http"],
            "latency_p99_ms": {"with": rows[f"{CACHED}/http"]["latency_p99_ms"],
                               "without": rows["fp32/http"]["latency_p99_ms"]},
            **cache_counts, "max_abs_diff_vs_without": max_diff(answers[(CACHED, "http")], answers[("fp32", "http")])},
        "pearson_backend_vs_fp32": agree((fast, "http"), ("fp32", "http")),
        # the same antibodies over both transports of one server (and with the cache on or off): requests are
        # micro-batched with whichever others are queued, so an antibody's padding and batch differ from run to
        # run, which moves scores in the last float digits (and dynamic int8 quantizes activations per batch)
        "grpc_vs_http_max_abs_diff": {b: max_diff(answers[(b, "http")], answers[(b, "grpc")]) for b in ("fp32", fast)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"serve_backend_bench-{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup_backend_vs_fp32", "speedup_grpc_vs_http",
                                             "cache_effect_no_repeats", "pearson_backend_vs_fp32",
                                             "grpc_vs_http_max_abs_diff")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

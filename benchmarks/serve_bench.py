"""Service-level speed: antibodies/s (all six fitness tasks) and texts/s through a real `fedtune serve`
process with concurrent HTTP clients, against the naive way measured in the same run.

Naive baseline (what a straightforward service does): one request at a time, one antibody per request, one
trunk pass per task (the model called once per task). Served: micro-batched across concurrent clients, one
trunk pass per antibody fanned out to all six task heads, length-sorted padding, bf16 autocast on CUDA. Also
reported: the served path driven by one sequential client, so HTTP overhead and batching gains are visible
separately. Chains have realistic lengths (heavy 115-130, light 105-115 residues).

    python benchmarks/serve_bench.py --trunk tiny --antibodies 256 --concurrency 16     # plumbing, seconds
    python benchmarks/serve_bench.py --trunk antiberty --text-trunk minilm --device auto  # the real thing

Results go to `<out>/serve_bench-<cpu|cuda>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedtune.bundle import load_bundle, save_bundle  # noqa: E402
from fedtune.data import SYNTHETIC_ASSAYS, AssayStats, synthetic_fitness, synthetic_sentiment  # noqa: E402
from fedtune.models import TrunkConfig  # noqa: E402
from fedtune.tasks import build_model  # noqa: E402

AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def chains(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Random chains with an antibody-like frame start and realistic lengths."""
    rng = np.random.default_rng(seed)
    heavy = ["EVQLVESGGGLVQPGG" + "".join(rng.choice(AA, rng.integers(115, 131) - 16)) for _ in range(n)]
    light = ["DIQMTQSPSSLSASVG" + "".join(rng.choice(AA, rng.integers(105, 116) - 16)) for _ in range(n)]
    return heavy, light


def sentences(n: int) -> list[str]:
    base = synthetic_sentiment(max(n, 8), seed=0).texts
    return [base[i % len(base)] for i in range(n)]


def trunk_source(name: str, kind: str, tmp: Path) -> str:
    if name == "tiny":
        from fedtune.models.tiny import make_tiny_trunk
        return str(make_tiny_trunk(tmp / f"tiny-{kind}", kind, hidden=64, layers=2))
    return name


def make_bundles(args, tmp: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    data = synthetic_fitness(64, seed=0)
    cfg = TrunkConfig(trunk_source(args.trunk, "antibody", tmp), mode="frozen")
    fit = save_bundle(tmp / "fitness", build_model("fitness", cfg, SYNTHETIC_ASSAYS).eval(), trunk_cfg=cfg,
                      stats=AssayStats.fit(data), provenance={"how": "serve_bench (random heads)"})
    tcfg = TrunkConfig(trunk_source(args.text_trunk, "text", tmp), mode="frozen")
    sent = save_bundle(tmp / "sentiment", build_model("sentiment", tcfg).eval(), trunk_cfg=tcfg)
    return fit, sent


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def naive_fitness(bundle, heavy, light, device) -> dict:
    """One antibody at a time, one trunk pass per task."""
    tasks = bundle.model.tasks
    for h, lt in zip(heavy, light):     # warm pass: kernels for every sequence length (the served runs get one too)
        bundle.predict([(h, lt)], tasks=[tasks[0]])
    sync(device)
    start = time.perf_counter()
    for h, lt in zip(heavy, light):
        for t in tasks:
            bundle.predict([(h, lt)], tasks=[t])
    sync(device)
    secs = time.perf_counter() - start
    return {"what": "one antibody per call, one trunk pass per task (6), fp32, in-process (no HTTP)",
            "antibodies": len(heavy), "seconds": secs, "antibodies_per_s": len(heavy) / secs}


def naive_sentiment(bundle, texts, device) -> dict:
    for t in texts:
        bundle.predict([t])
    sync(device)
    start = time.perf_counter()
    for t in texts:
        bundle.predict([t])
    sync(device)
    secs = time.perf_counter() - start
    return {"what": "one text per call, fp32, in-process (no HTTP)", "texts": len(texts), "seconds": secs,
            "texts_per_s": len(texts) / secs}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundles, args) -> tuple[subprocess.Popen, str]:
    import httpx
    port = free_port()
    env = {**os.environ, "FEDTUNE_DEVICE": args.device, "FEDTUNE_MAX_BATCH": str(args.max_batch),
           "FEDTUNE_MAX_WAIT_MS": str(args.max_wait_ms), "FEDTUNE_MAX_ITEMS": str(max(256, args.per_request)),
           "FEDTUNE_MAX_BODY_BYTES": str(16 << 20), "FEDTUNE_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-c", "from fedtune.cli import main; main()", "serve", "--host", "127.0.0.1",
           "--port", str(port)] + [a for b in bundles for a in ("--bundle", str(b))]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server did not start")
        time.sleep(0.2)


async def drive(url: str, path: str, payloads: list[dict], concurrency: int) -> tuple[float, list[float], list]:
    """Send every payload with `concurrency` clients; returns (seconds, latencies, responses)."""
    import httpx
    queue = list(enumerate(payloads))[::-1]
    latencies, responses = [], [None] * len(payloads)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker():
            while queue:
                i, body = queue.pop()
                t0 = time.perf_counter()
                r = await client.post(path, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
                responses[i] = r.json()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, responses


def served(url, path, payloads, concurrency, n_items, unit) -> tuple[dict, list]:
    secs, lat, responses = asyncio.run(drive(url, path, payloads, concurrency))
    return {"concurrency": concurrency, "requests": len(payloads), "items_per_request": n_items // len(payloads),
            unit: n_items, "seconds": secs, f"{unit}_per_s": n_items / secs,
            "latency_p50_ms": float(np.percentile(lat, 50) * 1000),
            "latency_p99_ms": float(np.percentile(lat, 99) * 1000)}, responses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trunk", default="tiny", help="tiny | antiberty | a local HF folder (fitness trunk)")
    p.add_argument("--text-trunk", default="tiny", help="tiny | minilm | a local HF folder (sentiment trunk)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--antibodies", type=int, default=256, help="antibodies for the served runs")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--naive", type=int, default=64, help="items for the naive baseline (it is slow)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    p.add_argument("--per-request", type=int, default=4, help="items per request in the concurrent run")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads in this process (0: default)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        fit_path, sent_path = make_bundles(args, Path(tmp))
        heavy, light = chains(max(args.antibodies, args.naive))
        texts = sentences(max(args.texts, args.naive))

        fit, sent = load_bundle(fit_path, device=args.device), load_bundle(sent_path, device=args.device)
        naive_fit = naive_fitness(fit, heavy[:args.naive], light[:args.naive], args.device)
        naive_sent = naive_sentiment(sent, texts[:args.naive], args.device)
        print(f"naive: {naive_fit['antibodies_per_s']:.1f} antibodies/s, {naive_sent['texts_per_s']:.1f} texts/s",
              flush=True)

        proc, url = start_server([fit_path, sent_path], args)
        try:
            k = args.per_request
            ab_payloads = [{"antibodies": [{"id": str(j), "heavy": heavy[j], "light": light[j]}
                                           for j in range(i, min(i + k, args.antibodies))]}
                           for i in range(0, args.antibodies, k)]
            tx_payloads = [{"texts": texts[i:i + k]} for i in range(0, args.texts, k)]
            one_ab = [{"antibodies": [{"heavy": heavy[j], "light": light[j]}]} for j in range(args.naive)]
            # warm pass over the same data (connection pool, kernels per shape), as for the baseline
            asyncio.run(drive(url, "/v1/fitness/predict", ab_payloads, args.concurrency))
            asyncio.run(drive(url, "/v1/sentiment/predict", tx_payloads, args.concurrency))
            asyncio.run(drive(url, "/v1/fitness/predict", one_ab, 1))
            sequential, _ = served(url, "/v1/fitness/predict", one_ab, 1, args.naive, "antibodies")
            conc_fit, responses = served(url, "/v1/fitness/predict", ab_payloads, args.concurrency, args.antibodies,
                                         "antibodies")
            conc_sent, sent_responses = served(url, "/v1/sentiment/predict", tx_payloads, args.concurrency,
                                               args.texts, "texts")
            metrics = __import__("httpx").get(url + "/metrics").text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

        # the served numbers must be the bundle's own predictions (bf16 on CUDA: looser)
        n_check = min(32, args.antibodies)
        direct = fit.predict(list(zip(heavy[:n_check], light[:n_check])))
        got = {t: [] for t in direct}
        for r in responses:
            for pred in r["predictions"]:
                if int(pred["id"]) < n_check:
                    for t in direct:
                        got[t].append(pred["scores"][t])
        max_diff = max(float(np.max(np.abs(np.array(got[t]) - direct[t].mean(1)))) for t in direct)
        probs = np.array([[p["probabilities"][lab] for lab in ("negative", "neutral", "positive")]
                          for r in sent_responses for p in r["predictions"]])
        sent_diff = float(np.max(np.abs(probs[:n_check] - sent.predict(texts[:n_check]))))

    batches = [line for line in metrics.splitlines() if line.startswith("fedtune_batch_size_")]
    result = {
        "device": device_name(args.device),
        "torch": torch.__version__,
        "trunk": args.trunk,
        "text_trunk": args.text_trunk,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                     "concurrency": args.concurrency, "items_per_request": args.per_request},
        "chains": "random, heavy 115-130 / light 105-115 residues",
        "fitness": {
            "tasks": list(fit.model.tasks),
            "baseline": naive_fit,
            "served_sequential": {**sequential, "what": "HTTP, one client, one antibody per request"},
            "served_concurrent": {**conc_fit, "what": "HTTP, concurrent clients, micro-batched, one trunk pass "
                                                      "per antibody for all tasks"},
            "speedup_vs_baseline": conc_fit["antibodies_per_s"] / naive_fit["antibodies_per_s"],
            "max_abs_diff_vs_bundle": max_diff,
        },
        "sentiment": {
            "baseline": naive_sent,
            "served_concurrent": conc_sent,
            "speedup_vs_baseline": conc_sent["texts_per_s"] / naive_sent["texts_per_s"],
            "max_abs_diff_vs_bundle": sent_diff,
        },
        "batch_size_metrics": batches,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"serve_bench-{'cuda' if args.device.startswith('cuda') else 'cpu'}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "trunk")}, indent=None))
    print(f"fitness: {conc_fit['antibodies_per_s']:.1f} antibodies/s served vs {naive_fit['antibodies_per_s']:.1f} "
          f"naive (x{result['fitness']['speedup_vs_baseline']:.1f}), p50 {conc_fit['latency_p50_ms']:.0f} ms, "
          f"p99 {conc_fit['latency_p99_ms']:.0f} ms")
    print(f"sentiment: {conc_sent['texts_per_s']:.1f} texts/s served vs {naive_sent['texts_per_s']:.1f} naive "
          f"(x{result['sentiment']['speedup_vs_baseline']:.1f})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

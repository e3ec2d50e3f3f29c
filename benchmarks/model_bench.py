"""Model-level speed: training and inference throughput of the fitness model (and MiniLM sentences), each
against a baseline measured in the same run.

Baselines (what a straightforward implementation does): fp32, every chain padded to 256 tokens, batch 32,
plain AdamW. Optimised: length-bucketed batches (no padding beyond the longest chain of a batch), bf16
autocast on CUDA, fused AdamW on CUDA, larger inference batches, optional torch.compile.

    python benchmarks/model_bench.py --trunk antiberty --device auto --out benchmarks/results/

Results go to `<out>/model_bench-<device>.json` with the device name, the achieved TFLOP/s (an estimate:
2 x non-embedding parameters x tokens + attention, x3 for training) and the ratios to the baseline.
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

from fedtune.data import SYNTHETIC_ASSAYS, load_flab, synthetic_fitness, synthetic_sentiment  # noqa: E402
from fedtune.models import TrunkConfig  # noqa: E402
from fedtune.tasks import build_model  # noqa: E402

BF16_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}   # bf16 matrix peak as measured on the lent machines


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def antibodies(n: int, flab: Path | None):
    if flab and (flab / "assays.csv").exists():
        data = load_flab(flab)
        idx = np.random.default_rng(0).choice(len(data), n, replace=True)
        return [data.heavy[i] for i in idx], [data.light[i] for i in idx], "FLAb chains"
    data = synthetic_fitness(n, seed=0)
    return data.heavy, data.light, "synthetic chains"


def flops_per_token(model) -> float:
    enc = model.trunk.encoder
    cfg = model.trunk.base_config()
    n = sum(p.numel() for name, p in enc.named_parameters() if "embeddings" not in name)
    return 2.0 * n, cfg.num_hidden_layers, cfg.hidden_size


def forward_flops(model, lengths: np.ndarray) -> float:
    per_tok, layers, hidden = flops_per_token(model)
    return float(per_tok * lengths.sum() + 4.0 * layers * hidden * (lengths.astype(np.float64) ** 2).sum())


def tokenize_fixed(model, seqs, length):
    tok = model.trunk.tokenizer([model.trunk.prepare(s) for s in seqs], padding="max_length", truncation=True,
                                max_length=length, return_tensors="pt", return_special_tokens_mask=True)
    return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
            "pool_mask": tok["attention_mask"].bool() & ~tok["special_tokens_mask"].bool()}


def batches(model, heavy, light, bs, padded: bool):
    order = np.arange(len(heavy)) if padded else np.argsort([len(h) + len(l) for h, l in zip(heavy, light)])
    out = []
    for i in range(0, len(order), bs):
        idx = order[i:i + bs]
        H, L = [heavy[j] for j in idx], [light[j] for j in idx]
        if padded:
            out.append({"heavy": tokenize_fixed(model, H, 256), "light": tokenize_fixed(model, L, 256)})
        else:
            out.append(model.tokenize(H, L))
    return out


def run_infer(model, toks, dev, bf16: bool, repeats: int) -> tuple[float, int]:
    model.eval()
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (bf16 and dev.type == "cuda") else torch.autocast("cpu", enabled=False)
    n = sum(len(t["heavy"]["input_ids"]) for t in toks)
    with torch.inference_mode(), ctx:
        for t in toks[:1]:
            model.apply_heads(model.embed_tokens(t))
        sync(dev)
        start = time.perf_counter()
        for _ in range(repeats):
            for t in toks:
                model.apply_heads(model.embed_tokens(t))
        sync(dev)
    return n * repeats / (time.perf_counter() - start), n


def run_train(model, toks, dev, bf16: bool, fused: bool, steps: int) -> float:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=fused and dev.type == "cuda")
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (bf16 and dev.type == "cuda") \
        else (lambda: torch.autocast("cpu", enabled=False))
    n_seen = 0

    def step(t):
        with ctx():
            out = model.assay_outputs(model.embed_tokens(t))
        loss = out.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(t["heavy"]["input_ids"])

    step(toks[0])
    sync(dev)
    start = time.perf_counter()
    for i in range(steps):
        n_seen += step(toks[i % len(toks)])
    sync(dev)
    return n_seen / (time.perf_counter() - start)


def real_lengths(toks) -> np.ndarray:
    return np.concatenate([t[c]["attention_mask"].sum(1).numpy() for t in toks for c in ("heavy", "light")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trunk", default="antiberty", help="antiberty | a local HF encoder folder")
    ap.add_argument("--text-trunk", default="minilm", help="minilm | a local HF encoder folder | none")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=256, help="antibodies per pass")
    ap.add_argument("--infer-batch", type=int, default=1024)
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd inference")
    ap.add_argument("--flab", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "flab")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    heavy, light, source = antibodies(args.n, args.flab)
    model = build_model("fitness", TrunkConfig(args.trunk, mode="full"), SYNTHETIC_ASSAYS).to(dev)
    result = {"device": device_name(dev), "torch": torch.__version__, "trunk": args.trunk, "antibodies": args.n,
              "chains": source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    base_toks = batches(model, heavy, light, 32, padded=True)
    opt_toks = batches(model, heavy, light, args.infer_batch, padded=False)
    base_rate, _ = run_infer(model, base_toks, dev, bf16=False, repeats=args.repeats)
    opt_rate, _ = run_infer(model, opt_toks, dev, bf16=True, repeats=args.repeats)
    flops_opt = forward_flops(model, real_lengths(opt_toks)) / args.n
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in result["device"]), None)
    result["inference"] = {
        "baseline": {"what": "fp32, padded to 256, batch 32", "antibodies_per_s": base_rate},
        "optimised": {"what": f"bf16 autocast on CUDA, length-sorted, batch {args.infer_batch}",
                      "antibodies_per_s": opt_rate, "tflops": opt_rate * flops_opt / 1e12},
        "speedup": opt_rate / base_rate,
        "bf16_peak_tflops": peak,
        "fraction_of_peak": (opt_rate * flops_opt / 1e12 / peak) if peak else None,
    }
    if args.compile:
        cmodel = torch.compile(model)
        rate, _ = run_infer(cmodel, opt_toks, dev, bf16=True, repeats=args.repeats)
        result["inference"]["compiled"] = {"antibodies_per_s": rate, "speedup": rate / base_rate}

    tb_base = batches(model, heavy, light, 32, padded=True)
    tb_opt = batches(model, heavy, light, args.train_batch, padded=False)
    t_base = run_train(model, tb_base, dev, bf16=False, fused=False, steps=args.train_steps)
    t_opt = run_train(model, tb_opt, dev, bf16=True, fused=True, steps=args.train_steps)
    result["training"] = {
        "baseline": {"what": "fp32, padded to 256, batch 32, AdamW", "antibodies_per_s": t_base},
        "optimised": {"what": f"bf16 autocast on CUDA, length-bucketed, batch {args.train_batch}, fused AdamW on CUDA",
                      "antibodies_per_s": t_opt},
        "speedup": t_opt / t_base,
    }

    if args.text_trunk != "none":
        texts = synthetic_sentiment(args.n, seed=0).texts
        smodel = build_model("sentiment", TrunkConfig(args.text_trunk, mode="full"), None).to(dev).eval()

        def text_rate(bs, padded, bf16):
            toks = []
            order = np.arange(len(texts)) if padded else np.argsort([len(t) for t in texts])
            for i in range(0, len(texts), bs):
                chunk = [texts[j] for j in order[i:i + bs]]
                if padded:
                    tk = smodel.trunk.tokenizer(chunk, padding="max_length", max_length=128, truncation=True,
                                                return_tensors="pt")
                    toks.append({"input_ids": tk["input_ids"], "attention_mask": tk["attention_mask"]})
                else:
                    toks.append(smodel.tokenize(chunk))
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (bf16 and dev.type == "cuda") else torch.autocast("cpu", enabled=False)
            with torch.inference_mode(), ctx:
                smodel.apply_heads(smodel.embed_tokens(toks[0]))
                sync(dev)
                start = time.perf_counter()
                for _ in range(args.repeats):
                    for t in toks:
                        smodel.apply_heads(smodel.embed_tokens(t))
                sync(dev)
            return len(texts) * args.repeats / (time.perf_counter() - start)

        sb, so = text_rate(32, True, False), text_rate(args.infer_batch, False, True)
        result["sentiment_inference"] = {"baseline": {"what": "fp32, padded to 128, batch 32", "sentences_per_s": sb},
                                         "optimised": {"what": "bf16 on CUDA, length-sorted", "sentences_per_s": so},
                                         "speedup": so / sb}

    args.out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if dev.type == "cuda" else "cpu"
    path = args.out / f"model_bench-{tag}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()

"""`fedtune demo`: the whole product on one machine, end to end.

1. site data: three site folders, each with a fitness and a sentiment data set (deterministic synthetic data
   by default; real FLAb / Financial PhraseBank folders with `flab=` / `fpb=`)
2. a federation: real NVFlare provisioning (root CA, startup kits), the server and one client process per site
   on loopback with mutual TLS
3. a fitness job (AntiBERTy, frozen trunk, shared heads) and a sentiment job (MiniLM, LoRA), each compared with
   every site alone and with pooled data: report folders with a Markdown table and plots
4. both jobs exported as bundles, `fedtune serve` started on them, a few predictions over HTTP

Everything lives under `workdir`; processes are stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .data import SYNTHETIC_ASSAYS, load_assays, prepare_sites
from .fl.config import JobConfig
from .train.config import DEFAULT_TRUNK

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
SAMPLE_TEXTS = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
    "The company said it will cut 300 jobs after sales fell sharply.",
    "The annual general meeting will be held in Helsinki on 20 March.",
]


@dataclass
class DemoSettings:
    """Defaults sized for a 2-core CPU machine: about five minutes end to end."""
    sites: int = 3
    fitness_samples: int = 300       # synthetic data only
    sentiment_samples: int = 300     # synthetic data only
    fitness_rounds: int = 3
    fitness_local_epochs: int = 10   # frozen trunk: only the heads train, on cached embeddings
    sentiment_rounds: int = 2
    sentiment_local_epochs: int = 1
    fitness_trunk: str = DEFAULT_TRUNK["fitness"]
    sentiment_trunk: str = DEFAULT_TRUNK["sentiment"]
    fitness_mode: str = "frozen"
    sentiment_mode: str = "lora"
    heads: str = "shared"           # frozen trunk: with private heads nothing would travel
    alpha: float = 1.0
    seed: int = 0
    port: int = 8000


def say(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def prepare_data(root: Path, s: DemoSettings, flab: Path | None, fpb: Path | None) -> dict[str, Path]:
    for kind, source, n in (("fitness", flab, s.fitness_samples), ("sentiment", fpb, s.sentiment_samples)):
        summary = prepare_sites(kind, root, s.sites, source, alpha=s.alpha, samples=n, seed=s.seed)
        counts = ", ".join(f"{name} {v['samples']}" for name, v in summary["sites"].items())
        print(f"  {kind}: {summary['source']} -> {counts}", flush=True)
    return {f"site-{i + 1}": root / f"site-{i + 1}" for i in range(s.sites)}


def jobs(s: DemoSettings, flab: Path | None) -> tuple[JobConfig, JobConfig]:
    assays = load_assays(flab) if flab else SYNTHETIC_ASSAYS
    fitness = JobConfig.create(
        "fitness", trunk=s.fitness_trunk, mode=s.fitness_mode, assays=assays, seed=s.seed,
        name=f"fedavg-{s.heads}", rounds=s.fitness_rounds, local_epochs=s.fitness_local_epochs, heads=s.heads,
        min_sites=s.sites)
    sentiment = JobConfig.create(
        "sentiment", trunk=s.sentiment_trunk, mode=s.sentiment_mode, max_length=64, seed=s.seed,
        name=f"fedavg-{s.sentiment_mode}", rounds=s.sentiment_rounds, local_epochs=s.sentiment_local_epochs,
        min_sites=s.sites)
    return fitness, sentiment


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def start_service(bundles: list[Path], port: int, log: Path, timeout: float = 180.0) -> subprocess.Popen:
    args = [sys.executable, "-m", "fedtune", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for b in bundles:
        args += ["--bundle", str(b)]
    proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "FEDTUNE_LOG_LEVEL": "WARNING"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the inference service exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    stop_service(proc)
    raise TimeoutError(f"the inference service was not ready after {timeout:.0f} s; see {log}")


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def show_predictions(port: int) -> dict:
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as r:
        cards = {m["kind"]: m for m in json.loads(r.read())["models"]}
    sets = cards["fitness"]["head_sets"]
    asks = ([None] if "global" in sets else []) + [s for s in sets if s != "global"][:2]
    out = {}
    for site in asks:
        body = {"antibodies": SAMPLE_ANTIBODIES, **({"site": site} if site else {})}
        resp = _post(f"{url}/v1/fitness/predict", body)
        out[site or "global"] = resp
        print(f"  fitness scores (oriented z, higher = better), heads: {site or resp['heads']}")
        for p in resp["predictions"]:
            scores = " ".join(f"{t}={v:+.2f}" for t, v in p["scores"].items())
            print(f"    {p['id']:>14}: {scores}")
    resp = _post(f"{url}/v1/sentiment/predict", {"texts": SAMPLE_TEXTS})
    out["sentiment"] = resp
    print("  sentiment (global model):")
    for text, p in zip(SAMPLE_TEXTS, resp["predictions"]):
        probs = " ".join(f"{k}={v:.2f}" for k, v in p["probabilities"].items())
        print(f"    {p['label']:>8} ({probs})  {text[:60]}")
    example = json.dumps({"antibodies": SAMPLE_ANTIBODIES[:1]})
    print(f"\n  try it: curl -s {url}/v1/fitness/predict -H 'Content-Type: application/json' -d '{example}'")
    return out


def run_demo(workdir: str | Path, settings: DemoSettings | None = None, flab: Path | None = None,
             fpb: Path | None = None, serve: bool = True, keep_serving: bool = False) -> dict:
    from .compare import compare
    from .fl.export import export_bundle
    from .fl.federation import LocalFederation

    s = settings or DemoSettings()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    say(f"site data -> {work / 'data'}")
    site_dirs = prepare_data(work / "data", s, flab, fpb)
    fitness_job, sentiment_job = jobs(s, flab)
    reports, bundles = {}, {}
    say("federation: NVFlare provisioning, server + sites over mTLS on loopback")
    with LocalFederation(work / "federation", site_dirs) as fed:
        for job in (fitness_job, sentiment_job):
            say(f"{job.kind}: every site alone, FedAvg ({job.name}), pooled data")
            results = compare(fed, site_dirs, [job], work / "reports" / job.kind)
            reports[job.kind] = work / "reports" / job.kind / "report.md"
            bundles[job.kind] = export_bundle(results["results"][job.name], work / "bundles" / job.kind)
            print(f"  report: {reports[job.kind]}\n  bundle: {bundles[job.kind]}", flush=True)
    summary = {"workdir": str(work), "reports": {k: str(v) for k, v in reports.items()},
               "bundles": {k: str(v) for k, v in bundles.items()}, "results": {}}
    for kind, path in reports.items():
        res = json.loads((path.parent / "results.json").read_text())
        from .report import summary as run_summary
        summary["results"][kind] = run_summary(res)
    if serve:
        say(f"inference service on http://127.0.0.1:{s.port} (bundles above)")
        proc = start_service(list(bundles.values()), s.port, work / "serve.log")
        try:
            summary["predictions"] = show_predictions(s.port)
            if keep_serving:
                print("\n  serving until Ctrl-C", flush=True)
                proc.wait()
        finally:
            stop_service(proc)
    say(f"done in {time.monotonic() - start:.0f} s")
    for kind, res in summary["results"].items():
        key = "mean_pearson" if kind == "fitness" else "accuracy"
        line = ", ".join(f"{run} {v.get(key):.3f}" for run, v in res.items() if v.get(key) is not None)
        print(f"  {kind} validation {key} (mean over sites): {line}")
    print(f"  reports: {', '.join(summary['reports'].values())}", flush=True)
    (work / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary

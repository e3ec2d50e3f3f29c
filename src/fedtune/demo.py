"""`fedtune demo`: the whole product on one machine, end to end, for every task kind that declares demo
defaults (`fedtune.tasks`: the antibody and financial-text kinds today).

1. site data: three site folders, each with one data set per kind (deterministic synthetic data by default;
   real data folders by each kind's source name, e.g. `sources={"flab": ..., "fpb": ...}`)
2. a federation: real NVFlare provisioning (root CA, startup kits), the server and one client process per site
   on loopback with mutual TLS
3. one job per kind (its demo trunk and mode), each compared with every site alone and with pooled data:
   report folders with a Markdown table and plots
4. every job exported as a bundle, `fedtune serve` started on them, a few predictions over HTTP

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
from dataclasses import dataclass, make_dataclass
from pathlib import Path

from .fl.config import JobConfig
from .tasks import get, kinds

KIND_FIELDS = ("samples", "rounds", "local_epochs", "trunk", "mode")


def demo_kinds() -> list[str]:
    """The kinds `fedtune demo` runs, in registry order."""
    return [k for k in kinds() if get(k).demo is not None]


@dataclass
class KindSettings:
    samples: int          # synthetic data only
    rounds: int
    local_epochs: int
    trunk: str
    mode: str


def _kind_settings(self, kind: str) -> KindSettings:
    return KindSettings(*(getattr(self, f"{kind}_{f}") for f in KIND_FIELDS))


def _settings_class():
    """DemoSettings: sites, then `<kind>_samples`, `<kind>_rounds`, `<kind>_local_epochs`, `<kind>_trunk`,
    `<kind>_mode` for every demo kind (defaults from the kind), then the common fields. Defaults are sized for
    a 2-core CPU machine: about five minutes end to end."""
    fields: list = [("sites", int, 3)]
    for kind in demo_kinds():
        task = get(kind)
        d = task.demo
        fields += [(f"{kind}_samples", int, d.samples), (f"{kind}_rounds", int, d.rounds),
                   (f"{kind}_local_epochs", int, d.local_epochs), (f"{kind}_trunk", str, task.default_trunk),
                   (f"{kind}_mode", str, d.mode)]
    fields += [("heads", str, "shared"),     # for kinds with a choice; a frozen trunk with private heads shares nothing
               ("alpha", float, 1.0), ("seed", int, 0), ("port", int, 8000)]
    return make_dataclass("DemoSettings", fields, namespace={"kind": _kind_settings, "__module__": __name__})


DemoSettings = _settings_class()


def say(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def prepare_data(root: Path, s, sources: dict[str, Path | None]) -> dict[str, Path]:
    for kind in demo_kinds():
        task = get(kind)
        summary = task.prepare_sites(root, s.sites, sources.get(task.demo.source), alpha=s.alpha,
                                     samples=s.kind(kind).samples, seed=s.seed)
        counts = ", ".join(f"{name} {v['samples']}" for name, v in summary["sites"].items())
        print(f"  {kind}: {summary['source']} -> {counts}", flush=True)
    return {f"site-{i + 1}": root / f"site-{i + 1}" for i in range(s.sites)}


def jobs(s, sources: dict[str, Path | None]) -> list[JobConfig]:
    """One FedAvg job per demo kind; named by its head mode where the kind has a choice, else by trunk mode."""
    out = []
    for kind in demo_kinds():
        task, k = get(kind), s.kind(kind)
        heads = s.heads if len(task.head_modes) > 1 else task.head_modes[0]   # JobConfig checks the choice
        name = f"fedavg-{heads}" if len(task.head_modes) > 1 else f"fedavg-{k.mode}"
        out.append(JobConfig.create(
            kind, trunk=k.trunk, mode=k.mode, max_length=task.demo.max_length,
            assays=task.assays_from(sources.get(task.demo.source)), seed=s.seed, name=name, rounds=k.rounds,
            local_epochs=k.local_epochs, heads=heads, min_sites=s.sites))
    return out


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
    out, tries = {}, []
    for kind in demo_kinds():
        if kind in cards:
            out.update(get(kind).show_predictions(_post, url, cards[kind]))
            tries.append(get(kind).try_it(url))
    for line in filter(None, tries):
        print(f"\n  try it: {line}")
    return out


def run_demo(workdir: str | Path, settings=None, sources: dict[str, Path | None] | None = None,
             serve: bool = True, keep_serving: bool = False) -> dict:
    """`settings`: a DemoSettings; `sources`: real data folders by the kinds' source names (default synthetic)."""
    from .compare import compare
    from .fl.export import export_bundle
    from .fl.federation import LocalFederation

    s = settings or DemoSettings()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    say(f"site data -> {work / 'data'}")
    sources = sources or {}
    site_dirs = prepare_data(work / "data", s, sources)
    reports, bundles = {}, {}
    say("federation: NVFlare provisioning, server + sites over mTLS on loopback")
    with LocalFederation(work / "federation", site_dirs) as fed:
        for job in jobs(s, sources):
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
        key = get(kind).key_metric
        line = ", ".join(f"{run} {v.get(key):.3f}" for run, v in res.items() if v.get(key) is not None)
        print(f"  {kind} test {key} (mean over sites, each site's test split scored once; n and 95% intervals "
              f"in the report): {line}")
    print(f"  reports: {', '.join(summary['reports'].values())}", flush=True)
    (work / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary

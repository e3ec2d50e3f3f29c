"""`fedtune compare`: every site alone vs FedAvg vs pooled data, on the same splits, as a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .fl import dp_settings
from .local import KINDS_HELP, Kind, Mode, fail


@app.command("compare")
def compare_cmd(
    kind: Annotated[Kind, typer.Argument(help=KINDS_HELP)],
    data: Annotated[Path, typer.Option(help="folder of site folders site-1 ... site-N (`fedtune prepare-data`)")],
    out: Annotated[Path, typer.Option(help="report folder: report.md, results.json, PNG plots, tb/ (TensorBoard)")],
    trunk: Annotated[Optional[str], typer.Option(help="antiberty | minilm | a local Hugging Face encoder folder")] = None,
    trunk_mode: Annotated[Optional[list[Mode]], typer.Option(
        help="frozen | full | lora | ptuning; repeat to run FedAvg in several modes side by side")] = None,
    heads: Annotated[str, typer.Option(help="fitness: shared, private or both (two FedAvg runs)")] = "private",
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 3,
    local_epochs: Annotated[int, typer.Option(help="epochs per round at each site")] = 2,
    baselines: Annotated[bool, typer.Option(help="also train every site alone and on pooled data")] = True,
    assays_from: Annotated[Optional[Path], typer.Option(help="fitness: FLAb folder whose assay table to use "
                                                             "(default: read from the site folders)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="trunk learning rate")] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    max_length: Annotated[Optional[int], typer.Option(help="tokens per chain / sentence")] = None,
    server_opt: Annotated[str, typer.Option(help="server optimiser of the FedAvg runs: none, momentum (FedAvgM) "
                                                 "or adam (FedAdam)")] = "none",
    server_lr: Annotated[float, typer.Option(help="the server optimiser's step size")] = 1.0,
    prox_mu: Annotated[float, typer.Option(help="FedProx mu for the FedAvg runs (0: off)")] = 0.0,
    personalise: Annotated[int, typer.Option(
        help="after the federated rounds, each site fine-tunes a copy of the final heads on its own data for up to "
             "this many epochs (trunk frozen, early stopping on its validation split): an extra run in the "
             "report; 0: off")] = 0,
    select_round: Annotated[str, typer.Option(
        help="best: each FedAvg run with shared heads ends with the round whose global model has the lowest "
             "median validation loss over sites (early stopping over rounds, as local and pooled training stop "
             "on validation); last: the last round's model")] = "best",
    head_type: Annotated[Optional[list[str]], typer.Option(
        help="fitness: mlp (default), ridge (exact federated ridge per assay, frozen trunk, no training rounds) "
             "or ridge-mlp (MLP heads that start as the ridge); repeat for several FedAvg runs. A ridge type "
             "runs with shared heads and adds the runs local-ridge and pooled-ridge")] = None,
    seed: Annotated[int, typer.Option(help="split and training seed")] = 0,
    seeds: Annotated[Optional[str], typer.Option(
        help="several split seeds, e.g. 0,1,2: each re-splits every site and reruns every run (OUT/seed-<s>/), "
             "and OUT/report.md gives the mean and spread over seeds (replaces --seed)")] = None,
    workdir: Annotated[Optional[Path], typer.Option(help="federation workspace (kits, logs, job results); "
                                                         "default OUT/federation")] = None,
    dp_epsilon: Annotated[Optional[list[float]], typer.Option(
        help="also run FedAvg with differential privacy (DP-SGD on the first --trunk-mode's trainable part: the "
             "heads with frozen, LoRA adapters + heads with lora) at this target "
             "epsilon per site over the whole job; repeat for a sweep (e.g. 1, 4, 16): the report adds utility "
             "vs epsilon and a membership-inference attack")] = None,
    dp_delta: Annotated[float, typer.Option(help="DP: delta")] = 1e-5,
    dp_max_grad_norm: Annotated[float, typer.Option(help="DP: per-row gradient clipping norm")] = 1.0,
):
    """Train each site alone, federated (real NVFlare federation on loopback, mTLS) and on pooled data;
    write a Markdown report with plots. Several --trunk-mode values compare modes (bytes and time per round)."""
    from fedtune.compare import compare
    from fedtune.fl.config import JobConfig
    from fedtune.fl.federation import LocalFederation
    from fedtune.tasks import get

    sites = {p.name: p for p in sorted(data.glob("site-*")) if p.is_dir()}
    if len(sites) < 2:
        fail(f"{data}: need at least two site folders named site-* (see `fedtune prepare-data`)")
    task = get(kind.value)
    modes = [m.value for m in trunk_mode] if trunk_mode else [task.default_mode]
    head_modes = list(task.head_modes) if heads == "both" else [heads]
    if len(task.head_modes) == 1:     # a kind without a choice of head modes
        head_modes = list(task.head_modes)
    assays = task.assays_from(assays_from or next(iter(sites.values())))
    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else [seed]
    except ValueError:
        fail(f"--seeds {seeds!r}: give comma-separated integers, e.g. 0,1,2")
    if len(set(seed_list)) != len(seed_list) or any(s < 0 for s in seed_list):
        fail(f"--seeds {seeds!r}: seeds must be distinct and non-negative")

    head_types = head_type or ["mlp"]
    unknown = [t for t in head_types if t not in task.head_types]
    if unknown or len(set(head_types)) != len(head_types):
        fail(f"--head-type {head_types}: give distinct values of {list(task.head_types)}")

    def jobs_for(s: int) -> list:
        jobs = []
        for mode in modes:
            # an MLP head type runs once per heads mode; a ridge type once, with shared heads (one pooled ridge)
            plan = [(h, t) for t in head_types for h in (head_modes if t == "mlp" else ["shared"])]
            for h, t in plan:
                name = ("fedavg" + (f"-{mode}" if len(modes) > 1 else "")
                        + (f"-{h}" if len(head_modes) > 1 and t == "mlp" else "") + ("" if t == "mlp" else f"-{t}"))
                try:
                    jobs.append(JobConfig.create(kind.value, trunk=trunk, mode=mode, max_length=max_length,
                                                 assays=assays, seed=s, lr=lr, batch_size=batch_size, name=name,
                                                 rounds=rounds, local_epochs=local_epochs, heads=h, head_type=t,
                                                 min_sites=len(sites), personal_epochs=personalise,
                                                 server_opt=server_opt, server_lr=server_lr, prox_mu=prox_mu,
                                                 select_round=select_round if h != "private" else "last"))
                except ValueError as exc:
                    fail(str(exc))
        for eps in dp_epsilon or []:     # the same FedAvg job (first mode and head mode) with DP at each epsilon
            try:
                jobs.append(JobConfig.from_dict({**jobs[0].to_dict(), "name": f"fedavg-dp{eps:g}",
                                                 "personal_epochs": 0,
                                                 "dp": dp_settings(eps, 0.0, dp_delta, dp_max_grad_norm)}))
            except ValueError as exc:
                fail(f"--dp-epsilon {eps:g}: {exc}")
        return jobs

    plan = {s: jobs_for(s) for s in seed_list}      # every job checked before anything runs
    with LocalFederation(workdir or out / "federation", sites) as fed:
        if not seeds:
            compare(fed, sites, plan[seed], out, baselines=baselines)
        else:
            from fedtune.report import write_seeds_report
            per_seed = {}
            for i, (s, jobs) in enumerate(plan.items(), 1):
                typer.echo(f"seed {s} ({i} of {len(plan)}): report in {out / f'seed-{s}'}")
                per_seed[s] = compare(fed, sites, jobs, out / f"seed-{s}", baselines=baselines)
            write_seeds_report(per_seed, out)
    typer.echo(f"report: {out / 'report.md'}")

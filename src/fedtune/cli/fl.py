"""`fedtune provision | server | client | submit | export`: the federated-learning commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .check import refuse_bad_data
from .local import Kind, Mode, fail


def foreground(run, *args, **kwargs) -> None:
    """Run a foreground NVFlare process to its end; its exit code is ours, a start-up problem exits 2."""
    from fedtune.fl.process import StartupError

    try:
        code = run(*args, **kwargs)
    except StartupError as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command()
def provision(
    out: Annotated[Path, typer.Option(help="provisioning folder (project.yml, kits, root CA state)")],
    sites: Annotated[int, typer.Option(help="number of sites: site-1 ... site-N (organisation fedtune); "
                                            "ignored with --site/--project")] = 3,
    site: Annotated[Optional[list[str]], typer.Option(help="a named site NAME@ORG, e.g. lab-a@acme; repeatable")] = None,
    admin: Annotated[Optional[list[str]], typer.Option(help="an admin EMAIL@ORG, e.g. alice@acme.com@acme "
                                                            "(EMAIL alone: the server's org); repeatable")] = None,
    project: Annotated[Optional[Path], typer.Option(help="a project file (YAML/TOML: server, sites, admins) "
                                                         "instead of --site/--admin/--server-*")] = None,
    server_name: Annotated[str, typer.Option(help="server host name as clients reach it (its public DNS name; CN/"
                                                  "SAN of its certificate): localhost, or the service name in "
                                                  "containers")] = "localhost",
    server_org: Annotated[str, typer.Option(help="the coordinator's organisation")] = "fedtune",
    scheme: Annotated[str, typer.Option(help="transport: grpc (default) or http")] = "grpc",
    host_name: Annotated[Optional[list[str]], typer.Option(help="extra server host names (SANs); repeatable")] = None,
    fl_port: Annotated[int, typer.Option(help="federated-learning port")] = 8002,
    admin_port: Annotated[int, typer.Option(help="admin port")] = 8003,
    force: Annotated[bool, typer.Option(help="write new kits even if OUT holds kits, signed by the SAME root CA "
                                             "(the earlier kits and the CA are kept; a new CA needs a new OUT)")] = False,
    add_site: Annotated[Optional[list[str]], typer.Option(help="issue a kit for a new site NAME@ORG in an existing "
                                                               "OUT, from the same root CA; no other kit changes; "
                                                               "repeatable")] = None,
    reissue: Annotated[Optional[list[str]], typer.Option(help="a new key and certificate for this participant "
                                                              "(server, site or admin name) of an existing OUT, "
                                                              "from the same root CA; repeatable")] = None,
    packages: Annotated[Optional[Path], typer.Option(help="also write one archive per participant here (as "
                                                          "`fedtune package`)")] = None,
):
    """Run real NVFlare provisioning: root CA + startup kits for the server, every site and the admin(s).

    Existing kits in OUT are reused unless --force; nothing in OUT is ever deleted, and no second root CA is
    minted over an existing project. The root CA key stays in OUT/workspace/fedtune/state (mode 0600): back it
    up (`fedtune ca backup`), keep it out of images and off the sites."""
    from fedtune.fl.participants import ParticipantError, ProjectSpec, admin as parse_admin, load_project, \
        numbered_sites, site as parse_site
    from fedtune.fl.pki import PkiError, reissue as run_reissue
    from fedtune.fl.provision import add_sites, provision as run_provision

    if (add_site or reissue) and (site or admin or project or force or (add_site and reissue)):
        fail("--add-site / --reissue change an existing OUT: they take no --site/--admin/--project/--force and not "
             "each other")
    if project and (site or admin):
        fail("give --project FILE or --site/--admin, not both")
    changed = None
    try:
        if add_site:
            changed = [parse_site(s).name for s in add_site]
            kits = add_sites(out, [parse_site(s) for s in add_site])
        elif reissue:
            changed, kits = reissue, run_reissue(out, reissue)
        else:
            spec = load_project(project) if project else ProjectSpec(
                sites=[parse_site(s) for s in site] if site else numbered_sites(sites), server_name=server_name,
                server_org=server_org, host_names=host_name or [],
                admins=[parse_admin(a, server_org) for a in admin or []], fl_port=fl_port, admin_port=admin_port)
            kits = run_provision(out, scheme=scheme, force=force, spec=spec)
    except (ValueError, RuntimeError, ParticipantError, PkiError) as exc:
        fail(str(exc))
    typer.echo(f"server kit: {kits.server}")
    for name, kit in kits.sites.items():
        typer.echo(f"{name} kit: {kit}")
    for name, kit in (kits.admins or {kits.admin.name: kits.admin}).items():
        typer.echo(f"admin kit ({name}): {kit}")
    if packages:
        from .pki import write_packages
        write_packages(out, packages, changed)


@app.command()
def server(
    kit: Annotated[Path, typer.Option(help="the server's startup kit folder")],
    client_outcome_wait: Annotated[Optional[float], typer.Option(
        help="seconds a finished job waits for the outcome of a site that stopped answering before it is "
             "marked finished [NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT, 60]")] = None,
):
    """Run the NVFlare server in the foreground (job storage inside the kit). Stops on SIGTERM / Ctrl-C."""
    from fedtune.fl.pki import warn_if_expiring
    from fedtune.fl.process import run_server

    warn_if_expiring(kit)
    foreground(run_server, kit, client_outcome_wait)


@app.command()
def client(
    kit: Annotated[Path, typer.Option(help="this site's startup kit folder")],
    data: Annotated[Path, typer.Option(help="this site's data folder (see `fedtune prepare-data`)")],
    site: Annotated[Optional[str], typer.Option(help="site name; must match the kit (default: the kit's)")] = None,
    startup_deadline: Annotated[float, typer.Option(help="seconds to register with the server before giving "
                                                         "up (a kit from another provisioning never can)")] = 120.0,
    gpus: Annotated[Optional[int], typer.Option(help="training processes per job on this site, one per GPU: "
                                                     "N > 1 trains with DistributedDataParallel under torchrun "
                                                     "(NCCL; gloo on a machine without CUDA) [FEDTUNE_GPUS, 1]")] = None,
):
    """Run one site's NVFlare client in the foreground; its jobs train on DATA, which never leaves the site.

    DATA is checked first (as `fedtune check-data` does): a folder with errors is refused, exit 2."""
    from fedtune.fl.pki import warn_if_expiring
    from fedtune.fl.process import run_client

    warn_if_expiring(kit)
    refuse_bad_data(data)
    foreground(run_client, kit, site, data, startup_deadline, gpus=gpus)


@app.command()
def submit(
    kind: Annotated[Kind, typer.Argument(help="fitness or sentiment")],
    admin_kit: Annotated[Path, typer.Option(help="the admin's startup kit folder")],
    out: Annotated[Path, typer.Option(help="folder to download the job result into")],
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 3,
    local_epochs: Annotated[int, typer.Option(help="epochs each site trains per round")] = 2,
    heads: Annotated[str, typer.Option(help="fitness: shared (averaged by the server) or private (never sent "
                                            "while training)")] = "shared",
    publish_heads: Annotated[bool, typer.Option(help="private heads: each site sends its final heads once at "
                                                     "the end so the bundle can serve per-site predictions; "
                                                     "--no-publish-heads keeps them on site")] = True,
    server_opt: Annotated[str, typer.Option(help="server optimiser on the aggregate: none, momentum (FedAvgM) or "
                                                 "adam (FedAdam)")] = "none",
    server_lr: Annotated[float, typer.Option(help="the server optimiser's step size")] = 1.0,
    prox_mu: Annotated[float, typer.Option(help="FedProx: mu/2 ||w - w_global||^2 added to each site's loss; "
                                                "0: off")] = 0.0,
    head_type: Annotated[str, typer.Option(help="fitness: mlp, ridge (exact federated ridge per assay from the "
                                                "sites' sums, frozen trunk, no training rounds) or ridge-mlp (MLP "
                                                "heads that start as that ridge); ridge types need shared "
                                                "heads")] = "mlp",
    personal_epochs: Annotated[int, typer.Option(help="after the rounds, each site fine-tunes a copy of the final "
                                                     "heads on its own data for up to this many epochs (trunk "
                                                     "frozen); the bundle serves them per site. 0: off")] = 0,
    select_round: Annotated[str, typer.Option(help="last: the final model is the last round's; best: the round "
                                                   "whose global model has the lowest median validation loss "
                                                   "over sites (shared heads; one more short exchange)")] = "last",
    trunk: Annotated[Optional[str], typer.Option(help="antiberty | minilm | a local HF encoder folder that "
                                                      "exists at the same path on server and sites")] = None,
    trunk_mode: Annotated[Optional[Mode], typer.Option(help="frozen | full | lora | ptuning")] = None,
    assays_from: Annotated[Optional[Path], typer.Option(help="fitness: a FLAb folder or assays.csv whose assay "
                                                             "table the job uses (default: the synthetic assays)")] = None,
    min_sites: Annotated[int, typer.Option(help="a round closes once this many sites answered (+ grace)")] = 2,
    grace: Annotated[int, typer.Option(help="seconds to wait for the other sites after min-sites answered")] = 20,
    round_timeout: Annotated[int, typer.Option(help="hard limit per round in seconds (0: none)")] = 0,
    name: Annotated[Optional[str], typer.Option(help="job name")] = None,
    lr: Annotated[Optional[float], typer.Option(help="trunk learning rate")] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
    metrics_port: Annotated[Optional[int], typer.Option(help="serve training progress as Prometheus metrics on "
                                                             "this port while the job runs")] = None,
    timeout: Annotated[float, typer.Option(help="give up (and abort the job) after this many seconds")] = 7200,
    aggregator: Annotated[str, typer.Option(help="fedavg (weighted by the sites' row counts) | median | "
                                                 "trimmed-mean (both robust to a few bad sites; they ignore "
                                                 "row counts)")] = "fedavg",
    trim: Annotated[float, typer.Option(help="trimmed-mean: fraction of the values trimmed at each end")] = 0.2,
    min_stat_count: Annotated[int, typer.Option(help="fitness: a site shares an assay's statistics only with at "
                                                     "least this many labelled rows")] = 5,
    keep_checkpoints: Annotated[int, typer.Option(help="the server keeps the global model of this many last "
                                                       "rounds")] = 3,
    init_from: Annotated[Optional[Path], typer.Option(help="start from these weights: a job result (also a "
                                                           "failed one), a round checkpoint or a bundle")] = None,
    dp_epsilon: Annotated[float, typer.Option(help="differential privacy (DP-SGD on the heads with trunk mode "
                                                   "frozen, on LoRA adapters + heads with lora): target epsilon "
                                                   "over the whole job at each site; 0: off")] = 0.0,
    dp_noise: Annotated[float, typer.Option(help="DP: noise multiplier instead of a target epsilon")] = 0.0,
    dp_delta: Annotated[float, typer.Option(help="DP: delta")] = 1e-5,
    dp_max_grad_norm: Annotated[float, typer.Option(help="DP: each row's gradient is clipped to this L2 norm")] = 1.0,
):
    """Build a FedAvg job, submit it over the admin channel (mTLS), show progress per round, wait, download."""
    from fedtune.fl.config import JobConfig
    from fedtune.fl.federation import print_event
    from fedtune.bundle import BundleError
    from fedtune.fl.resume import build_job_from
    from fedtune.fl.submit import JobFailed, submit_and_wait
    from fedtune.fl.pki import warn_if_expiring
    from fedtune.tasks import get

    warn_if_expiring(admin_kit)
    task = get(kind.value)
    try:
        src = assays_from.parent if assays_from and assays_from.name == "assays.csv" else assays_from
        assays = task.assays_from(src)
        job = JobConfig.create(kind.value, trunk=trunk, mode=trunk_mode.value if trunk_mode else None,
                               assays=assays, seed=seed, lr=lr, batch_size=batch_size,
                               name=name or f"fedtune-{kind.value}", rounds=rounds, local_epochs=local_epochs,
                               heads=heads, head_type=head_type, publish_heads=publish_heads,
                               personal_epochs=personal_epochs, select_round=select_round,
                               server_opt=server_opt, server_lr=server_lr, prox_mu=prox_mu,
                               min_sites=min_sites, grace=grace,
                               round_timeout=round_timeout, aggregator=aggregator, trim=trim,
                               min_stat_count=min_stat_count, keep_checkpoints=keep_checkpoints,
                               dp=dp_settings(dp_epsilon, dp_noise, dp_delta, dp_max_grad_norm))
        job_dir = build_job_from(job, out / "jobs", init_from)    # refuses an unsafe name before it touches the disk
    except (ValueError, FileNotFoundError, BundleError) as exc:
        fail(str(exc))
    progress = None
    if metrics_port:
        from fedtune.fl.progress import ProgressMetrics
        progress = ProgressMetrics(metrics_port, kind.value)

    def on_event(ev):
        print_event(ev)
        if progress:
            progress.update(ev)

    try:
        job_id, result = submit_and_wait(job_dir, admin_kit, out, timeout=timeout, on_event=on_event,
                                         on_submit=lambda j: typer.echo(f"submitted job {j}"))
    except (JobFailed, FileNotFoundError, TimeoutError) as exc:
        if progress:
            progress.failed()
        if getattr(exc, "result", None):
            echo_privacy(exc.result)
            typer.echo(f"partial result: {exc.result} (`fedtune export --result {exc.result}` exports its last "
                       f"complete round; `--init-from {exc.result}` resumes from it)")
        fail(str(exc))
    if progress:
        progress.finished()
    typer.echo(f"result: {result}")
    summary = json.loads((next(result.rglob("summary.json"))).read_text())
    for site, s in sorted(summary["sites"].items()):
        typer.echo(f"  {site}: final validation {task.headline(s.get('final_val') or {})}")
    echo_privacy(result)


def dp_settings(epsilon: float, noise: float, delta: float, max_grad_norm: float) -> dict:
    """A job's `dp` field from the CLI flags ({} when both epsilon and noise are 0: no DP)."""
    if not (epsilon or noise):
        return {}
    return {"epsilon": epsilon, "noise_multiplier": noise, "delta": delta, "max_grad_norm": max_grad_norm}


def echo_privacy(result: Path) -> None:
    """The sites that refused the job (their policy's reason) and the epsilon each site spent."""
    found = next(Path(result).rglob("summary.json"), None) if Path(result).exists() else None
    if found is None:
        return
    summary = json.loads(found.read_text())
    for site, why in sorted((summary.get("refused") or {}).items()):
        typer.echo(f"  {site} refused the job: {why}")
    for site, dp in sorted((summary.get("privacy") or {}).items()):
        typer.echo(f"  {site}: differential privacy epsilon {dp.get('epsilon', float('nan')):.3g} "
                   f"(delta {dp.get('delta')}, noise {dp.get('noise_multiplier', 0):.3g}, "
                   f"clip {dp.get('max_grad_norm')}, {dp.get('steps', dp.get('max_steps'))} steps)")


@app.command()
def export(
    result: Annotated[Path, typer.Option(help="a downloaded job result (from `fedtune submit`)")],
    out: Annotated[Path, typer.Option(help="bundle folder to write (replaced atomically)")],
):
    """Turn a job result into an export bundle (global trunk + global or per-site heads + manifest); a job
    that did not complete exports its last complete round (the manifest's provenance says so)."""
    from fedtune.fl.export import export_bundle

    try:
        path = export_bundle(result, out)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc))
    typer.echo(f"bundle: {path}")
    from fedtune.bundle import read_manifest
    partial = read_manifest(path)["provenance"].get("partial")
    if partial:
        typer.echo(f"note: {partial}")
    sys.stdout.flush()

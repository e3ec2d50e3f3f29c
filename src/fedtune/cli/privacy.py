"""`fedtune site-policy`: a site admin writes (or shows) the site's privacy policy in its own kit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .local import fail


@app.command("site-policy")
def site_policy(
    kit: Annotated[Path, typer.Option(help="this site's startup kit folder (the policy goes to "
                                           "KIT/local/fedtune-privacy.json, outside any job)")],
    require_dp: Annotated[bool, typer.Option(help="refuse every job without differential privacy")] = True,
    max_epsilon: Annotated[Optional[float], typer.Option(help="the most epsilon one job may spend here")] = None,
    max_delta: Annotated[Optional[float], typer.Option(help="the largest delta a job may use")] = None,
    min_noise_multiplier: Annotated[float, typer.Option(help="the least noise multiplier a job may use")] = 0.0,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="the widest per-row clipping norm a job may use")] = None,
    total_epsilon: Annotated[Optional[float], typer.Option(help="the most all jobs together may spend here "
                                                                "(their epsilons add up)")] = None,
    show: Annotated[bool, typer.Option(help="only print the current policy and what jobs spent")] = False,
):
    """Write this site's privacy policy (mode 0644). A job asking for less is refused by this site: before it is
    deployed (the site's NVFlare privacy gate, installed in the kit by `fedtune client`) and again in the job (the
    site's fedtune checks the job's real settings), with the reason in the job's summary. Takes effect for the
    next job."""
    from fedtune.fl.policy import (PolicyError, SitePolicy, gate_path, install_gate, read_policy, spent,
                                   write_policy)

    try:
        if show:
            policy = read_policy(kit)
            typer.echo(json.dumps({"policy": policy.to_dict() if policy else None, "spent": spent(kit)}, indent=2))
            return
        path = write_policy(kit, SitePolicy(require_dp=require_dp, max_epsilon=max_epsilon, max_delta=max_delta,
                                            min_noise_multiplier=min_noise_multiplier, max_grad_norm=max_grad_norm,
                                            total_epsilon=total_epsilon))
        had_gate = gate_path(kit).is_file()
        install_gate(kit)
    except (PolicyError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"privacy policy written to {path}")
    if not had_gate:
        typer.echo(f"privacy gate installed in {gate_path(kit)}: NVFlare loads it when this site's client "
                   f"starts (restart it if it is running; until then the site checks each job in the job only)")
    typer.echo(path.read_text().rstrip())

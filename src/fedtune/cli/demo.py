"""`fedtune demo`: the README's main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app


@app.command("demo")
def demo_cmd(
    workdir: Annotated[Path, typer.Option(help="where everything goes (data, kits, logs, reports, bundles)")] =
        Path("runs/demo"),
    data: Annotated[Optional[Path], typer.Option(
        help="real data: a folder with flab/ (FLAb: assays.csv + task folders) and/or fpb/ (Financial PhraseBank), "
             "e.g. ../shared/data; default: deterministic synthetic data")] = None,
    flab: Annotated[Optional[Path], typer.Option(help="real FLAb folder (overrides DATA/flab)")] = None,
    fpb: Annotated[Optional[Path], typer.Option(help="real Financial PhraseBank folder (overrides DATA/fpb)")] = None,
    sites: Annotated[int, typer.Option(help="number of sites")] = 3,
    heads: Annotated[str, typer.Option(help="fitness heads: shared (averaged) or private (per site; with a frozen trunk nothing is then shared)")] = "shared",
    port: Annotated[int, typer.Option(help="port of the inference service")] = 8000,
    serve: Annotated[bool, typer.Option(help="start the inference service and show predictions")] = True,
    keep_serving: Annotated[bool, typer.Option(help="keep the service up until Ctrl-C")] = False,
):
    """Provision a federation, train fitness + sentiment federated (vs local vs pooled), export, serve."""
    from fedtune.demo import DemoSettings, run_demo

    sources = {"flab": flab, "fpb": fpb}      # by the kinds' source names (fedtune.tasks: demo.source)
    if data is not None:
        sources = {name: given or (data / name if (data / name).exists() else None)
                   for name, given in sources.items()}
        if not any(sources.values()):
            typer.secho(f"error: {data} holds none of {', '.join(f'{n}/' for n in sources)}", fg="red", err=True)
            raise typer.Exit(2)
    run_demo(workdir, DemoSettings(sites=sites, heads=heads, port=port), sources=sources, serve=serve,
             keep_serving=keep_serving)

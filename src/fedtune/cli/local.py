"""`fedtune prepare-data` and `fedtune train-local`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app


def _kind_enum() -> type[Enum]:
    from fedtune.tasks import kinds     # names only: no kind module (nor torch) is imported for --help
    return Enum("Kind", {k: k for k in kinds()}, type=str)


Kind = _kind_enum()
KINDS_HELP = " or ".join(k.value for k in Kind)


class Mode(str, Enum):
    frozen = "frozen"
    full = "full"
    lora = "lora"
    ptuning = "ptuning"


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command("prepare-data")
def prepare_data(
    kind: Annotated[Kind, typer.Argument(help=KINDS_HELP)],
    out: Annotated[Path, typer.Option(help="folder to write site-1 ... site-N into")],
    sites: Annotated[int, typer.Option(help="number of sites")] = 3,
    source: Annotated[Optional[Path], typer.Option(
        help="real data: a FLAb folder (e.g. ../shared/data/flab) or a Financial PhraseBank folder/file; "
             "omitted: deterministic synthetic data")] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (smaller = more skewed sites)")] = 1.0,
    split: Annotated[str, typer.Option(help="sentiment only: iid or skew (label-skewed Dirichlet)")] = "iid",
    agreement: Annotated[str, typer.Option(help="sentiment only: FPB agreement level 50, 66, 75 or all")] = "50",
    samples: Annotated[int, typer.Option(help="synthetic data only: number of samples")] = 600,
    seed: Annotated[int, typer.Option(help="seed of the split (same seed, same split)")] = 0,
):
    """Split a data set over sites and write one site folder each (what `fedtune client --data` reads)."""
    from fedtune.data import DataError
    from fedtune.tasks import get

    try:
        summary = get(kind.value).prepare_sites(out, sites, source, alpha, split, agreement, samples, seed)
    except (DataError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for name, site in summary["sites"].items():
        typer.echo(f"{site['folder']}: {site['samples']} samples")


@app.command("train-local")
def train_local_cmd(
    kind: Annotated[Kind, typer.Argument(help=KINDS_HELP)],
    data: Annotated[Path, typer.Option(help="a site folder (see `fedtune prepare-data`)")],
    out: Annotated[Path, typer.Option(help="run folder: metrics.json, tb/ (TensorBoard), bundle/")],
    trunk: Annotated[Optional[str], typer.Option(
        help="antiberty | minilm | a local Hugging Face encoder folder (default per kind)")] = None,
    trunk_mode: Annotated[Optional[Mode], typer.Option(help="frozen | full | lora | ptuning (default per kind)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="maximum epochs (early stopping on validation)")] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    lr: Annotated[Optional[float], typer.Option(help="trunk learning rate (full mode)")] = None,
    head_lr: Annotated[Optional[float], typer.Option()] = None,
    val_fraction: Annotated[float, typer.Option(help="share of antibodies / sentences for validation")] = 0.2,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    export: Annotated[bool, typer.Option(help="write an export bundle to OUT/bundle")] = True,
):
    """Train one site alone (AdamW, warm-up + cosine, early stopping; bf16 on CUDA) and export a bundle."""
    from fedtune.bundle import is_bundle_folder, save_bundle
    from fedtune.data import DataError
    from fedtune.publish import PublishError, check_target
    from fedtune.models import TrunkConfig
    from fedtune.tasks import get
    from fedtune.train.local import train_local

    task = get(kind.value)
    mode = (trunk_mode.value if trunk_mode else task.default_mode)
    try:
        source = trunk or task.default_trunk_for(task.assays_from(data))
    except (DataError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    trunk_cfg = TrunkConfig(source=source, mode=mode)
    cfg = task.train_config(mode, epochs=epochs, batch_size=batch_size, lr=lr, head_lr=head_lr, seed=seed,
                            device=device)
    try:
        if export:   # before training: OUT/bundle must be absent or an earlier bundle
            check_target(out / "bundle", is_bundle_folder)
        model, stats, result = train_local(task, data, out, trunk_cfg, cfg, val_fraction=val_fraction)
    except (DataError, FileNotFoundError, PublishError) as exc:
        fail(str(exc))
    final = result["final_val"]
    typer.echo(f"validation: {task.headline(final)} after {result['epochs_run']} epochs; metrics in {out / 'metrics.json'}")
    if result.get("final_test"):
        typer.echo(f"test, scored once ({result['final_test']['bootstrap']['n']} {task.sample_noun}): "
                   f"{task.headline(result['final_test'])}")
    if export:
        bundle = save_bundle(out / "bundle", model, trunk_cfg=trunk_cfg, stats=stats, heads_mode="local",
                             sites=[data.name], metrics={data.name: final},
                             provenance={"how": "local training (one site alone)", "train": cfg.to_dict(),
                                         "data_digest": result["data_digest"], "epochs": result["epochs_run"]})
        typer.echo(f"bundle: {bundle}")

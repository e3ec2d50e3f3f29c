"""`fedtune predict`: score a library file with a bundle (see fedtune.score)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app


def _names(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeated and/or comma-separated names."""
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    return tuple(names) or None


@app.command("predict")
def predict_cmd(
    bundle: Annotated[Path, typer.Option(help="an export bundle folder")],
    input: Annotated[Path, typer.Option("--input", help="CSV/TSV or Parquet (the kind's columns, e.g. heavy,light "
                                                        "or text; others kept), FASTA (<id>_H / <id>_L), or .txt")],
    out: Annotated[Path, typer.Option(help="output .csv, .tsv or .parquet: the input columns + one per "
                                           "prediction")],
    site: Annotated[Optional[str], typer.Option(
        help="a site's own heads (default: global, or mean over sites)")] = None,
    tasks: Annotated[Optional[list[str]], typer.Option(help="tasks to score (fitness; comma-separated or "
                                                            "repeated; default: all)")] = None,
    assays: Annotated[Optional[list[str]], typer.Option(help="also one column per assay (name or task/name), "
                                                             "oriented z")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="also the assays' / labels' values in their own units "
                                                    "(all assays unless --assays)")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run into the same --out")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first bad row (exit 1) instead of "
                                                          "skipping it")] = False,
    batch_size: Annotated[int, typer.Option(help="rows per chunk (one checkpoint each)")] = 256,
    embedding_cache_mb: Annotated[float, typer.Option(help="per-chain embedding cache in MiB (0: off)")] = 256.0,
    backend: Annotated[str, typer.Option(help="how the trunk runs on CPU: fp32, int8 (torch dynamic int8), onnx-int8 (ONNX Runtime; the onnx extra), bf16; see docs/serve.md")] = "fp32",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar on stderr")] = True,
):
    """Score every row of a file with a bundle, as the service would (same numbers): one column per task
    (oriented z-scores, higher = more favourable), per assay when asked, own units with --raw.

    Streams in chunks (constant memory); bad rows are reported with their row number and skipped. Ctrl-C
    leaves whole rows in --out (a .parquet's in <out>.parts/, one Parquet file per chunk, until the end) and
    --resume continues. An existing --out is never overwritten. Exit 0 when done, 1 on a bad row with
    --strict, 2 for unusable arguments or files, 130 when interrupted."""
    import signal

    from pydantic import ValidationError

    from fedtune.bundle import BundleError
    from fedtune.score.inputs import InputError
    from fedtune.score.outputs import OutputError, partial_path
    from fedtune.score.run import StrictStop, predict
    from fedtune.serve.errors import ApiError
    from fedtune.serve.kinds import FileOptions

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)     # a stopped job leaves whole rows, as Ctrl-C does

    opts = FileOptions(site=site, tasks=_names(tasks), assays=_names(assays), raw=raw)
    try:
        summary = predict(bundle, input, out, opts=opts, resume=resume, strict=strict, batch_size=batch_size,
                          cache_mb=embedding_cache_mb, backend=backend, device=device, progress=progress)
    except StrictStop as exc:
        typer.secho(f"error: {input}: {exc} (--strict); the rows before it are in {partial_path(out)}, --resume "
                    f"continues after fixing it", fg="red", err=True)
        raise typer.Exit(1)
    except ApiError as exc:
        typer.secho(f"error: {exc.message}", fg="red", err=True)
        raise typer.Exit(2)
    except (InputError, OutputError, BundleError, ValidationError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted before anything was written", fg="yellow", err=True)
        raise typer.Exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo(summary.line(out), err=True)
    if summary.interrupted:
        typer.secho(f"interrupted: {partial_path(out)} holds whole rows; run again with --resume to continue",
                    fg="yellow", err=True)
        raise typer.Exit(130)

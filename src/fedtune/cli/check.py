"""`fedtune check-data`: validate a site folder before it trains (the client runs the same check at start)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .local import Kind


def site_reports(folder: Path, kind: Kind | None = None) -> list:
    from fedtune.data import check_folder

    return check_folder(folder, [kind.value] if kind else None)


def refuse_bad_data(folder: Path) -> None:
    """Check every kind of data in a site folder; print the report; exit 2 when it has errors."""
    reports = site_reports(folder)
    for report in reports:
        typer.echo(report.format(), err=not report.ok)
    if not all(r.ok for r in reports):
        typer.secho(f"error: {folder}: the site data has errors (listed above); refusing to join the federation. "
                    f"Fix them and run `fedtune check-data {folder}` again.", fg="red", err=True)
        raise typer.Exit(2)


@app.command("check-data")
def check_data(
    folder: Annotated[Path, typer.Argument(help="a site folder (see `fedtune prepare-data`) or a sentiment file")],
    kind: Annotated[Optional[Kind], typer.Option(help="fitness or sentiment (default: every kind in FOLDER)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a machine-readable summary")] = False,
):
    """Check a site's data: layout, columns, residues, labels, duplicates, capped values, rows per assay/label.

    Lists every problem (file, row, column, reason). Exit 0 when there are no errors (warnings are printed),
    2 when there are errors."""
    reports = site_reports(folder, kind)
    ok = all(r.ok for r in reports)
    if as_json:
        typer.echo(json.dumps({"ok": ok, "reports": [r.to_dict() for r in reports]}, indent=2))
    else:
        typer.echo("\n".join(r.format() for r in reports))
    if not ok:
        raise typer.Exit(2)

"""`fedtune package | certs | ca backup|restore|sign | site request|assemble`: kits, certificates and the root
CA of a federation whose participants are separate organisations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .local import fail

ca_app = typer.Typer(help="The federation's root CA (coordinator only): back up, restore, sign a site's request.",
                     no_args_is_help=True)
site_app = typer.Typer(help="A site joining with its own key (request, assemble), or leaving (retire).",
                       no_args_is_help=True)
app.add_typer(ca_app, name="ca")
app.add_typer(site_app, name="site")

PkiDir = Annotated[Path, typer.Option("--pki", help="the provisioning folder (`fedtune provision --out`)")]


def _errors():
    from fedtune.fl.participants import ParticipantError
    from fedtune.fl.pki import PkiError
    from fedtune.fl.provision import ProvisionError
    return (PkiError, ParticipantError, ProvisionError, OSError)


def write_packages(pki: Path, out: Path, names: list[str] | None = None) -> None:
    from fedtune.fl.packages import write_packages as write
    from fedtune.fl.pki import root_fingerprint
    from fedtune.fl.provision import Kits

    try:
        kits = Kits.load(pki)
        for path in write(kits, out, names):
            typer.echo(f"package: {path}")
    except (*_errors(), KeyError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"root CA fingerprint (give it to every participant over another channel): "
               f"{root_fingerprint(kits.server)}")


@app.command()
def package(
    pki: PkiDir,
    out: Annotated[Path, typer.Option(help="folder for the archives (<name>.tar.gz, mode 0600)")],
    participant: Annotated[Optional[list[str]], typer.Option(help="only this participant; repeatable")] = None,
):
    """One archive per participant: its kit (startup/, local/), a README of how to run it, nothing else (no
    root CA key, no other participant's key). Hand each archive only to its own organisation."""
    write_packages(pki, out, participant or None)


@app.command()
def certs(
    kit: Annotated[Optional[list[Path]], typer.Option(help="a startup kit folder; repeatable")] = None,
    workspace: Annotated[Optional[Path], typer.Option(help="a provisioning folder: every kit in its kits.json")] = None,
    warn_days: Annotated[int, typer.Option(help="warn when a certificate expires within this many days")] = 30,
):
    """Each kit's certificates (its own, the root CA's) with expiry and days left. A certificate expiring within
    --warn-days (or expired) prints a WARNING line and the exit code is 1."""
    from fedtune.fl.pki import kit_expiry, root_fingerprint
    from fedtune.fl.provision import Kits

    if bool(kit) == bool(workspace):
        fail("give --kit DIR (repeatable) or --workspace DIR")
    try:
        kits = list(kit or []) or [k for _, k in Kits.load(workspace).participants().values()]
        infos = [c for k in kits for c in kit_expiry(k)]
        typer.echo(f"root CA fingerprint: {root_fingerprint(kits[0])}")
    except (*_errors(), KeyError, ValueError) as exc:
        fail(str(exc))
    warned = False
    for c in infos:
        typer.echo(c.line())
        if c.days_left < warn_days:
            warned = True
            typer.echo(f"WARNING: {c.file} of {c.role} {c.kit} " + ("has EXPIRED" if c.days_left < 0 else
                       f"expires in {c.days_left} days") + ": re-issue it (docs/deploy.md, re-issue runbook)")
    raise typer.Exit(1 if warned else 0)


@ca_app.command("backup")
def ca_backup(pki: PkiDir, out: Annotated[Path, typer.Option(help="backup file to create (tar.gz, 0600)")]):
    """Copy the root CA state (root key, every provisioned participant's key), project.yml and kits.json into a
    new file readable by you only. Keep it offline: whoever holds it can sign kits for this federation."""
    from fedtune.fl.pki import backup_ca
    try:
        typer.echo(f"CA backup: {backup_ca(pki, out)}")
    except _errors() as exc:
        fail(str(exc))


@ca_app.command("restore")
def ca_restore(backup: Annotated[Path, typer.Argument(help="a file from `fedtune ca backup`")], pki: PkiDir):
    """Put a CA backup into a provisioning folder that has no CA (or the same one); another CA is never
    replaced. Then `fedtune provision --out PKI --force` with the same participants re-issues the same kits."""
    from fedtune.fl.pki import restore_ca
    try:
        written = restore_ca(backup, pki)
    except _errors() as exc:
        fail(str(exc))
    for path in written:
        typer.echo(f"restored: {path}")
    if not written:
        typer.echo("nothing to restore: the same CA state is already there")


@ca_app.command("sign")
def ca_sign(
    request: Annotated[Path, typer.Argument(help="a site's <name>.request.zip (`fedtune site request`)")],
    pki: PkiDir,
    out: Annotated[Optional[Path], typer.Option(help="signed file to write (<name>.signed.zip)")] = None,
    valid_days: Annotated[int, typer.Option(help="certificate validity in days")] = 360,
    renew: Annotated[bool, typer.Option(help="the site is already a participant: issue it a new certificate")] = False,
):
    """Approve a site's certificate request with the federation's root CA. Only site requests with a new name
    (or --renew) are signed; the site's private key is never sent and never seen here."""
    from fedtune.fl.csr import read_request, sign
    from fedtune.fl.pki import root_fingerprint
    try:
        meta = read_request(request)
        signed = sign(request, pki, out, valid_days, renew)
        from fedtune.fl.provision import Kits
        fp = root_fingerprint(Kits.load(pki).server)
    except _errors() as exc:
        fail(str(exc))
    typer.echo(f"signed {meta['name']} ({meta['org']}): {signed}")
    typer.echo(f"root CA fingerprint (tell the site over another channel): {fp}")


@site_app.command("request")
def site_request(
    name: Annotated[str, typer.Option(help="this site's name (a DNS label, e.g. lab-c)")],
    org: Annotated[str, typer.Option(help="this site's organisation")],
    out: Annotated[Path, typer.Option(help="new folder for the private key and the request")],
):
    """Make this site's private key (stays in OUT, 0600) and a certificate request: send only
    OUT/<name>.request.zip to the coordinator."""
    from fedtune.fl.csr import request
    try:
        zip_path = request(name, org, out)
    except _errors() as exc:
        fail(str(exc))
    typer.echo(f"request: {zip_path} (send this file to the coordinator; {out}/{name}.key never leaves here)")


@site_app.command("assemble")
def site_assemble(
    signed: Annotated[Path, typer.Argument(help="the <name>.signed.zip the coordinator returned")],
    request_dir: Annotated[Path, typer.Option("--request", help="the folder of `fedtune site request`")],
    out: Annotated[Path, typer.Option(help="new folder for the kit")],
    fingerprint: Annotated[str, typer.Option(help="the root CA fingerprint the coordinator gave you out of band")],
):
    """Build this site's startup kit from the signed certificate and the local key, after checking the root CA
    fingerprint. Then `fedtune client --kit KIT --data DATA`."""
    from fedtune.fl.csr import assemble
    try:
        kit = assemble(signed, request_dir, out, fingerprint)
    except _errors() as exc:
        fail(str(exc))
    typer.echo(f"kit: {kit}")


@site_app.command("retire")
def site_retire(
    name: Annotated[str, typer.Argument(help="the site to retire")],
    admin_kit: Annotated[Path, typer.Option(help="an admin's startup kit folder")],
    undo: Annotated[bool, typer.Option(help="let the site in again")] = False,
):
    """Make the running server refuse a site from now on (NVFlare's disable_client: its session ends, a new
    registration under its name is rejected, also after a server restart). NVFlare has no revocation: the
    site's certificate itself stays valid until it expires (see docs/deploy.md, retiring a site)."""
    from fedtune.fl.pki import retire_site
    try:
        result = retire_site(admin_kit, name, undo)
    except (*_errors(), ValueError, RuntimeError) as exc:
        fail(str(exc))
    except Exception as exc:        # the admin API's connection and command errors
        fail(f"the server did not do it: {exc}")
    typer.echo(f"{name}: {'enabled again' if undo else 'retired'} ({result})")

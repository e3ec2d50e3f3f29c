"""Named participants, one archive per participant, the CA backed up / restored and never minted twice, kits
added later from the same CA: real NVFlare provisioning, real certificates, the real `fedtune` command."""

from __future__ import annotations

import json
import stat
import subprocess
import tarfile

import pytest

from fedtune.fl.federation import fedtune_command
from fedtune.fl.packages import private_keys_in
from fedtune.fl.participants import ParticipantError, admin, load_project, site
from fedtune.fl.pki import PkiError, backup_ca, kit_identity, restore_ca
from fedtune.fl.provision import Kits, ProvisionError, add_sites, ca_state, provision

from test_provision_safety import snapshot

NAMED = ["--site", "lab-a@acme", "--site", "hospital-b@uni", "--admin", "alice@acme.com@acme",
         "--server-name", "fl.example.org", "--host-name", "localhost", "--server-org", "coord"]


def fedtune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(fedtune_command(*args), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """A named federation provisioned by the command line, with one package per participant."""
    root = tmp_path_factory.mktemp("named")
    proc = fedtune("provision", "--out", str(root / "pki"), *NAMED, "--packages", str(root / "pkgs"))
    assert proc.returncode == 0, proc.stderr
    return root, Kits.load(root / "pki")


def test_names_and_organisations_reach_the_kits(named):
    _, kits = named
    assert list(kits.sites) == ["lab-a", "hospital-b"] and list(kits.admins) == ["alice@acme.com"]
    assert kit_identity(kits.server) == ("server", "fl.example.org", "coord")
    assert kit_identity(kits.sites["lab-a"]) == ("site", "lab-a", "acme")
    assert kit_identity(kits.sites["hospital-b"]) == ("site", "hospital-b", "uni")
    assert kit_identity(kits.admin) == ("admin", "alice@acme.com", "acme")
    client = json.loads((kits.sites["lab-a"] / "startup" / "fed_client.json").read_text())
    assert client["servers"][0]["service"]["target"] == f"fl.example.org:{kits.fl_port}"
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((kits.server / "startup" / "server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"fl.example.org", "localhost"} <= set(sans.get_values_for_type(x509.DNSName))


@pytest.mark.parametrize("spec", ["Lab-A@acme", "lab_a@acme", "../x@acme", "global@acme", "lab-a@ac-me",
                                  "-lab@acme", "lab-a@", "a" * 64 + "@acme", "lab a@acme"])
def test_unsafe_site_names_are_refused(spec, tmp_path):
    name, _, org = spec.partition("@")
    if org == "":          # "lab-a@" means the default organisation: allowed, the name decides
        assert site(spec).org == "fedtune"
        return
    with pytest.raises(ParticipantError):
        site(spec)
    proc = fedtune("provision", "--out", str(tmp_path / "pki"), "--site", spec, "--site", "ok@acme")
    assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr
    assert not (tmp_path / "pki").exists()


def test_admins_and_project_files(tmp_path):
    assert admin("alice@acme.com@acme").org == "acme" and admin("bob@uni.edu", "coord").org == "coord"
    with pytest.raises(ParticipantError):
        admin("not-an-email@acme")
    toml = tmp_path / "project.toml"
    toml.write_text('sites = ["lab-a@acme", {name = "hospital-b", org = "uni"}]\n'
                    '[server]\nname = "fl.example.org"\norg = "coord"\nhost_names = ["localhost"]\n')
    spec = load_project(toml)
    assert [(s.name, s.org) for s in spec.sites] == [("lab-a", "acme"), ("hospital-b", "uni")]
    assert spec.admins[0].org == "coord" and spec.orgs["fl.example.org"] == "coord"
    bad = tmp_path / "bad.yml"
    for text in ("sites: [lab-a@acme, lab-a@uni]\n", "sites: []\n", "sitez: [lab-a]\n", "sites: [{name: x/y}]\n",
                 "server: {name: 'bad host!'}\nsites: [lab-a]\n", "[not yaml"):
        bad.write_text(text)
        with pytest.raises(ParticipantError):
            load_project(bad)
    proc = fedtune("provision", "--out", str(tmp_path / "pki"), "--project", str(bad))
    assert proc.returncode == 2 and not (tmp_path / "pki").exists()


def test_one_package_per_participant_holds_only_its_own_key(named):
    root, kits = named
    state = json.loads(ca_state(kits.root).read_text())
    others = {n: kit for n, (_, kit) in kits.participants().items()}
    archives = sorted((root / "pkgs").iterdir())
    assert [a.name for a in archives] == sorted(f"{n}.tar.gz" for n in others)
    for archive in archives:
        name = archive.name.removesuffix(".tar.gz")
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        role, kit = kits.participants()[name]
        own = (kit / "startup" / ("server.key" if role == "server" else "client.key")).read_bytes()
        keys = private_keys_in(archive)
        assert list(keys.values()) == [own], (archive, sorted(keys))
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            blob = b"".join(tar.extractfile(m).read() for m in members if m.isfile())
            names = [m.name for m in members]
        assert state["root_pri_key"].encode() not in blob and b"root_pri_key" not in blob
        for other, okit in others.items():          # no other participant's key, in any form
            okey = next((okit / "startup").glob("*.key")).read_bytes()
            if other != name:
                assert okey not in blob, (archive, other)
        assert all(n == name or n.startswith(f"{name}/") for n in names)
        assert {n.split("/")[1] for n in names if "/" in n} <= {"startup", "local", "transfer", "README.md"}
        assert not any(m.issym() or m.islnk() for m in members)
        assert f"{name}/local/resources.json" not in names       # coordinator's storage paths stay home
        readme = [m for m in members if m.name == f"{name}/README.md"]
        assert readme and kits.server_name.encode() in blob
        key_member = next(m for m in members if m.name.endswith(".key"))
        assert stat.S_IMODE(key_member.mode) == 0o600


def test_packages_are_never_written_over(named, tmp_path):
    root, kits = named
    proc = fedtune("package", "--pki", str(kits.root), "--out", str(root / "pkgs"))
    assert proc.returncode == 2 and "exists" in proc.stderr
    proc = fedtune("package", "--pki", str(kits.root), "--out", str(tmp_path / "p"), "--participant", "lab-a")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["lab-a.tar.gz"]
    proc = fedtune("package", "--pki", str(kits.root), "--out", str(tmp_path / "q"), "--participant", "nobody")
    assert proc.returncode == 2 and "nobody" in proc.stderr


def test_ca_backup_restore_and_no_second_ca(tmp_path):
    out = tmp_path / "pki"
    kits = provision(out, ["lab-a@acme", "hospital-b@uni"])
    backup = tmp_path / "ca.tgz"
    proc = fedtune("ca", "backup", "--pki", str(out), "--out", str(backup))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert fedtune("ca", "backup", "--pki", str(out), "--out", str(backup)).returncode == 2   # never overwritten
    old_kits, old_state = snapshot(kits.server.parent), ca_state(out).read_bytes()

    # the CA state is lost: provisioning again (even forced) would mint a second CA; refused, nothing changed
    ca_state(out).rename(tmp_path / "lost.json")
    assert provision(out, ["lab-a@acme"]).sites == kits.sites      # without --force: the kits, reused as they are
    before = snapshot(out)
    with pytest.raises(ProvisionError, match="second root CA"):
        provision(out, ["lab-a@acme", "hospital-b@uni"], force=True)
    assert snapshot(out) == before
    proc = fedtune("provision", "--out", str(out), "--site", "lab-a@acme", "--site", "hospital-b@uni", "--force")
    assert proc.returncode == 2 and "ca restore" in proc.stderr and snapshot(out) == before

    # a different CA is never restored over; the right one is, and re-issues the very same kits
    other = provision(tmp_path / "other", 1)
    with pytest.raises(PkiError, match="another root CA"):
        restore_ca(backup, other.root)
    proc = fedtune("ca", "restore", str(backup), "--pki", str(out))
    assert proc.returncode == 0, proc.stderr
    assert ca_state(out).read_bytes() == old_state and stat.S_IMODE(ca_state(out).stat().st_mode) == 0o600
    again = provision(out, ["lab-a@acme", "hospital-b@uni"], force=True)
    assert snapshot(kits.server.parent) == old_kits
    for name in ("lab-a", "hospital-b"):
        for f in ("client.crt", "client.key", "rootCA.pem"):
            assert (again.sites[name] / "startup" / f).read_bytes() == (kits.sites[name] / "startup" / f).read_bytes()
    assert restore_ca(backup, out) == []          # the same CA again: nothing to do, nothing changed

    # a file that is not a CA backup is refused
    junk = tmp_path / "junk.tgz"
    with tarfile.open(junk, "w:gz") as tar:
        tar.add(tmp_path / "lost.json", arcname="../evil.json")
    with pytest.raises(PkiError, match="not a fedtune CA backup"):
        restore_ca(junk, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "evil.json").exists()
    assert backup_ca(out, tmp_path / "second.tgz").is_file()


def test_add_site_keeps_every_existing_kit(tmp_path):
    out = tmp_path / "pki"
    kits = provision(out, ["lab-a@acme", "hospital-b@uni"])
    old = snapshot(kits.server.parent)
    proc = fedtune("provision", "--out", str(out), "--add-site", "lab-c@neworg", "--packages", str(tmp_path / "p"))
    assert proc.returncode == 0, proc.stderr
    new = Kits.load(out)
    assert snapshot(kits.server.parent) == old                        # no existing kit changed
    assert {k: new.sites[k] for k in kits.sites} == kits.sites and new.server == kits.server
    assert kit_identity(new.sites["lab-c"]) == ("site", "lab-c", "neworg")
    assert (new.sites["lab-c"] / "startup" / "rootCA.pem").read_bytes() == \
        (kits.server / "startup" / "rootCA.pem").read_bytes()
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["lab-c.tar.gz"]
    with pytest.raises(ProvisionError, match="already a participant"):
        add_sites(out, [site("lab-a@acme")])
    proc = fedtune("provision", "--out", str(tmp_path / "none"), "--add-site", "lab-d@x")
    assert proc.returncode == 2 and not (tmp_path / "none" / "workspace").exists()


def test_reissue_gives_a_new_key_and_certificate_and_keeps_the_rest(tmp_path):
    from cryptography import x509
    out = tmp_path / "pki"
    kits = provision(out, ["lab-a@acme", "hospital-b@uni"])
    (kits.server / "disabled_clients.json").write_text('{"disabled_clients": ["gone"]}')   # a retired site
    old = snapshot(kits.server.parent)
    root = x509.load_pem_x509_certificate((kits.server / "startup" / "rootCA.pem").read_bytes())
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days == 3650     # not NVFlare's 360
    proc = fedtune("provision", "--out", str(out), "--reissue", "lab-a", "--reissue", kits.server_name,
                   "--packages", str(tmp_path / "p"))
    assert proc.returncode == 0, proc.stderr
    new = Kits.load(out)
    assert snapshot(kits.server.parent) == old                   # the old kits are still there, untouched
    assert new.sites["hospital-b"] == kits.sites["hospital-b"] and new.admin == kits.admin
    for name, before, after in (("lab-a", kits.sites["lab-a"], new.sites["lab-a"]),
                                (kits.server_name, kits.server, new.server)):
        assert after != before and kit_identity(after) == kit_identity(before)
        key = "server" if name == kits.server_name else "client"
        for f in (f"{key}.crt", f"{key}.key"):
            assert (after / "startup" / f).read_bytes() != (before / "startup" / f).read_bytes(), (name, f)
        cert = x509.load_pem_x509_certificate((after / "startup" / f"{key}.crt").read_bytes())
        cert.verify_directly_issued_by(root)                     # same root CA
        assert (after / "startup" / "rootCA.pem").read_bytes() == (kits.server / "startup" / "rootCA.pem").read_bytes()
    assert (new.server / "local" / "resources.json").is_file()
    assert json.loads((new.server / "disabled_clients.json").read_text()) == {"disabled_clients": ["gone"]}
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted([f"{kits.server_name}.tar.gz", "lab-a.tar.gz"])
    assert len(list((out / "ca-backups").iterdir())) >= 1
    proc = fedtune("provision", "--out", str(out), "--reissue", "nobody")
    assert proc.returncode == 2 and "nobody" in proc.stderr


def test_a_root_ca_made_with_nvflares_default_validity_is_kept(tmp_path, monkeypatch):
    import fedtune.fl.provision as prov
    monkeypatch.setattr(prov, "ROOT_VALID_DAYS", 360)       # as an older fedtune (NVFlare's default) made it
    first = provision(tmp_path / "pki", 1)
    monkeypatch.undo()
    again = provision(tmp_path / "pki", 2, force=True)      # NVFlare refuses another validity for an existing root
    assert (again.server / "startup" / "rootCA.pem").read_bytes() == (first.server / "startup" / "rootCA.pem").read_bytes()
    assert add_sites(tmp_path / "pki", [site("lab-c@x")]).sites["lab-c"].is_dir()

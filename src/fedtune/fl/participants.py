"""Who takes part in a federation: the server (its public DNS name), named sites with their organisations,
and the admins. Every name is checked here, once, before it reaches NVFlare, a folder name or a job.

    --site lab-a@acme                 a site `lab-a` of the organisation `acme`
    --admin alice@acme.com@acme       an admin (an e-mail address) of `acme`; `--admin alice@acme.com`: the
                                      server's organisation
    --project FILE                    the same in a YAML or TOML file:

        server: {name: fl.example.org, org: coord, host_names: [fl-server], fl_port: 8002, admin_port: 8003}
        sites: [{name: lab-a, org: acme}, "hospital-b@uni"]
        admins: [{name: alice@acme.com, org: acme}]

Site names are DNS labels (lower-case letters, digits, inner '-', at most 63 characters): they become folder
and archive names, compose/k8s names, and the `site` a served bundle is asked for.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_ORG = "fedtune"
DEFAULT_ADMIN = "admin@fedtune.local"
SITE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
ORG_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")                     # NVFlare's own rule for an organisation
ADMIN_NAME = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")   # NVFlare: an e-mail address
HOST_NAME = re.compile(r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
IP_ADDRESS = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
RESERVED = {"global", "server", "admin", "state"}                # a head set, a kit role, the CA folder


class ParticipantError(ValueError):
    """A participant name, organisation or project file that cannot be used."""


@dataclass(frozen=True)
class Participant:
    name: str
    org: str = DEFAULT_ORG


def check_org(org: str) -> str:
    if not isinstance(org, str) or not ORG_NAME.fullmatch(org):
        raise ParticipantError(f"organisation {org!r}: use 1-64 letters, digits or '_' (NVFlare's rule)")
    return org


def check_site(name: str) -> str:
    if not isinstance(name, str) or not SITE_NAME.fullmatch(name):
        raise ParticipantError(f"site name {name!r}: use a DNS label (lower-case letters, digits and inner '-', "
                               f"at most 63 characters), e.g. lab-a")
    if name in RESERVED:
        raise ParticipantError(f"site name {name!r} is reserved ({', '.join(sorted(RESERVED))})")
    return name


def check_host(name: str) -> str:
    if not isinstance(name, str) or not (HOST_NAME.fullmatch(name) or IP_ADDRESS.fullmatch(name)):
        raise ParticipantError(f"server host name {name!r}: not a DNS name or IPv4 address")
    return name


def site(spec: str | dict) -> Participant:
    """`lab-a@acme`, `lab-a` (organisation fedtune) or {name, org}."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"name", "org"}
        if unknown:
            raise ParticipantError(f"site {spec!r}: unknown key(s) {sorted(unknown)}")
        name, org = spec.get("name"), spec.get("org", DEFAULT_ORG)
    elif isinstance(spec, str):
        name, _, org = spec.partition("@")
        org = org or DEFAULT_ORG
    else:
        raise ParticipantError(f"site {spec!r}: expected NAME@ORG or {{name, org}}")
    return Participant(check_site(name), check_org(org))


def admin(spec: str | dict, default_org: str = DEFAULT_ORG) -> Participant:
    """`alice@acme.com@acme` (e-mail @ organisation), `alice@acme.com` (default_org) or {name, org}."""
    if isinstance(spec, dict):
        name, org = spec.get("name"), spec.get("org", default_org)
    elif isinstance(spec, str) and spec.count("@") >= 2:
        name, _, org = spec.rpartition("@")
    elif isinstance(spec, str):
        name, org = spec, default_org
    else:
        raise ParticipantError(f"admin {spec!r}: expected EMAIL@ORG or {{name, org}}")
    if not isinstance(name, str) or not ADMIN_NAME.fullmatch(name):
        raise ParticipantError(f"admin {name!r}: an admin's name is an e-mail address, e.g. alice@acme.com")
    return Participant(name, check_org(org))


@dataclass
class ProjectSpec:
    """Everything `fedtune provision` needs to know about the participants."""
    sites: list[Participant]
    server_name: str = "localhost"
    server_org: str = DEFAULT_ORG
    host_names: list[str] = field(default_factory=list)
    admins: list[Participant] = field(default_factory=list)
    fl_port: int = 8002
    admin_port: int = 8003

    def __post_init__(self) -> None:
        check_host(self.server_name)
        check_org(self.server_org)
        for h in self.host_names:
            check_host(h)
        if not self.sites:
            raise ParticipantError("a federation needs at least one site")
        if not self.admins:
            self.admins = [Participant(DEFAULT_ADMIN, self.server_org)]
        names = [self.server_name, *(s.name for s in self.sites), *(a.name for a in self.admins)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ParticipantError(f"participant name(s) used twice: {', '.join(dupes)}")
        for port in (self.fl_port, self.admin_port):
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ParticipantError(f"port {port!r}: expected 1-65535")

    @property
    def orgs(self) -> dict[str, str]:
        return {self.server_name: self.server_org, **{p.name: p.org for p in [*self.sites, *self.admins]}}


def numbered_sites(n: int) -> list[Participant]:
    if n < 1:
        raise ParticipantError("a federation needs at least one site")
    return [Participant(f"site-{i + 1}") for i in range(n)]


def load_project(path: str | Path) -> ProjectSpec:
    """A project file (YAML, or TOML when it ends in .toml); see the module docstring."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ParticipantError(f"{path}: cannot read the project file: {exc}") from None
    if not isinstance(data, dict):
        raise ParticipantError(f"{path}: expected a mapping with server, sites, admins")
    unknown = set(data) - {"server", "sites", "admins"}
    if unknown:
        raise ParticipantError(f"{path}: unknown key(s) {sorted(unknown)}")
    server = data.get("server") or {}
    sites, admins = data.get("sites") or [], data.get("admins") or []
    if not isinstance(server, dict) or not isinstance(sites, list) or not isinstance(admins, list):
        raise ParticipantError(f"{path}: server is a mapping, sites and admins are lists")
    unknown = set(server) - {"name", "org", "host_names", "fl_port", "admin_port"}
    if unknown:
        raise ParticipantError(f"{path}: unknown server key(s) {sorted(unknown)}")
    org = check_org(server.get("org", DEFAULT_ORG))
    host_names = server.get("host_names") or []
    if not isinstance(host_names, list):
        raise ParticipantError(f"{path}: server.host_names is a list")
    return ProjectSpec(sites=[site(s) for s in sites], server_name=server.get("name", "localhost"),
                       server_org=org, host_names=[str(h) for h in host_names],
                       admins=[admin(a, org) for a in admins], fl_port=server.get("fl_port", 8002),
                       admin_port=server.get("admin_port", 8003))

"""deploy/server, deploy/site, deploy/admin: the compose project each party runs alone, rendered by the real
compose binary (`docker compose config`: interpolation, profiles, overrides and `!reset` as compose applies
them; no engine needed) and checked: a site mounts only its own kit and data and publishes nothing, the admin
port is on loopback unless the coordinator says otherwise, the admin project reaches nothing but its kit,
results and bundles, and each role runs the same images and entrypoints as the single-host compose.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_helpers import REPO, unavailable

ROLES = REPO / "deploy"
COMPOSE_FALLBACK = Path(os.environ.get("FEDTUNE_DOCKER_DIR", "/var/tmp/fedtune-docker")) / "dockercfg" / \
    "cli-plugins" / "docker-compose"          # where scripts/docker-engine.sh puts the plugin


@pytest.fixture(scope="session")
def compose_bin() -> list[str]:
    plugin = Path(os.environ.get("DOCKER_CONFIG", "~/.docker")).expanduser() / "cli-plugins" / "docker-compose"
    for cand in (plugin, COMPOSE_FALLBACK):
        if os.access(cand, os.X_OK):
            return [str(cand)]
    if shutil.which("docker-compose"):
        return [shutil.which("docker-compose")]
    unavailable("no docker compose binary (scripts/docker-engine.sh installs one): needed to render deploy/*/")


def run_config(compose_bin, role: str, env: dict | None = None, files=("compose.yaml",), profiles=()):
    args = [*compose_bin, *[a for f in files for a in ("-f", f)], *[a for p in profiles for a in ("--profile", p)],
            "config", "--format", "json"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FEDTUNE_", "COMPOSE_"))}
    return subprocess.run(args, cwd=ROLES / role, capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def render(compose_bin, role: str, env: dict | None = None, **kw) -> dict:
    res = run_config(compose_bin, role, env, **kw)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def mounts(svc: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only)."""
    return {v["target"]: (v["source"], bool(v.get("read_only"))) for v in svc.get("volumes", [])}


def test_a_site_mounts_only_its_kit_and_data_and_publishes_nothing(compose_bin, tmp_path):
    kit, data = tmp_path / "org" / "kit", tmp_path / "org" / "data"
    cfg = render(compose_bin, "site", {"FEDTUNE_KIT": str(kit), "FEDTUNE_DATA": str(data)})
    assert list(cfg["services"]) == ["site"]
    site = cfg["services"]["site"]
    assert mounts(site) == {"/kit": (str(kit), False), "/data": (str(data), True)}
    for v in site["volumes"]:   # a mistyped path fails `up` instead of mounting a new, empty folder
        assert v["type"] == "bind" and not v.get("bind", {}).get("create_host_path"), v   # short syntax: true
    assert not site.get("ports") and not site.get("expose")
    assert "volumes" not in cfg or not cfg["volumes"], "no named volume: nothing of the site outside its folders"
    assert site["image"].startswith("fedtune/client:") and site.get("entrypoint") is None   # the image's own
    assert not any("ADMIN" in k or "KEY" in k for k in site.get("environment", {}))


def test_a_site_reserves_its_gpus_and_runs_without_one_with_the_cpu_override(compose_bin, tmp_path):
    cfg = render(compose_bin, "site", {"FEDTUNE_GPUS": "2"})
    site = cfg["services"]["site"]
    assert site["deploy"]["resources"]["reservations"]["devices"] == [
        {"capabilities": ["gpu"], "driver": "nvidia", "count": 2}]
    assert site["environment"]["FEDTUNE_GPUS"] == "2"      # processes per job = GPUs reserved
    cpu = render(compose_bin, "site", files=("compose.yaml", "compose.cpu.yaml"))["services"]["site"]
    assert not cpu.get("deploy", {}).get("resources", {}).get("reservations")


@pytest.mark.parametrize("role,service", [("site", "site"), ("admin", "submitter")])
def test_without_dns_the_server_name_is_pinned_and_a_missing_address_named(compose_bin, role, service):
    files = ("compose.yaml", "compose.no-dns.yaml")
    env = {"FEDTUNE_SERVER": "fl.example.org", "FEDTUNE_MIN_SITES": "2"}
    svc = render(compose_bin, role, {**env, "FEDTUNE_SERVER_IP": "203.0.113.10"}, files=files)["services"][service]
    assert svc["extra_hosts"] in (["fl.example.org=203.0.113.10"], ["fl.example.org:203.0.113.10"],
                                  {"fl.example.org": ["203.0.113.10"]}, {"fl.example.org": "203.0.113.10"})
    res = run_config(compose_bin, role, env, files=files)
    assert res.returncode != 0 and "the server's IP address" in res.stderr


def test_the_server_publishes_the_fl_port_and_keeps_the_admin_port_on_loopback(compose_bin, tmp_path):
    cfg = render(compose_bin, "server", {"FEDTUNE_KIT": str(tmp_path / "kit")})
    assert list(cfg["services"]) == ["fl-server"], "inference and Prometheus only with --profile serving"
    srv = cfg["services"]["fl-server"]
    ports = {p["target"]: (p["host_ip"], str(p["published"])) for p in srv["ports"]}
    assert ports == {8002: ("0.0.0.0", "8002"), 8003: ("127.0.0.1", "8003")}
    assert mounts(srv) == {"/kit": (str(tmp_path / "kit"), False)}
    assert srv["image"].startswith("fedtune/server:")
    # another port in the kit: the same number inside and out (the kits hold it), the healthcheck follows it
    cfg = render(compose_bin, "server", {"FEDTUNE_FL_PORT": "9443", "FEDTUNE_ADMIN_PORT": "9444",
                                         "FEDTUNE_ADMIN_ADDR": "10.8.0.1"})
    srv = cfg["services"]["fl-server"]
    assert {p["target"]: (p["host_ip"], str(p["published"])) for p in srv["ports"]} == {
        9443: ("0.0.0.0", "9443"), 9444: ("10.8.0.1", "9444")}
    assert srv["environment"] == {"FEDTUNE_FL_PORT": "9443", "FEDTUNE_ADMIN_PORT": "9444"}


def test_the_server_serving_profile_adds_inference_and_prometheus_on_loopback(compose_bin, tmp_path):
    cfg = render(compose_bin, "server", {"FEDTUNE_BUNDLES": str(tmp_path / "bundles")}, profiles=("serving",))
    services = cfg["services"]
    assert set(services) == {"fl-server", "keys", "inference", "prometheus"}
    for name in ("inference", "prometheus"):
        assert [p["host_ip"] for p in services[name]["ports"]] == ["127.0.0.1"], name
    assert mounts(services["inference"])["/bundles"] == (str(tmp_path / "bundles"), True)
    assert "monitoring" not in services["fl-server"]["networks"], "the FL server is not on the monitoring network"
    assert services["keys"]["network_mode"] == "none"
    prom = yaml.safe_load((ROLES / "server" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]}
    assert targets["inference"] == ["inference:8000"] and "training" not in targets


def test_the_admin_project_holds_its_kit_results_and_bundles_only(compose_bin, tmp_path):
    env = {"FEDTUNE_MIN_SITES": "4", "FEDTUNE_KIT": str(tmp_path / "kit"),
           "FEDTUNE_RESULTS": str(tmp_path / "results"), "FEDTUNE_BUNDLES": str(tmp_path / "bundles")}
    cfg = render(compose_bin, "admin", env)
    assert list(cfg["services"]) == ["submitter"]
    sub = cfg["services"]["submitter"]
    assert mounts(sub) == {"/kit": (str(tmp_path / "kit"), False), "/results": (str(tmp_path / "results"), False),
                           "/bundles": (str(tmp_path / "bundles"), False)}
    assert not sub.get("ports") and not sub.get("expose")
    assert sub["environment"]["FEDTUNE_MIN_SITES"] == "4"
    res = run_config(compose_bin, "admin")
    assert res.returncode != 0 and "how many sites must take part" in res.stderr


def test_each_role_runs_the_images_and_entrypoints_of_the_single_host_stack(compose_bin):
    allinone = yaml.safe_load((REPO / "compose.yaml").read_text().replace("!reset", ""))["services"]
    roles = {"server": render(compose_bin, "server", profiles=("serving",))["services"],
             "site": render(compose_bin, "site")["services"],
             "admin": render(compose_bin, "admin", {"FEDTUNE_MIN_SITES": "3"})["services"]}
    same = {("server", "fl-server"): "fl-server", ("server", "inference"): "inference",
            ("server", "keys"): "keys", ("server", "prometheus"): "prometheus", ("site", "site"): "site-1",
            ("admin", "submitter"): "submitter"}
    for (role, name), ref in same.items():
        svc, base = roles[role][name], allinone[ref]
        assert svc["image"] == base["image"].replace("${FEDTUNE_TAG:-dev}", "dev"), (role, name)
        assert svc.get("entrypoint") == base.get("entrypoint"), (role, name)
    # and no role project builds or holds what only the coordinator's provisioning has
    for role, services in roles.items():
        for name, svc in services.items():
            assert "build" not in svc, f"{role}/{name}: images come from scripts/build-images.sh or a registry"
            assert all("/pki" not in v["target"] for v in svc.get("volumes", [])), (role, name)


def test_what_a_party_unpacks_beside_its_project_is_never_committed(tmp_path):
    for role, folders in {"server": ["kit", "bundles"], "site": ["kit", "data"],
                          "admin": ["kit", "results", "bundles"]}.items():
        for folder in folders:
            path = f"deploy/{role}/{folder}/startup/client.key"
            res = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
            assert res.returncode == 0, f"{path} is not ignored by git"


def test_what_a_party_unpacks_beside_its_project_never_enters_a_build_context():
    lines = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    for folder in ("kit", "data", "results", "bundles", ".env"):
        rule = f"deploy/*/{folder}"
        assert rule in lines, f".dockerignore lacks {rule}"
        assert not any(l.startswith("!") for l in lines[lines.index(rule):]), "re-admitted by a later ! rule"

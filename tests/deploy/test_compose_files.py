"""compose.yaml, compose.cpu.yaml, the Dockerfiles and the service glue, checked without a Docker engine:
isolation of kits and data per container, no secret in an image, GPU reservations and their CPU override,
non-root images, the Prometheus targets. (tests/deploy/test_compose_stack.py runs the stack for real.)"""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
import yaml

from deploy_helpers import REPO

SITES = ["site-1", "site-2", "site-3"]


class ComposeLoader(yaml.SafeLoader):
    """Compose's YAML: `!reset` / `!override` tags on top of plain YAML."""


ComposeLoader.add_constructor("!reset", lambda loader, node: {"__reset__": True})
ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_mapping(node, deep=True))


def load(name: str) -> dict:
    return yaml.load((REPO / name).read_text(), Loader=ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("compose.yaml")


def volume_sources(service: dict) -> dict[str, str]:
    out = {}
    for v in service.get("volumes", []):
        src, target, *mode = v.split(":") if isinstance(v, str) else (v["source"], v["target"])
        out[src] = target + (f":{mode[0]}" if mode else "")
    return out


def test_each_site_mounts_only_its_own_kit_and_data(compose):
    services = compose["services"]
    for site in SITES:
        vols = volume_sources(services[site])
        assert vols == {f"kit-{site}": "/kit", f"data-{site}": "/data:ro"}, vols
    for name, svc in services.items():
        for src in volume_sources(svc):
            if src.startswith(("kit-site-", "data-site-")) and name != "provision":
                assert name == src.split("-", 1)[1], f"{name} mounts {src}"


def test_root_ca_folder_is_mounted_by_provision_only(compose):
    users = [name for name, svc in compose["services"].items() if "pki" in volume_sources(svc)]
    assert users == ["provision"]
    assert compose["services"]["provision"].get("network_mode") == "none"


def test_federation_ports_stay_on_the_compose_network(compose):
    services = compose["services"]
    assert "ports" not in services["fl-server"] and set(services["fl-server"]["expose"]) == {"8002", "8003"}
    for site in SITES:
        assert "ports" not in services[site]
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"inference", "prometheus"}
    for name in published:
        for port in services[name]["ports"]:
            assert port.startswith("${FEDTUNE_"), f"{name}: {port} (loopback by default, configurable)"


def test_gpu_reservations_and_the_cpu_override(compose):
    cpu = load("compose.cpu.yaml")
    for k, site in enumerate(SITES, 1):
        svc = compose["services"][site]
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        # one GPU by default; FEDTUNE_SITE<k>_GPUS sets both the reservation and the DDP process count
        assert devices == [{"driver": "nvidia", "count": f"${{FEDTUNE_SITE{k}_GPUS:-1}}", "capabilities": ["gpu"]}]
        assert svc["environment"]["FEDTUNE_GPUS"] == f"${{FEDTUNE_SITE{k}_GPUS:-1}}"
        assert cpu["services"][site]["deploy"] == {"__reset__": True}
    assert compose["services"]["provision"]["build"]["args"]["TORCH_VARIANT"] == "${FEDTUNE_TORCH_VARIANT:-cuda}"
    assert cpu["services"]["provision"]["build"]["args"]["TORCH_VARIANT"] == "cpu"


def test_images_build_from_the_runtime_and_one_shots_reuse_them(compose):
    services = compose["services"]
    built = {name: svc["image"] for name, svc in services.items() if "build" in svc}
    assert set(built) == {"provision", "fl-server", "site-1", "inference", "prometheus"}
    for name, svc in services.items():
        if "build" in svc:
            assert svc["pull_policy"] == "build" and "build-ca" in svc["build"]["secrets"], name
        else:   # reuses an image another service builds
            assert svc["pull_policy"] == "never" and svc["image"] in built.values(), name
    for name in ("fl-server", "site-1", "inference"):
        assert services[name]["build"]["args"]["RUNTIME"] == built["provision"]
        # built after the runtime image: compose orders builds by depends_on
        assert "provision" in services[name]["depends_on"]


def test_submitter_waits_for_every_site_and_inference_checks_readiness(compose):
    services = compose["services"]
    deps = services["submitter"]["depends_on"]
    assert {s: deps[s]["condition"] for s in SITES} == {s: "service_healthy" for s in SITES}
    assert deps["fl-server"]["condition"] == "service_healthy"
    assert "/v2/health/ready" in (REPO / "services/inference/healthcheck.py").read_text()
    assert "HEALTHCHECK" in (REPO / "services/inference/Dockerfile").read_text()


def test_prometheus_scrapes_inference_and_training(compose):
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["inference"] == ["inference:8000"]
    assert targets["training"] == [f"submitter:{compose['services']['submitter']['environment']['FEDTUNE_METRICS_PORT']}"]
    nets = lambda s: set(compose["services"][s]["networks"])
    assert "monitoring" in nets("prometheus") & nets("inference") & nets("submitter")
    assert "monitoring" not in nets("site-1") and "monitoring" not in nets("fl-server")


def test_admin_port_network_holds_only_the_server_and_the_submitter(compose):
    services = compose["services"]
    on = lambda net: {n for n, s in services.items() if net in s.get("networks", [])}
    assert on("admin") == {"fl-server", "submitter"}
    assert on("federation") == {"fl-server", *SITES}, "the submitter (admin kit) needs no route to a site"


def test_inference_gets_both_keys_from_the_keys_volume(compose):
    services = compose["services"]
    inf, keys = services["inference"], services["keys"]
    env = inf["environment"]
    assert "FEDTUNE_API_KEY" not in env and "FEDTUNE_ADMIN_KEY" not in env, "keys never as plain values"
    assert env["FEDTUNE_API_KEY_FILE"] == "/keys/api-key" and env["FEDTUNE_ADMIN_KEY_FILE"] == "/keys/admin-key"
    assert volume_sources(inf)["keys"] == "/keys:ro" and volume_sources(keys) == {"keys": "/keys"}
    assert [n for n, s in services.items() if "keys" in volume_sources(s)] == ["keys", "inference"]
    assert inf["depends_on"]["keys"]["condition"] == "service_completed_successfully"
    assert keys["network_mode"] == "none" and keys["entrypoint"] == ["tini", "--", "fedtune-keys"]
    assert "COPY services/inference/keys.sh /usr/local/bin/fedtune-keys" in \
        (REPO / "services/inference/Dockerfile").read_text()


def run_keys(folder) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "services/inference/keys.sh")], capture_output=True, text=True,
                          env={**os.environ, "FEDTUNE_KEYS_DIR": str(folder)}, timeout=60)


def test_keys_are_generated_once_private_and_never_overwritten(tmp_path):
    res = run_keys(tmp_path)
    assert res.returncode == 0, res.stderr
    keys = {n: (tmp_path / n).read_text() for n in ("api-key", "admin-key")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin-key", "api-key"]
    assert keys["api-key"] != keys["admin-key"] and all(len(k) >= 40 and k.strip() == k for k in keys.values())
    for name in keys:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert run_keys(tmp_path).returncode == 0                       # the next `up` keeps them
    assert {n: (tmp_path / n).read_text() for n in keys} == keys
    # a key file fedtune did not write (here: empty) is an error, and nothing is replaced
    (tmp_path / "admin-key").write_text("")
    res = run_keys(tmp_path)
    assert res.returncode == 2 and "admin-key" in res.stderr
    assert (tmp_path / "admin-key").read_text() == "" and (tmp_path / "api-key").read_text() == keys["api-key"]
    assert run_keys(tmp_path / "missing").returncode == 2


def test_the_engine_script_exports_its_base_image():
    """`eval "$(scripts/docker-engine.sh start)"` must leave a shell where the README's `docker compose up`
    builds FROM the debootstrap image (no registry lookup of debian:bookworm-slim); elsewhere the compose
    default stays a standard Debian image."""
    env = {k: v for k, v in os.environ.items() if k != "FEDTUNE_BASE_IMAGE"}
    res = subprocess.run(["bash", str(REPO / "scripts/docker-engine.sh"), "env"], capture_output=True, text=True,
                         env={**env, "FEDTUNE_DOCKER_DIR": "/var/tmp/x"}, timeout=30)
    exports = dict(line[len("export "):].split("=", 1) for line in res.stdout.splitlines())
    assert exports == {"DOCKER_HOST": "unix:///var/tmp/x/docker.sock", "DOCKER_CONFIG": "/var/tmp/x/dockercfg",
                       "FEDTUNE_BASE_IMAGE": "fedtune/base:bookworm"}
    text = (REPO / "compose.yaml").read_text()
    assert re.findall(r"BASE_IMAGE: (\S+)", text) == ["${FEDTUNE_BASE_IMAGE:-debian:bookworm-slim}"] * 2


def test_no_secret_can_enter_an_image():
    ignore = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert ignore[0] == "*", ".dockerignore must start from nothing and allow only what images need"
    allowed = {l[1:].rstrip("/") for l in ignore if l.startswith("!")}
    assert allowed <= {"pyproject.toml", "constraints.txt", "README.md", "src", "services", "deploy"}, allowed
    for df in sorted((REPO / "services").glob("*/Dockerfile")):
        text = df.read_text()
        assert not re.search(r"^\s*#\s*syntax=", text, re.M), f"{df}: a syntax image cannot be pulled"
        for line in text.splitlines():
            if line.startswith(("COPY", "ADD")):
                assert not line.startswith("ADD"), f"{df}: {line}"
                sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
                for src in sources:
                    assert src.split("/")[0] in allowed and not re.search(r"kit|pki|\.key|\.pem|state", src), \
                        f"{df}: {line}"
        assert re.search(r"^USER (?!root)\S+", text, re.M) or "FROM ${RUNTIME}" in text, f"{df}: runs as root"
    assert "USER fedtune" in (REPO / "services/base/Dockerfile").read_text()


def test_service_scripts_parse():
    scripts = sorted((REPO / "services").glob("*/*.sh")) + [REPO / "k8s/kit-secrets.sh", REPO / "k8s/api-keys.sh"] + \
        [REPO / "scripts" / n for n in ("ci-deps.sh", "docker-engine.sh", "build-images.sh")]
    for script in scripts:
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script}: {res.stderr}"
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
    for py in sorted((REPO / "services").glob("*/healthcheck.py")):
        compile(py.read_text(), str(py), "exec")

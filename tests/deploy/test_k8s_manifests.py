"""k8s/: render the kustomization (base and CPU overlay) with kubectl, validate every object strictly against
the Kubernetes OpenAPI schemas (kubernetes-validate, offline), and check the wiring: Services select pods and
named ports, probes hit routes the inference app really serves, every referenced Secret / ConfigMap / PVC
exists (the kit Secrets made by k8s/kit-secrets.sh from a real provisioning), GPU limits, NetworkPolicies."""

from __future__ import annotations

import base64
import copy
import io
import subprocess
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy_helpers import REPO

NAMESPACE = "fedtune"
SITES = ["site-1", "site-2", "site-3"]
PARTICIPANTS = ["server", "admin", *SITES]
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
RENDERS = {"base": REPO / "k8s", "cpu": REPO / "k8s" / "overlays" / "cpu"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
CLUSTER_SCOPED = ("Namespace",)


def render(kubectl: str, path: Path) -> list[dict]:
    res = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"kubectl kustomize {path} failed:\n{res.stderr}"
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@pytest.fixture(scope="module")
def rendered(kubectl) -> dict[str, list[dict]]:
    return {name: render(kubectl, path) for name, path in RENDERS.items()}


@pytest.fixture(scope="module")
def kit_secrets(tmp_path_factory) -> list[dict]:
    """The Secrets k8s/kit-secrets.sh makes from a real NVFlare provisioning for the k8s service name."""
    from fedtune.fl.provision import provision

    pki = tmp_path_factory.mktemp("pki")
    provision(pki, 3, "fl-server")
    res = subprocess.run(["bash", str(REPO / "k8s" / "kit-secrets.sh"), str(pki)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def api_keys_secret() -> list[dict]:
    res = subprocess.run(["bash", str(REPO / "k8s" / "api-keys.sh")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@pytest.fixture(scope="module")
def api_keys() -> list[dict]:
    """The Secret k8s/api-keys.sh makes (the inference service's API key and admin key)."""
    return api_keys_secret()


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"].get("labels", {})


def containers(obj: dict, init: bool = True) -> list[dict]:
    spec = pod_spec(obj)
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def matches(selector: dict, labels: dict) -> bool:
    assert not selector.get("matchExpressions"), "matchExpressions are not checked here"
    wanted = selector.get("matchLabels", selector if "matchLabels" not in selector else {})
    return all(labels.get(k) == v for k, v in wanted.items())


# ---- schema ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("which", list(RENDERS))
def test_every_rendered_object_validates_strictly(rendered, kit_secrets, api_keys, which, version):
    docs = rendered[which] + kit_secrets + api_keys
    assert len(rendered[which]) >= 14
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{which}: {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc.message} "
                        f"at {list(exc.path)}")


def test_strict_validation_catches_an_unknown_field(rendered):
    """The validator is not vacuous: a misspelt field in a container is an error."""
    dep = copy.deepcopy(by_kind(rendered["base"], "Deployment")["inference"])
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, VERSIONS[-1], strict=True)


# ---- inventory ------------------------------------------------------------------------------------------

def test_expected_objects_all_in_the_namespace(rendered):
    docs = rendered["base"]
    assert set(by_kind(docs, "Deployment")) == {"fl-server", "inference", *SITES}
    assert set(by_kind(docs, "Service")) == {"fl-server", "inference"}
    assert set(by_kind(docs, "Job")) == {"submitter"}
    assert set(by_kind(docs, "PersistentVolumeClaim")) == {"fedtune-bundles"}
    assert NAMESPACE in by_kind(docs, "Namespace")
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"
    # one Deployment per site, each with its own kit Secret
    for site in SITES:
        dep = by_kind(docs, "Deployment")[site]
        secrets = [v["secret"]["secretName"] for v in pod_spec(dep)["volumes"] if "secret" in v]
        assert secrets == [f"fedtune-kit-{site}"]


def test_pods_run_as_non_root_without_service_account_token(rendered):
    for obj in workloads(rendered["base"]):
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, obj["metadata"]["name"]
        for c in containers(obj):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (obj["metadata"]["name"], c["name"])
            assert c["image"].split(":")[0] in ("fedtune/server", "fedtune/client", "fedtune/inference")


# ---- wiring ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", list(RENDERS))
def test_every_service_selects_a_pod_with_its_target_ports(rendered, which):
    docs = rendered[which]
    for name, svc in by_kind(docs, "Service").items():
        selector = svc["spec"]["selector"]
        pods = [w for w in workloads(docs) if w["metadata"]["namespace"] == svc["metadata"]["namespace"]
                and matches(selector, pod_labels(w))]
        assert pods, f"Service {name} selects no pod ({selector})"
        for pod in pods:
            ports = {p.get("name"): p["containerPort"] for c in containers(pod, init=False) for p in c.get("ports", [])}
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert target in ports or target in ports.values(), \
                    f"Service {name} port {port} has no container port {target!r} in {pod['metadata']['name']}"


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory, tiny_text_trunk):
    """The inference app's real routes (GET paths) and the base URL of a real uvicorn server running it on a
    small sentiment bundle (the service refuses to start without one)."""
    from fedtune.bundle import save_bundle
    from fedtune.models import TrunkConfig
    from fedtune.tasks import build_model
    from fedtune.serve.server import BackgroundServer
    from fedtune.serve.settings import ServeSettings

    cfg = TrunkConfig(str(tiny_text_trunk), mode="frozen")
    bundle = save_bundle(tmp_path_factory.mktemp("probe") / "bundle", build_model("sentiment", cfg), trunk_cfg=cfg)
    with BackgroundServer(ServeSettings(bundles=[str(bundle)])) as server:
        yield server.app.openapi()["paths"], server.url


def probes(container: dict) -> dict[str, dict]:
    return {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container}


def test_inference_probes_hit_real_health_routes(rendered, app_routes):
    import httpx

    paths, url = app_routes
    dep = by_kind(rendered["base"], "Deployment")["inference"]
    (c,) = containers(dep, init=False)
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    found = probes(c)
    assert found["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert found["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for kind, probe in found.items():
        get = probe["httpGet"]
        assert get["port"] in named or get["port"] in named.values(), f"{kind}: port {get['port']}"
        assert "get" in paths.get(get["path"], {}), f"{kind}: {get['path']} is not a GET route of the app"
        assert httpx.get(url + get["path"]).status_code in (200, 503), f"{kind}: {get['path']}"
    # both answer 200 on a real server once its bundle is loaded
    assert httpx.get(url + "/v2/health/live").status_code == 200
    assert httpx.get(url + "/v2/health/ready").status_code == 200


def test_other_probes_use_declared_ports_and_shipped_commands(rendered):
    shipped = {line.split()[-1].rsplit("/", 1)[-1]
               for df in (REPO / "services").glob("*/Dockerfile") for line in df.read_text().splitlines()
               if line.startswith("COPY ") and "/usr/local/bin/" in line}
    for obj in workloads(rendered["base"]):
        for c in containers(obj, init=False):
            named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for kind, probe in probes(c).items():
                where = f"{obj['metadata']['name']}/{c['name']} {kind}"
                if "tcpSocket" in probe:
                    assert probe["tcpSocket"]["port"] in named, where
                if "exec" in probe:
                    assert probe["exec"]["command"][0] in shipped, f"{where}: {probe['exec']['command'][0]} not in an image"
    for obj in workloads(rendered["base"]):
        for c in containers(obj):
            cmd = c.get("command", [])
            if cmd and cmd[0].startswith("fedtune-"):
                assert cmd[0] in shipped, f"{obj['metadata']['name']}/{c['name']}: {cmd[0]} not in an image"


def referenced(obj: dict, kind: str) -> set[str]:
    spec, names = pod_spec(obj), set()
    for v in spec.get("volumes", []):
        if kind == "Secret" and "secret" in v:
            names.add(v["secret"]["secretName"])
        if kind == "ConfigMap" and "configMap" in v:
            names.add(v["configMap"]["name"])
        if kind == "PersistentVolumeClaim" and "persistentVolumeClaim" in v:
            names.add(v["persistentVolumeClaim"]["claimName"])
    for c in containers(obj):
        for src in c.get("envFrom", []):
            ref = src.get("secretRef" if kind == "Secret" else "configMapRef")
            if ref and kind != "PersistentVolumeClaim":
                names.add(ref["name"])
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef" if kind == "Secret" else "configMapKeyRef")
            if ref and kind != "PersistentVolumeClaim":
                names.add(ref["name"])
    if kind == "Secret":
        names |= {s["name"] for s in spec.get("imagePullSecrets", [])}
    return names


@pytest.mark.parametrize("which", list(RENDERS))
def test_every_referenced_secret_configmap_and_claim_exists(rendered, kit_secrets, api_keys, which):
    docs = rendered[which] + kit_secrets + api_keys
    for kind in ("Secret", "ConfigMap", "PersistentVolumeClaim"):
        have = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == kind}
        for obj in workloads(rendered[which]):
            for name in referenced(obj, kind):
                assert (obj["metadata"]["namespace"], name) in have, \
                    f"{obj['kind']}/{obj['metadata']['name']} references {kind} {name}, which is not rendered"
    wanted = {f"fedtune-kit-{p}" for p in PARTICIPANTS} | {"fedtune-api-keys"}
    used = set().union(*(referenced(o, "Secret") for o in workloads(rendered[which])))
    assert used == wanted


def test_kit_secrets_hold_one_kit_each_and_never_the_root_ca_key(kit_secrets):
    secrets = by_kind(kit_secrets, "Secret")
    assert set(secrets) == {f"fedtune-kit-{p}" for p in PARTICIPANTS}
    config = {"server": "fed_server.json", "admin": "fed_admin.json", **{s: "fed_client.json" for s in SITES}}
    for participant, cfg in config.items():
        secret = secrets[f"fedtune-kit-{participant}"]
        assert secret["metadata"]["namespace"] == NAMESPACE and set(secret["data"]) == {"kit.tar.gz"}
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(secret["data"]["kit.tar.gz"]))) as tar:
            names = tar.getnames()
        assert f"startup/{cfg}" in names and "startup/rootCA.pem" in names, names
        assert not any(n in (".", "./") or n.startswith("./") for n in names), "a ./ entry breaks non-root unpacking"
        assert "local/resources.json" not in names, "provisioning-folder paths must not reach the pod"
        keys = [n for n in names if n.endswith(".key")]
        assert keys == [f"startup/{'server' if participant == 'server' else 'client'}.key"], keys
        assert not any("state" in n.split("/") or n.endswith("cert.json") for n in names), names
    assert by_kind(kit_secrets, "Namespace").keys() == {NAMESPACE}


def test_sites_have_a_gpu_limit_and_the_cpu_overlay_only_removes_it(rendered):
    base, cpu = (by_kind(rendered[w], "Deployment") for w in ("base", "cpu"))
    for site in SITES:
        (c,) = containers(base[site], init=False)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        (c_cpu,) = containers(cpu[site], init=False)
        assert "nvidia.com/gpu" not in c_cpu["resources"].get("limits", {})
        expected = copy.deepcopy(base[site])
        del expected["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        assert cpu[site] == expected
    for w in ("base", "cpu"):
        for obj in workloads(rendered[w]):
            if pod_labels(obj).get("app.kubernetes.io/component") != "site":
                assert all("nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}) for c in containers(obj))
    rest = lambda docs: [d for d in docs if not (d["kind"] == "Deployment" and d["metadata"]["name"] in SITES)]
    assert rest(rendered["base"]) == rest(rendered["cpu"])


def test_inference_reads_both_keys_from_the_api_keys_secret(rendered, api_keys):
    dep = by_kind(rendered["base"], "Deployment")["inference"]
    (c,) = containers(dep, init=False)
    env = {e["name"]: e for e in c["env"]}
    assert "FEDTUNE_API_KEY" not in env and "FEDTUNE_ADMIN_KEY" not in env, "keys never as plain values"
    files = {name: env[name]["value"] for name in ("FEDTUNE_API_KEY_FILE", "FEDTUNE_ADMIN_KEY_FILE")}
    volumes = {v["name"]: v for v in pod_spec(dep)["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for name, path in files.items():
        folder, key = path.rsplit("/", 1)
        mount = mounts[folder]
        assert mount.get("readOnly") is True, name
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "fedtune-api-keys" and not secret.get("optional"), name
        assert secret["defaultMode"] & 0o007 == 0, "keys readable by other users"
        assert key in by_kind(api_keys, "Secret")["fedtune-api-keys"]["data"], name
    assert files["FEDTUNE_API_KEY_FILE"] != files["FEDTUNE_ADMIN_KEY_FILE"]
    # the keys: URL-safe random strings, two different ones, fresh on every run of the script
    (secret,) = api_keys
    assert secret["metadata"]["namespace"] == NAMESPACE and set(secret["data"]) == {"api-key", "admin-key"}
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for k, v in keys.items():
        assert len(v) >= 40 and v.replace("-", "").replace("_", "").isalnum(), (k, v)
    assert keys["api-key"] != keys["admin-key"]
    again = {k: base64.b64decode(v).decode() for k, v in api_keys_secret()[0]["data"].items()}
    assert again["api-key"] != keys["api-key"] and again["admin-key"] != keys["admin-key"]
    bad = subprocess.run(["bash", str(REPO / "k8s" / "api-keys.sh"), "x; rm -rf /"], capture_output=True, text=True)
    assert bad.returncode == 2 and not bad.stdout and "not a namespace name" in bad.stderr


# ---- network policies -----------------------------------------------------------------------------------

def policies_for(docs: list[dict], labels: dict) -> list[dict]:
    return [p for p in by_kind(docs, "NetworkPolicy").values() if matches(p["spec"]["podSelector"], labels)]


def test_network_policies_sites_reach_only_the_server_and_nothing_reaches_a_site(rendered):
    docs = rendered["base"]
    pols = by_kind(docs, "NetworkPolicy")
    deny = pols["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    server_labels = pod_labels(by_kind(docs, "Deployment")["fl-server"])
    for site in SITES:
        labels = pod_labels(by_kind(docs, "Deployment")[site])
        selecting = policies_for(docs, labels)
        assert selecting, site
        # nothing reaches a site: no policy that selects it allows any ingress
        assert all(not p["spec"].get("ingress") for p in selecting), site
        # its egress is limited (some policy declares Egress) to the server's FL port, plus DNS
        egress_pols = [p for p in selecting if "Egress" in p["spec"]["policyTypes"]]
        assert egress_pols, f"{site}: egress is not restricted"
        for pol in egress_pols:
            for rule in pol["spec"]["egress"]:
                ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}
                peers = rule["to"]
                if ports == {("TCP", 8002)}:
                    assert all("namespaceSelector" not in peer and matches(peer["podSelector"], server_labels)
                               for peer in peers), rule
                else:
                    assert ports <= {("UDP", 53), ("TCP", 53)}, rule
                    assert all(peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"} for peer in peers), rule
    # the server admits the sites on the FL port
    server_rules = [r for p in policies_for(docs, server_labels) for r in p["spec"].get("ingress", [])]
    site_labels = pod_labels(by_kind(docs, "Deployment")["site-1"])
    assert any(any(matches(peer["podSelector"], site_labels) for peer in r.get("from", []))
               and {p["port"] for p in r["ports"]} == {8002} for r in server_rules)
    # and the submitter on the admin port
    sub_labels = pod_labels(by_kind(docs, "Job")["submitter"])
    assert any(any(matches(peer["podSelector"], sub_labels) for peer in r.get("from", []))
               and {p["port"] for p in r["ports"]} == {8003} for r in server_rules)


def test_prometheus_scrape_annotations_point_at_metrics_ports(rendered, app_routes):
    import httpx

    paths, url = app_routes
    docs = rendered["base"]
    for obj in (by_kind(docs, "Deployment")["inference"], by_kind(docs, "Job")["submitter"]):
        ann = obj["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        ports = {p["containerPort"] for c in containers(obj, init=False) for p in c.get("ports", [])}
        assert int(ann["prometheus.io/port"]) in ports, obj["metadata"]["name"]
        assert ann["prometheus.io/path"] == "/metrics"
    assert "get" in paths["/metrics"] and httpx.get(url + "/metrics").status_code == 200


def ingress_rules(docs: list[dict], labels: dict) -> list[dict]:
    return [r for p in policies_for(docs, labels) for r in p["spec"].get("ingress", [])]


def admitted_peers(rules: list[dict], port: int) -> list[dict]:
    """The peers the rules admit on `port`; an empty peer list (anyone) is returned as [{}]."""
    out = []
    for rule in rules:
        if any(p["port"] == port for p in rule.get("ports", [{"port": port}])):
            out.extend(rule.get("from") or [{}])
    return out


PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
CLIENT = {"fedtune.io/inference-client": "true"}


def test_network_policies_admit_only_clients_and_prometheus_to_inference(rendered):
    docs = rendered["base"]
    inference = pod_labels(by_kind(docs, "Deployment")["inference"])
    rules = ingress_rules(docs, inference)
    assert rules and all(r.get("from") for r in rules), "a rule without `from` admits every pod of the cluster"
    assert {p["port"] for r in rules for p in r["ports"]} == {8000}
    peers = admitted_peers(rules, 8000)
    assert {tuple(sorted(p["podSelector"]["matchLabels"].items())) for p in peers} == \
        {tuple(CLIENT.items()), tuple(PROMETHEUS.items())}
    # a pod of the federation itself is none of them (a site, the server, the submitter)
    for name in ("fl-server", *SITES):
        labels = pod_labels(by_kind(docs, "Deployment")[name])
        assert not any(matches(p["podSelector"], labels) for p in peers), name
    # and it opens no connection itself
    egress = [p for p in policies_for(docs, inference) if "Egress" in p["spec"]["policyTypes"]]
    assert egress and all(not p["spec"].get("egress") for p in egress)
    # the training metrics: Prometheus only
    sub_peers = admitted_peers(ingress_rules(docs, pod_labels(by_kind(docs, "Job")["submitter"])), 9102)
    assert sub_peers and all(p.get("podSelector", {}).get("matchLabels") == PROMETHEUS for p in sub_peers)


def test_network_policies_the_admin_port_admits_only_the_submitter(rendered):
    docs = rendered["base"]
    rules = ingress_rules(docs, pod_labels(by_kind(docs, "Deployment")["fl-server"]))
    assert all(r.get("from") and r.get("ports") for r in rules), rules
    peers = admitted_peers(rules, 8003)
    sub = pod_labels(by_kind(docs, "Job")["submitter"])
    assert peers and all("namespaceSelector" not in p and matches(p["podSelector"], sub) for p in peers), peers
    for name in SITES:
        labels = pod_labels(by_kind(docs, "Deployment")[name])
        assert not any(matches(p["podSelector"], labels) for p in peers), name
    # the Service still exposes the admin port (for the submitter): the policy, not the Service, restricts it
    assert {p["port"] for p in by_kind(docs, "Service")["fl-server"]["spec"]["ports"]} == {8002, 8003}

"""k8s/roles/{server,site,admin}: what each organisation applies to its own cluster, rendered with kubectl's
kustomize and validated strictly offline; each role holds only its part (the coordinator no site and no
submitter, a site one client and nothing that listens, the admin one Job), reaches only the port its role
needs, and mounts only its own kit Secret."""

from __future__ import annotations

import kubernetes_validate
import pytest

from deploy_helpers import REPO
from test_k8s_manifests import VERSIONS, by_kind, containers, pod_spec, render

ROLES = {role: REPO / "k8s" / "roles" / role for role in ("server", "server-no-serving", "site", "admin")}
DNS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


@pytest.fixture(scope="module")
def roles(kubectl) -> dict[str, list[dict]]:
    return {role: render(kubectl, path) for role, path in ROLES.items()}


@pytest.fixture(scope="module")
def allinone(kubectl) -> list[dict]:
    return render(kubectl, REPO / "k8s")


def kinds(docs: list[dict]) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


def secrets_used(docs: list[dict]) -> set[str]:
    return {v["secret"]["secretName"] for d in docs if d["kind"] in ("Deployment", "Job")
            for v in pod_spec(d).get("volumes", []) if "secret" in v}


def egress_ports(policy: dict) -> list[list[dict]]:
    return [rule.get("ports", []) for rule in policy["spec"].get("egress", [])]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("role", list(ROLES))
def test_every_role_object_validates_strictly(roles, role, version):
    for doc in roles[role]:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_site_runs_one_client_that_nothing_can_reach(roles):
    docs = roles["site"]
    assert [k for k, _ in kinds(docs)] == ["Deployment", "Namespace", "NetworkPolicy"], kinds(docs)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"fedtune-site"}
    dep = by_kind(docs, "Deployment")["site"]
    assert dep["spec"]["replicas"] == 1
    assert secrets_used(docs) == {"fedtune-kit"}, "its own kit only"
    site = pod_spec(dep)["containers"][0]
    assert not site.get("ports"), "a site listens on nothing"
    mounts = {m["mountPath"]: m for m in site["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod_spec(dep)["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"data": {"claimName": "fedtune-site-data", "readOnly": True}}
    assert site["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e["value"] for e in site["env"]}["FEDTUNE_GPUS"] == "1"
    policy = by_kind(docs, "NetworkPolicy")["site"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["ingress"] == []
    assert egress_ports(policy) == [[{"protocol": "TCP", "port": 8002}], DNS], "the FL port and DNS only"


def test_the_admin_runs_one_job_that_reaches_the_admin_port_only(roles):
    docs = roles["admin"]
    assert [k for k, _ in kinds(docs)] == ["ConfigMap", "Job", "Namespace", "NetworkPolicy",
                                           "PersistentVolumeClaim"], kinds(docs)
    assert secrets_used(docs) == {"fedtune-kit"}
    job = by_kind(docs, "Job")["submitter"]
    sub = pod_spec(job)["containers"][0]
    assert sub["command"] == ["tini", "--", "fedtune-submit"] and not sub.get("ports")
    assert {m["mountPath"] for m in sub["volumeMounts"]} == {"/kit", "/results", "/bundles", "/tmp"}
    settings = next(d for d in docs if d["kind"] == "ConfigMap")
    assert settings["data"]["FEDTUNE_MIN_SITES"] == "3"
    policy = by_kind(docs, "NetworkPolicy")["submitter"]
    assert policy["spec"]["ingress"] == []
    assert egress_ports(policy) == [[{"protocol": "TCP", "port": 8003}], DNS]


def test_the_coordinator_runs_the_server_and_no_site_or_submitter(roles):
    docs = roles["server"]
    workloads = {name for kind, name in kinds(docs) if kind in ("Deployment", "Job", "StatefulSet")}
    assert workloads == {"fl-server", "inference"}
    assert secrets_used(docs) == {"fedtune-kit-server", "fedtune-api-keys"}, "no site's or admin's kit"
    assert "sites" not in by_kind(docs, "NetworkPolicy") and "submitter" not in by_kind(docs, "NetworkPolicy")
    services = by_kind(docs, "Service")
    fl, admin = services["fl-server"], services["fl-server-admin"]
    assert [p["port"] for p in fl["spec"]["ports"]] == [8002], "the FL port only on the public Service"
    assert [p["port"] for p in admin["spec"]["ports"]] == [8003]
    for svc in (fl, admin):
        assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["externalTrafficPolicy"] == "Local"
    ranges = admin["spec"]["loadBalancerSourceRanges"]
    ingress = by_kind(docs, "NetworkPolicy")["server"]["spec"]["ingress"]
    by_port = {r["ports"][0]["port"]: r.get("from") for r in ingress}
    assert by_port[8002] is None, "sites connect from wherever they are"
    assert [f["ipBlock"]["cidr"] for f in by_port[8003]] == ranges, "admin port: the admins' addresses only"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"fedtune"}


def test_roles_run_the_same_containers_as_the_single_cluster_manifests(roles, allinone):
    base = {name: d for name, d in by_kind(allinone, "Deployment").items()}
    pairs = [(by_kind(roles["site"], "Deployment")["site"], base["site-1"], "site"),
             (by_kind(roles["server"], "Deployment")["fl-server"], base["fl-server"], "server"),
             (by_kind(roles["admin"], "Job")["submitter"], by_kind(allinone, "Job")["submitter"], "submitter")]
    for role_obj, base_obj, name in pairs:
        mine = {c["name"]: c for c in containers(role_obj)}
        ref = {c["name"]: c for c in containers(base_obj)}
        main = pod_spec(role_obj)["containers"][0]["name"]
        for key in ("image", "command", "startupProbe", "livenessProbe", "readinessProbe", "securityContext"):
            assert mine[main].get(key) == ref[main].get(key), (name, key)
        assert mine["unpack-kit"] == ref["unpack-kit"], name
        assert pod_spec(role_obj)["securityContext"] == pod_spec(base_obj)["securityContext"], name


def test_the_coordinator_can_leave_serving_out(roles):
    docs, full = roles["server-no-serving"], roles["server"]
    assert {name for kind, name in kinds(docs) if kind in ("Deployment", "Job")} == {"fl-server"}
    assert secrets_used(docs) == {"fedtune-kit-server"}, "no inference keys needed"
    assert "fedtune-bundles" not in by_kind(docs, "PersistentVolumeClaim")
    for kind in ("Service", "NetworkPolicy"):   # the server's own objects as in the full role
        for name, obj in by_kind(docs, kind).items():
            assert obj == by_kind(full, kind)[name], (kind, name)

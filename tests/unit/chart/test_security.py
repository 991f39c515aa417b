"""Security review of the rendered chart: every pod meets the Pod Security "restricted" profile (plus a read-only
root file system), RBAC is least privilege, and the NetworkPolicies deny by default."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.chart.chart_support import VALUE_SETS, Obj, objects, of_kind, one, pod_specs, render_set

SECRET_READ_VERBS = {"get", "list", "watch", "*"}


def restricted_violations(where: str, spec: Obj) -> list[str]:
    """Pod Security Standards, "restricted" (v1.31), plus the chart's own rules: read-only root file system with
    writable emptyDirs, resource requests, no host namespaces or hostPath."""
    problems = []
    pod_sc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"{where}: {key}")
    for volume in spec.get("volumes", []):
        allowed = {"name", "configMap", "secret", "emptyDir", "projected", "downwardAPI", "persistentVolumeClaim",
                   "ephemeral", "csi"}
        if set(volume) - allowed:
            problems.append(f"{where}: volume {volume['name']} of a restricted type {set(volume) - allowed}")
    if pod_sc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{where}: pod seccompProfile")
    if pod_sc.get("runAsUser") == 0:
        problems.append(f"{where}: pod runAsUser 0")
    emptydirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for container in spec.get("initContainers", []) + spec["containers"]:
        sc = container.get("securityContext", {})
        name = f"{where} container {container['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities not dropping ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root file system is writable")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if mounts.get("/tmp") not in emptydirs:
            problems.append(f"{name}: no emptyDir at /tmp")
        for port in container.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{name}: hostPort")
        if not container.get("resources", {}).get("requests"):
            problems.append(f"{name}: no resource requests")
    return problems


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_is_restricted(name: str) -> None:
    specs = list(pod_specs(render_set(name)))
    assert specs, "no pod templates rendered"
    problems = [p for where, spec in specs for p in restricted_violations(where, spec)]
    assert problems == []


def test_the_restricted_check_can_fail() -> None:
    _, spec = next(pod_specs(objects()))
    spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    spec["containers"][0]["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = restricted_violations("pod", spec)
    assert len(problems) == 3, problems


def test_serving_pods_have_no_api_token_and_the_operator_has_one() -> None:
    objs = objects()
    serving = one(objs, "Deployment", "serving")["spec"]["template"]["spec"]
    operator = one(objs, "Deployment", "operator")["spec"]["template"]["spec"]
    assert serving["automountServiceAccountToken"] is False
    assert one(objs, "ServiceAccount", "serving")["automountServiceAccountToken"] is False
    assert operator["automountServiceAccountToken"] is True


# ----------------------------------------------------------------------------------------------------------- RBAC
def rbac_violations(objs: list[Obj]) -> list[str]:
    """No wildcard verbs, resources or API groups anywhere; no Secret access in a ClusterRole (cluster-wide), and
    no read access to Secrets in any Role; no escalation verbs."""
    problems = []
    for role in of_kind(objs, "ClusterRole") + of_kind(objs, "Role"):
        where = f"{role['kind']}/{role['metadata']['name']}"
        for rule in role.get("rules", []):
            verbs, resources, groups = set(rule.get("verbs", [])), set(rule.get("resources", [])), \
                set(rule.get("apiGroups", []))
            if "*" in verbs or "*" in resources or "*" in groups:
                problems.append(f"{where}: wildcard in {rule}")
            if verbs & {"escalate", "bind", "impersonate"}:
                problems.append(f"{where}: escalation verb in {rule}")
            if "secrets" in resources and "" in groups:
                if role["kind"] == "ClusterRole":
                    problems.append(f"{where}: cluster-wide Secret access {sorted(verbs)}")
                elif verbs & SECRET_READ_VERBS:
                    problems.append(f"{where}: reads Secrets {sorted(verbs)}")
            if rule.get("nonResourceURLs"):
                problems.append(f"{where}: nonResourceURLs")
    return problems


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rbac_is_least_privilege(name: str) -> None:
    objs = render_set(name)
    assert of_kind(objs, "ClusterRole")
    assert rbac_violations(objs) == []


def test_the_rbac_check_can_fail() -> None:
    objs = objects()
    role = of_kind(objs, "ClusterRole")[0]
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    role["rules"].append({"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["*"]})
    assert len(rbac_violations(objs)) == 2


def _grants(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    return {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}


def test_operator_gets_what_it_needs_and_no_more() -> None:
    rules = one(objects(), "ClusterRole", "operator")["rules"]
    assert _grants(rules, "ganops.io", "gantrainingjobs") == {"get", "list", "watch", "patch", "delete"}
    assert _grants(rules, "ganops.io", "gantrainingjobs/status") == {"get", "patch"}
    assert _grants(rules, "batch", "jobs") == {"get", "list", "watch", "create", "delete"}
    assert _grants(rules, "", "pods") == {"get", "list", "watch"}  # never changes pods
    assert _grants(rules, "", "events") == {"create", "patch"}
    assert _grants(rules, "", "namespaces") == {"list", "watch"}
    assert _grants(rules, "apiextensions.k8s.io", "customresourcedefinitions") == {"list", "watch"}
    assert _grants(rules, "kopf.dev", "clusterkopfpeerings") == set()  # one replica: no peering
    assert _grants(rules, "", "secrets") == set()


def test_watched_namespaces_get_roles_and_no_cluster_wide_job_access() -> None:
    objs = render_set("watch-namespace")
    cluster_rules = one(objs, "ClusterRole", "operator")["rules"]
    assert {r for rule in cluster_rules for r in rule["resources"]} == {"customresourcedefinitions"}
    roles = of_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in of_kind(objs, "RoleBinding")) == ["team-a", "team-b"]
    for role in roles:
        assert _grants(role["rules"], "batch", "jobs") == {"get", "list", "watch", "create", "delete"}
        assert _grants(role["rules"], "kopf.dev", "kopfpeerings") == {"get", "list", "watch", "patch"}
    peerings = of_kind(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    env = {e["name"]: e.get("value") for e in
           one(objs, "Deployment", "operator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GANOPS_OPERATOR_PEERING"] == peerings[0]["metadata"]["name"]


# ------------------------------------------------------------------------------------------------ NetworkPolicy
def test_network_policies_deny_by_default() -> None:
    objs = objects()
    serving = one(objs, "NetworkPolicy", "serving")["spec"]
    operator = one(objs, "NetworkPolicy", "operator")["spec"]
    for spec in (serving, operator):
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        # every ingress rule names its sources and its port: nothing is open to all
        assert all(rule.get("from") and rule.get("ports") for rule in spec["ingress"])
        egress_ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
        assert 53 in egress_ports
    # the operator's only ingress: metrics, from the monitoring namespace
    (rule,) = operator["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert {p["port"] for r in operator["egress"] for p in r["ports"]} >= {443, 6443}  # API server
    # serving: listed clients and the monitoring namespace, on the API port only
    (rule,) = serving["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert len(rule["from"]) == 3


def test_pods_select_their_own_policies() -> None:
    objs = objects()
    for component in ("operator", "serving"):
        labels = one(objs, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
        selector = one(objs, "NetworkPolicy", component)["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= labels.items()

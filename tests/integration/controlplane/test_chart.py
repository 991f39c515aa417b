"""The Helm chart on the real API server: `helm install` (the real helm) into a namespace labelled
`pod-security.kubernetes.io/enforce=restricted`, and the operator's ServiceAccount holding only what the chart grants.

- Admission: every object of the release is accepted and stored; the chart's Deployments get pods through the real
  Deployment and ReplicaSet controllers, which PodSecurity admits at `restricted` (a pod below it is refused, and the
  ReplicaSet would report `FailedCreate`). The pods are not run (see tests/support/controlplane/chart.py).
- Least privilege: a TokenRequest token of the chart's operator ServiceAccount, judged by the real RBAC authorizer,
  reads and writes what the operator does and nothing else: no Secrets, no pod writes, no RBAC, no cluster-scoped
  writes; with `operator.watchNamespaces` it reaches only the namespaces named.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.controlplane import ControlPlane
from tests.support.controlplane.chart import (
    PENDING_NODE_SELECTOR,
    RESTRICTED,
    Release,
    helm,
    helm_install,
    helm_uninstall,
    values_for_tests,
)
from tests.support.controlplane.identity import TokenClient, service_account_client
from tests.support.kube.client import KubeApiError, KubeClient

GTJ = "ganops.io/v1alpha1"


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def test_the_chart_installs_into_a_restricted_namespace(control_plane: ControlPlane, cp_kube: KubeClient,
                                                        cp_chart: Release) -> None:
    release = cp_chart
    namespace = cp_kube.get("v1", "Namespace", None, release.namespace)
    assert {k: namespace["metadata"]["labels"].get(k) for k in RESTRICTED} == RESTRICTED
    # helm passes the API server's warnings on; PodSecurity warns at Deployment level about a template that the
    # namespace's level would refuse.
    assert "PodSecurity" not in release.warnings and "violate" not in release.warnings, release.warnings
    status = json.loads(helm(control_plane, "status", release.name, "-n", release.namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed", status["info"]

    # Every object the chart rendered is stored, as rendered (the API server validated each one).
    kinds = release.kinds()
    assert {kind for kind, _, _ in kinds} >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                                               "Service", "ConfigMap", "NetworkPolicy"}, kinds
    for obj in release.manifest:
        namespace_of = obj["metadata"].get("namespace")
        stored = cp_kube.get(obj["apiVersion"], obj["kind"], namespace_of, obj["metadata"]["name"])
        assert stored["metadata"]["labels"].get("app.kubernetes.io/managed-by") == "Helm", stored["metadata"]

    # The real Deployment and ReplicaSet controllers made the pods, and PodSecurity admitted them at restricted.
    deployments = [obj for obj in release.manifest if obj["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {f"{release.fullname}-operator",
                                                           f"{release.fullname}-serving"}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
        want = deployment["spec"].get("replicas", 1)

        def pods(sel: str = selector, n: int = want) -> list[dict[str, Any]] | None:
            found = cp_kube.list("v1", "Pod", release.namespace, label_selector=sel)
            return found if len(found) == n else None

        def refusals(dep: str = name) -> str:
            events = [f"{e.involved_kind}/{e.involved_name} {e.reason}: {e.message}"
                      for e in cp_kube.events(release.namespace) if e.reason == "FailedCreate"]
            return f"{dep}: pods not created; FailedCreate events: {events}"

        created: list[dict[str, Any]] = cp_kube.wait_for(pods, timeout=60, message=refusals)
        for pod in created:
            spec = pod["spec"]
            assert spec["nodeSelector"] == PENDING_NODE_SELECTOR and not spec.get("nodeName")  # admitted, not run
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            for container in spec["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        for replicaset in cp_kube.list("apps/v1", "ReplicaSet", release.namespace, label_selector=selector):
            assert not _condition(replicaset, "ReplicaFailure"), replicaset["status"]


def test_a_pod_below_restricted_is_what_the_namespace_refuses(control_plane: ControlPlane, cp_kube: KubeClient,
                                                              cp_chart: Release) -> None:
    """The control for the test above: the chart's operator pod template without its securityContexts is refused
    by the same namespace, so the chart's pods were admitted because of them."""
    deployment = cp_kube.get("apps/v1", "Deployment", cp_chart.namespace, f"{cp_chart.fullname}-operator")
    template = deployment["spec"]["template"]
    spec = {**template["spec"], "securityContext": {},
            "containers": [{k: v for k, v in c.items() if k != "securityContext"}
                           for c in template["spec"]["containers"]]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator-without-security-context"},
           "spec": spec}
    with pytest.raises(KubeApiError) as refused:
        cp_kube.create(pod, namespace=cp_chart.namespace)
    assert refused.value.status == 403 and 'violates PodSecurity "restricted:latest"' in refused.value.message


# ------------------------------------------------------------------------------------------------ least privilege


def _can(kube: KubeClient, verb: str, resource: str, namespace: str | None = None, group: str = "",
         subresource: str = "") -> bool:
    """The RBAC authorizer's answer for this client's own identity (SelfSubjectAccessReview)."""
    attributes = {"verb": verb, "resource": resource, "group": group, "subresource": subresource}
    if namespace:
        attributes["namespace"] = namespace
    review = kube.create({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                          "spec": {"resourceAttributes": attributes}})
    return bool(review["status"]["allowed"])


def test_the_operator_token_holds_only_what_the_operator_needs(cp_operator_kube: TokenClient, cp_kube: KubeClient,
                                                               cp_chart: Release, cp_namespace: str) -> None:
    operator, ns = cp_operator_kube, cp_namespace
    assert operator.username == f"system:serviceaccount:{cp_chart.namespace}:{cp_chart.operator_service_account}"
    # What the operator does (cluster-wide install: in any namespace).
    granted = [("get", "gantrainingjobs", "ganops.io", ""), ("watch", "gantrainingjobs", "ganops.io", ""),
               ("patch", "gantrainingjobs", "ganops.io", "status"), ("create", "jobs", "batch", ""),
               ("delete", "jobs", "batch", ""), ("create", "configmaps", "", ""), ("create", "services", "", ""),
               ("list", "pods", "", ""), ("create", "events", "", "")]
    for verb, resource, group, sub in granted:
        assert _can(operator, verb, resource, ns, group, sub), (verb, resource, sub)
    assert operator.list(GTJ, "GanTrainingJob", ns) == []
    # What it never does: read Secrets (pods get them by name through the kubelet), change pods, write RBAC (no
    # escalation), create GanTrainingJobs, touch nodes or namespaces.
    refused = [("get", "secrets", ""), ("list", "secrets", ""), ("create", "pods", ""), ("delete", "pods", ""),
               ("patch", "pods", ""), ("create", "pods/exec", ""),
               ("create", "rolebindings", "rbac.authorization.k8s.io"),
               ("create", "gantrainingjobs", "ganops.io"), ("delete", "configmaps", ""),
               ("create", "serviceaccounts/token", "")]
    for verb, resource, group in refused:
        resource, _, sub = resource.partition("/")
        assert not _can(operator, verb, resource, ns, group, sub), (verb, resource, sub)
    for verb, resource in (("patch", "nodes"), ("delete", "namespaces"), ("create", "clusterrolebindings")):
        assert not _can(operator, verb, resource, None, "rbac.authorization.k8s.io" if "role" in resource else "")
    # ... and the API server says so to its face: the S3 Secret the trainers use, in the job's namespace and in its own.
    cp_kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ganops-s3"},
                    "stringData": {"AWS_SECRET_ACCESS_KEY": "x"}}, namespace=ns)
    for where in (ns, cp_chart.namespace):
        with pytest.raises(KubeApiError) as denied:
            operator.get("v1", "Secret", where, "ganops-s3")
        assert denied.value.status == 403 and 'cannot get resource "secrets"' in denied.value.message


@pytest.fixture
def scoped_release(control_plane: ControlPlane, cp_namespace: str) -> Iterator[Release]:
    """A second release, namespace-scoped: `operator.watchNamespaces: [<the test's namespace>]`."""
    release = helm_install(control_plane, "scoped", f"{cp_namespace}-ops", values_for_tests(
        fullnameOverride="ganops-scoped", operator={"watchNamespaces": [cp_namespace],
                                                    "nodeSelector": PENDING_NODE_SELECTOR},
        serving={"enabled": False}))
    yield release
    helm_uninstall(control_plane, release)
    control_plane.client().delete("v1", "Namespace", None, release.namespace, missing_ok=True)


def test_a_namespace_scoped_operator_reaches_only_its_namespaces(control_plane: ControlPlane, cp_namespace: str,
                                                                 scoped_release: Release,
                                                                 cp_chart: Release) -> None:
    operator = service_account_client(control_plane, scoped_release.namespace,
                                      scoped_release.operator_service_account)
    try:
        assert operator.list(GTJ, "GanTrainingJob", cp_namespace) == []
        assert _can(operator, "create", "jobs", cp_namespace, "batch")
        # Another namespace (the cluster-wide release's), and every namespace at once: refused.
        for where in (cp_chart.namespace, scoped_release.namespace, "default"):
            with pytest.raises(KubeApiError) as denied:
                operator.list(GTJ, "GanTrainingJob", where)
            assert denied.value.status == 403, where
            assert not _can(operator, "create", "jobs", where, "batch"), where
        with pytest.raises(KubeApiError) as everywhere:
            operator.list(GTJ, "GanTrainingJob", None)
        assert everywhere.value.status == 403
        assert not _can(operator, "get", "secrets", cp_namespace)
    finally:
        operator.close()

"""What the fixture promises of the control plane: the version built here, RBAC, the PodSecurity admission plugin,
service-account tokens that the API server signs and accepts, and the Node authorizer judging the test node."""

from __future__ import annotations

import base64
import json
import ssl

import httpx
import pytest

from tests.support.controlplane import ControlPlane
from tests.support.controlplane.fixtures import NODE_NAME
from tests.support.kube.client import KubeApiError, KubeClient
from tests.support.node import Node


def test_version_and_components(control_plane: ControlPlane) -> None:
    version = json.loads(control_plane.kubectl("get", "--raw=/version").stdout)
    assert version["gitVersion"] == "v1.37.2" and version["emulationMinor"] == "37"
    client = json.loads(control_plane.kubectl("version", "--client", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == "v1.37.2"
    assert all(p.alive() for p in control_plane.processes.values())


def test_rbac_refuses_a_user_without_roles(control_plane: ControlPlane, cp_namespace: str) -> None:
    nobody = control_plane.client_for("ganops-test-nobody")
    with pytest.raises(KubeApiError) as refused:
        nobody.list("v1", "Pod", cp_namespace)
    assert refused.value.status == 403
    assert 'User "ganops-test-nobody" cannot list resource "pods"' in refused.value.message


def test_pod_security_admission_enforces_restricted(cp_kube: KubeClient, cp_namespace: str) -> None:
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
             "spec": {"containers": [{"name": "c", "image": "sh"}]}}  # no securityContext: baseline, not restricted
    with pytest.raises(KubeApiError) as refused:
        cp_kube.create(plain, namespace=cp_namespace)
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in refused.value.message
    for missing in ("allowPrivilegeEscalation != false", "runAsNonRoot != true", "seccompProfile"):
        assert missing in refused.value.message


def test_service_account_tokens_are_signed_and_accepted(control_plane: ControlPlane, cp_kube: KubeClient,
                                                        cp_namespace: str) -> None:
    answer = cp_kube.request("POST", f"/api/v1/namespaces/{cp_namespace}/serviceaccounts/default/token",
                             json_body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                        "spec": {"expirationSeconds": 600}})
    token = answer["status"]["token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["iss"] == "https://kubernetes.default.svc.cluster.local"
    assert claims["sub"] == f"system:serviceaccount:{cp_namespace}:default"
    assert control_plane.pki is not None
    with httpx.Client(base_url=control_plane.url, verify=ssl.create_default_context(cafile=control_plane.pki.ca.cert),
                      headers={"Authorization": f"Bearer {token}"}) as http:
        review = http.post("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert review.status_code == 201, review.text
    assert review.json()["status"]["userInfo"]["username"] == f"system:serviceaccount:{cp_namespace}:default"


def test_the_node_reads_only_what_its_pods_use(control_plane: ControlPlane, cp_kube: KubeClient,
                                               cp_namespace: str, cp_node: Node) -> None:
    cp_kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated"},
                    "stringData": {"k": "v"}}, namespace=cp_namespace)
    with pytest.raises(KubeApiError) as refused:
        cp_node.kube.get("v1", "Secret", cp_namespace, "unrelated")
    assert refused.value.status == 403
    assert f"system:node:{NODE_NAME}" in refused.value.message and "no relationship found" in refused.value.message
    node = cp_kube.get("v1", "Node", None, NODE_NAME)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    lease = cp_kube.get("coordination.k8s.io/v1", "Lease", "kube-node-lease", NODE_NAME)
    assert lease["spec"]["holderIdentity"] == NODE_NAME

"""pytest fixtures for the real control plane (tests/support/controlplane/cluster.py) and its test node.

Import them into a conftest (`from tests.support.controlplane.fixtures import *`):

- `control_plane` (session): etcd, kube-apiserver, kube-controller-manager, kube-scheduler on 127.0.0.1, started
  once for the session (a few seconds), stopped at its end. Skipped when the binaries are not built, unless
  `GANOPS_CONTROLPLANE=required` (CI sets it after `make controlplane`), which turns that into a failure.
- `cp_kube` (session): the admin client (`KubeClient` API: create/get/list/patch/delete/events/wait_for).
- `cp_node` (session): the test node, a kubelet (tests/support/node.py) registered as Node `ganops-node-0`
  (Ready, 8 `nvidia.com/gpu`), running the pods the scheduler binds to it as local processes with the venv's
  programs on PATH; it authenticates as `system:node:ganops-node-0`.
- `cp_namespace` (function): a fresh namespace with `pod-security.kubernetes.io/enforce=restricted`, deleted
  after the test (the namespace controller removes what is left in it).
- `ganops_crd` (session): the project's CRD applied with the real kubectl, established.
- `cp_chart` (session): the chart installed with the real helm as release `ganops` into `ganops-system`
  (PodSecurity restricted), operator watching every namespace (a ClusterRole), its pods admitted but not run.
- `cp_operator_kube` (session): a client and kubeconfig with a TokenRequest token of the chart's operator
  ServiceAccount: `KopfProcess(cp_operator_kube, ...)` runs the operator under the chart's RBAC.

The root conftest loads this module as a plugin, so every test directory shares one control plane per session.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..kube.client import KubeApiError, KubeClient
from ..node import Node
from .chart import Release, helm_install, values_for_tests
from .cluster import ControlPlane, ControlPlaneUnavailable, find_binaries
from .identity import TokenClient, service_account_client

NODE_NAME = "ganops-node-0"
REQUIRED_ENV = "GANOPS_CONTROLPLANE"
CRD_FILE = Path(__file__).resolve().parents[3] / "manifests" / "crd" / "ganops.io_gantrainingjobs.yaml"
CHART_NAMESPACE = "ganops-system"

__all__ = ["control_plane", "cp_chart", "cp_kube", "cp_namespace", "cp_node", "cp_operator_kube", "ganops_crd"]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        binaries = find_binaries()
    except ControlPlaneUnavailable as exc:
        if os.environ.get(REQUIRED_ENV) == "required":
            pytest.fail(f"{REQUIRED_ENV}=required, but the control plane is not available: {exc}")
        pytest.skip(reason=f"real control plane not built: {exc}")
    with ControlPlane(binaries, tmp_path_factory.mktemp("controlplane")) as cp:
        yield cp


@pytest.fixture(scope="session")
def cp_kube(control_plane: ControlPlane) -> KubeClient:
    return control_plane.client()


def node_image_env() -> dict[str, str]:
    """What the trainer image provides: this venv's programs (`ganops`, `torchrun`), one torch thread per pod."""
    venv_bin = str(Path(sys.executable).parent)
    return {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            # the pods import ganops from this checkout, as the image would have it installed
            "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH")]))}


def wait_schedulable(admin: KubeClient, name: str, timeout: float = 30.0) -> None:
    """Until the node is Ready and the node lifecycle controller has lifted the `not-ready` taint that admission
    (TaintNodesByCondition) put on it when it registered."""

    def schedulable() -> bool:
        current = admin.get("v1", "Node", None, name)
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in (current.get("status") or {}).get("conditions") or [])
        return ready and not (current.get("spec") or {}).get("taints")

    admin.wait_for(schedulable, timeout=timeout, message=f"node {name} Ready and untainted")


@pytest.fixture(scope="session")
def cp_node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    kube = control_plane.client_for_node(NODE_NAME)
    # Each pod's metrics server listens on its own pod IP (127.0.0.x), as on a cluster, so two trainers on this one
    # machine do not collide on the metrics port.
    node = Node.kubelet(kube, tmp_path_factory.mktemp("cp-node"), node_name=NODE_NAME,
                        image_env={k: v for k, v in node_image_env().items() if v},
                        pod_network_env=lambda ip: {"GANOPS_METRICS_ADDR": ip}).start()
    try:
        wait_schedulable(control_plane.client(), NODE_NAME)
        yield node
    finally:
        node.stop()


@pytest.fixture
def cp_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    control_plane.ensure_namespace(name, {"pod-security.kubernetes.io/enforce": "restricted",
                                          "pod-security.kubernetes.io/enforce-version": "latest"})
    yield name
    control_plane.client().delete("v1", "Namespace", None, name, missing_ok=True)


@pytest.fixture(scope="session")
def ganops_crd(control_plane: ControlPlane) -> subprocess.CompletedProcess[str]:
    """The project's CRD, applied once per session with the real kubectl, as an admin installs it; the API server
    checks it is structural and estimates its CEL rules' cost. Waits until it is established.

    Apply it early in a session (tests/integration/controlplane does, autouse): the garbage collector finds a new
    kind at its next discovery sync, every 30 s, and until then does not see a GanTrainingJob go, so deleting one
    soon after the CRD was created leaves its children for up to 30 s more (test_operator.py measures it)."""
    applied = control_plane.kubectl("apply", "-f", str(CRD_FILE))
    kube = control_plane.client()

    def established() -> bool:
        crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "gantrainingjobs.ganops.io")
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or [])

    kube.wait_for(established, timeout=60, message="gantrainingjobs.ganops.io established")
    return applied


@pytest.fixture(scope="session")
def cp_chart(control_plane: ControlPlane, ganops_crd: subprocess.CompletedProcess[str]) -> Release:
    """charts/ganops installed with the real helm into `ganops-system` (PodSecurity restricted), watching every
    namespace. Stays installed for the session (the control plane goes with it)."""
    release = helm_install(control_plane, "ganops", CHART_NAMESPACE, values_for_tests())
    # helm applies the chart's crds/ first (kopf's peering CRDs are new): the API server answers 429 "storage is
    # (re)initializing" for custom resources for a moment after. Clients retry; the tests' own should not have to.
    kube = control_plane.client()

    def served() -> bool:
        try:
            kube.list("ganops.io/v1alpha1", "GanTrainingJob", CHART_NAMESPACE)
            kube.list("kopf.dev/v1", "KopfPeering", CHART_NAMESPACE)
        except KubeApiError as exc:
            if exc.status != 429:
                raise
            return False
        return True

    kube.wait_for(served, timeout=60, message="custom resources served after helm install")
    return release


@pytest.fixture(scope="session")
def cp_operator_kube(control_plane: ControlPlane, cp_chart: Release) -> Iterator[TokenClient]:
    """The chart's operator ServiceAccount, logged in with a TokenRequest token (what its pod would mount)."""
    client = service_account_client(control_plane, cp_chart.namespace, cp_chart.operator_service_account)
    yield client
    client.close()

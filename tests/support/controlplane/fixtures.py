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
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..kube.client import KubeClient
from ..node import Node
from .cluster import ControlPlane, ControlPlaneUnavailable, find_binaries

NODE_NAME = "ganops-node-0"
REQUIRED_ENV = "GANOPS_CONTROLPLANE"

__all__ = ["control_plane", "cp_kube", "cp_namespace", "cp_node"]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        binaries = find_binaries()
    except ControlPlaneUnavailable as exc:
        if os.environ.get(REQUIRED_ENV) == "required":
            pytest.fail(f"{REQUIRED_ENV}=required, but the control plane is not available: {exc}")
        pytest.skip(f"real control plane not built: {exc}")
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
    node = Node.kubelet(kube, tmp_path_factory.mktemp("cp-node"), node_name=NODE_NAME,
                        image_env={k: v for k, v in node_image_env().items() if v}).start()
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

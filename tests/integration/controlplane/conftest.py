"""Tests against the real control plane (tests/support/controlplane): etcd, kube-apiserver, kube-controller-manager
and kube-scheduler built by `make controlplane`, and the test node. Skipped, with the reason, where the binaries
are not built (unless GANOPS_CONTROLPLANE=required)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.controlplane import ControlPlane
from tests.support.controlplane.fixtures import control_plane, cp_kube, cp_namespace, cp_node  # noqa: F401

CRD_FILE = Path(__file__).resolve().parents[3] / "manifests" / "crd" / "ganops.io_gantrainingjobs.yaml"


@pytest.fixture(scope="session", autouse=True)
def ganops_crd(control_plane: ControlPlane) -> subprocess.CompletedProcess[str]:  # noqa: F811
    """The project's CRD, applied once per session with the real kubectl, as an admin installs it; the API server
    checks it is structural and estimates its CEL rules' cost. Waits until it is established.

    Applied as the session starts (autouse): the garbage collector finds a new kind at its next discovery sync,
    every 30 s, and until then does not see a GanTrainingJob go, so deleting one soon after the CRD was created
    leaves its children for up to 30 s more (test_operator.py measures it)."""
    applied = control_plane.kubectl("apply", "-f", str(CRD_FILE))
    kube = control_plane.client()

    def established() -> bool:
        crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "gantrainingjobs.ganops.io")
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or [])

    kube.wait_for(established, timeout=60, message="gantrainingjobs.ganops.io established")
    return applied

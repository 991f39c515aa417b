"""The operator as the chart deploys it, on the real control plane (issue 14, finding 1): the chart rendered by
the real helm, its ServiceAccount, ClusterRole and per-namespace Roles applied, and `kopf run` started with the
Deployment's own scope arguments and environment, authenticated as that ServiceAccount, so RBAC decides.

With `operator.watchNamespaces: [a, b]` the chart passed KOPF_RUN_NAMESPACE="a,b": kopf reads a comma list as one
pattern, which it can resolve only by listing namespaces (not granted in that mode), and watched nothing.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.controlplane.conftest import CHECKPOINTS
from tests.integration.controlplane.test_operator import _status
from tests.support.controlplane import ControlPlane
from tests.support.jobs import grid_job
from tests.support.kube import KopfProcess
from tests.support.kube.client import KubeClient
from tests.support.node import Node

CHART = Path(__file__).resolve().parents[3] / "charts" / "ganops"
RELEASE_NS = "ganops-system"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def _render(control_plane: ControlPlane, release: str, watch: list[str]) -> list[dict[str, Any]]:
    values = {"operator": {"watchNamespaces": watch, "replicas": 1}}
    result = subprocess.run([control_plane.binaries["helm"], "template", release, str(CHART), "--namespace",
                             RELEASE_NS, "-f", "-"], input=yaml.safe_dump(values), capture_output=True, text=True,
                            timeout=120, check=True)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture
def namespaces(control_plane: ControlPlane) -> Iterator[list[str]]:
    names = [f"team-{secrets.token_hex(3)}" for _ in range(2)]
    for name in [*names, RELEASE_NS]:
        control_plane.ensure_namespace(name, {"pod-security.kubernetes.io/enforce": "restricted"})
    yield names
    for name in names:
        control_plane.client().delete("v1", "Namespace", None, name, missing_ok=True)


def _deploy(control_plane: ControlPlane, cp_kube: KubeClient, watch: list[str], tmp_path: Path
            ) -> KopfProcess:
    release = f"r{secrets.token_hex(3)}"
    docs = _render(control_plane, release, watch)
    for doc in docs:
        if doc["kind"] in RBAC_KINDS:
            cp_kube.create(doc, doc["metadata"].get("namespace"))
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount" and "operator" in d["metadata"]["name"]]
    deployment = next(d for d in docs if d["kind"] == "Deployment" and "operator" in d["metadata"]["name"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kopf", "run", "-m", "ganops.operator.main"]
    scope = [arg for arg in container.get("args", []) if not arg.startswith(("--liveness", "--log-format"))]
    chart_env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}  # as the chart sets it
    user = f"system:serviceaccount:{RELEASE_NS}:{account['metadata']['name']}"
    identity = control_plane.client_for(user, ("system:serviceaccounts", f"system:serviceaccounts:{RELEASE_NS}"))
    process = KopfProcess(identity, ["ganops.operator.main"], scope_args=scope)
    return process.start({
        **chart_env,
        "GANOPS_CHECKPOINT_URI": f"file://{tmp_path / CHECKPOINTS}",
        "GANOPS_OPERATOR_RESYNC_SECONDS": "1",
        "GANOPS_OPERATOR_METRICS_PORT": "0",
    })


def _apply(control_plane: ControlPlane, namespace: str, name: str) -> None:
    job = grid_job(name, runPolicy={"suspend": True})  # reconciled, never run: the test is about watching
    job["metadata"]["namespace"] = namespace
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))


def test_the_chart_watches_each_listed_namespace_with_its_own_rbac(
        control_plane: ControlPlane, cp_kube: KubeClient, cp_node: Node, namespaces: list[str],
        tmp_path: Path) -> None:
    operator = _deploy(control_plane, cp_kube, namespaces, tmp_path)
    try:
        for ns in namespaces:
            _apply(control_plane, ns, "watched")
        for ns in namespaces:
            cp_kube.wait_for(lambda ns=ns: _status(cp_kube, ns, "watched").get("phase") == "Suspended", timeout=60,
                             message=lambda: operator.output[-4000:])
        assert "Forbidden" not in operator.output and " 403" not in operator.output, operator.output[-4000:]
    finally:
        operator.close()


def test_one_namespace_starts_without_a_forbidden_request(
        control_plane: ControlPlane, cp_kube: KubeClient, cp_node: Node, namespaces: list[str],
        tmp_path: Path) -> None:
    operator = _deploy(control_plane, cp_kube, namespaces[:1], tmp_path)
    try:
        _apply(control_plane, namespaces[0], "single")
        cp_kube.wait_for(lambda: _status(cp_kube, namespaces[0], "single").get("phase") == "Suspended", timeout=60,
                         message=lambda: operator.output[-4000:])
        assert "Forbidden" not in operator.output and " 403" not in operator.output, operator.output[-4000:]
    finally:
        operator.close()

"""Which labels reach the operator's children, on the real control plane (issue 14, finding 8).

kopf.adopt copies the owner's labels onto the children: a `kueue.x-k8s.io/queue-name` label on a GanTrainingJob
then spread to its Job and pods (Kueue reads it there), and any other label with it. Only the job's `ganops.io/*`
labels are inherited now, and labels for the pods are asked for explicitly with `spec.podLabels`.
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.integration.controlplane.conftest import OperatorFactory
from tests.integration.controlplane.test_operator import _diagnostics
from tests.support.controlplane import ControlPlane
from tests.support.jobs import grid_job
from tests.support.kube.client import KubeClient
from tests.support.node import Node


def test_only_ganops_labels_and_pod_labels_reach_the_children(
        control_plane: ControlPlane, cp_kube: KubeClient, cp_namespace: str, cp_node: Node,
        start_operator: OperatorFactory) -> None:
    ns, name = cp_namespace, "labelled"
    operator = start_operator()
    job = grid_job(name, podLabels={"team": "vision"})
    job["metadata"].update(namespace=ns, labels={"kueue.x-k8s.io/queue-name": "elsewhere", "owner": "alice",
                                                 "ganops.io/tier": "gold"})
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))
    diagnostics = _diagnostics(cp_kube, ns, name, operator, cp_node)
    batch: dict[str, Any] = cp_kube.wait_for(lambda: cp_kube.get_or_none("batch/v1", "Job", ns, name), timeout=60,
                                             message=diagnostics)
    configmap = cp_kube.get("v1", "ConfigMap", ns, f"{name}-spec")
    template = batch["spec"]["template"]["metadata"]["labels"]
    for labels in (batch["metadata"]["labels"], configmap["metadata"]["labels"], template):
        assert "kueue.x-k8s.io/queue-name" not in labels and "owner" not in labels, labels
        assert labels["ganops.io/tier"] == "gold" and labels["ganops.io/job"] == name, labels
    assert template["team"] == "vision" and "team" not in batch["metadata"]["labels"], (template, batch)
    assert batch["spec"]["suspend"] is False  # no queue in the spec: not handed to Kueue by a stray label
    pods = cp_kube.wait_for(lambda: cp_kube.list("v1", "Pod", ns, label_selector=f"ganops.io/job={name}"),
                            timeout=60, message=diagnostics)
    assert pods[0]["metadata"]["labels"]["team"] == "vision"
    assert "kueue.x-k8s.io/queue-name" not in pods[0]["metadata"]["labels"]

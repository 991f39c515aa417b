"""The test node as a kubelet of the real control plane: plain batch Jobs (`sh` as the image), created by the real Job
controller, bound by the real scheduler, run and reported by the node (status subresource, as the kubelet's
identity), finished by the real Job controller; a deleted pod gets SIGTERM and the node confirms the deletion."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.controlplane import wait_gone
from tests.support.controlplane.fixtures import NODE_NAME
from tests.support.kube.client import KubeClient
from tests.support.node import Node

RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def batch_job(name: str, script: str, *, exit_codes_fail_job: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {"spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": False,
            "securityContext": RESTRICTED_POD,
            "containers": [{
                "name": "main", "image": "sh", "command": ["sh", "-c", script],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "securityContext": RESTRICTED_CONTAINER,
            }],
        }},
    }
    if exit_codes_fail_job:
        spec["podFailurePolicy"] = {"rules": [{"action": "FailJob", "onExitCodes": {
            "containerName": "main", "operator": "NotIn", "values": [0]}}]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def finished(kube: KubeClient, ns: str, name: str, type_: str, logs: Callable[[], str]) -> dict[str, Any]:
    """The Job once its `type_` condition (Complete, Failed) is True."""

    def job_if_done() -> dict[str, Any] | None:
        job = kube.get("batch/v1", "Job", ns, name)
        return job if condition(job, type_).get("status") == "True" else None

    found: dict[str, Any] = kube.wait_for(job_if_done, timeout=60,
                                          message=lambda: f"{kube.get('batch/v1', 'Job', ns, name)}\n{logs()}")
    return found


def only_pod(kube: KubeClient, ns: str, job: str) -> dict[str, Any]:
    pods = kube.list("v1", "Pod", ns, label_selector=f"batch.kubernetes.io/job-name={job}")
    assert len(pods) == 1, pods
    return pods[0]


def test_jobs_succeed_and_fail_through_the_real_job_controller(cp_kube: KubeClient, cp_namespace: str,
                                                               cp_node: Node) -> None:
    ns = cp_namespace
    cp_kube.create(batch_job("ok", 'echo "hello from $POD_NAME"'), namespace=ns)
    cp_kube.create(batch_job("exit3", "exit 3", exit_codes_fail_job=True), namespace=ns)

    done = finished(cp_kube, ns, "ok", "Complete", lambda: cp_node.all_logs())
    assert done["status"]["succeeded"] == 1
    pod = only_pod(cp_kube, ns, "ok")
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert pod["status"]["podIP"].startswith("127.")
    assert cp_node.logs(ns, pod["metadata"]["name"]) == f"hello from {pod['metadata']['name']}\n"
    # the Job controller's tracking finalizer is gone once it counted the pod
    assert "batch.kubernetes.io/job-tracking" not in (pod["metadata"].get("finalizers") or [])

    failed = finished(cp_kube, ns, "exit3", "Failed", lambda: cp_node.all_logs())
    assert condition(failed, "Failed")["reason"] == "PodFailurePolicy", failed["status"]
    pod = only_pod(cp_kube, ns, "exit3")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert not cp_node.failures, cp_node.failures


def test_a_deleted_pod_gets_sigterm_and_the_node_confirms_the_deletion(cp_kube: KubeClient, cp_namespace: str,
                                                                       cp_node: Node) -> None:
    ns = cp_namespace
    cp_kube.create(batch_job("sleeper", 'trap "echo got TERM; exit 143" TERM; while true; do sleep 0.1; done'),
                   namespace=ns)
    def running() -> dict[str, Any] | None:
        pods = cp_kube.list("v1", "Pod", ns, label_selector="batch.kubernetes.io/job-name=sleeper")
        return next((p for p in pods if p["status"].get("phase") == "Running"), None)

    pod: dict[str, Any] = cp_kube.wait_for(running, timeout=60)
    name = pod["metadata"]["name"]
    cp_kube.delete("v1", "Pod", ns, name)  # graceful: the API server keeps it until the kubelet confirms
    wait_gone(cp_kube, "v1", "Pod", ns, name, timeout=30)
    assert "got TERM" in cp_node.logs(ns, name)
    container = cp_node.container(ns, name)
    assert container is not None and container.process.returncode == 143
    assert not cp_node.failures, cp_node.failures

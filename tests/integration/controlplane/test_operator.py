"""The real operator (`kopf run -m ganops.operator.main`) on the real control plane.

A GanTrainingJob applied with the real kubectl becomes the operator's ConfigMap and Indexed Job; the real Job
controller creates the pod, the real scheduler binds it to the test node, the node runs `ganops train` from the
pod's own spec, and the job succeeds. Deleting the GanTrainingJob leaves the children to the real garbage
collector. Pods that never start give `PodsNotStarting` with the cluster's reason and fail past the start timeout.
The operator runs as the Helm chart's ServiceAccount, with the chart's RBAC (tests/support/controlplane/chart.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.integration.controlplane.conftest import CHECKPOINTS, OperatorFactory
from tests.support.controlplane import ControlPlane, wait_gone
from tests.support.controlplane.fixtures import NODE_NAME
from tests.support.jobs import grid_job
from tests.support.kube import KopfProcess
from tests.support.kube.client import KubeClient
from tests.support.node import Node

GTJ = "ganops.io/v1alpha1"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def _status(kube: KubeClient, ns: str, name: str) -> dict[str, Any]:
    return dict((kube.get(GTJ, "GanTrainingJob", ns, name).get("status")) or {})


def _diagnostics(kube: KubeClient, ns: str, name: str, operator: KopfProcess, node: Node) -> Callable[[], str]:
    def text() -> str:
        pods = [(p["metadata"]["name"], p["spec"].get("nodeName"), p.get("status")) for p in
                kube.list("v1", "Pod", ns)]
        events = [f"{e.involved_kind}/{e.involved_name} {e.reason}: {e.message}" for e in kube.events(ns)]
        return (f"status: {_status(kube, ns, name)}\npods: {pods}\nevents:\n" + "\n".join(events[-30:]) +
                f"\nnode failures: {node.failures}\noperator:\n{operator.output[-3000:]}\npods' logs:\n"
                f"{node.all_logs(2000)}")
    return text


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def test_a_job_runs_to_success_and_garbage_collection_removes_its_children(
        control_plane: ControlPlane, cp_kube: KubeClient, cp_namespace: str, cp_node: Node,
        start_operator: OperatorFactory, tmp_path: Path) -> None:
    ns, name = cp_namespace, "grid"
    checkpoints = tmp_path / CHECKPOINTS
    operator = start_operator()
    job = grid_job(name)
    job["metadata"]["namespace"] = ns
    applied = control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))
    assert f"gantrainingjob.ganops.io/{name} created" in applied.stdout
    diagnostics = _diagnostics(cp_kube, ns, name, operator, cp_node)

    cp_kube.wait_for(lambda: _status(cp_kube, ns, name).get("phase") == "Succeeded", timeout=240,
                     message=diagnostics)
    gtj = cp_kube.get(GTJ, "GanTrainingJob", ns, name)
    assert gtj["status"]["step"] == job["spec"]["training"]["steps"]
    assert gtj["status"]["lastCheckpoint"]["uri"].startswith(f"file://{checkpoints}/{ns}/{name}/")

    # the operator's children, owned by the GanTrainingJob
    owner = gtj["metadata"]["uid"]
    configmap = cp_kube.get("v1", "ConfigMap", ns, f"{name}-spec")

    def completed() -> dict[str, Any] | None:  # the operator judges by the pods, the Job controller a moment later
        found = cp_kube.get("batch/v1", "Job", ns, name)
        return found if _condition(found, "Complete").get("status") == "True" else None

    batch_job: dict[str, Any] = cp_kube.wait_for(completed, timeout=30, message=diagnostics)
    for child in (configmap, batch_job):
        assert [ref["uid"] for ref in child["metadata"]["ownerReferences"]] == [owner]
    # the real Job controller ran the Indexed Job: one pod, completed
    assert batch_job["status"]["succeeded"] == 1 and batch_job["status"].get("completedIndexes") == "0"
    pods = cp_kube.list("v1", "Pod", ns, label_selector=f"{JOB_NAME_LABEL}={name}")
    assert len(pods) == 1, pods
    pod = pods[0]
    assert [ref["uid"] for ref in pod["metadata"]["ownerReferences"]] == [batch_job["metadata"]["uid"]]
    # ... bound by the real scheduler to the test node, which ran it and reported it as a kubelet does
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert f"{ns}/{pod['metadata']['name']}" in cp_node.started_pods
    scheduled = [e for e in cp_kube.events(ns, involved_name=pod["metadata"]["name"]) if e.reason == "Scheduled"]
    assert scheduled and f"to {NODE_NAME}" in scheduled[0].message, scheduled
    assert pod["status"]["phase"] == "Succeeded"
    (container,) = pod["status"]["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == 0, container
    steps = job["spec"]["training"]["steps"]
    assert f"completed at step {steps}" in cp_node.logs(ns, pod["metadata"]["name"])  # `ganops train`'s last line
    assert not cp_node.failures, cp_node.failures

    # deleting the GanTrainingJob: the real garbage collector deletes the ConfigMap and the Job, then the pod
    started = time.monotonic()
    control_plane.kubectl("delete", "gtj", name, "-n", ns, "--wait=false")
    wait_gone(cp_kube, "v1", "ConfigMap", ns, f"{name}-spec", timeout=120)
    wait_gone(cp_kube, "batch/v1", "Job", ns, name, timeout=120)
    wait_gone(cp_kube, "v1", "Pod", ns, pod["metadata"]["name"], timeout=120)
    print(f"garbage collection of the children took {time.monotonic() - started:.1f}s")


def test_pods_that_never_start_say_why_and_fail_after_start_timeout(
        control_plane: ControlPlane, cp_kube: KubeClient, cp_namespace: str, cp_node: Node,
        start_operator: OperatorFactory) -> None:
    """Issue 14, finding 5, on the real control plane: the reason the cluster gives for pods that do not start - the
    kubelet's CreateContainerConfigError for a missing Secret, the scheduler's Unschedulable for a node selector no
    node matches, the Job controller's FailedCreate when admission refuses a pod with a missing PriorityClass - is
    the job's PodsNotStarting condition, and past runPolicy.startTimeoutSeconds the attempt fails with it. A job
    waiting for Kueue (not installed here) says it is queued and has no start clock."""
    ns = cp_namespace
    # a Secret nobody created in this namespace; the platform's policy lets jobs choose these pods' placement
    operator = start_operator(GANOPS_S3_SECRET="ganops-s3", GANOPS_ALLOWED_NODE_SELECTORS="ganops.io/pool",
                              GANOPS_ALLOWED_PRIORITY_CLASSES="missing-class")
    no_secret = grid_job("no-secret", runPolicy={"startTimeoutSeconds": 12, "backoffLimit": 0})
    no_node = grid_job("no-node", resources={"nodeSelector": {"ganops.io/pool": "nowhere"}})
    no_class = grid_job("no-class", resources={"priorityClassName": "missing-class"})
    queued = grid_job("queued", queueName="team-a", runPolicy={"startTimeoutSeconds": 1})
    for job in (no_secret, no_node, no_class, queued):
        job["metadata"]["namespace"] = ns
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([no_secret, no_node, no_class, queued]))

    def not_starting(name: str, reason: str) -> dict[str, Any] | None:
        found = next((c for c in _status(cp_kube, ns, name).get("conditions") or []
                      if c["type"] == "PodsNotStarting"), None)
        return found if found and found["status"] == "True" and found["reason"] == reason else None

    diagnostics = _diagnostics(cp_kube, ns, "no-secret", operator, cp_node)
    stuck: dict[str, Any] = cp_kube.wait_for(lambda: not_starting("no-secret", "CreateContainerConfigError"),
                                             timeout=60, message=diagnostics)
    assert 'secret "ganops-s3" not found' in stuck["message"], stuck
    unscheduled: dict[str, Any] = cp_kube.wait_for(lambda: not_starting("no-node", "Unschedulable"), timeout=60,
                                                   message=diagnostics)
    assert "didn't match Pod's node affinity/selector" in unscheduled["message"], unscheduled
    refused: dict[str, Any] = cp_kube.wait_for(lambda: not_starting("no-class", "FailedCreate"), timeout=60,
                                               message=diagnostics)
    assert "no PriorityClass with name missing-class was found" in refused["message"], refused
    for name in ("no-node", "no-class"):
        status = _status(cp_kube, ns, name)
        assert status["phase"] == "Pending" and "the pods are not starting" in status["message"], status
    warnings = {(e.involved_name, e.reason) for e in cp_kube.events(ns) if e.involved_kind == "GanTrainingJob"}
    assert {("no-secret", "PodsNotStarting"), ("no-node", "PodsNotStarting"),
            ("no-class", "PodsNotStarting")} <= warnings, warnings

    # past startTimeoutSeconds (12 s from the Job's start), backoffLimit 0: the job fails with the reason
    cp_kube.wait_for(lambda: _status(cp_kube, ns, "no-secret").get("phase") == "Failed", timeout=60,
                     message=diagnostics)
    failed = _condition({"status": _status(cp_kube, ns, "no-secret")}, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded", failed
    assert "startTimeoutSeconds=12" in failed["message"] and "CreateContainerConfigError" in failed["message"]

    # Kueue is not installed: the Job stays suspended, the job says it is queued; no start clock runs meanwhile
    status = _status(cp_kube, ns, "queued")
    assert status["phase"] == "Pending" and status["message"] == "waiting for admission to queue team-a", status
    assert _condition({"status": status}, "Running")["reason"] == "Queued"
    assert cp_kube.get("batch/v1", "Job", ns, "queued")["spec"]["suspend"] is True

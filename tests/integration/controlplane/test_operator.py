"""The real operator (`kopf run -m ganops.operator.main`) on the real control plane.

A GanTrainingJob applied with the real kubectl becomes the operator's ConfigMap and Indexed Job; the real Job
controller creates the pod, the real scheduler binds it to the test node, the node runs `ganops train` from the
pod's own spec, and the job succeeds. Deleting the GanTrainingJob leaves the children to the real garbage
collector. Pods that never start are observed as they are today (the fixes are issue 14's second half).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.controlplane import ControlPlane, wait_gone
from tests.support.controlplane.fixtures import NODE_NAME
from tests.support.jobs import grid_job
from tests.support.kube import KopfProcess
from tests.support.kube.client import KubeClient
from tests.support.node import Node

GTJ = "ganops.io/v1alpha1"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

OperatorFactory = Callable[..., KopfProcess]
CHECKPOINTS = "checkpoints"  # under the test's tmp_path: the operator and the pods share this machine's files


@pytest.fixture
def start_operator(cp_kube: KubeClient, cp_namespace: str, cp_node: Node, ganops_crd: Any,
                   tmp_path: Path) -> Iterator[OperatorFactory]:
    """`kopf run` as a subprocess with the admin kubeconfig, watching the test's namespace (the chart's
    ServiceAccount and RBAC come with issue 14's second half)."""
    processes: list[KopfProcess] = []

    def start(**env: str) -> KopfProcess:
        process = KopfProcess(cp_kube, ["ganops.operator.main"], namespaces=[cp_namespace])
        processes.append(process)
        return process.start({
            "GANOPS_CHECKPOINT_URI": f"file://{tmp_path / CHECKPOINTS}",
            "GANOPS_OPERATOR_RESYNC_SECONDS": "1",
            "GANOPS_OPERATOR_METRICS_PORT": "0",
            "GANOPS_TERMINATION_GRACE_SECONDS": "10",
            **env,
        })

    yield start
    for process in processes:
        process.close()


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


def test_pods_that_never_start_are_visible(control_plane: ControlPlane, cp_kube: KubeClient, cp_namespace: str,
                                           cp_node: Node, start_operator: OperatorFactory) -> None:
    """Today's behaviour, observed (finding 5 of issue 14): the cluster says why the pods do not start - the
    kubelet's CreateContainerConfigError for a missing Secret, the scheduler's Unschedulable for a node selector no
    node matches - while the GanTrainingJob only says it is waiting for them, without a reason or a deadline."""
    ns = cp_namespace
    operator = start_operator(GANOPS_S3_SECRET="ganops-s3")  # a Secret nobody created in this namespace
    no_secret = grid_job("no-secret")
    no_node = grid_job("no-node", resources={"nodeSelector": {"ganops.io/pool": "nowhere"}})
    for job in (no_secret, no_node):
        job["metadata"]["namespace"] = ns
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([no_secret, no_node]))

    def pod_of(job: str) -> dict[str, Any] | None:
        pods = cp_kube.list("v1", "Pod", ns, label_selector=f"{JOB_NAME_LABEL}={job}")
        return pods[0] if pods else None

    def waiting(pod: dict[str, Any] | None) -> dict[str, Any]:
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
        return dict(statuses[0].get("state", {}).get("waiting") or {})

    def stuck_at_kubelet() -> dict[str, Any] | None:
        pod = pod_of("no-secret")
        return pod if waiting(pod) else None

    def unschedulable() -> dict[str, Any] | None:
        pod = pod_of("no-node")
        return pod if pod and _condition(pod, "PodScheduled").get("reason") == "Unschedulable" else None

    diagnostics = _diagnostics(cp_kube, ns, "no-secret", operator, cp_node)
    pod: dict[str, Any] = cp_kube.wait_for(stuck_at_kubelet, timeout=60, message=diagnostics)
    assert pod["spec"]["nodeName"] == NODE_NAME  # scheduled, then stuck at the kubelet
    assert waiting(pod)["reason"] == "CreateContainerConfigError"
    assert 'secret "ganops-s3" not found' in waiting(pod)["message"]

    unscheduled: dict[str, Any] = cp_kube.wait_for(unschedulable, timeout=60, message=diagnostics)
    assert "didn't match Pod's node affinity/selector" in _condition(unscheduled, "PodScheduled")["message"]
    assert not unscheduled["spec"].get("nodeName")

    # The GanTrainingJobs after a few resyncs: Pending, "waiting for the pods to start", and no word of why.
    time.sleep(3)
    for name in ("no-secret", "no-node"):
        status = _status(cp_kube, ns, name)
        assert status.get("phase") == "Pending", status
        running = next(c for c in status["conditions"] if c["type"] == "Running")
        assert (running["status"], running["reason"]) == ("False", "Pending"), running
        said = repr(status)
        assert "CreateContainerConfigError" not in said and "Unschedulable" not in said, (
            "the operator now surfaces why pods do not start: update this test (issue 14, finding 5)")

"""Preemption under torchrun, end to end on the real control plane (issue 20, finding 2).

A two-GPU GanTrainingJob (two gloo ranks on this CPU) becomes an Indexed Job whose pod runs `ganops launch` - torchrun
under a supervisor - on the test node. Deleting the running pod makes the node SIGTERM it, as a kubelet does; a plain
deletion adds no DisruptionTarget condition, so the only evidence the operator has that this was a preemption is the
pod's exit code. `ganops launch` turns torchrun's exit 1 into 0 once every rank has checkpointed; the real Job
controller counts the pod as succeeded short of the last step and the operator relaunches it as Preempted, without
spending the backoff (torchrun alone exits 1: "Failed", backoffLimit 0 → the job fails).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.controlplane import ControlPlane
from tests.support.jobs import grid_job
from tests.support.kube import KopfProcess
from tests.support.kube.client import KubeClient
from tests.support.node import Node

GTJ = "ganops.io/v1alpha1"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
TOTAL = 100_000


@pytest.fixture
def operator(cp_kube: KubeClient, cp_namespace: str, cp_node: Node, ganops_crd: Any,
             tmp_path: Path) -> Iterator[KopfProcess]:
    process = KopfProcess(cp_kube, ["ganops.operator.main"], namespaces=[cp_namespace])
    process.start({
        "GANOPS_CHECKPOINT_URI": f"file://{tmp_path / 'checkpoints'}",
        "GANOPS_OPERATOR_RESYNC_SECONDS": "1",
        "GANOPS_OPERATOR_METRICS_PORT": "0",
        # the node honours at most 30 s; `ganops launch` gives torchrun 20 s of it to wait for the checkpoint
        "GANOPS_TERMINATION_GRACE_SECONDS": "30",
    })
    try:
        yield process
    finally:
        process.close()


def _status(kube: KubeClient, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.get(GTJ, "GanTrainingJob", ns, name).get("status") or {})


def test_a_sigterm_to_a_two_process_torchrun_pod_is_a_preemption(
        control_plane: ControlPlane, cp_kube: KubeClient, cp_namespace: str, cp_node: Node,
        operator: KopfProcess, tmp_path: Path) -> None:
    ns, name = cp_namespace, "duo"
    job = grid_job(name, resources={"gpusPerReplica": 2}, training={"steps": TOTAL, "logEverySteps": 2},
                   checkpoint={"everySteps": 10_000}, evaluation={"metrics": []}, runPolicy={"backoffLimit": 0})
    job["metadata"]["namespace"] = ns
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))

    def diagnostics() -> str:
        events = [f"{e.involved_kind}/{e.involved_name} {e.reason}: {e.message}" for e in cp_kube.events(ns)]
        return (f"status: {_status(cp_kube, ns, name)}\nevents:\n" + "\n".join(events[-20:]) +
                f"\nnode failures: {cp_node.failures}\noperator:\n{operator.output[-2000:]}\npods' logs:\n"
                f"{cp_node.all_logs(3000)}")

    def training_pod() -> dict[str, Any] | None:
        pods = cp_kube.list("v1", "Pod", ns, label_selector=f"{JOB_NAME_LABEL}={name}")
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if len(running) == 1 and '"progress"' in cp_node.logs(ns, running[0]["metadata"]["name"]):
            return running[0]
        return None

    pod: dict[str, Any] = cp_kube.wait_for(training_pod, timeout=240, message=diagnostics)
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["ganops", "launch", "--nproc-per-node=2"], command
    pod_name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]

    # The preemption: the pod is deleted, the node SIGTERMs its PID 1 (`ganops launch`) and waits the grace period.
    control_plane.kubectl("delete", "pod", pod_name, "-n", ns, "--wait=false")

    def relaunched() -> dict[str, Any] | None:
        status = _status(cp_kube, ns, name)
        return status if (status.get("restarts") or {}).get("preemptions") == 1 else None

    status: dict[str, Any] = cp_kube.wait_for(relaunched, timeout=120, message=diagnostics)
    assert status["restarts"] == {"preemptions": 1, "failures": 0}, status
    reasons = [e.reason for e in cp_kube.events(ns, involved_name=name)]
    assert "Preempted" in reasons and "Relaunched" in reasons, reasons
    assert "Failed" not in reasons and "BackoffLimitExceeded" not in reasons, reasons

    # The pod itself: exit 0 (torchrun exited 1), both ranks stopped at the same step, one checkpoint there.
    finished = cp_node.finished[uid]
    assert finished.process.returncode == 0, cp_node.logs(ns, pod_name)[-3000:]
    events = [json.loads(line) for line in cp_node.logs(ns, pod_name).splitlines() if line.startswith("{")]
    stopped = [e for e in events if e.get("event") == "stopped"]
    assert len(stopped) == 2 and len({e["step"] for e in stopped}) == 1, stopped
    step = int(stopped[0]["step"])
    assert 0 < step < TOTAL
    assert status["lastCheckpoint"]["step"] == step, status
    steps = sorted(p.name for p in (tmp_path / "checkpoints" / ns / name).glob("step-*"))
    assert steps == [f"step-{step:09d}"], steps

    # Stop attempt 2 now rather than when the namespace goes.
    control_plane.kubectl("delete", "gtj", name, "-n", ns, "--wait=false")
    control_plane.kubectl("delete", "job", name, "-n", ns, "--cascade=background", "--wait=false",
                          "--ignore-not-found")

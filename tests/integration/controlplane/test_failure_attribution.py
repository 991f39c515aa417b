"""Failure attribution against the real Job controller (issue 14, finding 7).

The operator's own Job for two replicas (children.training_job: Indexed, backoffLimit 0, the podFailurePolicy), with
the trainer's command swapped for a shell: rank 1 exits 1 at once, rank 0 runs until it is killed. The real Job
controller fails the Job on rank 1's exit code and kills rank 0 (SIGTERM: 143). What the operator would observe -
the Job and every state its pods went through, as its index handlers see them - must read as an application failure,
never as a free preemption.
"""

from __future__ import annotations

import copy
from typing import Any

from ganops.api.loader import spec_from_object
from ganops.operator import children
from ganops.operator.faults import attempt_outcome, decide
from ganops.operator.observe import PodView, job_view, pod_view
from ganops.operator.settings import OperatorConfig
from tests.support.jobs import grid_job
from tests.support.kube.client import KubeClient
from tests.support.node import Node

SCRIPT = 'if [ "$JOB_COMPLETION_INDEX" = 1 ]; then exit 1; fi; exec sleep 120'


def test_one_rank_failing_is_a_failure_even_when_the_others_were_killed(
        cp_kube: KubeClient, cp_namespace: str, cp_node: Node) -> None:
    ns = cp_namespace
    spec = spec_from_object(grid_job("ranks", resources={"replicas": 2})["spec"])
    owner = children.Owner("ranks", ns, "00000000-0000-4000-8000-000000000007")
    job = children.training_job(owner, spec, OperatorConfig(termination_grace_seconds=5), attempt=1)
    job["metadata"].pop("ownerReferences", None)  # no GanTrainingJob here: the Job stands alone
    job["spec"]["template"]["metadata"].pop("ownerReferences", None)
    container = job["spec"]["template"]["spec"]["containers"][0]
    container.update(command=["sh", "-c", SCRIPT])
    container.pop("envFrom", None)
    configmap = children.configmap(owner, spec)  # the pods mount the job file
    configmap["metadata"].pop("ownerReferences", None)
    cp_kube.create(configmap, ns)
    since = cp_kube.list_raw("v1", "Pod", ns)["metadata"]["resourceVersion"]
    cp_kube.create(job, ns)

    # Every state the pods go through, from a watch (as the operator's index sees them): rank 0's terminated state
    # (143) exists only for a moment between the kubelet's final status and the deletion.
    states: list[PodView] = []
    for event in cp_kube.iter_watch("v1", "Pod", ns, resource_version=since, timeout_seconds=120,
                                    label_selector="ganops.io/job=ranks"):
        states.append(pod_view(event["object"]))
        if {(p.index, p.exit_code) for p in states if p.phase == "Failed"} >= {(0, 143), (1, 1)}:
            break
    rank0 = next(p for p in states if p.index == 0 and p.phase == "Failed")
    rank1 = next(p for p in states if p.index == 1 and p.phase == "Failed")
    assert (rank0.exit_code, rank1.exit_code) == (143, 1), states

    def failed() -> dict[str, Any] | None:
        current = cp_kube.get("batch/v1", "Job", ns, "ranks")
        return current if any(c["type"] == "Failed" and c["status"] == "True"
                              for c in (current.get("status") or {}).get("conditions") or []) else None

    final: dict[str, Any] = cp_kube.wait_for(failed, timeout=60, message=lambda: f"pods: {states}")
    view = job_view(final)
    assert view.failed_reason == "PodFailurePolicy", view
    assert "failed with exit code 1 matching FailJob rule at index 1" in view.failed_message, view
    # whatever the operator happens to see of the pods, the attempt failed: backoff is spent
    for pods in ([rank0, rank1], [rank0], []):
        outcome = attempt_outcome(view, copy.deepcopy(pods), replicas=2, total_steps=20, record=None)
        assert outcome.kind == "failed", (pods, outcome)
        decision = decide(outcome, preemptions=0, failures=0, backoff_limit=3)
        assert decision is not None and decision.failures == 1 and decision.preemptions == 0

"""The operator as a real `kopf run` subprocess, SIGKILLed in the middle of a reconcile: it acted on the cluster
(created a Job) but never got to write the status that records it. The restarted operator must adopt what is
there - no second Job, no lost restart count. A relaunch is the other way round: its decision is written before the
old Job (and with it the evidence of why the attempt ended) is deleted."""

from __future__ import annotations

from typing import Any

import pytest

from ganops.api.crd import build_crd
from tests.support.jobs import grid_job
from tests.support.kube import KopfProcessFactory, KubeAPI
from tests.support.kube.workloads import job_pods, start_job_pods, terminate_pod

pytest_plugins = ["tests.support.kube.fixtures"]

GTJ = "ganops.io/v1alpha1"
NS = "team-a"


def status_writes(kube: KubeAPI, name: str) -> int:
    return len([r for r in kube.requests("PATCH", "gantrainingjobs", name) if r.subresource == "status"])


def status_of(kube: KubeAPI, name: str) -> dict[str, Any]:
    return dict(kube.get(GTJ, "gtj", NS, name).get("status") or {})


@pytest.mark.slow  # three `kopf run` starts
def test_operator_killed_mid_reconcile_leaves_no_duplicate_children(
    kube_api: KubeAPI, kopf_process: KopfProcessFactory, s3_bucket: str
) -> None:
    kube_api.register_crd(build_crd())
    env = {"GANOPS_OPERATOR_RESYNC_SECONDS": "0.3", "GANOPS_OPERATOR_METRICS_PORT": "0",
           "GANOPS_CHECKPOINT_URI": f"{s3_bucket}/checkpoints"}
    job = grid_job("phoenix", training={"steps": 100}, runPolicy={"backoffLimit": 0})
    job["metadata"]["namespace"] = NS

    # 1. The operator creates the children, but every status write fails: it never records the attempt.
    kube_api.inject_fault(method="PATCH", plural="gantrainingjobs", subresource="status", status=500, times=None)
    operator = kopf_process(["ganops.operator.main"], env=env)
    kube_api.create(job)
    kube_api.wait_for(lambda: kube_api.get_or_none("batch/v1", "Job", NS, "phoenix"), message="the Job")
    kube_api.wait_for(lambda: status_writes(kube_api, "phoenix") >= 1, message="a status write was attempted")
    assert "phase" not in status_of(kube_api, "phoenix")

    kube_api.clear_faults()
    operator.restart(kill=True)  # SIGKILL
    kube_api.wait_for(lambda: status_of(kube_api, "phoenix").get("phase") == "Pending", timeout=15,
                      message="the restarted operator records the attempt")
    status = status_of(kube_api, "phoenix")
    assert status["attempt"] == 1 and status["restarts"] == {"preemptions": 0, "failures": 0}
    assert len(kube_api.list("batch/v1", "jobs", NS, label_selector="ganops.io/job=phoenix")) == 1
    assert len(kube_api.list("v1", "configmaps", NS, label_selector="ganops.io/job=phoenix")) == 1
    assert len(kube_api.requests("POST", "jobs")) == 1  # the Job was adopted, not created again

    # 2. A pod is preempted while every status write fails: the operator must not delete the attempt's Job, whose
    #    pods are the only record of why the attempt ended, before the decision to relaunch is written.
    (pod,) = start_job_pods(kube_api, NS, "phoenix")
    kube_api.wait_for(lambda: status_of(kube_api, "phoenix").get("phase") == "Running", message="Running")
    kube_api.inject_fault(method="PATCH", plural="gantrainingjobs", subresource="status", status=500, times=None)
    writes = status_writes(kube_api, "phoenix")
    terminate_pod(kube_api, NS, pod, exit_code=143, disruption="EvictionByEvictionAPI")
    kube_api.wait_for(lambda: status_writes(kube_api, "phoenix") >= writes + 2,
                      message="reconciles that decided the relaunch and could not record it")
    job_now = kube_api.get("batch/v1", "Job", NS, "phoenix")
    assert job_now["metadata"]["labels"]["ganops.io/attempt"] == "1" and not kube_api.requests("DELETE", "jobs")
    assert status_of(kube_api, "phoenix")["attempt"] == 1

    # Killed and restarted with the API healthy again: the preemption is read from the pod still there, recorded,
    # and only then is the old Job replaced.
    kube_api.clear_faults()
    operator.restart(kill=True)
    kube_api.wait_for(lambda: status_of(kube_api, "phoenix").get("attempt") == 2, timeout=15,
                      message="the restarted operator records the second attempt")
    kube_api.wait_for(lambda: (kube_api.get_or_none("batch/v1", "Job", NS, "phoenix") or {}).get("metadata", {}).get(
        "labels", {}).get("ganops.io/attempt") == "2", message="the second attempt's Job")
    status = status_of(kube_api, "phoenix")
    assert status["restarts"] == {"preemptions": 1, "failures": 0}
    assert len(kube_api.list("batch/v1", "jobs", NS, label_selector="ganops.io/job=phoenix")) == 1
    assert len(kube_api.requests("POST", "jobs")) == 2
    assert job_pods(kube_api, NS, "phoenix") == []
    assert "Traceback" not in operator.output, operator.output[-3000:]

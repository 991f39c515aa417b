"""Play the controllers the emulator does not run: the Job controller (pods for a Job, Job conditions) and the
kubelet (pod phases, container states, exit codes, the DisruptionTarget condition).

    pods = start_job_pods(kube, "ns", "train")            # one pod per completion index, Running
    terminate_pod(kube, "ns", pods[0], exit_code=143, disruption="PreemptionByScheduler")
    complete_job(kube, "ns", "train")                      # every pod Succeeded + the Job's Complete condition

Everything goes through the API like the real controllers' writes: pods are created with the Job's pod template,
its labels (plus `batch.kubernetes.io/*`), the completion-index annotation and an owner reference to the Job (so
deleting the Job garbage-collects them); phases and exit codes are written through `/status`.
"""

from __future__ import annotations

import copy
import datetime as dt
import secrets
from typing import Any

from .emulator import KubeAPI

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def _ts(when: dt.datetime | None = None) -> str:
    return (when or dt.datetime.now(tz=dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_pods(kube: KubeAPI, namespace: str, job_name: str) -> list[dict[str, Any]]:
    """The pods of a Job (by the Job controller's label), by completion index."""
    pods = kube.list("v1", "pods", namespace, label_selector=f"{JOB_NAME_LABEL}={job_name}")
    return sorted(pods, key=lambda pod: int((pod["metadata"].get("annotations") or {}).get(INDEX_KEY, "0")))


def start_job_pods(
    kube: KubeAPI,
    namespace: str,
    job_name: str,
    *,
    phase: str = "Running",
    started_at: dt.datetime | None = None,
) -> list[str]:
    """Create the Job's pods (one per completion index) as its controller does, and move them to `phase`
    (`Pending` leaves them unscheduled). Returns the pod names in index order."""
    job = kube.get("batch/v1", "Job", namespace, job_name)
    spec = job["spec"]
    template = spec["template"]
    completions = int(spec.get("completions") or 1)
    indexed = spec.get("completionMode") == "Indexed"
    names = []
    for index in range(completions):
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({JOB_NAME_LABEL: job_name, "batch.kubernetes.io/controller-uid": job["metadata"]["uid"]})
        annotations: dict[str, str] = {}
        if indexed:
            labels[INDEX_KEY] = str(index)
            annotations[INDEX_KEY] = str(index)
        pod_spec = copy.deepcopy(template["spec"])
        if indexed:
            pod_spec["hostname"] = f"{job_name}-{index}"
        name = f"{job_name}-{index}-{secrets.token_hex(3)}" if indexed else f"{job_name}-{secrets.token_hex(3)}"
        kube.create({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job["metadata"]["uid"],
                    "controller": True, "blockOwnerDeletion": True,
                }],
            },
            "spec": pod_spec,
        })
        names.append(name)
        if phase == "Running":
            run_pod(kube, namespace, name, started_at=started_at)
        else:
            kube.patch_status("v1", "Pod", namespace, name, {"phase": phase})
    kube.patch_status("batch/v1", "Job", namespace, job_name,
                      {"active": completions if phase in ("Running", "Pending") else 0,
                       "startTime": _ts(started_at)})
    return names


def _container(kube: KubeAPI, namespace: str, pod: str) -> str:
    body = kube.get("v1", "Pod", namespace, pod)
    return str(body["spec"]["containers"][0]["name"])


def run_pod(kube: KubeAPI, namespace: str, pod: str, *, started_at: dt.datetime | None = None) -> dict[str, Any]:
    """The kubelet started the pod's container."""
    when = _ts(started_at)
    return kube.patch_status("v1", "Pod", namespace, pod, {
        "phase": "Running",
        "startTime": when,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": when}],
        "containerStatuses": [{"name": _container(kube, namespace, pod), "ready": True, "restartCount": 0,
                               "image": "trainer", "imageID": "", "state": {"running": {"startedAt": when}}}],
    })


def terminate_pod(
    kube: KubeAPI,
    namespace: str,
    pod: str,
    *,
    exit_code: int,
    reason: str | None = None,
    disruption: str | None = None,
    pod_reason: str | None = None,
    message: str = "",
    started_at: dt.datetime | None = None,
    finished_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The container exited with `exit_code` (phase Succeeded for 0, else Failed). `disruption` adds the
    DisruptionTarget condition with that reason (e.g. PreemptionByScheduler), `pod_reason` sets status.reason
    (e.g. Evicted). The container ran from `started_at` (default: the pod's start) to `finished_at` (default: now)."""
    body = kube.get("v1", "Pod", namespace, pod)
    status = body.get("status") or {}
    started = _ts(started_at) if started_at is not None else status.get("startTime") or _ts()
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
    conditions.append({"type": "Ready", "status": "False", "lastTransitionTime": _ts()})
    if disruption is not None:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": disruption,
                           "message": message or f"{disruption}", "lastTransitionTime": _ts()})
    new_status: dict[str, Any] = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": conditions,
        "containerStatuses": [{
            "name": _container(kube, namespace, pod), "ready": False, "restartCount": 0, "image": "trainer",
            "imageID": "",
            "state": {"terminated": {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0
                                                                                 else "Error"),
                                     "startedAt": started, "finishedAt": _ts(finished_at)}},
        }],
    }
    if pod_reason is not None:
        new_status["reason"] = pod_reason
        new_status["message"] = message
    return kube.patch_status("v1", "Pod", namespace, pod, new_status)


def complete_job(kube: KubeAPI, namespace: str, job_name: str) -> dict[str, Any]:
    """Every pod exits 0 and the Job gets its Complete condition."""
    pods = job_pods(kube, namespace, job_name)
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Succeeded":
            terminate_pod(kube, namespace, pod["metadata"]["name"], exit_code=0)
    now = _ts()
    return kube.patch_status("batch/v1", "Job", namespace, job_name, {
        "active": 0, "succeeded": len(pods), "completionTime": now,
        "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                       {"type": "Complete", "status": "True", "lastTransitionTime": now}],
    })


def fail_job(kube: KubeAPI, namespace: str, job_name: str, *, reason: str = "BackoffLimitExceeded",
             message: str = "Job has reached the specified backoff limit") -> dict[str, Any]:
    """The Job controller gave up on the Job: the Failed condition."""
    now = _ts()
    return kube.patch_status("batch/v1", "Job", namespace, job_name, {
        "active": 0, "failed": 1,
        "conditions": [{"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
                        "lastTransitionTime": now},
                       {"type": "Failed", "status": "True", "reason": reason, "message": message,
                        "lastTransitionTime": now}],
    })

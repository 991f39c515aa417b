"""What the operator observes, as small immutable views: the child Job, its pods and the trainer's latest.json.

The views are built from raw API objects (`job_view`, `pod_view`) in kopf's index handlers, so the reconcile logic
never touches API bodies, and from the object store (`ganops.checkpoints.read_latest_record`):
`<checkpoint.uri>/<namespace>/<job>/latest.json`,
written last by the trainer after a verified upload; its format is `ganops.checkpoints` (no torch).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ganops.contracts import (
    ANNOTATION_OWNER_UID,
    ANNOTATION_RESTARTS,
    API_VERSION,
    COMPLETION_INDEX_ANNOTATION,
    KIND,
    LABEL_ATTEMPT,
)

# ------------------------------------------------------------------------------------------------ time


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes it (``2024-01-02T03:04:05Z``), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def controller_uid(meta: Mapping[str, Any], kind: str, api_version: str | None = None) -> str | None:
    """The uid of the object's owner of that kind (its controller reference if it has one), or None."""
    refs = [ref for ref in meta.get("ownerReferences") or []
            if ref.get("kind") == kind and (api_version is None or ref.get("apiVersion") == api_version)]
    refs.sort(key=lambda ref: not ref.get("controller"))
    return str(refs[0].get("uid")) if refs and refs[0].get("uid") else None


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# ------------------------------------------------------------------------------------------------ pods


@dataclass(frozen=True)
class PodView:
    """One trainer pod, reduced to what fault handling and cost accrual need."""

    name: str
    attempt: int
    index: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    reason: str = ""  # pod.status.reason, e.g. Evicted, Preempting, NodeLost, Shutdown
    message: str = ""
    disruption: str | None = None  # reason of a True DisruptionTarget condition
    exit_code: int | None = None  # of the trainer container, once terminated
    terminated_reason: str = ""  # e.g. Error, OOMKilled, Completed
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    deleting: bool = False
    owner_uid: str | None = None  # the GanTrainingJob's uid (annotation ganops.io/owner-uid), None on older pods
    job_uid: str | None = None  # the uid of the batch Job that created the pod
    waiting_reason: str = ""  # the trainer container's waiting state: ImagePullBackOff, CreateContainerConfigError…
    waiting_message: str = ""
    unschedulable: str | None = None  # the scheduler's message while PodScheduled is False (Unschedulable)

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def run_seconds(self, now: dt.datetime) -> float:
        """How long this pod has been running (until it finished, or until now)."""
        if self.started is None:
            return 0.0
        end = self.finished if self.finished is not None else (None if self.terminal else now)
        if end is None:
            return 0.0
        return max(0.0, (end - self.started).total_seconds())


def pod_view(body: Mapping[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = body.get("status") or {}
    disruption = None
    unschedulable = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            disruption = str(condition.get("reason") or "DisruptionTarget")
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            unschedulable = str(condition.get("message") or "Unschedulable")
    waiting_reason = waiting_message = ""
    exit_code: int | None = None
    terminated_reason = ""
    started = None
    finished = None
    statuses = status.get("containerStatuses") or []
    trainer = next((c for c in statuses if c.get("name") == "trainer"), statuses[0] if statuses else None)
    if trainer is not None:
        state = trainer.get("state") or {}
        if "terminated" in state:
            term = state["terminated"] or {}
            exit_code = _int(term.get("exitCode"), 0)
            terminated_reason = str(term.get("reason") or "")
            started = parse_time(term.get("startedAt"))
            finished = parse_time(term.get("finishedAt"))
        elif "running" in state:
            started = parse_time((state["running"] or {}).get("startedAt"))
        elif "waiting" in state:
            waiting_reason = str((state["waiting"] or {}).get("reason") or "")
            waiting_message = str((state["waiting"] or {}).get("message") or "")
    if started is None and status.get("phase") in ("Running", "Succeeded", "Failed"):
        started = parse_time(status.get("startTime"))
    index = annotations.get(COMPLETION_INDEX_ANNOTATION, labels.get(COMPLETION_INDEX_ANNOTATION, "0"))
    return PodView(
        name=str(meta.get("name", "")),
        attempt=_int(labels.get(LABEL_ATTEMPT), 0),
        index=_int(index, 0),
        phase=str(status.get("phase") or "Pending"),
        reason=str(status.get("reason") or ""),
        message=str(status.get("message") or ""),
        disruption=disruption,
        exit_code=exit_code,
        terminated_reason=terminated_reason,
        started=started,
        finished=finished,
        deleting=bool(meta.get("deletionTimestamp")),
        owner_uid=annotations.get(ANNOTATION_OWNER_UID) or None,
        job_uid=controller_uid(meta, "Job"),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        unschedulable=unschedulable,
    )


# ------------------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class JobView:
    """The batch/v1 Job of one attempt."""

    name: str
    attempt: int
    uid: str | None = None
    suspended: bool = False
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None  # reason of a True Failed condition
    failed_message: str = ""
    deleting: bool = False
    restarts: Mapping[str, int] = field(default_factory=dict)  # counters recorded at launch (annotation)
    owner_uid: str | None = None  # the GanTrainingJob that owns it (controller reference)
    created: dt.datetime | None = None
    started: dt.datetime | None = None  # status.startTime: set by the Job controller when it starts (un-suspended)


def job_view(body: Mapping[str, Any]) -> JobView:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = body.get("status") or {}
    complete = False
    failed_reason: str | None = None
    failed_message = ""
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            complete = True
        elif condition.get("type") == "Failed":
            failed_reason = str(condition.get("reason") or "Failed")
            failed_message = str(condition.get("message") or "")
    restarts: dict[str, int] = {}
    try:
        raw = json.loads(annotations.get(ANNOTATION_RESTARTS, "{}"))
        if isinstance(raw, dict):
            restarts = {str(k): _int(v) for k, v in raw.items()}
    except ValueError:
        pass
    return JobView(
        name=str(meta.get("name", "")),
        attempt=_int(labels.get(LABEL_ATTEMPT), 0),
        uid=meta.get("uid"),
        suspended=bool((body.get("spec") or {}).get("suspend")),
        active=_int(status.get("active")),
        succeeded=_int(status.get("succeeded")),
        failed=_int(status.get("failed")),
        complete=complete,
        failed_reason=failed_reason,
        failed_message=failed_message,
        deleting=bool(meta.get("deletionTimestamp")),
        restarts=restarts,
        owner_uid=controller_uid(meta, KIND, API_VERSION),
        created=parse_time(meta.get("creationTimestamp")),
        started=parse_time(status.get("startTime")),
    )


def owned(uid: str, jobs: tuple[JobView, ...], pods: tuple[PodView, ...]) -> tuple[tuple[JobView, ...],
                                                                                  tuple[PodView, ...]]:
    """Only the children of the GanTrainingJob with this uid. The indexes key children by the job's name, and a
    job deleted and re-applied under the same name has a new uid while the garbage collector is still removing the
    old one's Job and pods: those must never be read as the new job's (its attempt count, its Complete condition).
    A pod is ours by its ganops.io/owner-uid annotation, or, on pods from before that annotation, by its Job."""
    mine = tuple(job for job in jobs if job.owner_uid == uid)
    job_uids = {job.uid for job in mine if job.uid}
    return mine, tuple(pod for pod in pods if pod.owner_uid == uid
                       or (pod.owner_uid is None and pod.job_uid is not None and pod.job_uid in job_uids))


__all__ = ["JobView", "PodView", "controller_uid", "format_time", "job_view", "owned", "parse_time", "pod_view"]

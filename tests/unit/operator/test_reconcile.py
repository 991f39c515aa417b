"""`ganops.operator.reconcile.reconcile`: the whole decision as a pure function, driven step by step."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from ganops.api.crd import build_crd
from ganops.api.loader import spec_from_object
from ganops.api.spec import GanTrainingJobSpec, GanTrainingJobStatus
from ganops.checkpoints import HealthEvent, LatestRecord
from ganops.contracts import ANNOTATION_PROMOTE, ANNOTATION_ROLLBACK_TO
from ganops.operator import reconcile as R
from ganops.operator.conditions import apply_action_error, clear_action_error
from ganops.operator.observe import JobView, PodView
from ganops.operator.plan import (
    ClearAnnotation,
    DeleteJob,
    EnsureChildren,
    JobInput,
    Observed,
    Plan,
    Policy,
    Promote,
    Rollback,
)
from ganops.operator.progress import health_condition_type, wants_record
from ganops.operator.registry import PROMOTION_RETRY_SECONDS, PromotionOutcome, apply_promotion
from tests.support.jobs import grid_job
from tests.support.schema import openapi_errors

NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
UID = "8a5b88ec-0000-0000-0000-000000000001"


def spec_of(**spec: Any) -> GanTrainingJobSpec:
    return spec_from_object(grid_job("gan", **spec)["spec"])


def typed(status: dict[str, Any] | GanTrainingJobStatus | None) -> GanTrainingJobStatus:
    """The status as the operator reads it off the resource."""
    return status if isinstance(status, GanTrainingJobStatus) else GanTrainingJobStatus.from_wire(status)


STATUS_SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]


def undeclared(schema: dict[str, Any], value: Any, path: str = "status") -> list[str]:
    """Keys of `value` the schema does not declare (the API server would prune them)."""
    if isinstance(value, list):
        return [key for i, item in enumerate(value) for key in undeclared(schema["items"], item, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    if "properties" in schema:
        return [key for name, item in value.items() for key in (
            undeclared(schema["properties"][name], item, f"{path}.{name}") if name in schema["properties"]
            else [f"{path}.{name}"])]
    return [key for name, item in value.items() for key in undeclared(schema["additionalProperties"], item,
                                                                        f"{path}.{name}")]


def wire(status: Plan | GanTrainingJobStatus) -> dict[str, Any]:
    """The status as the operator writes it (what `kubectl get gtj -o yaml` shows), checked against the CRD's
    status schema: valid, and every key declared."""
    written = (status.status if isinstance(status, Plan) else status).to_wire()
    assert openapi_errors(STATUS_SCHEMA, written) == [] and undeclared(STATUS_SCHEMA, written) == [], written
    return written


def job_in(status: dict[str, Any] | GanTrainingJobStatus | None = None, spec: GanTrainingJobSpec | None = None, *,
           generation: int = 1, annotations: dict[str, str] | None = None, problems: tuple[str, ...] = ()) -> JobInput:
    return JobInput(name="gan", namespace="team-a", uid=UID, generation=generation,
                    spec=spec if spec is not None or problems else spec_of(), status=typed(status),
                    problems=problems, annotations=annotations or {})


def kjob(attempt: int = 1, **kw: Any) -> JobView:
    return JobView(name="gan", attempt=attempt, uid=f"uid-{attempt}", **kw)


def pod(attempt: int = 1, phase: str = "Running", index: int = 0, **kw: Any) -> PodView:
    kw.setdefault("started", NOW - dt.timedelta(minutes=1))
    return PodView(name=f"gan-{index}-a{attempt}", attempt=attempt, index=index, phase=phase, **kw)


def record(step: int, **kw: Any) -> LatestRecord:
    return LatestRecord(step=step, uri=f"s3://b/ckpt/team-a/gan/step-{step:09d}", **kw)


def cond(status: dict[str, Any] | GanTrainingJobStatus | Plan, type_: str) -> dict[str, Any]:
    """The condition as written (wire names), or {}."""
    written = status if isinstance(status, dict) else wire(status)
    return next((c for c in written.get("conditions") or [] if c["type"] == type_), {})


def kinds(plan: Plan) -> list[str]:
    return [type(action).__name__ for action in plan.actions]


def reasons(plan: Plan) -> list[str]:
    return [event.reason for event in plan.events]


def running_status(spec: GanTrainingJobSpec | None = None) -> dict[str, Any]:
    """Status after creation and a first running pod."""
    spec = spec or spec_of()
    first = R.reconcile(job_in(spec=spec), Observed(), NOW)
    second = R.reconcile(job_in(first.status, spec), Observed(job=kjob(), pods=(pod(),)), NOW)
    assert wire(second)["phase"] == "Running"
    return wire(second)


# ------------------------------------------------------------------------------------------------ creation


def test_first_reconcile_creates_the_children_and_says_so_once() -> None:
    plan = R.reconcile(job_in(), Observed(), NOW)
    assert plan.actions == [EnsureChildren(1, {"preemptions": 0, "failures": 0}, None)]
    st = wire(plan)
    assert st["phase"] == "Pending" and st["attempt"] == 1 and st["observedGeneration"] == 1
    assert st["startTime"] == "2025-01-01T12:00:00Z"
    assert cond(st, "Created")["status"] == "True"
    assert reasons(plan) == ["Created"]
    assert plan.requeue_after is not None

    # The index lags: the Job is not seen yet. Creating again is harmless (409), and says nothing new.
    again = R.reconcile(job_in(st), Observed(), NOW + dt.timedelta(seconds=1))
    assert kinds(again) == ["EnsureChildren"] and again.events == []
    assert wire(again)["startTime"] == st["startTime"]


def test_pending_then_running_with_one_event_per_transition() -> None:
    created = R.reconcile(job_in(), Observed(), NOW).status
    pending = R.reconcile(job_in(created), Observed(job=kjob(), pods=(pod(phase="Pending"),)), NOW)
    assert wire(pending)["phase"] == "Pending" and pending.actions == [] and pending.events == []
    running = R.reconcile(job_in(pending.status), Observed(job=kjob(), pods=(pod(),)), NOW)
    assert wire(running)["phase"] == "Running" and reasons(running) == ["Running"]
    assert cond(running.status, "Running")["status"] == "True"
    steady = R.reconcile(job_in(running.status), Observed(job=kjob(), pods=(pod(),)), NOW)
    assert steady.events == [] and steady.actions == [] and wire(steady) == wire(running)
    assert steady.requeue_after == Policy().resync_seconds


def test_queued_in_kueue_is_pending_with_the_queue_named() -> None:
    spec = spec_of(queueName="gpu")
    created = R.reconcile(job_in(spec=spec), Observed(), NOW).status
    queued = R.reconcile(job_in(created, spec), Observed(job=kjob(suspended=True)), NOW)
    assert wire(queued)["phase"] == "Pending" and "gpu" in wire(queued)["message"]
    assert cond(queued.status, "Running")["reason"] == "Queued"


# ------------------------------------------------------------------------------------------------ faults


def test_preemption_relaunches_from_the_checkpoint_and_spends_no_backoff() -> None:
    spec = spec_of(runPolicy={"backoffLimit": 0})
    st = running_status(spec)
    st = R.reconcile(job_in(st, spec), Observed(job=kjob(), pods=(pod(),), record=record(40)), NOW).status
    preempted = pod(phase="Failed", disruption="PreemptionByScheduler", exit_code=143)
    plan = R.reconcile(job_in(st, spec), Observed(job=kjob(), pods=(preempted,)), NOW)
    assert plan.actions == [
        DeleteJob("uid-1", "Preempted"),
        EnsureChildren(2, {"preemptions": 1, "failures": 0}, "s3://b/ckpt/team-a/gan/step-000000040"),
    ]
    assert wire(plan)["attempt"] == 2 and wire(plan)["restarts"] == {"preemptions": 1, "failures": 0}
    assert wire(plan)["phase"] == "Pending" and cond(plan.status, "Running")["reason"] == "Relaunching"
    assert reasons(plan) == ["Preempted", "Relaunched"]
    assert [e.type for e in plan.events] == ["Warning", "Normal"]
    assert "resuming from step 40" in plan.events[1].message

    # The old Job is still being deleted: wait for it; no second decision, no new events.
    wait = R.reconcile(job_in(plan.status, spec), Observed(job=kjob(deleting=True), pods=(preempted,)), NOW)
    assert kinds(wait) == ["EnsureChildren"] and wait.events == []
    assert wire(wait)["restarts"] == {"preemptions": 1, "failures": 0}
    assert wait.requeue_after == R.WAIT_SECONDS
    # Not yet deleting (the operator died before deleting it): delete it by uid, then create ours.
    stale = R.reconcile(job_in(plan.status, spec), Observed(job=kjob(), pods=(preempted,)), NOW)
    assert stale.actions[0] == DeleteJob("uid-1", "replaced by attempt 2") and kinds(stale)[1] == "EnsureChildren"


def test_a_newer_job_than_status_is_adopted_with_its_counters() -> None:
    """The operator died between creating attempt 3's Job and writing status."""
    st = running_status()
    st = {**st, "attempt": 2, "restarts": {"preemptions": 1, "failures": 0}}
    newer = kjob(3, restarts={"preemptions": 2, "failures": 0})
    plan = R.reconcile(job_in(st), Observed(job=newer, pods=(pod(3),)), NOW)
    assert wire(plan)["attempt"] == 3 and wire(plan)["restarts"] == {"preemptions": 2, "failures": 0}
    assert plan.actions == [] and wire(plan)["phase"] == "Running"


def test_application_failures_spend_the_backoff_limit_then_fail() -> None:
    spec = spec_of(runPolicy={"backoffLimit": 2})
    st = running_status(spec)
    for attempt in (1, 2):
        crashed = pod(attempt, phase="Failed", exit_code=1, terminated_reason="Error")
        plan = R.reconcile(job_in(st, spec), Observed(job=kjob(attempt), pods=(crashed,)), NOW)
        assert kinds(plan) == ["DeleteJob", "EnsureChildren"] and reasons(plan) == ["Failed", "Relaunched"]
        assert wire(plan)["restarts"] == {"preemptions": 0, "failures": attempt}
        st = R.reconcile(job_in(plan.status, spec), Observed(job=kjob(attempt + 1), pods=(pod(attempt + 1),)),
                         NOW).status
    crashed = pod(3, phase="Failed", exit_code=2, terminated_reason="Error")
    plan = R.reconcile(job_in(st, spec), Observed(job=kjob(3), pods=(crashed,)), NOW)
    assert wire(plan)["phase"] == "Failed" and wire(plan)["restarts"] == {"preemptions": 0, "failures": 3}
    assert cond(plan.status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "exit code 2" in cond(plan.status, "Failed")["message"]
    assert reasons(plan) == ["BackoffLimitExceeded"] and wire(plan)["completionTime"]
    assert "EnsureChildren" not in kinds(plan)
    # Finished: nothing more happens on later reconciles.
    later = R.reconcile(job_in(plan.status, spec), Observed(job=kjob(3, failed_reason="PodFailurePolicy")), NOW)
    assert later.events == [] and later.actions == []


def test_success_needs_the_last_step_in_latest_json() -> None:
    st = running_status()
    done = R.reconcile(job_in(st), Observed(job=kjob(complete=True), pods=(pod(phase="Succeeded", exit_code=0),),
                                             record=record(20)), NOW)
    assert wire(done)["phase"] == "Succeeded" and reasons(done) == ["Succeeded", "PromotionSkipped"]
    assert wire(done)["step"] == 20 and wire(done)["completionTime"] == "2025-01-01T12:00:00Z"

    early = R.reconcile(job_in(st), Observed(job=kjob(complete=True), record=record(10)), NOW)
    assert wire(early)["attempt"] == 2 and wire(early)["restarts"]["preemptions"] == 1
    assert "step 10 of 20" in early.events[0].message

    blind = R.reconcile(job_in(st), Observed(job=kjob(complete=True), record_error="503 SlowDown"), NOW)
    assert wire(blind)["phase"] == "Running" and "waiting for the object store" in wire(blind)["message"]
    assert blind.actions == []
    nothing = R.reconcile(job_in(st), Observed(job=kjob(complete=True), record_expected=False), NOW)
    assert wire(nothing)["phase"] == "Succeeded"  # no checkpoint store at all: trust the Job


# ------------------------------------------------------------------------------------------------ run policy


def test_suspend_and_resume() -> None:
    st = running_status()
    suspended_spec = spec_of(runPolicy={"suspend": True})
    plan = R.reconcile(job_in(st, suspended_spec, generation=2), Observed(job=kjob(), pods=(pod(),)), NOW)
    assert wire(plan)["phase"] == "Suspended" and plan.actions == [DeleteJob("uid-1", "suspended")]
    assert reasons(plan) == ["Suspended"] and cond(plan.status, "Suspended")["status"] == "True"
    again = R.reconcile(job_in(plan.status, suspended_spec, generation=2), Observed(), NOW)
    assert again.events == [] and again.actions == [] and wire(again)["phase"] == "Suspended"

    later = NOW + dt.timedelta(hours=1)
    resumed = R.reconcile(job_in(again.status, spec_of(), generation=3), Observed(), later)
    assert wire(resumed)["attempt"] == 2 and wire(resumed)["restarts"] == {"preemptions": 0, "failures": 0}
    assert wire(resumed)["startTime"] == "2025-01-01T13:00:00Z"  # the deadline clock restarts
    assert reasons(resumed) == ["Resumed"] and kinds(resumed) == ["EnsureChildren"]
    assert cond(resumed.status, "Suspended")["status"] == "False"


def test_active_deadline() -> None:
    spec = spec_of(runPolicy={"activeDeadlineSeconds": 600})
    st = running_status(spec)
    on_time = R.reconcile(job_in(st, spec), Observed(job=kjob(), pods=(pod(),)), NOW + dt.timedelta(seconds=590))
    assert wire(on_time)["phase"] == "Running" and on_time.requeue_after == pytest.approx(10.0)
    late = R.reconcile(job_in(st, spec), Observed(job=kjob(), pods=(pod(),)), NOW + dt.timedelta(seconds=601))
    assert wire(late)["phase"] == "Failed" and cond(late.status, "Failed")["reason"] == "DeadlineExceeded"
    assert late.actions == [DeleteJob("uid-1", "deadline exceeded")] and reasons(late) == ["DeadlineExceeded"]


def test_ttl_after_finished() -> None:
    spec = spec_of(runPolicy={"ttlSecondsAfterFinished": 60}, promotion={"auto": False})
    st = running_status(spec)
    done = R.reconcile(job_in(st, spec), Observed(job=kjob(complete=True), record=record(20)), NOW).status
    soon = R.reconcile(job_in(done, spec), Observed(job=kjob(complete=True)), NOW + dt.timedelta(seconds=50))
    assert soon.actions == [] and soon.requeue_after == pytest.approx(10.0)
    due = R.reconcile(job_in(done, spec), Observed(job=kjob(complete=True)), NOW + dt.timedelta(seconds=60))
    assert kinds(due) == ["DeleteSelf"]


# ------------------------------------------------------------------------------------------------ budget


def test_budget_warns_once_then_stops_and_a_raised_budget_resumes() -> None:
    spec = spec_of(resources={"gpusPerReplica": 1}, budget={"maxCostUSD": 10.0, "pricePerGPUHour": 2.0})
    st = running_status(spec)
    warn = R.reconcile(job_in(st, spec), Observed(job=kjob(), pods=(pod(),),
                                                   record=record(5, cost_usd=8.1, cost_gpu_hours=4.05)), NOW)
    assert reasons(warn) == ["BudgetWarning"] and wire(warn)["phase"] == "Running"
    assert "81% of the budget spent ($8.10 of $10.00)" in warn.events[0].message
    again = R.reconcile(job_in(warn.status, spec), Observed(job=kjob(), pods=(pod(),)), NOW)
    assert again.events == [] and wire(again)["cost"]["usd"] == pytest.approx(8.1)  # cost never goes down

    over = R.reconcile(job_in(warn.status, spec), Observed(job=kjob(), pods=(pod(),),
                                                            record=record(6, cost_usd=10.2)), NOW)
    assert wire(over)["phase"] == "BudgetExceeded" and over.actions == [DeleteJob("uid-1", "budget exceeded")]
    assert reasons(over) == ["BudgetExceeded"] and wire(over)["completionTime"]
    stays = R.reconcile(job_in(over.status, spec), Observed(), NOW)
    assert wire(stays)["phase"] == "BudgetExceeded" and stays.events == [] and stays.actions == []

    raised = spec_of(resources={"gpusPerReplica": 1}, budget={"maxCostUSD": 100.0, "pricePerGPUHour": 2.0})
    resumed = R.reconcile(job_in(over.status, raised, generation=2), Observed(), NOW)
    assert wire(resumed)["phase"] == "Pending" and wire(resumed)["attempt"] == 2
    assert "completionTime" not in wire(resumed)
    assert reasons(resumed) == ["BudgetRaised"] and kinds(resumed) == ["EnsureChildren"]


def test_cost_accrues_from_pod_time_and_is_banked_across_attempts() -> None:
    spec = spec_of(resources={"replicas": 2, "gpusPerReplica": 4}, budget={"pricePerGPUHour": 1.5})
    st = running_status(spec)
    hour_ago = NOW - dt.timedelta(hours=1)
    pods = (pod(index=0, started=hour_ago), pod(index=1, started=hour_ago))
    plan = R.reconcile(job_in(st, spec), Observed(job=kjob(), pods=pods), NOW)
    assert wire(plan)["cost"] == {"gpuHours": pytest.approx(8.0), "usd": pytest.approx(12.0)}
    # Preempted after 1 h: the next attempt starts with 8 GPU-hours banked, even once the old pods are gone.
    gone = (pod(index=0, started=hour_ago, phase="Failed", disruption="TerminationByKubelet",
                finished=NOW), pods[1])
    relaunch = R.reconcile(job_in(plan.status, spec), Observed(job=kjob(), pods=gone), NOW)
    later = NOW + dt.timedelta(minutes=30)
    new_pods = (pod(2, index=0, started=NOW), pod(2, index=1, started=NOW))
    after = R.reconcile(job_in(relaunch.status, spec), Observed(job=kjob(2), pods=new_pods), later)
    assert wire(after)["accounting"]["bankedGpuSeconds"] == pytest.approx(8 * 3600)
    assert wire(after)["cost"]["gpuHours"] == pytest.approx(8.0 + 4.0)


# ------------------------------------------------------------------------------------------------ validation


def test_an_invalid_spec_fails_once_and_recovers_when_fixed() -> None:
    problems = ("spec.training.stepz is not a known field; did you mean 'steps'?",
                "spec.training.batchSize must be >= 1")
    plan = R.reconcile(job_in(problems=problems), Observed(), NOW)
    assert wire(plan)["phase"] == "Failed" and plan.actions == []
    assert cond(plan.status, "InvalidSpec")["message"] == "; ".join(problems)
    assert cond(plan.status, "Failed")["reason"] == "InvalidSpec"
    assert reasons(plan) == ["InvalidSpec"] and plan.events[0].type == "Warning"
    assert plan.requeue_after is None  # nothing to retry: a permanent error until the spec changes
    again = R.reconcile(job_in(plan.status, problems=problems), Observed(), NOW)
    assert again.events == [] and wire(again) == wire(plan)

    fixed = R.reconcile(job_in(plan.status, spec_of(), generation=2), Observed(), NOW)
    assert wire(fixed)["phase"] == "Pending" and kinds(fixed) == ["EnsureChildren"]
    assert cond(fixed.status, "InvalidSpec")["status"] == "False" and "completionTime" not in wire(fixed)
    assert "SpecValid" in reasons(fixed)


# ------------------------------------------------------------------------------------------------ latest.json


def test_the_record_fills_checkpoints_metrics_and_health_conditions() -> None:
    st = running_status()
    first = record(10, metric=30.0, metrics={"modes": 20.0}, mlflow_run_id="abc", manifest_sha256="f" * 64,
                   time="2025-01-01T11:59:00Z",
                   health_events=(HealthEvent("mode_collapse", 8, "5 of 25 modes"),), rollbacks=0)
    plan = R.reconcile(job_in(st), Observed(job=kjob(), pods=(pod(),), record=first), NOW)
    status = wire(plan)
    assert status["step"] == 10 and status["metrics"] == {"modes": 20.0} and status["mlflowRunId"] == "abc"
    assert status["lastCheckpoint"] == {"uri": first.uri, "step": 10, "sha256": "f" * 64,
                                        "time": "2025-01-01T11:59:00Z", "metric": 30.0}
    assert status["bestCheckpoint"]["step"] == 10
    assert cond(status, "ModeCollapseSuspected")["message"] == "mode collapse suspected at step 8: 5 of 25 modes"
    assert reasons(plan) == ["ModeCollapseSuspected"]

    worse = record(20, metric=35.0, health_events=(*first.health_events, HealthEvent("DivergenceRollback", 18)))
    plan = R.reconcile(job_in(status), Observed(job=kjob(), pods=(pod(),), record=worse), NOW)
    assert wire(plan)["lastCheckpoint"]["step"] == 20 and wire(plan)["bestCheckpoint"]["step"] == 10
    assert reasons(plan) == ["DivergenceRollback"]  # the collapse condition did not change: no repeat
    assert cond(plan.status, "DivergenceRollback")["message"] == "1 divergence rollback(s), last at step 18"
    better = record(30, metric=25.0)
    plan = R.reconcile(job_in(plan.status), Observed(job=kjob(), pods=(pod(),), record=better), NOW)
    assert wire(plan)["bestCheckpoint"]["step"] == 30


@pytest.mark.parametrize(("event_type", "condition"), [
    ("mode_collapse", "ModeCollapseSuspected"), ("ModeCollapseSuspected", "ModeCollapseSuspected"),
    ("modeCollapse", "ModeCollapseSuspected"), ("divergence", "DivergenceRollback"),
    ("rollback", "DivergenceRollback"), ("DivergenceRollback", "DivergenceRollback"), ("nan_loss", None),
])
def test_health_event_types(event_type: str, condition: str | None) -> None:
    assert health_condition_type(event_type) == condition


def test_wants_record() -> None:
    policy = Policy(resync_seconds=10)
    st = running_status()
    running = Observed(job=kjob(), pods=(pod(),))
    assert wants_record(job_in(st), running, seconds_since_read=None, policy=policy)
    assert not wants_record(job_in(st), running, seconds_since_read=2, policy=policy)
    assert wants_record(job_in(st), running, seconds_since_read=11, policy=policy)
    finished = Observed(job=kjob(complete=True))
    assert wants_record(job_in(st), finished, seconds_since_read=2, policy=policy)
    assert not wants_record(job_in(st), Observed(record_expected=False), seconds_since_read=None, policy=policy)


# ------------------------------------------------------------------------------------------------ promotion


def succeeded(spec: GanTrainingJobSpec, metrics: dict[str, float], **kw: Any) -> Plan:
    st = running_status(spec)
    return R.reconcile(job_in(st, spec, **kw), Observed(job=kjob(complete=True), record=record(20, metrics=metrics)),
                       NOW, Policy(mlflow_uri="http://mlflow"))


def test_auto_promotion_is_planned_once_the_job_succeeds() -> None:
    spec = spec_of(promotion={"modelName": "grid", "gates": {"minModes": 20}})
    plan = succeeded(spec, {"modes": 23.0})
    assert plan.actions == [Promote(tracking_uri="http://mlflow", model_name="grid", alias="production")]
    result = PromotionOutcome("promoted", "grid", "production", "4", "passed: modes 23 >= minModes 20")
    status, events = apply_promotion(plan.status, result, NOW)
    assert wire(status)["promotedVersion"] == "4"
    assert cond(status, "Promoted")["message"] == "grid@production → version 4 (passed: modes 23 >= minModes 20)"
    assert [e.reason for e in events] == ["Promoted"]
    # Decided: later reconciles do not promote again.
    later = R.reconcile(job_in(status, spec), Observed(job=kjob(complete=True)), NOW, Policy(mlflow_uri="x"))
    assert later.actions == []
    assert succeeded(spec_of(promotion={"auto": False}), {"modes": 25.0}).actions == []


def test_a_rejection_names_the_failed_gate_and_is_final() -> None:
    spec = spec_of(promotion={"gates": {"minModes": 20}})
    plan = succeeded(spec, {"modes": 12.0})
    result = PromotionOutcome("rejected", "gan", "production", "2", "modes 12 < minModes 20 (by 8)")
    status, events = apply_promotion(plan.status, result, NOW)
    rejected = cond(status, "PromotionRejected")
    assert rejected["status"] == "True" and "modes 12 < minModes 20" in rejected["message"]
    assert "rejected version 2" in rejected["message"] and "promotedVersion" not in wire(status)
    assert [(e.type, e.reason) for e in events] == [("Warning", "PromotionRejected")]
    later = R.reconcile(job_in(status, spec), Observed(job=kjob(complete=True)), NOW, Policy(mlflow_uri="x"))
    assert later.actions == []


def test_manual_promotion_and_rollback_through_annotations() -> None:
    spec = spec_of(promotion={"auto": False, "gates": {"minModes": 20}})
    manual = succeeded(spec, {"modes": 12.0}, annotations={ANNOTATION_PROMOTE: "true"})
    assert manual.actions == [Promote("http://mlflow", "gan", "production", False, ANNOTATION_PROMOTE)]
    forced = succeeded(spec, {"modes": 12.0}, annotations={ANNOTATION_PROMOTE: "Force"})
    assert forced.actions == [Promote("http://mlflow", "gan", "production", True, ANNOTATION_PROMOTE)]
    back = succeeded(spec, {}, annotations={ANNOTATION_ROLLBACK_TO: "3"})
    assert back.actions == [Rollback("http://mlflow", "gan", "production", "3")]
    status, events = apply_promotion(back.status, PromotionOutcome("rolled_back", "gan", "production", "3"), NOW)
    assert wire(status)["promotedVersion"] == "3" and cond(status, "Promoted")["reason"] == "RolledBack"
    assert [e.reason for e in events] == ["RolledBack"]
    _, events = apply_promotion(back.status, PromotionOutcome("rollback_failed", "gan", "production",
                                                                 message="gan has no version 9"), NOW)
    assert [e.reason for e in events] == ["RollbackFailed"]
    bogus = succeeded(spec, {}, annotations={ANNOTATION_PROMOTE: "yes please"})
    assert bogus.actions == [ClearAnnotation(ANNOTATION_PROMOTE)] and "PromotionRejected" in reasons(bogus)
    # A job that never checkpointed has nothing to promote.
    empty = R.reconcile(job_in(running_status(spec), spec, annotations={ANNOTATION_PROMOTE: "true"}),
                        Observed(job=kjob()), NOW, Policy(mlflow_uri="http://mlflow"))
    assert empty.actions == [ClearAnnotation(ANNOTATION_PROMOTE)]
    assert cond(empty.status, "Promoted")["reason"] == "NoCheckpoint"


def test_promotion_without_a_registry_or_while_it_is_down() -> None:
    spec = spec_of(promotion={"gates": {"minModes": 1}})
    st = running_status(spec)  # no tracking URI anywhere:
    plan = R.reconcile(job_in(st, spec), Observed(job=kjob(complete=True), record=record(20, metrics={"modes": 5})),
                       NOW)
    assert plan.actions == [] and cond(plan.status, "Promoted")["reason"] == "NoTrackingServer"

    plan = succeeded(spec, {"modes": 5.0})
    status, events = apply_promotion(plan.status, PromotionOutcome("unavailable", "gan", "production",
                                                                      message="connection refused"), NOW)
    assert cond(status, "Promoted")["status"] == "Unknown" and [e.reason for e in events] == ["RegistryUnavailable"]
    policy = Policy(mlflow_uri="http://mlflow")
    soon = R.reconcile(job_in(status, spec), Observed(job=kjob(complete=True)), NOW + dt.timedelta(seconds=3),
                       policy)
    assert soon.actions == [] and soon.requeue_after == pytest.approx(PROMOTION_RETRY_SECONDS - 3)
    retry = R.reconcile(job_in(status, spec), Observed(job=kjob(complete=True)), NOW + dt.timedelta(seconds=11),
                        policy)
    assert kinds(retry) == ["Promote"]
    failed, events = apply_promotion(status, PromotionOutcome("error", "gan", "production", message="denied"), NOW)
    assert cond(failed, "Promoted")["status"] == "False" and [e.reason for e in events] == ["PromotionFailed"]


def test_action_errors_are_reported_once() -> None:
    st = running_status()
    status, events = apply_action_error(typed(st), "cannot create Job gan", "admission webhook denied", NOW)
    assert cond(status, "ChildrenReady")["status"] == "False" and len(events) == 1
    status, events = apply_action_error(status, "cannot create Job gan", "admission webhook denied", NOW)
    assert events == []
    assert cond(clear_action_error(status, NOW), "ChildrenReady")["status"] == "False"
    assert cond(clear_action_error(status, NOW), "ChildrenReady")["reason"] == "Created"

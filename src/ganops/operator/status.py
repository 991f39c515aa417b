"""The reconcile decision, as one pure function: (job, observed children, latest.json record, now) → plan.

`reconcile()` returns the new `status` (phase, conditions, counters, cost, checkpoint and metrics), the Kubernetes
Events to post (one per transition) and the actions that bring the children in line (create the attempt's
children, delete a Job, run a promotion, delete the resource after its TTL). The controller (`controller.py`) only
gathers the inputs, executes the actions and writes the status; everything that decides lives here and in the
small modules it calls (`faults`, `budget`, `promotion`).

Crash safety: every decision is recorded where the next reconcile finds it. The attempt number and the restart
counters are written both to `status` and onto the attempt's Job (label `ganops.io/attempt`, annotation
`ganops.io/restarts`), and the Job has a fixed name: if the operator dies after creating a Job but before writing
status, the next reconcile adopts the Job's counters; if it dies before creating it, the next one creates it; the
API server refuses a second Job of the same name, so there are never two.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ganops.api.spec import GanTrainingJobSpec
from ganops.contracts import ANNOTATION_PROMOTE, ANNOTATION_ROLLBACK_TO
from ganops.operator import budget, faults
from ganops.operator.observe import HealthEvent, JobView, PodView, Record, format_time, parse_time

PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed", "BudgetExceeded")
FINISHED = ("Succeeded", "Failed", "BudgetExceeded")
WAIT_SECONDS = 1.0  # re-check soon: waiting for the previous attempt's Job to go
CREATED_CHECK_SECONDS = 5.0  # after creating children: look again even if no watch event arrives
PROMOTION_RETRY_SECONDS = 10.0

EventType = Literal["Normal", "Warning"]


# ------------------------------------------------------------------------------------------------ inputs & outputs


@dataclass(frozen=True)
class JobInput:
    """The GanTrainingJob as the operator sees it. `spec` is None when it did not validate (see `problems`)."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: GanTrainingJobSpec | None
    status: Mapping[str, Any]
    problems: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Observed:
    job: JobView | None = None  # the batch Job (any attempt)
    pods: tuple[PodView, ...] = ()  # every pod labelled with the job (any attempt)
    record: Record | None = None  # latest.json, when read this time
    record_error: str | None = None  # the object store failed: the record is unknown, not absent
    record_expected: bool = True  # False when the job has no checkpoint URI at all


@dataclass(frozen=True)
class Policy:
    warning_fraction: float = 0.8
    resync_seconds: float = 15.0
    mlflow_uri: str | None = None
    price_table: dict[str, float] | None = None


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class EnsureChildren:
    """Create whatever is missing of the attempt's children (ConfigMap, Service, Job); existing ones are kept."""

    attempt: int
    restarts: Mapping[str, int]
    resume_from: str | None = None


@dataclass(frozen=True)
class SyncJobFile:
    """The spec changed: rewrite the ConfigMap's job file (read by the next attempt)."""


@dataclass(frozen=True)
class DeleteJob:
    """Delete the Job (foreground: its pods get SIGTERM and their grace period to checkpoint)."""

    uid: str | None
    reason: str


@dataclass(frozen=True)
class DeleteSelf:
    reason: str


@dataclass(frozen=True)
class Promote:
    """Judge the job's best checkpoint against the gates, register it, move the alias if it passes (or `force`)."""

    tracking_uri: str
    model_name: str
    alias: str
    force: bool = False
    clear_annotation: str | None = None  # manual promotion: remove the annotation once done


@dataclass(frozen=True)
class Rollback:
    tracking_uri: str
    model_name: str
    alias: str
    version: str


@dataclass(frozen=True)
class ClearAnnotation:
    key: str


Action = EnsureChildren | SyncJobFile | DeleteJob | DeleteSelf | Promote | Rollback | ClearAnnotation


@dataclass
class Plan:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # None: nothing is due; wake up on events (and a slow safety net)

    def wake_in(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


# ------------------------------------------------------------------------------------------------ conditions


def get_condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None


def condition_is(status: Mapping[str, Any], type_: str, value: str = "True") -> bool:
    condition = get_condition(status, type_)
    return condition is not None and condition.get("status") == value


class _Status:
    """The status being built, with the events its changes call for."""

    def __init__(self, current: Mapping[str, Any], now: dt.datetime) -> None:
        self.data: dict[str, Any] = {k: v for k, v in current.items()}
        self.data["conditions"] = [dict(c) for c in current.get("conditions") or []]
        self.now = now
        self.events: list[Event] = []

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def condition(self, type_: str, value: bool | str, reason: str, message: str = "") -> bool:
        """Set a condition; True when its status changed (lastTransitionTime moves only then)."""
        wanted = value if isinstance(value, str) else ("True" if value else "False")
        conditions: list[dict[str, Any]] = self.data["conditions"]
        for condition in conditions:
            if condition.get("type") == type_:
                changed = condition.get("status") != wanted
                condition.update(status=wanted, reason=reason, message=message)
                if changed or not condition.get("lastTransitionTime"):
                    condition["lastTransitionTime"] = format_time(self.now)
                return changed
        conditions.append({"type": type_, "status": wanted, "reason": reason, "message": message,
                           "lastTransitionTime": format_time(self.now)})
        return True

    def condition_off(self, type_: str, reason: str, message: str = "") -> bool:
        """Set a condition to False only if it exists (absent conditions stay absent)."""
        if get_condition(self.data, type_) is None:
            return False
        return self.condition(type_, False, reason, message)

    def is_(self, type_: str, value: str = "True") -> bool:
        return condition_is(self.data, type_, value)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    @property
    def phase(self) -> str | None:
        value = self.data.get("phase")
        return value if isinstance(value, str) else None

    def set_phase(self, phase: str, message: str | None = None) -> bool:
        changed = self.data.get("phase") != phase
        self.data["phase"] = phase
        if message is not None:
            self.data["message"] = message
        if phase in FINISHED:
            self.data.setdefault("completionTime", format_time(self.now))
            if self.data.get("completionTime") is None:
                self.data["completionTime"] = format_time(self.now)
        else:
            self.data.pop("completionTime", None)
        return changed


# ------------------------------------------------------------------------------------------------ latest.json


# The trainer's event types (`ganops.trainer.health`: COLLAPSE, D_OVERPOWERING, ROLLBACK, DIVERGED) are the
# condition types; older or hand-written spellings are matched loosely.
HEALTH_CONDITIONS = ("ModeCollapseSuspected", "DiscriminatorOverpowering", "DivergenceRollback", "Diverged")
_HEALTH_KINDS = (("collapse", "ModeCollapseSuspected"), ("overpower", "DiscriminatorOverpowering"),
                 ("rollback", "DivergenceRollback"), ("diverged", "Diverged"), ("diverg", "DivergenceRollback"))


def health_condition_type(event_type: str) -> str | None:
    """The condition a trainer health event sets: the trainer's own types map to themselves; `mode_collapse`,
    `modeCollapse` → ModeCollapseSuspected; `divergence`, `rollback` → DivergenceRollback; `diverged` → Diverged
    (training gave up: not a rollback); `d_overpowering` → DiscriminatorOverpowering; anything else → None."""
    if event_type in HEALTH_CONDITIONS:
        return event_type
    squashed = re.sub(r"[^a-z]", "", event_type.lower())
    for needle, condition in _HEALTH_KINDS:
        if needle in squashed:
            return condition
    return None


def _health_condition(st: _Status, type_: str, message: str) -> None:
    """Set a trainer-health condition; one Warning Event whenever its message or status changes."""
    before = get_condition(st.data, type_)
    st.condition(type_, True, "TrainerHealthCheck", message)
    if before is None or before.get("message") != message or before.get("status") != "True":
        st.event("Warning", type_, message)


def _describe(event: HealthEvent, what: str) -> str:
    where = f"at step {event.step}" if event.step is not None else "during training"
    return f"{what} {where}" + (f": {event.message}" if event.message else "")


def _apply_record(st: _Status, record: Record) -> None:
    st.data["step"] = record.step
    last: dict[str, Any] = {"uri": record.uri, "step": record.step}
    if record.manifest_sha256:
        last["sha256"] = record.manifest_sha256
    if record.time:
        last["time"] = record.time
    if record.metric is not None:
        last["metric"] = record.metric
    st.data["lastCheckpoint"] = last
    if record.metric is not None:
        best = st.get("bestCheckpoint") or {}
        best_metric = best.get("metric")
        if best.get("step") == record.step or best_metric is None or record.metric < float(best_metric):
            st.data["bestCheckpoint"] = dict(last)
    if record.metrics:
        st.data["metrics"] = dict(record.metrics)
    if record.mlflow_run_id:
        st.data["mlflowRunId"] = record.mlflow_run_id
    # Health events of the trainer (latest.json `health`: the last events and the rollback count, see
    # `ganops.trainer.health.HealthRecord.checkpoint_info`) become conditions, with one Warning Event per change.
    by_type: dict[str, list[HealthEvent]] = {}
    for health_event in record.health_events:
        kind = health_condition_type(health_event.type)
        if kind is not None:
            by_type.setdefault(kind, []).append(health_event)
    if "ModeCollapseSuspected" in by_type:
        _health_condition(st, "ModeCollapseSuspected", _describe(by_type["ModeCollapseSuspected"][-1],
                                                                 "mode collapse suspected"))
    if "DiscriminatorOverpowering" in by_type:
        _health_condition(st, "DiscriminatorOverpowering", _describe(by_type["DiscriminatorOverpowering"][-1],
                                                                     "discriminator overpowering"))
    divergence = by_type.get("DivergenceRollback", [])
    # The trainer's count is authoritative (it keeps only the last events); counting events is the fallback.
    rollbacks = max(record.rollbacks, len(divergence))
    if rollbacks:
        where = ""
        if divergence:
            last_event = divergence[-1]
            where = f", last at step {last_event.step}" if last_event.step is not None else ""
            where += f": {last_event.message}" if last_event.message else ""
        _health_condition(st, "DivergenceRollback", f"{rollbacks} divergence rollback(s){where}")
    if "Diverged" in by_type:
        _health_condition(st, "Diverged", _describe(by_type["Diverged"][-1], "training diverged"))


# ------------------------------------------------------------------------------------------------ reconcile


def _restarts(status: Mapping[str, Any]) -> dict[str, int]:
    raw = status.get("restarts") or {}
    return {"preemptions": int(raw.get("preemptions") or 0), "failures": int(raw.get("failures") or 0)}


def _current_pods(pods: Sequence[PodView], attempt: int) -> list[PodView]:
    return [pod for pod in pods if pod.attempt == attempt]


def wants_record(job: JobInput, observed: Observed, *, seconds_since_read: float | None, policy: Policy) -> bool:
    """Whether this reconcile should read latest.json: on the first look, on every resync, and whenever the
    current attempt looks finished (success and "stopped early" are told apart by the record's step)."""
    if not observed.record_expected or job.spec is None:
        return False
    phase = job.status.get("phase")
    if phase in FINISHED:
        return seconds_since_read is None and phase != "Failed"
    if seconds_since_read is None or seconds_since_read >= policy.resync_seconds:
        return True
    attempt = int(job.status.get("attempt") or 0)
    if observed.job is not None and observed.job.attempt == attempt:
        outcome = faults.attempt_outcome(
            observed.job, _current_pods(observed.pods, attempt), replicas=job.spec.resources.replicas,
            total_steps=job.spec.training.steps, record=None,
        )
        return outcome.finished
    return False


def reconcile(job: JobInput, observed: Observed, now: dt.datetime, policy: Policy | None = None) -> Plan:
    policy = policy or Policy()
    st = _Status(job.status, now)
    plan = Plan(status=st.data)
    generation_changed = st.get("observedGeneration") not in (None, job.generation)
    st.data["observedGeneration"] = job.generation

    if job.spec is None:
        _invalid(st, plan, job, observed)
        plan.events = st.events
        return plan
    spec = job.spec
    if st.is_("InvalidSpec"):  # fixed by a spec update: start over
        st.condition("InvalidSpec", False, "SpecValid", "the spec is valid now")
        if st.phase == "Failed" and (get_condition(st.data, "Failed") or {}).get("reason") == "InvalidSpec":
            st.condition("Failed", False, "SpecValid", "")
            st.data.pop("phase", None)
            st.data.pop("completionTime", None)
            st.event("Normal", "SpecValid", "the spec is valid now; starting")

    attempt = int(st.get("attempt") or 0)
    restarts = _restarts(st.data)
    if observed.job is not None and observed.job.attempt > attempt:
        # A Job newer than status: the operator stopped between creating it and writing status. Adopt it.
        attempt = observed.job.attempt
        for key in ("preemptions", "failures"):
            restarts[key] = max(restarts[key], int(observed.job.restarts.get(key, 0)))
    st.data["attempt"] = attempt
    st.data["restarts"] = dict(restarts)

    if observed.record is not None:
        _apply_record(st, observed.record)

    current_pods = _current_pods(observed.pods, attempt)
    accounting = budget.accrue(
        budget.Accounting.from_wire(st.get("accounting")), attempt, current_pods, spec.resources.gpus_per_replica,
        now,
    )
    cost = budget.figures(spec, accounting, observed.record, st.get("cost"), policy.price_table)
    st.data["accounting"] = accounting.as_wire()
    st.data["cost"] = cost.as_wire()
    verdict = budget.verdict(spec, cost, policy.warning_fraction)

    if st.phase in FINISHED:
        resumed = st.phase == "BudgetExceeded" and not verdict.exceeded
        if not resumed:
            _finished(st, plan, job, spec, observed, policy)
            _promotion(st, plan, job, spec, policy)
            _sync_job_file(plan, observed, generation_changed)
            plan.events = st.events
            return plan
        st.condition("BudgetExceeded", False, "BudgetRaised", verdict.describe(spec, cost))
        st.event("Normal", "BudgetRaised", f"budget raised ({verdict.describe(spec, cost)}); resuming")
        st.set_phase("Pending", "resuming after the budget was raised")
        attempt = _next_attempt(st, attempt)
        current_pods = []

    _active(st, plan, job, spec, observed, policy, attempt=attempt, restarts=restarts, current_pods=current_pods,
            verdict=verdict, cost=cost)
    if int(st.data.get("attempt") or 0) != accounting.attempt:  # a new attempt: bank the previous one now
        accounting = budget.accrue(accounting, int(st.data["attempt"]), [], spec.resources.gpus_per_replica, now)
        st.data["accounting"] = accounting.as_wire()
    if st.phase in FINISHED:
        _finished(st, plan, job, spec, observed, policy)
    _promotion(st, plan, job, spec, policy)  # auto once Succeeded; annotations (manual, rollback) in any phase
    _sync_job_file(plan, observed, generation_changed)
    plan.events = st.events
    return plan


def _sync_job_file(plan: Plan, observed: Observed, generation_changed: bool) -> None:
    """A changed spec reaches the job file of a Job that stays (a new Job's ConfigMap is written anyway)."""
    if generation_changed and observed.job is not None and not any(
            isinstance(action, DeleteJob | EnsureChildren) for action in plan.actions):
        plan.actions.append(SyncJobFile())


def _next_attempt(st: _Status, attempt: int) -> int:
    attempt += 1
    st.data["attempt"] = attempt
    return attempt


def _stop_job(plan: Plan, observed: Observed, reason: str, *, only_if_live: bool = False) -> None:
    """Delete the Job (once per plan); `only_if_live`: only when pods may still run (a finished Job whose pods
    all ended is kept, with their logs)."""
    job = observed.job
    if job is None or job.deleting or any(isinstance(action, DeleteJob) for action in plan.actions):
        return
    if only_if_live:
        live = job.active > 0 or any(not pod.terminal and not pod.deleting for pod in observed.pods)
        if not live and (job.complete or job.failed_reason is not None or observed.pods):
            return
    plan.actions.append(DeleteJob(job.uid, reason))


def _invalid(st: _Status, plan: Plan, job: JobInput, observed: Observed) -> None:
    message = "; ".join(job.problems) or "the spec is invalid"
    if st.condition("InvalidSpec", True, "InvalidSpec", message) or st.phase != "Failed":
        st.event("Warning", "InvalidSpec", message)
    st.condition("Failed", True, "InvalidSpec", message)
    st.condition_off("Running", "InvalidSpec", "")
    st.set_phase("Failed", f"invalid spec: {message}")
    _stop_job(plan, observed, "the spec is invalid")


def _active(
    st: _Status,
    plan: Plan,
    job: JobInput,
    spec: GanTrainingJobSpec,
    observed: Observed,
    policy: Policy,
    *,
    attempt: int,
    restarts: dict[str, int],
    current_pods: list[PodView],
    verdict: budget.BudgetVerdict,
    cost: Any,
) -> None:
    now = st.now
    run_policy = spec.run_policy

    # Suspension: the Job goes (its pods checkpoint on SIGTERM), status stays; resuming starts a new attempt.
    if run_policy.suspend:
        if st.phase != "Suspended":
            st.condition("Suspended", True, "SuspendedByUser", "spec.runPolicy.suspend is true")
            st.condition_off("Running", "Suspended", "")
            st.set_phase("Suspended", "suspended: the pods were stopped after a checkpoint")
            st.event("Normal", "Suspended", "job suspended; the pods checkpoint and stop")
        _stop_job(plan, observed, "suspended")
        return
    if st.phase == "Suspended":
        st.condition("Suspended", False, "Resumed", "spec.runPolicy.suspend is false")
        st.set_phase("Pending", "resuming from the latest checkpoint")
        st.data["startTime"] = format_time(now)  # as for batch Jobs: the deadline clock restarts on resume
        st.event("Normal", "Resumed", "job resumed; a new attempt resumes from the latest checkpoint")
        attempt = _next_attempt(st, attempt)
        current_pods = []

    # Deadline (runPolicy.activeDeadlineSeconds, from startTime).
    start = parse_time(st.get("startTime"))
    if run_policy.active_deadline_seconds is not None and start is not None:
        left = start.timestamp() + run_policy.active_deadline_seconds - now.timestamp()
        if left <= 0:
            message = f"the job ran longer than activeDeadlineSeconds={run_policy.active_deadline_seconds}"
            st.condition("Failed", True, "DeadlineExceeded", message)
            st.condition_off("Running", "DeadlineExceeded", "")
            st.set_phase("Failed", message)
            st.event("Warning", "DeadlineExceeded", message)
            _stop_job(plan, observed, "deadline exceeded")
            return
        plan.wake_in(left)

    # Budget guard.
    if verdict.warn and not st.is_("BudgetWarning"):
        text = verdict.describe(spec, cost)
        st.condition("BudgetWarning", True, "BudgetAlmostSpent", text)
        st.event("Warning", "BudgetWarning", text)
    if verdict.exceeded:
        text = verdict.describe(spec, cost) + ": the job was asked to checkpoint and stop"
        st.condition("BudgetExceeded", True, "BudgetExceeded", text)
        st.condition_off("Running", "BudgetExceeded", "")
        st.set_phase("BudgetExceeded", text)
        st.event("Warning", "BudgetExceeded", text)
        _stop_job(plan, observed, "budget exceeded")
        return

    # The attempt's Job.
    if attempt == 0:
        attempt = _next_attempt(st, attempt)
    job_obj = observed.job
    if job_obj is not None and (job_obj.attempt != attempt or job_obj.deleting):
        # The previous attempt's Job is still there: delete it (if not yet) and create ours when it is gone.
        _stop_job(plan, observed, f"replaced by attempt {attempt}")
        _launch(st, plan, job, spec, attempt, restarts, observed)
        plan.wake_in(WAIT_SECONDS)
        return
    if job_obj is None:
        _launch(st, plan, job, spec, attempt, restarts, observed)
        return

    outcome = faults.attempt_outcome(job_obj, current_pods, replicas=spec.resources.replicas,
                                     total_steps=spec.training.steps, record=observed.record)
    if outcome.kind == "succeeded" and observed.record is None and observed.record_error is not None:
        # Success and "stopped early by SIGTERM" look alike but for latest.json's step: wait for the store.
        st.data["message"] = f"every replica finished; waiting for the object store ({observed.record_error})"
        plan.wake_in(policy.resync_seconds)
        return
    if outcome.kind in ("missing", "queued", "pending"):
        reason = "Queued" if outcome.kind == "queued" else "Pending"
        message = (f"waiting for admission to queue {spec.queue_name}" if outcome.kind == "queued" and spec.queue_name
                   else "waiting for the pods to start")
        st.condition("Running", False, reason, message)
        st.set_phase("Pending", message)
    elif outcome.kind == "running":
        if st.condition("Running", True, "PodsRunning", f"attempt {attempt} is running") or st.phase != "Running":
            st.event("Normal", "Running", f"attempt {attempt} is running" + (
                f" (resuming from step {st.get('step')})" if attempt > 1 and st.get("step") else ""))
        st.set_phase("Running", f"attempt {attempt} is running")
    elif outcome.kind == "succeeded":
        step = st.get("step")
        message = f"training finished at step {step}" if step is not None else "training finished"
        st.condition("Succeeded", True, "Completed", message)
        st.condition("Running", False, "Completed", message)
        st.set_phase("Succeeded", message)
        st.event("Normal", "Succeeded", message)
    else:
        decision = faults.decide(outcome, preemptions=restarts["preemptions"], failures=restarts["failures"],
                                 backoff_limit=run_policy.backoff_limit)
        assert decision is not None
        restarts = {"preemptions": decision.preemptions, "failures": decision.failures}
        st.data["restarts"] = dict(restarts)
        if decision.action == "fail":
            st.condition("Failed", True, decision.reason, decision.message)
            st.condition("Running", False, decision.reason, decision.message)
            st.set_phase("Failed", decision.message)
            st.event("Warning", decision.reason, decision.message)
            return
        resume = st.get("lastCheckpoint") or {}
        st.event("Warning", decision.reason, decision.message)
        st.condition("Running", False, "Relaunching", decision.message)
        st.set_phase("Pending", decision.message)
        _stop_job(plan, observed, decision.reason)
        attempt = _next_attempt(st, attempt)
        st.event("Normal", "Relaunched", f"attempt {attempt} launched" + (
            f", resuming from step {resume.get('step')}" if resume.get("step") is not None else ""))
        _launch(st, plan, job, spec, attempt, restarts, observed)
        plan.wake_in(WAIT_SECONDS)
        return
    plan.wake_in(policy.resync_seconds)


def _launch(
    st: _Status, plan: Plan, job: JobInput, spec: GanTrainingJobSpec, attempt: int, restarts: dict[str, int],
    observed: Observed,
) -> None:
    resume = (st.get("lastCheckpoint") or {}).get("uri")
    plan.actions.append(EnsureChildren(attempt, dict(restarts), resume))
    if st.get("startTime") is None:
        st.data["startTime"] = format_time(st.now)
    if st.condition("Created", True, "ChildrenCreated", f"Job {job.name} (attempt {attempt})"):
        st.event("Normal", "Created", f"created the job file ConfigMap and Job {job.name}"
                 + (" with its headless Service" if spec.resources.replicas > 1 else ""))
    if st.phase is None:  # first launch: the whole initial status in one write
        st.condition("Running", False, "Pending", "waiting for the pods to start")
        st.set_phase("Pending", "waiting for the pods to start")
    plan.wake_in(CREATED_CHECK_SECONDS)


def _finished(
    st: _Status, plan: Plan, job: JobInput, spec: GanTrainingJobSpec, observed: Observed, policy: Policy
) -> None:
    if st.phase in ("Failed", "BudgetExceeded"):
        _stop_job(plan, observed, f"job {st.phase}", only_if_live=True)
    ttl = spec.run_policy.ttl_seconds_after_finished
    done = parse_time(st.get("completionTime"))
    if ttl is not None and done is not None:
        left = done.timestamp() + ttl - st.now.timestamp()
        if left <= 0:
            plan.actions.append(DeleteSelf(f"ttlSecondsAfterFinished={ttl} elapsed"))
        else:
            plan.wake_in(left)


def _promotion(st: _Status, plan: Plan, job: JobInput, spec: GanTrainingJobSpec, policy: Policy) -> None:
    promotion = spec.promotion
    model = promotion.model_name or job.name
    tracking_uri = spec.tracking.mlflow_uri or policy.mlflow_uri
    rollback_to = (job.annotations.get(ANNOTATION_ROLLBACK_TO) or "").strip()
    if rollback_to:
        if tracking_uri is None:
            st.event("Warning", "RollbackFailed", "no MLflow tracking URI (spec.tracking.mlflowUri) to roll back in")
            plan.actions.append(ClearAnnotation(ANNOTATION_ROLLBACK_TO))
        else:
            plan.actions.append(Rollback(tracking_uri, model, promotion.alias, rollback_to))
    manual = (job.annotations.get(ANNOTATION_PROMOTE) or "").strip().lower()
    if manual not in ("", "true", "force"):
        st.event("Warning", "PromotionRejected", f"{ANNOTATION_PROMOTE} must be 'true' or 'force' (got {manual!r})")
        plan.actions.append(ClearAnnotation(ANNOTATION_PROMOTE))
        return
    decided = st.is_("Promoted") or st.is_("Promoted", "False") or st.is_("PromotionRejected")
    auto_due = st.phase == "Succeeded" and promotion.auto and not decided
    if not manual and not auto_due:
        return
    if st.is_("Promoted", "Unknown"):  # the registry was unavailable: retry, but not on every event
        tried = parse_time(st.get("promotionAttemptedAt"))
        if tried is not None and (st.now - tried).total_seconds() < PROMOTION_RETRY_SECONDS:
            plan.wake_in(PROMOTION_RETRY_SECONDS - (st.now - tried).total_seconds())
            return
    clear = ANNOTATION_PROMOTE if manual else None
    if not (st.get("lastCheckpoint") or {}).get("uri"):
        st.condition("Promoted", False, "NoCheckpoint", "there is no checkpoint to promote")
        st.event("Warning", "PromotionRejected", "there is no checkpoint to promote")
        if clear:
            plan.actions.append(ClearAnnotation(clear))
        return
    if tracking_uri is None:
        message = "not promoted: no MLflow tracking URI (spec.tracking.mlflowUri or the operator's GANOPS_MLFLOW_URI)"
        st.condition("Promoted", False, "NoTrackingServer", message)
        st.event("Normal", "PromotionSkipped", message)
        if clear:
            plan.actions.append(ClearAnnotation(clear))
        return
    plan.actions.append(Promote(tracking_uri=tracking_uri, model_name=model, alias=promotion.alias,
                                force=manual == "force", clear_annotation=clear))


# ------------------------------------------------------------------------------------------------ action results


@dataclass(frozen=True)
class PromotionResult:
    kind: Literal["promoted", "rejected", "rolled_back", "unavailable", "error", "rollback_failed",
                  "rollback_unavailable"]
    model: str
    alias: str
    version: str | None = None
    message: str = ""  # promoted: the gate decision; rejected: the failed gates; otherwise: what went wrong
    metrics: Mapping[str, float] = field(default_factory=dict)  # recorded on the version (promoted, rolled back)


def _count_promotion(st: _Status, outcome: str) -> None:
    """`status.promotions` counts decisions by outcome (the operator's promotions counter reads it)."""
    raw = st.get("promotions")
    counts = {key: int(raw.get(key) or 0) for key in ("promoted", "rejected")} if isinstance(raw, Mapping) else {
        "promoted": 0, "rejected": 0}
    counts[outcome] += 1
    st.data["promotions"] = counts


def _set_promoted(st: _Status, version: str | None, metrics: Mapping[str, float]) -> None:
    st.data["promotedVersion"] = version
    if metrics:
        st.data["promotedMetrics"] = dict(metrics)
    else:
        st.data.pop("promotedMetrics", None)  # unknown for this version: never show another version's figures


def apply_promotion(status: Mapping[str, Any], result: PromotionResult, now: dt.datetime) -> tuple[dict[str, Any],
                                                                                                    list[Event]]:
    """Fold the outcome of a Promote / Rollback action into the status."""
    st = _Status(status, now)
    target = f"{result.model}@{result.alias}"
    if result.kind == "promoted":
        message = f"{target} → version {result.version}" + (f" ({result.message})" if result.message else "")
        st.condition("Promoted", True, "Promoted", message)
        st.condition_off("PromotionRejected", "Promoted", "")
        _set_promoted(st, result.version, result.metrics)
        _count_promotion(st, "promoted")
        st.data.pop("promotionAttemptedAt", None)
        st.event("Normal", "Promoted", message)
    elif result.kind == "rejected":
        message = f"{target} not moved: {result.message} (registered as rejected version {result.version})"
        st.condition("PromotionRejected", True, "GateFailed", message)
        st.condition("Promoted", False, "GateFailed", message)
        _count_promotion(st, "rejected")
        st.data.pop("promotionAttemptedAt", None)
        st.event("Warning", "PromotionRejected", message)
    elif result.kind == "rolled_back":
        message = f"{target} rolled back to version {result.version}"
        st.condition("Promoted", True, "RolledBack", message)
        _set_promoted(st, result.version, result.metrics)
        st.event("Normal", "RolledBack", message)
    elif result.kind == "unavailable":
        message = f"{target} not moved yet: {result.message}; retrying"
        if st.condition("Promoted", "Unknown", "RegistryUnavailable", message):
            st.event("Warning", "RegistryUnavailable", message)
        st.data["promotionAttemptedAt"] = format_time(now)
    elif result.kind in ("rollback_failed", "rollback_unavailable"):
        st.event("Warning", "RollbackFailed", f"{target} not rolled back: {result.message}")
    else:
        message = f"{target} not moved: {result.message}"
        st.condition("Promoted", False, "RegistryError", message)
        st.event("Warning", "PromotionFailed", message)
    return st.data, st.events


def apply_action_error(status: Mapping[str, Any], what: str, message: str, now: dt.datetime) -> tuple[
        dict[str, Any], list[Event]]:
    """A child could not be created or changed (the API refused it): say so in status, once."""
    st = _Status(status, now)
    if st.condition("ChildrenReady", False, "ApiError", f"{what}: {message}"):
        st.event("Warning", "ReconcileError", f"{what}: {message}")
    return st.data, st.events


def clear_action_error(status: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    st = _Status(status, now)
    st.condition_off("ChildrenReady", "Created", "")
    return st.data

"""The reconcile decision, as one pure function: (job, observed children, latest.json record, now) → plan.

`reconcile()` returns the new `status` (phase, conditions, counters, cost, checkpoint and metrics), the Kubernetes
Events to post (one per transition) and the actions that bring the children in line (create the attempt's
children, delete a Job, run a promotion, delete the resource after its TTL). The controller (`controller.py`) only
gathers the inputs, executes the actions and writes the status; everything that decides lives here and in the
small modules it calls (`faults`, `budget`, `progress`, `conditions`).

Crash safety: every decision is recorded where the next reconcile finds it. The attempt number and the restart
counters are written both to `status` and onto the attempt's Job (label `ganops.io/attempt`, annotation
`ganops.io/restarts`), and the Job has a fixed name: if the operator dies after creating a Job but before writing
status, the next reconcile adopts the Job's counters; if it dies before creating it, the next one creates it; the
API server refuses a second Job of the same name, so there are never two.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from ganops.api.spec import Cost, GanTrainingJobSpec, Restarts
from ganops.cost import CostFigures
from ganops.operator import budget, faults
from ganops.operator.conditions import FINISHED, StatusBuilder, get_condition
from ganops.operator.observe import JobView, PodView, format_time, parse_time
from ganops.operator.plan import (
    DeleteJob,
    DeleteSelf,
    EnsureChildren,
    JobInput,
    Observed,
    Plan,
    Policy,
    SyncJobFile,
)
from ganops.operator.progress import apply_record, pods_of_attempt
from ganops.operator.registry import plan_promotion

WAIT_SECONDS = 1.0  # re-check soon: waiting for the previous attempt's Job to go
CREATED_CHECK_SECONDS = 5.0  # after creating children: look again even if no watch event arrives


def _set_restarts(st: StatusBuilder, restarts: Mapping[str, int]) -> None:
    st.status.restarts = Restarts(preemptions=restarts["preemptions"], failures=restarts["failures"])


def reconcile(job: JobInput, observed: Observed, now: dt.datetime, policy: Policy | None = None) -> Plan:
    """The decision: from the job (with its typed status) and what was observed, the new status, the Events and
    the actions."""
    policy = policy or Policy()
    st = StatusBuilder(job.status, now)
    status = st.status
    plan = Plan(status=status)
    generation_changed = status.observed_generation not in (None, job.generation)
    status.observed_generation = job.generation

    if job.spec is None:
        _invalid(st, plan, job, observed)
        plan.events = st.events
        return plan
    spec = job.spec
    if st.is_("InvalidSpec"):  # fixed by a spec update: start over
        st.condition("InvalidSpec", False, "SpecValid", "the spec is valid now")
        failed = get_condition(status, "Failed")
        if st.phase == "Failed" and failed is not None and failed.reason == "InvalidSpec":
            st.condition("Failed", False, "SpecValid", "")
            status.phase = None
            status.completion_time = None
            st.event("Normal", "SpecValid", "the spec is valid now; starting")

    attempt = status.attempt or 0
    restarts = {"preemptions": status.restarts.preemptions, "failures": status.restarts.failures}
    if observed.job is not None and observed.job.attempt > attempt:
        # A Job newer than status: the operator stopped between creating it and writing status. Adopt it.
        attempt = observed.job.attempt
        for key in ("preemptions", "failures"):
            restarts[key] = max(restarts[key], int(observed.job.restarts.get(key, 0)))
    status.attempt = attempt
    _set_restarts(st, restarts)

    if observed.record is not None:
        apply_record(st, observed.record)

    current_pods = pods_of_attempt(observed.pods, attempt)
    accounting = budget.accrue(
        budget.Accounting.from_status(status.accounting), attempt, current_pods, spec.resources.gpus_per_replica,
        now,
    )
    cost = budget.figures(spec, accounting, observed.record, status.cost, policy.price_table)
    status.accounting = accounting.as_status()
    status.cost = Cost.model_validate(cost.as_wire())
    verdict = budget.verdict(spec, cost, policy.warning_fraction)

    if st.phase in FINISHED:
        resumed = st.phase == "BudgetExceeded" and not verdict.exceeded
        if not resumed:
            _finished(st, plan, job, spec, observed, policy)
            plan_promotion(st, plan, job, spec, policy)
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
    if (status.attempt or 0) != accounting.attempt:  # a new attempt: bank the previous one now
        accounting = budget.accrue(accounting, status.attempt or 0, [], spec.resources.gpus_per_replica, now)
        status.accounting = accounting.as_status()
    if st.phase in FINISHED:
        _finished(st, plan, job, spec, observed, policy)
    plan_promotion(st, plan, job, spec, policy)  # auto once Succeeded; annotations (manual, rollback) in any phase
    _sync_job_file(plan, observed, generation_changed)
    plan.events = st.events
    return plan


def _sync_job_file(plan: Plan, observed: Observed, generation_changed: bool) -> None:
    """A changed spec reaches the job file of a Job that stays (a new Job's ConfigMap is written anyway)."""
    if generation_changed and observed.job is not None and not any(
            isinstance(action, DeleteJob | EnsureChildren) for action in plan.actions):
        plan.actions.append(SyncJobFile())


def _next_attempt(st: StatusBuilder, attempt: int) -> int:
    attempt += 1
    st.status.attempt = attempt
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


def _invalid(st: StatusBuilder, plan: Plan, job: JobInput, observed: Observed) -> None:
    message = "; ".join(job.problems) or "the spec is invalid"
    if st.condition("InvalidSpec", True, "InvalidSpec", message) or st.phase != "Failed":
        st.event("Warning", "InvalidSpec", message)
    st.condition("Failed", True, "InvalidSpec", message)
    st.condition_off("Running", "InvalidSpec", "")
    st.set_phase("Failed", f"invalid spec: {message}")
    _stop_job(plan, observed, "the spec is invalid")


def _active(
    st: StatusBuilder,
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
    cost: CostFigures,
) -> None:
    """A job that has not finished, in order: suspension, deadline, budget guard, the attempt's Job, its outcome.
    Each step that stops the job (or waits for its Job) ends the reconcile."""
    if spec.run_policy.suspend:
        _suspend(st, plan, observed)
        return
    if st.phase == "Suspended":
        attempt, current_pods = _resume(st, attempt), []
    if _past_deadline(st, plan, spec, observed):
        return
    if _over_budget(st, plan, spec, observed, verdict, cost):
        return
    if attempt == 0:
        attempt = _next_attempt(st, attempt)
    job_obj = _attempt_job(st, plan, job, spec, observed, attempt, restarts)
    if job_obj is None:
        return
    _outcome(st, plan, job, spec, observed, policy, job_obj, attempt=attempt, restarts=restarts,
             current_pods=current_pods)


def _suspend(st: StatusBuilder, plan: Plan, observed: Observed) -> None:
    """Suspension: the Job goes (its pods checkpoint on SIGTERM), status stays; resuming starts a new attempt."""
    if st.phase != "Suspended":
        st.condition("Suspended", True, "SuspendedByUser", "spec.runPolicy.suspend is true")
        st.condition_off("Running", "Suspended", "")
        st.set_phase("Suspended", "suspended: the pods were stopped after a checkpoint")
        st.event("Normal", "Suspended", "job suspended; the pods checkpoint and stop")
    _stop_job(plan, observed, "suspended")


def _resume(st: StatusBuilder, attempt: int) -> int:
    """Resumed after a suspension: a new attempt, resuming from the latest checkpoint."""
    st.condition("Suspended", False, "Resumed", "spec.runPolicy.suspend is false")
    st.set_phase("Pending", "resuming from the latest checkpoint")
    st.status.start_time = format_time(st.now)  # as for batch Jobs: the deadline clock restarts on resume
    st.event("Normal", "Resumed", "job resumed; a new attempt resumes from the latest checkpoint")
    return _next_attempt(st, attempt)


def _past_deadline(st: StatusBuilder, plan: Plan, spec: GanTrainingJobSpec, observed: Observed) -> bool:
    """runPolicy.activeDeadlineSeconds, from startTime: past it the job fails and its pods stop; before it, wake up
    when it is due."""
    deadline = spec.run_policy.active_deadline_seconds
    start = parse_time(st.status.start_time)
    if deadline is None or start is None:
        return False
    left = start.timestamp() + deadline - st.now.timestamp()
    if left > 0:
        plan.wake_in(left)
        return False
    message = f"the job ran longer than activeDeadlineSeconds={deadline}"
    st.condition("Failed", True, "DeadlineExceeded", message)
    st.condition_off("Running", "DeadlineExceeded", "")
    st.set_phase("Failed", message)
    st.event("Warning", "DeadlineExceeded", message)
    _stop_job(plan, observed, "deadline exceeded")
    return True


def _over_budget(st: StatusBuilder, plan: Plan, spec: GanTrainingJobSpec, observed: Observed,
                 verdict: budget.BudgetVerdict, cost: CostFigures) -> bool:
    """The budget guard: one warning at the warning fraction; at 100 % the pods checkpoint and stop."""
    if verdict.warn and not st.is_("BudgetWarning"):
        text = verdict.describe(spec, cost)
        st.condition("BudgetWarning", True, "BudgetAlmostSpent", text)
        st.event("Warning", "BudgetWarning", text)
    if not verdict.exceeded:
        return False
    text = verdict.describe(spec, cost) + ": the job was asked to checkpoint and stop"
    st.condition("BudgetExceeded", True, "BudgetExceeded", text)
    st.condition_off("Running", "BudgetExceeded", "")
    st.set_phase("BudgetExceeded", text)
    st.event("Warning", "BudgetExceeded", text)
    _stop_job(plan, observed, "budget exceeded")
    return True


def _attempt_job(st: StatusBuilder, plan: Plan, job: JobInput, spec: GanTrainingJobSpec, observed: Observed,
                 attempt: int, restarts: dict[str, int]) -> JobView | None:
    """The attempt's Job, or None when it still has to be created (after the previous attempt's Job is gone)."""
    job_obj = observed.job
    if job_obj is not None and (job_obj.attempt != attempt or job_obj.deleting):
        # The previous attempt's Job is still there: delete it (if not yet) and create ours when it is gone.
        _stop_job(plan, observed, f"replaced by attempt {attempt}")
        _launch(st, plan, job, spec, attempt, restarts, observed)
        plan.wake_in(WAIT_SECONDS)
        return None
    if job_obj is None:
        _launch(st, plan, job, spec, attempt, restarts, observed)
        return None
    if not st.is_("Created"):
        # Our children, created by an operator killed before it recorded them: record (and announce) them now.
        _record_created(st, job, spec, attempt)
    return job_obj


def _outcome(
    st: StatusBuilder,
    plan: Plan,
    job: JobInput,
    spec: GanTrainingJobSpec,
    observed: Observed,
    policy: Policy,
    job_obj: JobView,
    *,
    attempt: int,
    restarts: dict[str, int],
    current_pods: list[PodView],
) -> None:
    """What the attempt's pods say: pending, running, succeeded, or a fault to relaunch after (or fail on)."""
    preempted = faults.suspended_after_start(job_obj, current_pods, was_running=st.phase == "Running")
    if preempted is not None:
        _after_fault(st, plan, job, spec, observed, preempted, attempt=attempt, restarts=restarts)
        return
    outcome = faults.attempt_outcome(job_obj, current_pods, replicas=spec.resources.replicas,
                                     total_steps=spec.training.steps, record=observed.record)
    if outcome.kind == "succeeded" and observed.record is None and observed.record_error is not None:
        # Success and "stopped early by SIGTERM" look alike but for latest.json's step: wait for the store.
        st.status.message = f"every replica finished; waiting for the object store ({observed.record_error})"
        plan.wake_in(policy.resync_seconds)
        return
    if outcome.kind == "pending":
        timed_out = _not_starting(st, plan, spec, observed, job_obj, current_pods)
        if timed_out is not None:
            _after_fault(st, plan, job, spec, observed, timed_out, attempt=attempt, restarts=restarts)
            return
    elif outcome.kind != "queued":
        st.condition_off("PodsNotStarting", "PodsStarted", "")
    if outcome.kind in ("missing", "queued", "pending"):
        reason = "Queued" if outcome.kind == "queued" else "Pending"
        message = (f"waiting for admission to queue {spec.queue_name}" if outcome.kind == "queued" and spec.queue_name
                   else "waiting for the pods to start")
        st.condition("Running", False, reason, message)
        if outcome.kind == "pending" and st.is_("PodsNotStarting"):
            stuck = get_condition(st.status, "PodsNotStarting")
            assert stuck is not None
            message = f"the pods are not starting: {stuck.reason}: {stuck.message}"
        st.set_phase("Pending", message)
    elif outcome.kind == "running":
        if st.condition("Running", True, "PodsRunning", f"attempt {attempt} is running") or st.phase != "Running":
            st.event("Normal", "Running", f"attempt {attempt} is running" + (
                f" (resuming from step {st.status.step})" if attempt > 1 and st.status.step else ""))
        st.set_phase("Running", f"attempt {attempt} is running")
    elif outcome.kind == "succeeded":
        step = st.status.step
        message = f"training finished at step {step}" if step is not None else "training finished"
        st.condition("Succeeded", True, "Completed", message)
        st.condition("Running", False, "Completed", message)
        st.set_phase("Succeeded", message)
        st.event("Normal", "Succeeded", message)
    else:
        _after_fault(st, plan, job, spec, observed, outcome, attempt=attempt, restarts=restarts)
        return
    plan.wake_in(policy.resync_seconds)


def _not_starting(st: StatusBuilder, plan: Plan, spec: GanTrainingJobSpec, observed: Observed, job_obj: JobView,
                  pods: list[PodView]) -> faults.AttemptOutcome | None:
    """Pods that are not starting: the PodsNotStarting condition says why (one Warning when that changes); past
    runPolicy.startTimeoutSeconds, counted from the Job's start (after Kueue admitted it), the attempt fails with
    that reason. None while the attempt may still start."""
    why = faults.not_starting(pods, observed.failed_create)
    if why is None:
        st.condition_off("PodsNotStarting", "Starting", "")
    elif st.condition("PodsNotStarting", True, why.reason, why.message) or st.reason_changed:
        st.event("Warning", "PodsNotStarting", f"{why.reason}: {why.message}")
    timeout = spec.run_policy.start_timeout_seconds
    since = job_obj.started or job_obj.created
    if timeout is None or since is None:
        return None
    left = since.timestamp() + timeout - st.now.timestamp()
    if left > 0:
        plan.wake_in(left)
        return None
    detail = f"{why.reason}: {why.message}" if why is not None else "they are still pending"
    return faults.AttemptOutcome("failed", why.reason if why is not None else "StartTimeout",
                                 f"the pods did not start within startTimeoutSeconds={timeout} ({detail})")


def _after_fault(st: StatusBuilder, plan: Plan, job: JobInput, spec: GanTrainingJobSpec, observed: Observed,
                 outcome: faults.AttemptOutcome, *, attempt: int, restarts: dict[str, int]) -> None:
    """A preemption or an application failure: relaunch from the latest checkpoint, or fail past backoffLimit."""
    decision = faults.decide(outcome, preemptions=restarts["preemptions"], failures=restarts["failures"],
                             backoff_limit=spec.run_policy.backoff_limit)
    assert decision is not None
    restarts = {"preemptions": decision.preemptions, "failures": decision.failures}
    _set_restarts(st, restarts)
    if decision.action == "fail":
        st.condition("Failed", True, decision.reason, decision.message)
        st.condition("Running", False, decision.reason, decision.message)
        st.set_phase("Failed", decision.message)
        st.event("Warning", decision.reason, decision.message)
        return
    resume = st.status.last_checkpoint
    st.event("Warning", decision.reason, decision.message)
    st.condition("Running", False, "Relaunching", decision.message)
    st.set_phase("Pending", decision.message)
    _stop_job(plan, observed, decision.reason)
    attempt = _next_attempt(st, attempt)
    st.event("Normal", "Relaunched", f"attempt {attempt} launched" + (
        f", resuming from step {resume.step}" if resume is not None else ""))
    _launch(st, plan, job, spec, attempt, restarts, observed)
    plan.wake_in(WAIT_SECONDS)


def _launch(
    st: StatusBuilder, plan: Plan, job: JobInput, spec: GanTrainingJobSpec, attempt: int, restarts: dict[str, int],
    observed: Observed,
) -> None:
    resume = st.status.last_checkpoint.uri if st.status.last_checkpoint is not None else None
    plan.actions.append(EnsureChildren(attempt, dict(restarts), resume))
    _record_created(st, job, spec, attempt)
    plan.wake_in(CREATED_CHECK_SECONDS)


def _record_created(st: StatusBuilder, job: JobInput, spec: GanTrainingJobSpec, attempt: int) -> None:
    if st.status.start_time is None:
        st.status.start_time = format_time(st.now)
    if st.condition("Created", True, "ChildrenCreated", f"Job {job.name} (attempt {attempt})"):
        st.event("Normal", "Created", f"created the job file ConfigMap and Job {job.name}"
                 + (" with its headless Service" if spec.resources.replicas > 1 else ""))
    if st.phase is None:  # first launch: the whole initial status in one write
        st.condition("Running", False, "Pending", "waiting for the pods to start")
        st.set_phase("Pending", "waiting for the pods to start")


def _finished(
    st: StatusBuilder, plan: Plan, job: JobInput, spec: GanTrainingJobSpec, observed: Observed, policy: Policy
) -> None:
    if st.phase in ("Failed", "BudgetExceeded"):
        _stop_job(plan, observed, f"job {st.phase}", only_if_live=True)
    ttl = spec.run_policy.ttl_seconds_after_finished
    done = parse_time(st.status.completion_time)
    if ttl is not None and done is not None:
        left = done.timestamp() + ttl - st.now.timestamp()
        if left <= 0:
            plan.actions.append(DeleteSelf(f"ttlSecondsAfterFinished={ttl} elapsed"))
        else:
            plan.wake_in(left)

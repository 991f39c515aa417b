"""The trainer's latest.json: when a reconcile reads it (`wants_record`), and how it is folded into the status:
step, last and best checkpoint, metrics, MLflow run, and the trainer's health events as conditions (one Warning
Event per change)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ganops.api.spec import CheckpointRef
from ganops.checkpoints import HealthEvent, LatestRecord
from ganops.operator import faults
from ganops.operator.conditions import FINISHED, StatusBuilder, get_condition
from ganops.operator.observe import PodView
from ganops.operator.plan import JobInput, Observed, Policy


def pods_of_attempt(pods: Sequence[PodView], attempt: int) -> list[PodView]:
    return [pod for pod in pods if pod.attempt == attempt]


def wants_record(job: JobInput, observed: Observed, *, seconds_since_read: float | None, policy: Policy) -> bool:
    """Whether this reconcile should read latest.json: on the first look, on every resync, and whenever the
    current attempt looks finished (success and "stopped early" are told apart by the record's step)."""
    if not observed.record_expected or job.spec is None:
        return False
    phase = job.status.phase
    if phase in FINISHED:
        return seconds_since_read is None and phase != "Failed"
    if seconds_since_read is None or seconds_since_read >= policy.resync_seconds:
        return True
    attempt = job.status.attempt or 0
    if observed.job is not None and observed.job.attempt == attempt:
        outcome = faults.attempt_outcome(
            observed.job, pods_of_attempt(observed.pods, attempt), replicas=job.spec.resources.replicas,
            total_steps=job.spec.training.steps, record=None,
        )
        return outcome.finished
    return False


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


def _health_condition(st: StatusBuilder, type_: str, message: str) -> None:
    """Set a trainer-health condition; one Warning Event whenever its message or status changes."""
    before = get_condition(st.status, type_)
    st.condition(type_, True, "TrainerHealthCheck", message)
    if before is None or before.message != message or before.status != "True":
        st.event("Warning", type_, message)


def _describe(event: HealthEvent, what: str) -> str:
    where = f"at step {event.step}" if event.step is not None else "during training"
    return f"{what} {where}" + (f": {event.message}" if event.message else "")


def apply_record(st: StatusBuilder, record: LatestRecord) -> None:
    status = st.status
    status.step = record.step
    # Optional fields only when the record has them (None is left out on the wire).
    last = CheckpointRef(uri=record.uri, step=record.step, sha256=record.manifest_sha256 or None,
                         time=record.time or None, metric=record.metric)
    status.last_checkpoint = last
    if record.metric is not None:
        best = status.best_checkpoint
        best_metric = best.metric if best is not None else None
        if (best is not None and best.step == record.step) or best_metric is None or record.metric < best_metric:
            status.best_checkpoint = last.model_copy()
    if record.metrics:
        status.metrics = dict(record.metrics)
    if record.mlflow_run_id:
        status.mlflow_run_id = record.mlflow_run_id
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


"""The model registry side of a job: when to promote or roll back (auto-promotion once it succeeded, the
`ganops.io/promote` and `ganops.io/rollback-to` annotations at any time), and the outcome of a Promote or Rollback
action (`operator.promotion`) folded into the status, with its Events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ganops.api.spec import GanTrainingJobSpec, GanTrainingJobStatus, PromotionCounts
from ganops.contracts import ANNOTATION_PROMOTE, ANNOTATION_ROLLBACK_TO, model_namespace, registered_model_name
from ganops.operator.conditions import Event, StatusBuilder
from ganops.operator.observe import format_time, parse_time
from ganops.operator.plan import ClearAnnotation, JobInput, Plan, Policy, Promote, Rollback
from ganops.operator.policy import tracking_server

PROMOTION_RETRY_SECONDS = 10.0


def not_owner_message(model: str, owner: str | None, namespace: str) -> str:
    """Why a job may not touch `model`: it belongs to namespace `owner`."""
    return (f"model {model} belongs to namespace {owner}: a GanTrainingJob in {namespace} may only promote or roll "
            f"back {namespace}.<model> (set spec.promotion.modelName to a name without a namespace)")


def plan_promotion(st: StatusBuilder, plan: Plan, job: JobInput, spec: GanTrainingJobSpec, policy: Policy) -> None:
    """Plan the Promote / Rollback actions (or say why there is nothing to promote, or why it is refused).

    Tenancy: the registered name is `<namespace>.<model>` (`contracts.registered_model_name`); a modelName
    qualified with another namespace is refused, for auto promotion, `promote: force` and `rollback-to` alike,
    with a Warning Event naming the owner. The MLflow is always one of the platform's (`policy.tracking_server`):
    a job naming another one is refused before it runs (`InvalidSpec`), and refused here again."""
    promotion = spec.promotion
    model = registered_model_name(job.namespace, promotion.model_name or job.name)
    owner = model_namespace(model)
    foreign = owner != job.namespace
    requested = spec.tracking.mlflow_uri
    tracking_uri = tracking_server(requested, policy.mlflow_uri, policy.mlflow_uris)
    untrusted = (f"spec.tracking.mlflowUri {requested!r} is not an MLflow server of this platform"
                 if requested is not None and tracking_uri is None else None)
    rollback_to = (job.annotations.get(ANNOTATION_ROLLBACK_TO) or "").strip()
    if rollback_to:
        refusal = not_owner_message(model, owner, job.namespace) if foreign else untrusted
        if refusal is not None:
            st.event("Warning", "RollbackRefused", f"{model}@{promotion.alias} not rolled back: {refusal}")
            plan.actions.append(ClearAnnotation(ANNOTATION_ROLLBACK_TO))
        elif tracking_uri is None:
            st.event("Warning", "RollbackFailed", "no MLflow tracking URI (the operator's GANOPS_MLFLOW_URI) to roll "
                                                  "back in")
            plan.actions.append(ClearAnnotation(ANNOTATION_ROLLBACK_TO))
        else:
            plan.actions.append(Rollback(tracking_uri, model, promotion.alias, rollback_to))
    manual = (job.annotations.get(ANNOTATION_PROMOTE) or "").strip().lower()
    if manual not in ("", "true", "force"):
        st.event("Warning", "PromotionRejected", f"{ANNOTATION_PROMOTE} must be 'true' or 'force' (got {manual!r})")
        plan.actions.append(ClearAnnotation(ANNOTATION_PROMOTE))
        return
    if manual == "force" and not policy.allow_force:
        st.event("Warning", "PromotionRefused", f"{ANNOTATION_PROMOTE}=force is turned off on this platform "
                 "(GANOPS_ALLOW_FORCE_PROMOTION=false): use 'true' (the gates apply) or ask a platform admin")
        plan.actions.append(ClearAnnotation(ANNOTATION_PROMOTE))
        return
    decided = st.is_("Promoted") or st.is_("Promoted", "False") or st.is_("PromotionRejected")
    auto_due = st.phase == "Succeeded" and promotion.auto and not decided
    if not manual and not auto_due:
        return
    refusal = not_owner_message(model, owner, job.namespace) if foreign else untrusted
    if refusal is not None:
        message = f"{model}@{promotion.alias} not moved: {refusal}"
        st.condition("Promoted", False, "NotOwner" if foreign else "UntrustedTrackingServer", message)
        st.event("Warning", "PromotionRefused", message)
        if manual:
            plan.actions.append(ClearAnnotation(ANNOTATION_PROMOTE))
        return
    if st.is_("Promoted", "Unknown"):  # the registry was unavailable: retry, but not on every event
        tried = parse_time(st.status.promotion_attempted_at)
        if tried is not None and (st.now - tried).total_seconds() < PROMOTION_RETRY_SECONDS:
            plan.wake_in(PROMOTION_RETRY_SECONDS - (st.now - tried).total_seconds())
            return
    clear = ANNOTATION_PROMOTE if manual else None
    if st.status.last_checkpoint is None or not st.status.last_checkpoint.uri:
        st.condition("Promoted", False, "NoCheckpoint", "there is no checkpoint to promote")
        st.event("Warning", "PromotionRejected", "there is no checkpoint to promote")
        if clear:
            plan.actions.append(ClearAnnotation(clear))
        return
    if tracking_uri is None:
        message = "not promoted: no MLflow tracking URI (the operator's GANOPS_MLFLOW_URI)"
        st.condition("Promoted", False, "NoTrackingServer", message)
        st.event("Normal", "PromotionSkipped", message)
        if clear:
            plan.actions.append(ClearAnnotation(clear))
        return
    plan.actions.append(Promote(tracking_uri=tracking_uri, model_name=model, alias=promotion.alias,
                                force=manual == "force", clear_annotation=clear, min_gates=policy.min_gates))


@dataclass(frozen=True)
class PromotionOutcome:
    """What a Promote or Rollback action came to, as the operator records it (`operator.promotion` maps
    `ganops.promotion.PromotionResult` and the registry's errors to it)."""

    kind: Literal["promoted", "rejected", "rolled_back", "unavailable", "error", "rollback_failed",
                  "rollback_unavailable", "refused", "rollback_refused"]
    model: str
    alias: str
    version: str | None = None
    message: str = ""  # promoted: the gate decision; rejected: the failed gates; otherwise: what went wrong
    metrics: Mapping[str, float] = field(default_factory=dict)  # recorded on the version (promoted, rolled back)


def _count_promotion(st: StatusBuilder, outcome: Literal["promoted", "rejected"]) -> None:
    """`status.promotions` counts decisions by outcome (the operator's promotions counter reads it)."""
    counts = (st.status.promotions or PromotionCounts()).model_dump()
    counts[outcome] += 1
    st.status.promotions = PromotionCounts(promoted=counts["promoted"], rejected=counts["rejected"])


def _set_promoted(st: StatusBuilder, version: str | None, metrics: Mapping[str, float]) -> None:
    st.status.promoted_version = version
    # Unknown for this version: never show another version's figures.
    st.status.promoted_metrics = dict(metrics) if metrics else None


def apply_promotion(status: GanTrainingJobStatus, result: PromotionOutcome, now: dt.datetime) -> tuple[
        GanTrainingJobStatus, list[Event]]:
    """Fold the outcome of a Promote / Rollback action into the status."""
    st = StatusBuilder(status, now)
    target = f"{result.model}@{result.alias}"
    if result.kind == "promoted":
        message = f"{target} → version {result.version}" + (f" ({result.message})" if result.message else "")
        st.condition("Promoted", True, "Promoted", message)
        st.condition_off("PromotionRejected", "Promoted", "")
        _set_promoted(st, result.version, result.metrics)
        _count_promotion(st, "promoted")
        st.status.promotion_attempted_at = None
        st.event("Normal", "Promoted", message)
    elif result.kind == "rejected":
        message = f"{target} not moved: {result.message} (registered as rejected version {result.version})"
        st.condition("PromotionRejected", True, "GateFailed", message)
        st.condition("Promoted", False, "GateFailed", message)
        _count_promotion(st, "rejected")
        st.status.promotion_attempted_at = None
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
        st.status.promotion_attempted_at = format_time(now)
    elif result.kind == "refused":  # another namespace's model (its versions' lineage says so)
        message = f"{target} not moved: {result.message}"
        st.condition("Promoted", False, "NotOwner", message)
        st.event("Warning", "PromotionRefused", message)
    elif result.kind == "rollback_refused":
        st.event("Warning", "RollbackRefused", f"{target} not rolled back: {result.message}")
    elif result.kind in ("rollback_failed", "rollback_unavailable"):
        st.event("Warning", "RollbackFailed", f"{target} not rolled back: {result.message}")
    else:
        message = f"{target} not moved: {result.message}"
        st.condition("Promoted", False, "RegistryError", message)
        st.event("Warning", "PromotionFailed", message)
    return st.status, st.events

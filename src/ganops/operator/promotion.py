"""Promotion from the operator: `ganops.promotion` (gates, registration, alias) and rollback, mapped to outcomes that
`registry.apply_promotion` folds into the job's status.

`ganops.promotion.promote` judges the job's best checkpoint (by the manifests' `metric`) against
`spec.promotion.gates`, registers it as an MLflow model version (rejected ones too, tagged, so the registry keeps the
record; idempotent per checkpoint and verdict) and moves `spec.promotion.alias` only when the gates pass. The
operator calls it with `render=False`: no sample grid, no torch (the version then lacks the `ganops.samples.*`
tags). `ganops.promotion` (numpy, Pillow) and MLflow are imported only when a promotion runs.

Manual promotion with `ganops.io/promote: "force"` moves the alias to the registered version even when the job's own
gates rejected it, never below the platform's minimum gates (GANOPS_MIN_GATES); `"true"` applies the gates like
auto-promotion.

Tenancy (docs/security.md): `model_name` is always the registered `<namespace>.<model>` (`registry.plan_promotion`
refuses a name qualified with another namespace). As a second line, promotion refuses a registered model holding
versions that another namespace's jobs registered, and rollback refuses a version whose `ganops.job` lineage is
not the job's namespace: the outcome names the owner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ganops.api.spec import GanTrainingJobSpec, GatesSpec
from ganops.contracts import TAG_JOB, model_namespace, registered_model_name
from ganops.operator.registry import PromotionOutcome, not_owner_message


def effective_gates(spec: GanTrainingJobSpec, min_gates: tuple[tuple[str, float], ...]) -> tuple[
        GatesSpec, GatesSpec | None]:
    """(the gates the job is judged by, the platform's floor): the job's gates raised to GANOPS_MIN_GATES. minModes
    only applies to the 2-D datasets, so the floor's minModes is left out for image jobs."""
    from ganops.promotion import strictest

    floor = GatesSpec.model_validate(dict(min_gates)) if min_gates else None
    if floor is not None and not spec.is_2d and floor.min_modes is not None:
        floor = floor.model_copy(update={"min_modes": None})
    return strictest(spec.promotion.gates, floor), floor


def promote_job(
    spec: GanTrainingJobSpec,
    *,
    namespace: str,
    name: str,
    checkpoint_root: str,
    tracking_uri: str,
    model_name: str | None = None,
    force: bool = False,
    min_gates: tuple[tuple[str, float], ...] = (),
) -> PromotionOutcome:
    from ganops import promotion, tracking

    model = registered_model_name(namespace, model_name or spec.promotion.model_name or name)
    alias = spec.promotion.alias
    if model_namespace(model) != namespace:
        return PromotionOutcome("refused", model, alias, message=not_owner_message(model, model_namespace(model),
                                                                                   namespace))
    gates, floor = effective_gates(spec, min_gates)
    judged = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"gates": gates})})
    try:
        result = promotion.promote(judged, checkpoint_root, tracking_uri, namespace=namespace, job=name, render=False,
                                   model_name=model, owner_namespace=namespace)
        if result.promoted:
            return PromotionOutcome("promoted", model, alias, result.version, result.decision.describe(),
                                    metrics=dict(result.metrics))
        if force:
            below = promotion.evaluate_gates(floor, result.metrics) if floor is not None else None
            if below is not None and not below.passed:
                return PromotionOutcome("rejected", model, alias, result.version,
                                        "forced promotion refused: below the platform's minimum gates "
                                        f"(GANOPS_MIN_GATES): {'; '.join(below.failures)}",
                                        metrics=dict(result.metrics))
            tracking.set_alias(tracking_uri, model, alias, result.version)
            return PromotionOutcome("promoted", model, alias, result.version,
                                    f"forced past the gates ({result.decision.describe()})",
                                    metrics=dict(result.metrics))
        return PromotionOutcome("rejected", model, alias, result.version, "; ".join(result.decision.failures),
                                metrics=dict(result.metrics))
    except promotion.OwnershipError as exc:
        return PromotionOutcome("refused", model, alias, message=(
            f"{model} holds versions that jobs of namespace {', '.join(exc.owners)} registered (their ganops.job "
            f"lineage), so namespace {namespace} does not own it alone: nothing was registered or moved; a platform "
            "admin must move those versions out"))
    except tracking.TrackingUnavailable as exc:
        return PromotionOutcome("unavailable", model, alias, message=str(exc))
    except (tracking.TrackingError, promotion.PromotionError) as exc:
        return PromotionOutcome("error", model, alias, message=str(exc))


def rollback(tracking_uri: str, *, model_name: str, alias: str, version: str,
             namespace: str | None = None) -> PromotionOutcome:
    """Point `model_name@alias` back at an existing `version` - with `namespace`, only a version that a job of
    that namespace registered (its `ganops.job` tag)."""
    from ganops import tracking

    if namespace is not None and model_namespace(model_name) != namespace:
        return PromotionOutcome("rollback_refused", model_name, alias,
                                message=not_owner_message(model_name, model_namespace(model_name), namespace))
    try:
        info = tracking.get_version(tracking_uri, model_name, version)
        if info is None:
            return PromotionOutcome("rollback_failed", model_name, alias, message=f"{model_name} has no version "
                                                                                 f"{version}")
        if namespace is not None:
            lineage = info.tags.get(TAG_JOB) or ""
            registered_by = lineage.partition("/")[0] if "/" in lineage else None
            if registered_by != namespace:
                return PromotionOutcome(
                    "rollback_refused", model_name, alias,
                    message=f"version {info.version} was registered by "
                            f"{'job ' + lineage if registered_by else 'hand (no ganops.job lineage)'}, not by a job in "
                            f"{namespace}: " + not_owner_message(model_name, registered_by or "?", namespace))
        tracking.set_alias(tracking_uri, model_name, alias, info.version)
    except tracking.TrackingUnavailable as exc:
        return PromotionOutcome("rollback_unavailable", model_name, alias, message=str(exc))
    except tracking.TrackingError as exc:
        return PromotionOutcome("rollback_failed", model_name, alias, message=str(exc))
    return PromotionOutcome("rolled_back", model_name, alias, info.version, metrics=version_metrics(info.tags))


def version_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """The evaluation metrics promotion recorded on a model version (tags `ganops.metric.<name>` = repr(value))."""
    from ganops.contracts import TAG_METRIC_PREFIX as METRIC_TAG_PREFIX

    out = {}
    for key, raw in tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                value = float(raw)
            except ValueError:
                continue
            if math.isfinite(value):
                out[key[len(METRIC_TAG_PREFIX):]] = value
    return out

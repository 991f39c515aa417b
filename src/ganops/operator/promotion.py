"""Promotion from the operator: `ganops.promotion` (gates, registration, alias) and rollback, mapped to outcomes that
`registry.apply_promotion` folds into the job's status.

`ganops.promotion.promote` judges the job's best checkpoint (by the manifests' `metric`) against
`spec.promotion.gates`, registers it as an MLflow model version (rejected ones too, tagged, so the registry keeps the
record; idempotent per checkpoint and verdict) and moves `spec.promotion.alias` only when the gates pass. The
operator calls it with `render=False`: no sample grid, no torch (the version then lacks the `ganops.samples.*`
tags). `ganops.promotion` (numpy, Pillow) and MLflow are imported only when a promotion runs.

Manual promotion with `ganops.io/promote: "force"` moves the alias to the registered version even when the gates
rejected it; `"true"` applies the gates like auto-promotion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ganops.api.spec import GanTrainingJobSpec
from ganops.operator.registry import PromotionOutcome


def promote_job(
    spec: GanTrainingJobSpec,
    *,
    namespace: str,
    name: str,
    checkpoint_root: str,
    tracking_uri: str,
    force: bool = False,
) -> PromotionOutcome:
    from ganops import promotion, tracking

    model = spec.promotion.model_name or name
    alias = spec.promotion.alias
    try:
        result = promotion.promote(spec, checkpoint_root, tracking_uri, namespace=namespace, job=name, render=False)
        if result.promoted:
            return PromotionOutcome("promoted", model, alias, result.version, result.decision.describe(),
                                   metrics=dict(result.metrics))
        if force:
            tracking.set_alias(tracking_uri, model, alias, result.version)
            return PromotionOutcome("promoted", model, alias, result.version,
                                   f"forced past the gates ({result.decision.describe()})",
                                   metrics=dict(result.metrics))
        return PromotionOutcome("rejected", model, alias, result.version, "; ".join(result.decision.failures),
                               metrics=dict(result.metrics))
    except tracking.TrackingUnavailable as exc:
        return PromotionOutcome("unavailable", model, alias, message=str(exc))
    except (tracking.TrackingError, promotion.PromotionError) as exc:
        return PromotionOutcome("error", model, alias, message=str(exc))


def rollback(tracking_uri: str, *, model_name: str, alias: str, version: str) -> PromotionOutcome:
    """Point `model_name@alias` back at an existing `version`."""
    from ganops import tracking

    try:
        info = tracking.get_version(tracking_uri, model_name, version)
        if info is None:
            return PromotionOutcome("rollback_failed", model_name, alias, message=f"{model_name} has no version "
                                                                                 f"{version}")
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

"""The safety pipeline of the serving API: every generated sample passes it before a user sees it.

Order: request policy (before generation) → degenerate → nsfw → memorization (after generation, on the batch)
→ invisible watermark on the allowed images. See docs/safety.md.

    pipeline = build_pipeline({"mode": "replace"}, memorization_index_path=".../memorization.safetensors")
    decisions = pipeline.run(make_samples(outputs), RequestContext(request_id, model, version))
    marker = build_watermarker(settings, model_id=f"{model}:{version}")
    images = [marker.embed(d.output) for d in decisions if d.allowed]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .audit import AuditSink, ListAuditSink, ObjectStoreAuditSink
from .base import Outcome, RequestContext, SafetyFilter, Sample, Verdict, make_samples
from .degenerate import DegenerateFilter
from .memorization import MemorizationFilter, MemorizationIndex, pixel_features, point_features
from .nsfw import Detection, Detector, NsfwFilter, NsfwPolicy, NudeNetDetector
from .pipeline import DecisionCallback, SafetyPipeline, SampleDecision
from .request_policy import RequestPolicy, check_request
from .settings import SafetySettings
from .watermark import Watermarker, WatermarkResult

__all__ = [
    "AuditSink",
    "DecisionCallback",
    "DegenerateFilter",
    "Detection",
    "Detector",
    "ListAuditSink",
    "MemorizationFilter",
    "MemorizationIndex",
    "NsfwFilter",
    "NsfwPolicy",
    "NudeNetDetector",
    "ObjectStoreAuditSink",
    "Outcome",
    "RequestContext",
    "RequestPolicy",
    "SafetyFilter",
    "SafetyPipeline",
    "SafetySettings",
    "Sample",
    "SampleDecision",
    "Verdict",
    "WatermarkResult",
    "Watermarker",
    "build_filters",
    "build_pipeline",
    "build_watermarker",
    "check_request",
    "make_samples",
    "pixel_features",
    "point_features",
]


def build_filters(
    settings: SafetySettings | Mapping[str, Any] | Any,
    *,
    memorization_index: MemorizationIndex | None = None,
    memorization_index_path: str | None = None,
    nsfw_detector: Detector | None = None,
) -> list[SafetyFilter]:
    """The configured filters in order: degenerate → nsfw → memorization.

    ``memorization_index`` (e.g. loaded by the model store beside the weights) wins over
    ``memorization_index_path`` (a saved index); without either, or with ``memorization_enabled`` false, the
    memorization filter is left out.
    """
    cfg = SafetySettings.coerce(settings)
    filters: list[SafetyFilter] = []
    if cfg.degenerate_enabled:
        filters.append(
            DegenerateFilter(
                std_eps=cfg.degenerate_std_eps,
                blank_fraction=cfg.degenerate_blank_fraction,
                duplicate_distance=cfg.degenerate_duplicate_distance,
            )
        )
    if cfg.nsfw_enabled:
        detector = nsfw_detector if nsfw_detector is not None else NudeNetDetector(threads=cfg.nsfw_threads)
        filters.append(NsfwFilter(detector, NsfwPolicy(frozenset(cfg.nsfw_blocked_labels), cfg.nsfw_min_score)))
    index = memorization_index
    if index is None and memorization_index_path:
        index = MemorizationIndex.load(memorization_index_path)
    if index is not None and cfg.memorization_enabled:
        filters.append(MemorizationFilter(index, threshold=cfg.memorization_threshold))
    return filters


def build_pipeline(
    settings: SafetySettings | Mapping[str, Any] | Any = None,
    *,
    memorization_index: MemorizationIndex | None = None,
    memorization_index_path: str | None = None,
    nsfw_detector: Detector | None = None,
    on_decision: DecisionCallback | None = None,
    audit_sink: AuditSink | None = None,
) -> SafetyPipeline:
    """A :class:`SafetyPipeline` from settings (a :class:`SafetySettings`, a mapping or an attribute object).

    The audit sink is ``audit_sink`` when given, else an :class:`ObjectStoreAuditSink` on ``audit_uri`` if set.
    """
    cfg = SafetySettings.coerce(settings if settings is not None else SafetySettings())
    sink = audit_sink
    if sink is None and cfg.audit_uri:
        sink = ObjectStoreAuditSink(cfg.audit_uri, include_pixels=cfg.audit_include_pixels)
    filters = build_filters(
        cfg,
        memorization_index=memorization_index,
        memorization_index_path=memorization_index_path,
        nsfw_detector=nsfw_detector,
    )
    return SafetyPipeline(filters, cfg.mode, on_decision=on_decision, audit_sink=sink)


def build_watermarker(
    settings: SafetySettings | Mapping[str, Any] | Any, *, model_id: str = "", required: bool = False
) -> Watermarker | None:
    """The :class:`Watermarker` for the configured key; ``None`` when no key is configured (``ValueError`` when
    ``required`` or ``require_watermark_key``: production serving should refuse to start rather than return
    unmarked images)."""
    cfg = SafetySettings.coerce(settings)
    key = cfg.resolved_watermark_key()
    if key is None:
        if required or cfg.require_watermark_key:
            raise ValueError("no watermark key configured (watermark_key or watermark_key_file)")
        return None
    return Watermarker(key, cfg.watermark_payload_bits, model_id=model_id, use_dwt=cfg.watermark_dwt)

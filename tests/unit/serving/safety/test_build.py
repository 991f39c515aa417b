"""build_pipeline / build_watermarker from settings: filter order, options, audit wiring, keys."""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ganops.serving.safety import (
    Detection,
    MemorizationIndex,
    ObjectStoreAuditSink,
    RequestContext,
    SafetySettings,
    build_pipeline,
    build_watermarker,
    make_samples,
)


class NoDetections:
    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        return [[] for _ in images]


def digits() -> np.ndarray:
    images: np.ndarray = load_digits().images.astype(np.float32) / 16.0 * 2.0 - 1.0
    return images[:, None]


def test_default_order_is_degenerate_nsfw_memorization(tmp_path: Path) -> None:
    index_path = tmp_path / "memorization.safetensors"
    MemorizationIndex.build(digits()[:300]).save(index_path)
    pipeline = build_pipeline(memorization_index_path=str(index_path), nsfw_detector=NoDetections())
    assert pipeline.filter_names == ["degenerate", "nsfw", "memorization"]
    assert pipeline.mode == "withhold" and pipeline.audit_sink is None
    off = build_pipeline({"memorization_enabled": False}, memorization_index_path=str(index_path),
                         nsfw_detector=NoDetections())
    assert off.filter_names == ["degenerate", "nsfw"]


def test_without_an_index_there_is_no_memorization_filter() -> None:
    assert build_pipeline(nsfw_detector=NoDetections()).filter_names == ["degenerate", "nsfw"]
    assert build_pipeline({"nsfw_enabled": False, "degenerate_enabled": False}).filter_names == []


def test_settings_reach_the_filters(tmp_path: Path) -> None:
    data = digits()
    counts: Counter[tuple[str, str]] = Counter()
    pipeline = build_pipeline(
        {
            "mode": "replace",
            "audit_uri": f"file://{tmp_path}/audit",
            "nsfw_min_score": 0.9,
            "nsfw_blocked_labels": ["FACE_MALE"],
        },
        memorization_index=MemorizationIndex.build(data[:300]),
        nsfw_detector=NoDetections(),
        on_decision=lambda f, o: counts.update([(f, o)]),
    )
    assert isinstance(pipeline.audit_sink, ObjectStoreAuditSink)
    nsfw = pipeline.filters[1]
    assert nsfw.policy.min_score == 0.9 and nsfw.policy.blocked_labels == frozenset({"FACE_MALE"})  # type: ignore[attr-defined]

    batch = np.concatenate([data[[0]], data[[500, 501]], np.full((1, 1, 8, 8), 0.3, np.float32)])
    decisions = pipeline.run(make_samples(batch), RequestContext("r-9", "digits", "1"))
    assert [d.allowed for d in decisions] == [False, True, True, False]
    assert [d.blocked_by for d in decisions] == ["memorization", None, None, "degenerate"]
    assert all(d.replaced for d in decisions if not d.allowed)
    assert counts[("memorization", "block")] == 1 and counts[("degenerate", "block")] == 1
    assert len(list((tmp_path / "audit").rglob("r-9.jsonl"))) == 1


def test_unknown_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="nsfw_min_scor"):
        build_pipeline({"nsfw_min_scor": 0.3})


def test_attribute_objects_work_as_settings() -> None:
    @dataclass
    class AppSettings:  # e.g. the app's pydantic settings: only matching names are read
        mode: str = "replace"
        nsfw_enabled: bool = False
        port: int = 8000

    assert build_pipeline(AppSettings()).mode == "replace"


def test_the_serving_settings_section_is_the_pipeline_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """One schema: what GANOPS_SERVING_SAFETY__* sets is what the pipeline builder reads, with no copy between."""
    from ganops.serving.settings import ServingSettings

    monkeypatch.setenv("GANOPS_SERVING_SAFETY__MODE", "replace")
    monkeypatch.setenv("GANOPS_SERVING_SAFETY__NSFW_BLOCKED_LABELS", '["FACE_MALE"]')
    monkeypatch.setenv("GANOPS_SERVING_SAFETY__NSFW_MIN_SCORE", "0.7")
    safety = ServingSettings().safety
    assert isinstance(safety, SafetySettings) and SafetySettings.coerce(safety) is safety
    pipeline = build_pipeline(safety, nsfw_detector=NoDetections())
    nsfw = pipeline.filters[1]
    assert pipeline.mode == "replace"
    assert nsfw.policy.blocked_labels == frozenset({"FACE_MALE"}) and nsfw.policy.min_score == 0.7  # type: ignore[attr-defined]
    assert isinstance(pipeline.audit_sink, ObjectStoreAuditSink)  # serving's default audit_uri reaches the sink
    assert safety.for_model(nsfw=False).nsfw_enabled is False and safety.nsfw_enabled is True


def test_watermarker_from_settings(tmp_path: Path) -> None:
    assert build_watermarker({}) is None
    with pytest.raises(ValueError, match="no watermark key"):
        build_watermarker(SafetySettings(), required=True)
    key = b"0123456789abcdef0123"
    from_hex = build_watermarker({"watermark_key": "hex:" + key.hex()}, model_id="m:1")
    key_file = tmp_path / "key"
    key_file.write_text("base64:" + base64.b64encode(key).decode() + "\n")
    from_file = build_watermarker({"watermark_key_file": str(key_file)}, model_id="m:1")
    assert from_hex is not None and from_file is not None
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert from_file.verify(from_hex.embed(pixels)).present
    from_bytes = build_watermarker({"watermark_key": key}, model_id="m:1")  # raw bytes, as embedding passes them
    assert from_bytes is not None and from_bytes.verify(from_hex.embed(pixels)).present
    with pytest.raises(ValueError, match="no watermark key"):
        build_watermarker({"require_watermark_key": True})

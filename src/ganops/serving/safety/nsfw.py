"""NSFW filter: an object detector finds body parts, a policy decides which findings block.

The two steps are separate so each can be tested and swapped on its own:

* :class:`Detector` - anything with ``detect(images: list[RGB uint8 HWC]) -> list[list[Detection]]``.
  :class:`NudeNetDetector` runs the YOLOv8 ONNX model bundled in the ``nudenet`` wheel (``nudenet/320n.onnx``,
  nothing is downloaded), loaded lazily once per process and shared by every filter instance.
* :class:`NsfwPolicy` - which labels block and from which score; a pure function of the detections.

nudenet (3.4.2) pads each image to a square, resizes it to 320x320 (bilinear; GAN outputs of 8-64 px are
upscaled) and feeds it to the model. Given a numpy array it swaps the first and third channels twice
(``cvtColor(RGBA2BGR)`` then ``blobFromImage(swapRB=True)``), so an array given in **RGB** order reaches the
model as RGB - the order Ultralytics models are trained on. (Its own file-path route reads BGR with OpenCV and
ends up feeding BGR: we never use it.) Grey images are repeated to three channels; RGBA is composited on white.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .base import RequestContext, Sample, Verdict

__all__ = [
    "ALL_LABELS",
    "DEFAULT_BLOCKED_LABELS",
    "EXPOSED_LABELS",
    "Detection",
    "Detector",
    "NsfwFilter",
    "NsfwPolicy",
    "NudeNetDetector",
    "to_rgb",
]

logger = logging.getLogger(__name__)

# The classes of nudenet 3.x's detector (its model metadata lists the same 18 names).
ALL_LABELS: frozenset[str] = frozenset(
    {
        "FEMALE_GENITALIA_COVERED",
        "FACE_FEMALE",
        "BUTTOCKS_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_BREAST_EXPOSED",
        "ANUS_EXPOSED",
        "FEET_EXPOSED",
        "BELLY_COVERED",
        "FEET_COVERED",
        "ARMPITS_COVERED",
        "ARMPITS_EXPOSED",
        "FACE_MALE",
        "BELLY_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "ANUS_COVERED",
        "FEMALE_BREAST_COVERED",
        "BUTTOCKS_COVERED",
    }
)
EXPOSED_LABELS: frozenset[str] = frozenset(label for label in ALL_LABELS if label.endswith("_EXPOSED"))
# Default: the *_EXPOSED classes that are sexual nudity. FEET/ARMPITS/BELLY/MALE_BREAST_EXPOSED are left out
# (they fire on beach and sports pictures); use EXPOSED_LABELS for the strict variant.
DEFAULT_BLOCKED_LABELS: frozenset[str] = frozenset(
    {
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)


@dataclass(frozen=True)
class Detection:
    """One detected region: class label, confidence in [0, 1], box (x, y, w, h) in the image's pixels."""

    label: str
    score: float
    box: tuple[int, int, int, int] = (0, 0, 0, 0)


class Detector(Protocol):
    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """One list of detections per RGB ``uint8`` HWC image, in order."""
        ...


@dataclass(frozen=True)
class NsfwPolicy:
    """Blocks a sample when any detection of a ``blocked_labels`` class scores at least ``min_score``."""

    blocked_labels: frozenset[str] = DEFAULT_BLOCKED_LABELS
    min_score: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], not {self.min_score}")

    def judge(self, detections: Iterable[Detection]) -> tuple[bool, str, float]:
        """``(blocked, reason, score)``: score is the highest blocked-class confidence seen (0 when none)."""
        relevant = [d for d in detections if d.label in self.blocked_labels]
        top = max(relevant, key=lambda d: d.score, default=None)
        if top is None:
            return False, "", 0.0
        if top.score >= self.min_score:
            return True, f"nsfw: {top.label} ({top.score:.2f} >= {self.min_score:.2f})", top.score
        return False, "", top.score


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """``uint8`` HWC with 1, 3 or 4 channels → contiguous RGB (grey repeated; RGBA composited on white)."""
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 HWC pixels, got {pixels.dtype} {pixels.shape}")
    channels = pixels.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    if channels == 3:
        return np.ascontiguousarray(pixels)
    if channels == 4:
        alpha = pixels[..., 3:4].astype(np.float32) / 255.0
        rgb = pixels[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")


_MODEL_LOCK = threading.Lock()
_MODELS: dict[tuple[str | None, int | None], Any] = {}


def _load_nudenet(model_path: str | None, threads: int | None) -> Any:
    """The process-wide ``nudenet.NudeDetector`` (loaded on first use; thread-safe)."""
    key = (model_path, threads)
    with _MODEL_LOCK:
        detector = _MODELS.get(key)
        if detector is None:
            from nudenet import NudeDetector  # AGPL-3.0 (see docs/safety.md); imported only when used

            detector = NudeDetector(model_path=model_path)
            if threads is not None:
                onnxruntime: Any = importlib.import_module("onnxruntime")
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                path = model_path or bundled_model_path()
                detector.onnx_session = onnxruntime.InferenceSession(
                    path, sess_options=options, providers=["CPUExecutionProvider"]
                )
            _MODELS[key] = detector
            logger.info("loaded the nudenet detector (%s)", model_path or "bundled 320n.onnx")
        return detector


def bundled_model_path() -> str:
    """Path of the ONNX model inside the installed ``nudenet`` package."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nudenet is not installed")
    return os.path.join(next(iter(spec.submodule_search_locations)), "320n.onnx")


class NudeNetDetector:
    """nudenet's bundled detector. ``threads`` caps ONNX Runtime's intra-op threads (default: its own)."""

    def __init__(self, *, model_path: str | None = None, threads: int | None = None, batch_size: int = 8) -> None:
        self.model_path = model_path
        self.threads = threads
        self.batch_size = batch_size

    def load(self) -> Any:
        return _load_nudenet(self.model_path, self.threads)

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        if not images:
            return []
        detector = self.load()
        raw = detector.detect_batch([to_rgb(image) for image in images], batch_size=self.batch_size)
        if len(raw) != len(images):
            raise RuntimeError(f"nudenet returned {len(raw)} results for {len(images)} images")
        return [[_detection(d) for d in found] for found in raw]


def _detection(raw: dict[str, Any]) -> Detection:
    x, y, w, h = (int(v) for v in raw["box"])
    return Detection(label=str(raw["class"]), score=float(raw["score"]), box=(x, y, w, h))


class NsfwFilter:
    """Blocks images the policy rejects. 2-D points pass (there is nothing to look at)."""

    name = "nsfw"

    def __init__(self, detector: Detector | None = None, policy: NsfwPolicy | None = None) -> None:
        self.detector: Detector = detector if detector is not None else NudeNetDetector()
        self.policy = policy or NsfwPolicy()

    def warm_up(self) -> None:
        """Load the detector's model now (at startup / readiness) instead of on the first request."""
        load = getattr(self.detector, "load", None)
        if callable(load):
            load()

    def check(self, samples: list[Sample], context: RequestContext) -> list[Verdict]:
        images = [s for s in samples if s.is_image]
        found = self.detector.detect([s.pixels for s in images])
        if len(found) != len(images):
            raise RuntimeError(f"detector returned {len(found)} results for {len(images)} images")
        by_index = {id(s): detections for s, detections in zip(images, found, strict=True)}
        verdicts: list[Verdict] = []
        for sample in samples:
            if not sample.is_image:
                verdicts.append(Verdict(self.name, "pass", "not an image"))
                continue
            blocked, reason, score = self.policy.judge(by_index[id(sample)])
            verdicts.append(Verdict(self.name, "block" if blocked else "pass", reason, score))
        return verdicts

    def check_groups(self, groups: list[list[Sample]], contexts: list[RequestContext]) -> list[list[Verdict]]:
        """Several requests' samples in one pass (verdicts do not depend on the other samples); one list each."""
        flat = self.check([s for group in groups for s in group], contexts[0])
        out: list[list[Verdict]] = []
        start = 0
        for group in groups:
            out.append(flat[start : start + len(group)])
            start += len(group)
        return out

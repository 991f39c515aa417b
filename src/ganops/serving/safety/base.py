"""The vocabulary of the safety pipeline: samples, request context, verdicts and the filter protocol.

A *sample* is one generated output on its way to the user. Image models give ``pixels`` as ``uint8`` HWC
(C = 1 grey, 3 RGB, 4 RGBA) and, when the generator's float output is at hand, ``raw`` as CHW floats in
``[-1, 1]`` (what NaN/Inf checks need: a NaN is gone once encoded to ``uint8``). Models of 2-D data give
``pixels`` as a float array of shape ``(2,)`` (one point) and ``raw`` as the same point.

A *filter* looks at a whole batch at once (models such as the NSFW detector are faster batch-wise) and answers
one :class:`Verdict` per sample, in order. Filters do not catch their own errors: the pipeline does, and blocks
every sample that filter was checking (fail-closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Outcome",
    "RequestContext",
    "SafetyFilter",
    "Sample",
    "Verdict",
    "make_samples",
    "to_uint8_hwc",
]

Outcome = Literal["pass", "block", "error"]
OUTCOMES: tuple[Outcome, ...] = ("pass", "block", "error")


@dataclass(frozen=True)
class RequestContext:
    """Who asked for what: carried to every filter and into audit records."""

    request_id: str
    model_name: str = ""
    model_version: str = ""
    label: int | None = None
    api_key_id: str | None = None


@dataclass(frozen=True, eq=False)
class Sample:
    """One output of a generator.

    ``pixels``: ``uint8`` HWC image (C in 1, 3, 4), or a float ``(2,)`` point for 2-D models.
    ``raw``: the generator's float output for this sample when available: CHW in ``[-1, 1]`` (images) or ``(2,)``.
    ``label``: the class it was generated for (conditional models), else ``None``.
    """

    index: int
    pixels: np.ndarray
    raw: np.ndarray | None = None
    label: int | None = None

    @property
    def is_image(self) -> bool:
        """An ``uint8`` HWC image (as opposed to a 2-D point)."""
        return self.pixels.ndim == 3

    @property
    def is_point(self) -> bool:
        return self.pixels.ndim == 1

    def float_data(self) -> np.ndarray:
        """The float data the sample came from: ``raw`` when present, else ``pixels`` as floats."""
        if self.raw is not None:
            return np.asarray(self.raw)
        return np.asarray(self.pixels, dtype=np.float64)

    def chw_float(self) -> np.ndarray:
        """Images as CHW float32 in ``[-1, 1]`` (``raw`` when present, else decoded from ``pixels``)."""
        if not self.is_image:
            raise ValueError(f"sample {self.index} is not an image")
        if self.raw is not None and np.asarray(self.raw).ndim == 3:
            return np.asarray(self.raw, dtype=np.float32)
        return (self.pixels.astype(np.float32).transpose(2, 0, 1) / 127.5) - 1.0


@dataclass(frozen=True)
class Verdict:
    """One filter's answer for one sample. ``reason`` is short and safe to show users; ``score`` is optional."""

    filter: str
    outcome: Outcome
    reason: str = ""
    score: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")

    @property
    def blocks(self) -> bool:
        """Whether this verdict keeps the sample from the user (``block`` and ``error`` both do: fail-closed)."""
        return self.outcome != "pass"


@runtime_checkable
class SafetyFilter(Protocol):
    """A batch-wise check. ``check`` returns exactly one verdict per sample, in the same order."""

    @property
    def name(self) -> str: ...

    def check(self, samples: list[Sample], context: RequestContext) -> list[Verdict]: ...


def to_uint8_hwc(images: np.ndarray) -> np.ndarray:
    """NCHW floats in ``[-1, 1]`` → NHWC ``uint8``; non-finite values become 0 (the raw data keeps them)."""
    finite = np.nan_to_num(np.asarray(images, dtype=np.float32), nan=-1.0, posinf=1.0, neginf=-1.0)
    scaled = np.clip((finite + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(scaled.transpose(0, 2, 3, 1))


def make_samples(outputs: np.ndarray, labels: Sequence[int | None] | None = None) -> list[Sample]:
    """Samples from a generator's batch: NCHW floats in ``[-1, 1]`` (images) or ``(N, 2)`` floats (points)."""
    outputs = np.asarray(outputs)
    n = outputs.shape[0]
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} outputs")
    label_at = (lambda i: labels[i]) if labels is not None else (lambda i: None)
    if outputs.ndim == 4:
        pixels = to_uint8_hwc(outputs)
        return [Sample(i, pixels[i], raw=outputs[i], label=label_at(i)) for i in range(n)]
    if outputs.ndim == 2 and outputs.shape[1] == 2:
        points = outputs.astype(np.float64)
        return [Sample(i, points[i], raw=outputs[i], label=label_at(i)) for i in range(n)]
    raise ValueError(f"expected NCHW images or (N, 2) points, got shape {outputs.shape}")

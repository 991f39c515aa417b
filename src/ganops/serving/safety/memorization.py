"""Memorization filter: blocks outputs that are (nearly) copies of a training example.

The index (training-set features and a distance threshold) and its feature functions are `ganops.memorization`,
shared with the trainer that builds it. Here: the filter that consults it for every served sample.
"""

from __future__ import annotations

import numpy as np

from ganops.memorization import (
    FeatureFn,
    MemorizationIndex,
    default_feature_fn,
    feature_name,
    nearest_distances,
    pixel_features,
    point_features,
)

from .base import RequestContext, Sample, Verdict

__all__ = [
    "FeatureFn",
    "MemorizationFilter",
    "MemorizationIndex",
    "nearest_distances",
    "pixel_features",
    "point_features",
]


class MemorizationFilter:
    """Blocks samples whose nearest training neighbour (in ``feature_fn`` space) is closer than the threshold."""

    name = "memorization"

    def __init__(
        self, index: MemorizationIndex, feature_fn: FeatureFn | None = None, threshold: float | None = None
    ) -> None:
        self.index = index
        self.feature_fn = feature_fn or default_feature_fn
        self.threshold = index.threshold if threshold is None else threshold
        expected = index.metadata.get("feature")
        given = feature_name(self.feature_fn)
        builtin = {feature_name(pixel_features), feature_name(point_features)}
        compatible = expected is None or expected == given or (given == "default" and expected in builtin)
        if not compatible:
            raise ValueError(f"the index was built with features {expected!r}, the filter computes {given!r}")

    def check(self, samples: list[Sample], context: RequestContext) -> list[Verdict]:
        if not samples:
            return []
        if all(s.is_image for s in samples):
            batch = np.stack([s.chw_float() for s in samples])
        elif all(s.is_point for s in samples):
            batch = np.stack([s.float_data().astype(np.float32) for s in samples])
        else:
            raise ValueError("a batch mixes images and points")
        features = self.feature_fn(batch)
        if features.shape[1] != self.index.features.shape[1]:
            raise ValueError(f"feature dim {features.shape[1]} != index dim {self.index.features.shape[1]}")
        distances, _ = self.index.nearest(features)
        verdicts = []
        for distance in distances:
            d = float(distance)
            if d < self.threshold:
                reason = f"memorization: too close to a training example ({d:.4f} < {self.threshold:.4f})"
                verdicts.append(Verdict(self.name, "block", reason, d))
            else:
                verdicts.append(Verdict(self.name, "pass", "", d))
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

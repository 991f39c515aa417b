"""Error types of the evaluation package."""

from __future__ import annotations


class InsufficientSamples(ValueError):
    """Too few samples for a metric to be defined (e.g. a rank-deficient covariance for FID).

    The message always starts with ``insufficient samples (`` so that it can be stored verbatim in an
    evaluation report in place of the metric's value.
    """

    def __init__(self, n: int, required: str) -> None:
        self.n = n
        self.required = required
        super().__init__(f"insufficient samples (n={n} < {required})")


class FeatureExtractorError(RuntimeError):
    """A feature extractor cannot be built: weights missing, unreadable or not matching the architecture."""

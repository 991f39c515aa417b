"""One evaluation's results as a JSON-ready record, and the function that computes it from features.

Metric names (the keys of ``EvaluationReport.metrics``, matching ``status.metrics`` and the promotion gates):

- ``fid`` (``"fid"`` requested), ``kid`` and ``kid_std`` (``"kid"``), ``precision`` and ``recall``
  (``"precision_recall"``), ``modes`` and ``high_quality`` (a fraction in [0, 1]) (``"modes"``).

A metric that is undefined for the sample sizes at hand holds the ``"insufficient samples (…)"`` message instead
of a number, so a report is always complete and JSON-serialisable; ``numeric()`` gives the numbers only (for
MLflow, Prometheus, status and gates).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ganops.trainer.evaluate.errors import InsufficientSamples
from ganops.trainer.evaluate.frechet import FrechetMethod, frechet_distance_from_features
from ganops.trainer.evaluate.kid import kernel_inception_distance
from ganops.trainer.evaluate.modes import ModeSet, mode_coverage
from ganops.trainer.evaluate.precision_recall import precision_recall

__all__ = ["METRIC_KEYS", "EvaluationReport", "MetricValue", "evaluate_features"]

MetricValue = float | int | str

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "fid": ("fid",),
    "kid": ("kid", "kid_std"),
    "precision_recall": ("precision", "recall"),
    "modes": ("modes", "high_quality"),
}


@dataclass
class EvaluationReport:
    extractor: str
    num_real: int
    num_fake: int
    step: int | None = None
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. per-mode counts, KID settings

    def set(self, name: str, value: MetricValue) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            value = f"non-finite ({value})"
        self.metrics[name] = value

    def numeric(self) -> dict[str, float]:
        """The metrics that have a numeric value."""
        return {
            k: float(v) for k, v in self.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationReport:
        return cls(
            extractor=str(data["extractor"]),
            num_real=int(data["num_real"]),
            num_fake=int(data["num_fake"]),
            step=None if data.get("step") is None else int(data["step"]),
            metrics=dict(data.get("metrics", {})),
            details=dict(data.get("details", {})),
        )


def evaluate_features(
    real: ArrayLike,
    fake: ArrayLike,
    metrics: Iterable[str] = ("fid",),
    *,
    extractor: str = "raw",
    step: int | None = None,
    seed: int = 0,
    frechet_method: FrechetMethod = "fast",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    mode_set: ModeSet | None = None,
) -> EvaluationReport:
    """Compute the requested metric groups (``fid``, ``kid``, ``precision_recall``, ``modes``) of ``fake``
    against ``real`` features (both (n, d)). ``modes`` needs raw 2-D ``fake`` samples and a ``mode_set``.
    """
    x_real = np.asarray(real)
    x_fake = np.asarray(fake)
    report = EvaluationReport(
        extractor=extractor, num_real=int(x_real.shape[0]), num_fake=int(x_fake.shape[0]), step=step
    )
    for group in dict.fromkeys(metrics):
        if group not in METRIC_KEYS:
            raise ValueError(f"unknown metric {group!r}: expected one of {', '.join(METRIC_KEYS)}")
        try:
            if group == "fid":
                report.set("fid", frechet_distance_from_features(x_real, x_fake, method=frechet_method))
            elif group == "kid":
                kid = kernel_inception_distance(
                    x_real, x_fake, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
                )
                report.set("kid", kid.mean)
                report.set("kid_std", kid.std)
                report.details["kid"] = {"num_subsets": kid_subsets, "subset_size": kid_subset_size, "seed": seed}
            elif group == "precision_recall":
                pr = precision_recall(x_real, x_fake, k=pr_k)
                report.set("precision", pr.precision)
                report.set("recall", pr.recall)
                report.details["precision_recall"] = {"k": pr_k}
            else:
                if mode_set is None:
                    raise ValueError("the modes metric needs a mode_set (e.g. ring8_modes() or grid25_modes())")
                coverage = mode_coverage(x_fake, mode_set)
                report.set("modes", coverage.modes_captured)
                report.set("high_quality", coverage.high_quality_fraction)
                report.details["modes"] = {"mode_set": mode_set.name, **coverage.to_dict()}
        except InsufficientSamples as exc:
            for key in METRIC_KEYS[group]:
                report.set(key, str(exc))
    return report

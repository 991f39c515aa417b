"""Quality metrics for generative models: pure functions of feature arrays, plus feature extractors.

Metrics (numpy/scipy only): ``frechet_distance`` (FID, pytorch-fid formula) and its fast eigenvalue twin,
``kernel_inception_distance`` (KID), ``precision_recall`` (Kynkäänniemi et al. 2019), ``mode_coverage`` (2-D
mixtures, VEEGAN/PacGAN protocol), and ``evaluate_features`` that bundles them into an ``EvaluationReport``.

Feature extractors (torch; imported lazily so the metrics alone do not import torch): ``RawFeatures``,
``InceptionV3`` (FID Inception pool3, weights from a configured URI) and ``DigitsFeatures`` (bundled CNN),
built by name with ``build_extractor``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ganops.trainer.evaluate.errors import FeatureExtractorError, InsufficientSamples
from ganops.trainer.evaluate.frechet import (
    FastBackend,
    FrechetMethod,
    feature_statistics,
    frechet_distance,
    frechet_distance_fast,
    frechet_distance_from_features,
)
from ganops.trainer.evaluate.kid import KIDResult, kernel_inception_distance
from ganops.trainer.evaluate.modes import ModeCoverage, ModeSet, grid25_modes, mode_coverage, ring8_modes
from ganops.trainer.evaluate.precision_recall import PrecisionRecall, precision_recall
from ganops.trainer.evaluate.report import METRIC_KEYS, EvaluationReport, MetricValue, evaluate_features

if TYPE_CHECKING:
    from ganops.trainer.evaluate.features import (
        DigitsFeatures,
        FeatureExtractor,
        InceptionV3,
        LoadBytes,
        RawFeatures,
        build_extractor,
        default_extractor_name,
    )

__all__ = [
    "METRIC_KEYS",
    "DigitsFeatures",
    "EvaluationReport",
    "FastBackend",
    "FeatureExtractor",
    "FeatureExtractorError",
    "FrechetMethod",
    "InceptionV3",
    "InsufficientSamples",
    "KIDResult",
    "LoadBytes",
    "MetricValue",
    "ModeCoverage",
    "ModeSet",
    "PrecisionRecall",
    "RawFeatures",
    "build_extractor",
    "default_extractor_name",
    "evaluate_features",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_fast",
    "frechet_distance_from_features",
    "grid25_modes",
    "kernel_inception_distance",
    "mode_coverage",
    "precision_recall",
    "ring8_modes",
]

_LAZY = {
    "DigitsFeatures",
    "FeatureExtractor",
    "InceptionV3",
    "LoadBytes",
    "RawFeatures",
    "build_extractor",
    "default_extractor_name",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("ganops.trainer.evaluate.features"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

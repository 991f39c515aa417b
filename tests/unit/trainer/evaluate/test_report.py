"""EvaluationReport: every requested metric present, insufficient samples as a message, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ganops.trainer.evaluate import EvaluationReport, evaluate_features, grid25_modes


def test_report_with_all_metrics_round_trips_through_json() -> None:
    grid = grid25_modes()
    real = grid.sample(400, seed=0)
    fake = grid.sample(400, seed=1)
    report = evaluate_features(
        real, fake, ["fid", "kid", "precision_recall", "modes"], step=100, kid_subsets=5, mode_set=grid
    )
    assert set(report.metrics) == {"fid", "kid", "kid_std", "precision", "recall", "modes", "high_quality"}
    assert report.metrics["modes"] == 25
    assert report.numeric()["recall"] > 0.9
    assert report.details["modes"]["mode_set"] == "grid25"
    again = EvaluationReport.from_dict(json.loads(report.to_json()))
    assert again == report


def test_insufficient_samples_become_messages() -> None:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((100, 64))
    fake = rng.standard_normal((3, 64))
    report = evaluate_features(real, fake, ["fid", "kid", "precision_recall"], kid_subsets=2)
    assert report.metrics["fid"] == "insufficient samples (n=3 < d+1=65)"
    assert str(report.metrics["precision"]).startswith("insufficient samples (n=3")
    assert isinstance(report.metrics["kid"], float)
    assert set(report.numeric()) == {"kid", "kid_std"}
    json.loads(report.to_json())


def test_unknown_metric_and_missing_mode_set() -> None:
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_features(x, x, ["is"])
    with pytest.raises(ValueError, match="mode_set"):
        evaluate_features(x, x, ["modes"])

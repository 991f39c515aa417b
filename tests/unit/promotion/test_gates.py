"""`evaluate_gates`: pure, and every failure says which gate, by how much."""

from __future__ import annotations

import math

import pytest

from ganops.api.spec import GatesSpec
from ganops.checkpoints import manifest_metrics
from ganops.promotion import evaluate_gates


def gates(**wire: float) -> GatesSpec:
    return GatesSpec.model_validate(wire)


def test_no_gates_pass_anything() -> None:
    decision = evaluate_gates(gates(), {})
    assert decision.passed and decision.failures == [] and decision.describe() == "passed (no gates set)"


def test_each_failure_names_the_gate_the_value_and_the_margin() -> None:
    decision = evaluate_gates(
        gates(maxFID=60, minRecall=0.5, minModes=25, minHighQuality=0.9, maxSafetyBlockRate=0.01),
        {"fid": 72.4, "recall": 0.41, "modes": 23, "high_quality": 0.95, "safety_block_rate": 0.0},
    )
    assert not decision.passed
    assert decision.failures == [
        "fid 72.4 > maxFID 60 (by 12.4)",
        "recall 0.41 < minRecall 0.5 (by 0.09)",
        "modes 23 < minModes 25 (by 2)",
    ]
    assert decision.passes == [
        "high_quality 0.95 >= minHighQuality 0.9",
        "safety_block_rate 0 <= maxSafetyBlockRate 0.01",
    ]
    assert decision.describe().startswith("rejected: fid 72.4 > maxFID 60 (by 12.4); ")


@pytest.mark.parametrize("value", [None, "insufficient samples (n=5)", math.nan, math.inf, True])
def test_a_gate_whose_metric_is_missing_or_not_a_number_fails(value: object) -> None:
    metrics = {} if value is None else {"fid": value}
    decision = evaluate_gates(gates(maxFID=60), metrics)
    assert decision.failures == ["metric fid was not measured (gate maxFID 60)"]


def test_thresholds_are_inclusive() -> None:
    assert evaluate_gates(gates(maxFID=60, minRecall=0.5), {"fid": 60.0, "recall": 0.5}).passed


def test_unset_gates_ignore_their_metrics() -> None:
    assert evaluate_gates(gates(minModes=20), {"modes": 25, "fid": 900.0}).passed


def test_manifest_metrics_takes_numbers_only() -> None:
    assert manifest_metrics({"metrics": {"fid": 41.5, "kid": "insufficient samples", "modes": 25}}) == {
        "fid": 41.5, "modes": 25.0}
    assert manifest_metrics({"metrics": {"metrics": {"recall": 0.7}, "step": 5}}) == {"recall": 0.7}
    assert manifest_metrics({}) == {}

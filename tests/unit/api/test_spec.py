"""The job spec: defaults, wire names, round trips and the messages a user sees for bad input."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ganops.api.loader import JobFileError, dump_job, job_from_object, load_job, parse_yaml, spec_from_object
from ganops.api.spec import GanTrainingJob, GanTrainingJobStatus

EXAMPLES = sorted((Path(__file__).parents[3] / "manifests" / "examples").glob("*.yaml"))


def minimal(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ganops.io/v1alpha1",
        "kind": "GanTrainingJob",
        "metadata": {"name": "j"},
        "spec": {"dataset": {"uri": "builtin:digits"}, "model": {"channels": 1, "imageSize": 16}, **spec},
    }


def problems(obj: dict[str, Any]) -> list[str]:
    with pytest.raises(JobFileError) as info:
        job_from_object(obj)
    return info.value.problems


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_and_round_trip(path: Path) -> None:
    job = load_job(path)
    again = job_from_object(yaml.safe_load(dump_job(job)))
    assert again == job


def test_examples_cover_the_four_required_jobs() -> None:
    jobs = [load_job(p).spec for p in EXAMPLES]
    assert any(s.dataset.uri == "builtin:grid25" for s in jobs)
    assert any(s.dataset.uri == "builtin:digits" for s in jobs)
    assert any(s.model.image_size == 64 and s.resources.gpus_per_replica == 1 for s in jobs)
    assert any(s.resources.replicas == 2 and s.resources.gpus_per_replica == 4 for s in jobs)


def test_defaults_and_camel_case_wire_names() -> None:
    job = job_from_object(minimal())
    assert job.spec.training.precision == "fp32"
    assert job.spec.loss.type == "non-saturating"
    assert job.spec.promotion.alias == "production"
    wire = job.model_dump(by_alias=True, mode="json")
    assert "lrGenerator" in wire["spec"]["optimizer"]
    assert "maxCostUSD" in wire["spec"]["budget"]
    assert "maxGPUHours" in wire["spec"]["budget"]
    assert "activeDeadlineSeconds" in wire["spec"]["runPolicy"]


def test_negative_learning_rate_names_field_and_fix() -> None:
    assert problems(minimal(optimizer={"lrGenerator": -1})) == ["spec.optimizer.lrGenerator must be > 0.0 (got -1)"]


def test_every_problem_gets_its_own_line() -> None:
    obj = minimal(
        optimizer={"lrGenerator": 0, "betas": [0.5, 1.5]},
        training={"precision": "fp8", "batchSize": "big"},
        model={"architecure": "dcgan", "channels": 1, "imageSize": 16},
    )
    lines = problems(obj)
    assert "spec.optimizer.lrGenerator must be > 0.0 (got 0)" in lines
    assert "spec.optimizer.betas[1] must be < 1.0 (got 1.5)" in lines
    assert "spec.training.precision must be one of 'fp32', 'bf16' or 'fp16' (got 'fp8')" in lines
    assert "spec.training.batchSize must be a whole number (got 'big')" in lines
    assert "spec.model.architecure is not a known field; did you mean 'architecture'?" in lines
    assert len(lines) == 5


def test_missing_dataset_is_required() -> None:
    obj = minimal()
    del obj["spec"]["dataset"]
    assert problems(obj) == ["spec.dataset is required: add it"]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            {"model": {"architecture": "mlp", "imageSize": 2}},
            "spec.model.architecture must be 'mlp' for the 2-D datasets",
        ),
        ({"model": {"imageSize": 24, "channels": 1}}, "spec.model.imageSize must be one of 8, 16, 32, 64, 128"),
        ({"model": {"imageSize": 16, "channels": 3}}, "spec.model.channels must be 1 for builtin:digits"),
        ({"model": {"imageSize": 16, "channels": 1, "numClasses": 3}}, "spec.model.numClasses must be unset"),
        ({"evaluation": {"metrics": ["modes"]}}, "spec.evaluation.metrics may only include 'modes'"),
        ({"evaluation": {"featureExtractor": "inception"}}, "spec.evaluation.inceptionWeightsUri is required"),
        ({"resources": {"gpuType": "a100"}}, "spec.resources.gpuType needs gpusPerReplica > 0"),
        ({"dataset": {"uri": "builtin:cifar"}}, "spec.dataset.uri must be one of builtin:ring8"),
        ({"checkpoint": {"uri": "gs://bucket"}}, "spec.checkpoint.uri must start with s3:// or file://"),
    ],
)
def test_cross_field_rules_name_the_field(patch: dict[str, Any], expected: str) -> None:
    obj = minimal()
    for key, value in patch.items():
        obj["spec"][key] = {**obj["spec"].get(key, {}), **value}
    lines = problems(obj)
    assert any(line.startswith(expected) for line in lines), lines


def test_bare_spec_errors_are_prefixed_with_spec() -> None:
    with pytest.raises(JobFileError) as info:
        spec_from_object(
            {"dataset": {"uri": "builtin:digits"}, "model": {"channels": 1, "imageSize": 16}, "training": {"steps": 0}}
        )
    assert info.value.problems == ["spec.training.steps must be >= 1 (got 0)"]


def test_yaml_bomb_and_oversize_and_garbage_are_refused() -> None:
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    with pytest.raises(JobFileError, match="aliases"):
        parse_yaml(bomb)
    with pytest.raises(JobFileError, match="larger than"):
        parse_yaml("a: " + "x" * (2 << 20))
    with pytest.raises(JobFileError, match="not valid YAML at line 1"):
        parse_yaml("a: [1, 2")
    with pytest.raises(JobFileError, match="exactly one YAML document"):
        parse_yaml("a: 1\n---\nb: 2\n")
    with pytest.raises(JobFileError, match="expected a GanTrainingJob mapping"):
        job_from_object(["not", "a", "mapping"])


def test_huge_strings_are_bounded() -> None:
    lines = problems(minimal(dataset={"uri": "s3://" + "x" * 5000}))
    assert lines == ["spec.dataset.uri must be at most 2048 characters long"]


# Every field the operator writes, as it writes them (tests/unit/operator/test_reconcile.py drives them one by one).
FULL_STATUS: dict[str, Any] = {
    "phase": "Succeeded",
    "conditions": [{"type": "Promoted", "status": "True", "reason": "Promoted", "message": "m@production → version 2",
                    "lastTransitionTime": "2025-01-01T12:00:00Z"}],
    "observedGeneration": 3,
    "attempt": 2,
    "step": 20,
    "lastCheckpoint": {"uri": "s3://b/c/ns/j/step-000000020", "step": 20, "sha256": "ab" * 32,
                       "time": "2025-01-01T11:59:00Z", "metric": -24.0},
    "bestCheckpoint": {"uri": "s3://b/c/ns/j/step-000000020", "step": 20, "metric": -24.0},
    "metrics": {"modes": 24.0},
    "restarts": {"preemptions": 1, "failures": 0},
    "cost": {"usd": 1.5, "gpuHours": 0.5},
    "accounting": {"attempt": 2, "bankedGpuSeconds": 1200.0, "pods": {"j-0-abc": 600.0}},
    "mlflowRunId": "abc",
    "promotedVersion": "2",
    "promotedMetrics": {"modes": 24.0},
    "promotions": {"promoted": 1, "rejected": 1},
    "promotionAttemptedAt": "2025-01-01T12:00:00Z",
    "startTime": "2025-01-01T11:00:00Z",
    "completionTime": "2025-01-01T12:00:00Z",
    "message": "training finished at step 20",
}


def test_status_round_trips_exactly_what_the_operator_wrote() -> None:
    """Read and written again unchanged: the operator's merge patch of an unchanged status is empty."""
    for status in (FULL_STATUS, {}, {"phase": "Pending", "restarts": {"preemptions": 1}}):
        assert GanTrainingJobStatus.from_wire(copy.deepcopy(status)).to_wire() == status
    obj = copy.deepcopy(minimal())
    obj["status"] = copy.deepcopy(FULL_STATUS)
    job = GanTrainingJob.model_validate(obj)
    assert job.status is not None and job.status.cost.gpu_hours == 0.5 and job.status.accounting is not None


def test_status_refuses_unknown_fields() -> None:
    """A mistyped key is an error, not a silently kept extra (the CRD's status schema is explicit too)."""
    for bad in ({"futureField": 1}, {"promotedMetric": {"fid": 1.0}}, {"accounting": {"bankedGPUSeconds": 1.0}},
                {"conditions": [{"type": "Running", "status": "True", "lastTransitionTme": "x"}]}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            GanTrainingJobStatus.from_wire(bad)
    status = GanTrainingJobStatus()
    with pytest.raises(ValueError, match="has no field"):
        status.promotion_attempted = "now"  # type: ignore[attr-defined]


def test_salvage_drops_only_the_keys_that_do_not_validate() -> None:
    """At the operator's edge a hand-edited status loses its bad keys instead of stopping the job's reconciles."""
    status, dropped = GanTrainingJobStatus.salvage({"phase": "Running", "step": 40, "futureField": 1,
                                                    "attempt": "two", "cost": {"usd": 1.5}})
    assert dropped == ["attempt", "futureField"]
    assert status.phase == "Running" and status.step == 40 and status.cost.usd == 1.5 and status.attempt is None
    assert GanTrainingJobStatus.salvage(None) == (GanTrainingJobStatus(), [])
    assert GanTrainingJobStatus.salvage({"phase": "Exploded"})[1] == ["phase"]


def test_status_on_the_wire_leaves_out_what_is_unset_or_none() -> None:
    status = GanTrainingJobStatus.from_wire({"phase": "Succeeded", "completionTime": "t", "promotedMetrics": {"a": 1}})
    assert status.to_wire() == {"phase": "Succeeded", "completionTime": "t", "promotedMetrics": {"a": 1.0}}
    status.phase, status.completion_time, status.promoted_metrics = "Pending", None, None
    status.attempt = 1
    assert status.to_wire() == {"phase": "Pending", "attempt": 1}  # restarts, cost: defaults nobody set

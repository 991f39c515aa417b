"""The CRD is generated from the models: it must not drift, must be structural and valid, and its CEL rules
must reject exactly what the pydantic rules reject."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml

from ganops.api.crd import build_crd, crd_yaml
from ganops.api.loader import JobFileError, job_from_object
from ganops.api.rules import RULES
from ganops.api.spec import GanTrainingJobSpec
from tests.support.schema import KUBERNETES_VERSION, apply_defaults, cel_failures, openapi_errors

ROOT = Path(__file__).parents[3]
CRD_FILE = ROOT / "manifests" / "crd" / "ganops.io_gantrainingjobs.yaml"
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "CRD drifted: run `make manifests` (ganops crd -o ...)"


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), KUBERNETES_VERSION, strict=True)


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)] if isinstance(node, dict) else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}/{i}")
    return found


def test_schema_is_structural() -> None:
    for path, node in _walk(SCHEMA):
        assert "$ref" not in node and "anyOf" not in node and "prefixItems" not in node, path
        assert not ("properties" in node and node.get("type") != "object"), path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if "exclusiveMinimum" in node:
            assert isinstance(node["exclusiveMinimum"], bool), path


def test_status_schema_is_explicit() -> None:
    """Every status field the operator writes is declared; nothing under status keeps unknown fields (the API
    server prunes them, and `GanTrainingJobStatus` refuses them)."""
    status = SCHEMA["properties"]["status"]
    assert not any(node.get("x-kubernetes-preserve-unknown-fields") for _, node in _walk(status))
    assert set(status["properties"]) == {
        "phase", "conditions", "observedGeneration", "attempt", "step", "lastCheckpoint", "bestCheckpoint", "metrics",
        "restarts", "cost", "accounting", "mlflowRunId", "promotedVersion", "promotedMetrics", "promotions",
        "promotionAttemptedAt", "startTime", "completionTime", "message",
    }
    assert set(status["properties"]["accounting"]["properties"]) == {"attempt", "bankedGpuSeconds", "pods"}
    assert set(status["properties"]["promotions"]["properties"]) == {"promoted", "rejected"}


def test_printer_columns_and_names() -> None:
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Step", "FID", "Cost", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["gtj"]
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_the_crd_schema_and_rules(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    defaulted = apply_defaults(SCHEMA, obj)
    assert openapi_errors(SCHEMA, defaulted) == []
    assert cel_failures(SCHEMA, defaulted) == []


def _base() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifests" / "examples" / "digits.yaml").read_text())


def _grid() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifests" / "examples" / "grid25.yaml").read_text())


def _dcgan_on_grid(o: dict[str, Any]) -> dict[str, Any]:
    grid = _grid()
    grid["spec"]["model"].update(architecture="dcgan", imageSize=8)
    grid["spec"]["evaluation"]["metrics"] = ["fid"]
    del grid["spec"]["promotion"]["gates"]["minModes"]
    return grid


# (name, mutation of the digits example, whether the result is valid)
MUTATIONS: list[tuple[str, Any, bool]] = [
    ("digits as is", lambda o: o, True),
    ("grid as is", lambda o: _grid(), True),
    ("mlp on digits", lambda o: o["spec"]["model"].update(architecture="mlp"), False),
    ("dcgan on grid", _dcgan_on_grid, False),
    ("image size 24", lambda o: o["spec"]["model"].update(imageSize=24), False),
    ("digits rgb", lambda o: o["spec"]["model"].update(channels=3), False),
    ("digits 3 classes", lambda o: o["spec"]["model"].update(numClasses=3), False),
    ("digits 10 classes", lambda o: o["spec"]["model"].update(numClasses=10), True),
    ("modes on digits", lambda o: o["spec"]["evaluation"].update(metrics=["modes", "fid"]), False),
    ("minModes on digits", lambda o: o["spec"]["promotion"]["gates"].update(minModes=3), False),
    ("inception without weights", lambda o: o["spec"]["evaluation"].update(featureExtractor="inception"), False),
    (
        "inception with weights",
        lambda o: o["spec"]["evaluation"].update(featureExtractor="inception", inceptionWeightsUri="s3://m/w.pth"),
        True,
    ),
    ("gpu type without gpus", lambda o: o["spec"].update(resources={"gpuType": "a100"}), False),
    ("gpu type with gpus", lambda o: o["spec"].update(resources={"gpuType": "a100", "gpusPerReplica": 1}), True),
    ("unknown builtin", lambda o: o["spec"]["dataset"].update(uri="builtin:cifar"), False),
    ("s3 dataset", lambda o: o["spec"]["dataset"].update(uri="s3://b/x.zip"), True),
    ("gs dataset", lambda o: o["spec"]["dataset"].update(uri="gs://b/x.zip"), False),
    ("gs checkpoint", lambda o: o["spec"]["checkpoint"].update(uri="gs://b"), False),
    ("pvc and nfs volumes", lambda o: o["spec"].update(volumes=[
        {"name": "a", "mountPath": "/data/a", "persistentVolumeClaim": {"claimName": "a"}},
        {"name": "b", "mountPath": "/mnt/b", "nfs": {"server": "nfs", "path": "/exports/b"}}]), True),
    ("volume without a source", lambda o: o["spec"].update(volumes=[{"name": "a", "mountPath": "/data/a"}]), False),
    ("volume with two sources", lambda o: o["spec"].update(volumes=[
        {"name": "a", "mountPath": "/data/a", "persistentVolumeClaim": {"claimName": "a"},
         "nfs": {"server": "nfs", "path": "/exports/a"}}]), False),
    ("volumes sharing a name", lambda o: o["spec"].update(volumes=[
        {"name": "a", "mountPath": "/data/a", "persistentVolumeClaim": {"claimName": "a"}},
        {"name": "a", "mountPath": "/data/b", "persistentVolumeClaim": {"claimName": "b"}}]), False),
    ("file dataset", lambda o: o["spec"]["dataset"].update(uri="file:///data/digits.zip"), True),
    ("file checkpoint", lambda o: o["spec"]["checkpoint"].update(uri="file:///var/ckpt"), True),
    ("classes on grid", lambda o: (g := _grid())["spec"]["model"].update(numClasses=2) or g, False),
    ("mlp and rgb on digits", lambda o: o["spec"]["model"].update(architecture="mlp", channels=3), False),
]


def _mutated(mutate: Any) -> dict[str, Any]:
    obj = _base()
    result = mutate(obj)
    return result if isinstance(result, dict) else obj


@pytest.mark.parametrize(("name", "mutate", "valid"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_cel_rules_agree_with_pydantic(name: str, mutate: Any, valid: bool) -> None:
    obj = _mutated(mutate)
    try:
        job_from_object(copy.deepcopy(obj))
        python_rejects: list[str] = []
    except JobFileError as exc:
        python_rejects = exc.problems
    cel = cel_failures(SCHEMA, apply_defaults(SCHEMA, obj))
    assert sorted(python_rejects) == sorted(cel), (python_rejects, cel)
    assert valid == (not cel), cel


def test_every_rule_is_exercised_by_a_mutation() -> None:
    rejected: set[str] = set()
    for _, mutate, _valid in MUTATIONS:
        rejected |= set(cel_failures(SCHEMA, apply_defaults(SCHEMA, _mutated(mutate))))
    assert {r.full_message for r in RULES} <= rejected


def test_broken_rules_are_reported_together_and_rules_are_fixed() -> None:
    obj = _base()
    obj["spec"]["model"].update(architecture="mlp", channels=3)
    with pytest.raises(JobFileError) as info:
        job_from_object(obj)
    assert info.value.problems == [
        "spec.model.architecture must be 'mlp' for the 2-D datasets (builtin:ring8, builtin:grid25) and 'dcgan' or "
        "'resnet' for image datasets: change the architecture or the dataset",
        "spec.model.channels must be 1 for builtin:digits (grey-scale)"]
    with pytest.raises(pydantic.ValidationError) as raw:
        GanTrainingJobSpec.model_validate(obj["spec"])
    assert raw.value.errors()[0]["msg"] == "; ".join(p.removeprefix("spec.") for p in info.value.problems)
    with pytest.raises(dataclasses.FrozenInstanceError):
        RULES[0].message = "x"  # type: ignore[misc]


def test_object_defaults_are_whole_and_exclusive_bounds_integral() -> None:
    """What the real API server needs of a default and a bound (tests/integration/controlplane/test_crd.py applies
    the CRD there): a nested object's default is validated as it stands, CEL rules included, so it is written out
    whole; an exclusive bound is compared as an integer for an integral value, so a fractional one is a CEL rule."""
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "default" in node:
            assert node["default"] != {} or not node.get("x-kubernetes-validations"), path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if node.get(key):
                bound = node["minimum" if key == "exclusiveMinimum" else "maximum"]
                assert float(bound).is_integer(), (path, key, bound)
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    smoothing = schema["properties"]["spec"]["properties"]["loss"]["properties"]["labelSmoothing"]
    assert smoothing["maximum"] == 0.5 and "exclusiveMaximum" not in smoothing
    assert smoothing["x-kubernetes-validations"] == [{"rule": "self < 0.5", "message": "must be less than 0.5"}]

"""The CRD is generated from the models: it must not drift, must be structural and valid, and its CEL rules
must reject exactly what the pydantic rules reject."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml

from ganops.api.crd import build_crd, crd_yaml
from ganops.api.loader import JobFileError, job_from_object
from ganops.api.rules import RULES, Rule
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


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _verdicts(obj: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What `ganops validate` (pydantic) and the CRD's CEL rules (after the API server's defaulting) reject."""
    try:
        job_from_object(copy.deepcopy(obj))
        python_rejects: list[str] = []
    except JobFileError as exc:
        python_rejects = exc.problems
    return python_rejects, cel_failures(SCHEMA, apply_defaults(SCHEMA, copy.deepcopy(obj)))


# Generated from every rule's own examples (`Rule.good` / `Rule.bad`), each merged into the digits example: a rule
# added without examples fails `test_every_rule_has_good_and_bad_examples`, and a branch of a CEL rule dropped (say
# `file://` from the dataset rule) fails its good example here.
CASES = [(f"{i}:{rule.node or 'root'}.{rule.field}:{kind}{n}", rule, patch, kind == "good")
         for i, rule in enumerate(RULES) for kind, patches in (("good", rule.good), ("bad", rule.bad))
         for n, patch in enumerate(patches)]


@pytest.mark.parametrize(("name", "rule", "patch", "valid"), CASES, ids=[c[0] for c in CASES])
def test_cel_rules_agree_with_pydantic(name: str, rule: Rule, patch: dict[str, Any], valid: bool) -> None:
    python_rejects, cel = _verdicts(_merge(_base(), patch))
    if not any(p.startswith(("spec.", "metadata.")) for p in python_rejects) and python_rejects:
        pytest.fail(f"the example does not reach the rules: {python_rejects}")
    assert sorted(python_rejects) == sorted(cel), (python_rejects, cel)
    assert (rule.full_message not in cel) == valid, cel


def test_every_rule_has_good_and_bad_examples() -> None:
    for rule in RULES:
        assert rule.good and rule.bad, rule.full_message


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_pass_both(path: Path) -> None:
    assert _verdicts(yaml.safe_load(path.read_text())) == ([], [])


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
        if node.get("type") == "object" and node.get("default") == {}:
            # `{}` is only safe when every rule reads its fields behind has() (the URI rules: `!has(self.uri) || ...`)
            for rule in node.get("x-kubernetes-validations", []):
                read = set(re.findall(r"self\.(\w+)", rule["rule"]))
                assert read <= set(re.findall(r"has\(self\.(\w+)\)", rule["rule"])), (path, rule["rule"])
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

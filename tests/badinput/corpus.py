"""Malformed job files: what a careless (or hostile) user might `kubectl apply` or `ganops validate`.

Each case is the raw text of a file, the problem line `ganops validate` must print (it names the field and the
fix), and whether the case is a well-formed YAML object (so it can reach the CRD schema and the operator).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from tests.support.jobs import grid_job


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    says: str  # a substring of the one problem line `ganops validate` prints for it
    field: str | None = None  # the field a schema or the operator must name (None: the file is not a YAML object)
    crd: str = "rejects"  # "rejects": OpenAPI/CEL refuse it; "unknown": not in the schema (pruned, or refused
    # by strict field validation); "accepts": only ganops itself refuses it (the operator must then do so);
    # "unsendable": JSON cannot carry it (NaN), so kubectl cannot send it to the API server at all

    def obj(self) -> dict[str, Any]:
        loaded = yaml.safe_load(self.text)
        assert isinstance(loaded, dict)
        return loaded


def good(name: str = "good") -> dict[str, Any]:
    return grid_job(name, training={"steps": 40})


def _mutated(name: str, edit: Callable[[dict[str, Any]], Any]) -> str:
    obj = copy.deepcopy(good(name))
    edit(obj)
    return yaml.safe_dump(obj, sort_keys=False)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = obj
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = obj
        for part in parents:
            node = node[part]
        del node[last]

    return edit


def _field_case(name: str, path: str, value: Any, says: str, crd: str = "rejects") -> Case:
    return Case(name, _mutated(name, _set(path, value)), says, field=path, crd=crd)


def _billion_laughs() -> str:
    lines = ['lol0: &lol0 "lol"']
    lines += [f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n" + _mutated("laughs", lambda o: None) + "extra: *lol9\n"


def _anchored_spec() -> str:  # a small, harmless-looking alias inside a real job: still refused
    text = _mutated("anchored", lambda o: None)
    return text.replace("  dataset:\n", "  dataset: &data\n", 1) + "extra: *data\n"


CASES: list[Case] = [
    # wrong types
    _field_case("steps-as-text", "spec.training.steps", "many", "spec.training.steps must be a whole number"),
    _field_case("latent-as-list", "spec.model.latentDim", [2], "spec.model.latentDim must be a whole number"),
    _field_case("batch-as-fraction", "spec.training.batchSize", 3.5, "spec.training.batchSize must be a whole number"),
    _field_case("steps-as-boolean", "spec.training.steps", True, "spec.training.steps must be a whole number"),
    _field_case("spec-as-text", "spec", "train me", "spec must be a mapping of fields"),
    _field_case("tolerations-as-text", "spec.resources.tolerations", "all",
                "spec.resources.tolerations must be a list"),
    _field_case("deterministic-as-text", "spec.training.deterministic", "yes please",
                "spec.training.deterministic must be true or false"),
    # negative or impossible rates and counts
    _field_case("negative-lr", "spec.optimizer.lrGenerator", -0.001, "spec.optimizer.lrGenerator must be > 0"),
    _field_case("zero-lr", "spec.optimizer.lrDiscriminator", 0, "spec.optimizer.lrDiscriminator must be > 0"),
    _field_case("nan-lr", "spec.optimizer.lrGenerator", float("nan"),
                "spec.optimizer.lrGenerator must be a finite number", crd="unsendable"),
    _field_case("negative-seed", "spec.training.seed", -5, "spec.training.seed must be >= 0"),
    _field_case("zero-checkpoint-interval", "spec.checkpoint.everySteps", 0, "spec.checkpoint.everySteps must be >= 1"),
    _field_case("negative-budget", "spec.budget.maxCostUSD", -10, "spec.budget.maxCostUSD must be > 0"),
    _field_case("negative-fid-gate", "spec.promotion.gates.maxFID", -1, "spec.promotion.gates.maxFID must be >= 0"),
    # unknown choices
    _field_case("unknown-architecture", "spec.model.architecture", "transformer",
                "spec.model.architecture must be one of 'dcgan', 'resnet' or 'mlp'"),
    _field_case("unknown-precision", "spec.training.precision", "fp8", "spec.training.precision must be one of"),
    _field_case("unknown-loss", "spec.loss.type", "wasserstein-ish", "spec.loss.type must be one of"),
    _field_case("unknown-builtin-dataset", "spec.dataset.uri", "builtin:cifar", "spec.dataset.uri"),
    # URIs that carry credentials or climb out of their prefix (issue 13: they reached MLflow params and the
    # operator's credentials followed them)
    _field_case("mlflow-uri-with-user-info", "spec.tracking.mlflowUri", "https://u:tok@ml.example.com",
                "spec.tracking.mlflowUri must be an http(s)://<host>[:port][/path] URL without user-info"),
    _field_case("presigned-dataset-uri", "spec.dataset.uri", "s3://b/x.npz?X-Amz-Signature=abc",
                "spec.dataset.uri must be one of"),
    _field_case("checkpoint-uri-escaping-its-prefix", "spec.checkpoint.uri", "s3://b/team-b/../team-a",
                "spec.checkpoint.uri must be an s3://<bucket>/… or file://… URI without a query string"),
    # missing
    Case("missing-dataset", _mutated("missing-dataset", _drop("spec.dataset")), "spec.dataset is required: add it",
         field="spec.dataset"),
    _field_case("missing-dataset-uri", "spec.dataset", {}, "spec.dataset.uri is required: add it"),
    Case("missing-name", _mutated("x", _drop("metadata.name")), "metadata.name is required", field="metadata.name",
         crd="accepts"),
    # absurd sizes
    _field_case("absurd-steps", "spec.training.steps", 10**15, "spec.training.steps must be <= "),
    _field_case("absurd-batch", "spec.training.batchSize", 10**9, "spec.training.batchSize must be <= "),
    _field_case("absurd-image", "spec.model.imageSize", 65536, "spec.model.imageSize must be <= "),
    _field_case("absurd-replicas", "spec.resources.replicas", 100_000, "spec.resources.replicas must be <= "),
    _field_case("absurd-latent", "spec.model.latentDim", 10**7, "spec.model.latentDim must be <= "),
    _field_case("absurd-metric-list", "spec.evaluation.metrics", ["modes"] * 5000,
                "spec.evaluation.metrics must have at most"),
    # huge strings
    _field_case("huge-dataset-uri", "spec.dataset.uri", "s3://bucket/" + "x" * 200_000,
                "spec.dataset.uri must be at most 2048 characters"),
    _field_case("huge-queue-name", "spec.queueName", "q" * 100_000, "spec.queueName must be at most"),
    # unknown fields (typos must not pass silently)
    _field_case("typo-in-spec", "spec.modle", {"width": 8}, "spec.modle is not a known field; did you mean 'model'?",
                crd="unknown"),
    _field_case("unknown-model-field", "spec.model.layers", 5, "spec.model.layers is not a known field", crd="unknown"),
    # not a job at all, or YAML that must be refused before it is expanded
    Case("billion-laughs", _billion_laughs(), "YAML aliases (*name) are not allowed"),
    Case("small-alias", _anchored_spec(), "YAML aliases (*name) are not allowed"),
    Case("deep-nesting", "spec: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper than"),
    Case("huge-number", _mutated("x", lambda o: None).replace("steps: 40", "steps: " + "9" * 5000),
         "a value cannot be read"),
    Case("duplicate-spec", _mutated("dup", lambda o: None) + "spec: {}\n", "duplicate key 'spec'"),
    Case("too-big-file", _mutated("big", lambda o: None) + "# " + "x" * (2 << 20) + "\n", "file is larger than"),
    Case("python-object-tag", _mutated("tag", lambda o: None) + "x: !!python/object/apply:os.system ['true']\n",
         "could not determine a constructor"),
    Case("two-documents", _mutated("a", lambda o: None) + "---\n" + _mutated("b", lambda o: None),
         "expected exactly one YAML document, found 2"),
    Case("empty-file", "", "expected exactly one YAML document, found 0"),
    Case("a-list", "- 1\n- 2\n", "expected a GanTrainingJob mapping"),
    Case("binary", "\x00\x01\x02 not yaml", "not valid YAML"),
    Case("tab-indent", _mutated("tab", lambda o: None).replace("  model:", "\tmodel:"), "not valid YAML at line"),
]

"""Cross-field rules, written once and enforced twice.

Each rule carries a CEL expression (emitted into the CRD as `x-kubernetes-validations`, so the API server rejects
the job at admission) and the same predicate in Python (run by the pydantic models, so `ganops validate`, the
trainer and the operator reject it too). `tests/unit/api/test_crd.py` evaluates both on the same inputs and fails
when they disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError

from ganops.contracts import BUILTIN_DATASETS, MIXTURE_DATASETS

POINT_DATASETS = MIXTURE_DATASETS
CONV_IMAGE_SIZES = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Rule:
    model: str  # pydantic class the rule belongs to; its schema node receives the CEL rule
    node: str  # wire path of that node from the resource root, e.g. "spec.model"
    field: str  # wire path, relative to the node, of the field the user should change
    cel: str
    check: Callable[[Any], bool]
    message: str  # what is wrong and how to fix it, without the field path

    @property
    def full_message(self) -> str:
        return f"{self.node}.{self.field} {self.message}"


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


RULES: tuple[Rule, ...] = (
    Rule(
        model="DatasetSpec",
        node="spec.dataset",
        field="uri",
        cel=f"self.uri in [{_quoted(BUILTIN_DATASETS)}] || self.uri.startsWith('s3://') "
        "|| self.uri.startsWith('file://')",
        check=lambda d: d.uri in BUILTIN_DATASETS or d.uri.startswith(("s3://", "file://")),
        message=f"must be one of {', '.join(BUILTIN_DATASETS)}, or an s3:// or file:// folder or archive",
    ),
    Rule(
        model="ModelSpec",
        node="spec.model",
        field="imageSize",
        cel=f"self.architecture == 'mlp' || self.imageSize in [{', '.join(map(str, CONV_IMAGE_SIZES))}]",
        check=lambda m: m.architecture == "mlp" or m.image_size in CONV_IMAGE_SIZES,
        message="must be one of 8, 16, 32, 64, 128 for the conv architectures (dcgan, resnet)",
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="model.architecture",
        cel=f"(self.model.architecture == 'mlp') == (self.dataset.uri in [{_quoted(POINT_DATASETS)}])",
        check=lambda s: (s.model.architecture == "mlp") == (s.dataset.uri in POINT_DATASETS),
        message="must be 'mlp' for the 2-D datasets (builtin:ring8, builtin:grid25) and 'dcgan' or 'resnet' "
        "for image datasets: change the architecture or the dataset",
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="model.channels",
        cel="self.dataset.uri != 'builtin:digits' || self.model.channels == 1",
        check=lambda s: s.dataset.uri != "builtin:digits" or s.model.channels == 1,
        message="must be 1 for builtin:digits (grey-scale)",
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="model.numClasses",
        cel="!has(self.model.numClasses) || (self.model.architecture != 'mlp' "
        "&& (self.dataset.uri != 'builtin:digits' || self.model.numClasses == 10))",
        check=lambda s: s.model.num_classes is None
        or (s.model.architecture != "mlp" and (s.dataset.uri != "builtin:digits" or s.model.num_classes == 10)),
        message="must be unset for the 2-D datasets and 10 for builtin:digits (one class per digit)",
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="evaluation.metrics",
        cel="!('modes' in self.evaluation.metrics) || self.model.architecture == 'mlp'",
        check=lambda s: "modes" not in s.evaluation.metrics or s.model.architecture == "mlp",
        message="may only include 'modes' for the 2-D datasets: remove it or use fid/kid/precision_recall",
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="promotion.gates.minModes",
        cel="!has(self.promotion.gates.minModes) || self.model.architecture == 'mlp'",
        check=lambda s: s.promotion.gates.min_modes is None or s.model.architecture == "mlp",
        message="only applies to the 2-D datasets: remove it or gate on maxFID / minRecall",
    ),
    Rule(
        model="EvaluationSpec",
        node="spec.evaluation",
        field="inceptionWeightsUri",
        cel="self.featureExtractor != 'inception' || has(self.inceptionWeightsUri)",
        check=lambda e: e.feature_extractor != "inception" or e.inception_weights_uri is not None,
        message="is required when featureExtractor is 'inception' (the pt_inception-2015-12-05 weights; "
        "nothing is downloaded at run time)",
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="gpuType",
        cel="!has(self.gpuType) || self.gpusPerReplica > 0",
        check=lambda r: r.gpu_type is None or r.gpus_per_replica > 0,
        message="needs gpusPerReplica > 0: set gpusPerReplica or remove gpuType",
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="volumes",
        cel="self.volumes.all(v, has(v.persistentVolumeClaim) != has(v.nfs))",
        check=lambda s: all((v.persistent_volume_claim is None) != (v.nfs is None) for v in s.volumes),
        message="must each have exactly one source: persistentVolumeClaim or nfs",
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="volumes",
        cel="self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name) "
        "&& self.volumes.exists_one(w, w.mountPath == v.mountPath))",
        check=lambda s: len({v.name for v in s.volumes}) == len({v.mount_path for v in s.volumes}) == len(s.volumes),
        message="must have distinct names and distinct mountPaths",
    ),
    Rule(
        model="CheckpointSpec",
        node="spec.checkpoint",
        field="uri",
        cel="!has(self.uri) || self.uri.startsWith('s3://') || self.uri.startsWith('file://')",
        check=lambda c: c.uri is None or c.uri.startswith(("s3://", "file://")),
        message="must start with s3:// or file://",
    ),
)

RULES_BY_MODEL: dict[str, list[Rule]] = {}
for _rule in RULES:
    RULES_BY_MODEL.setdefault(_rule.model, []).append(_rule)


def check_rules(obj: Any) -> None:
    """Raise one pydantic error listing every broken rule of `obj`'s class; its context names the fields."""
    broken = [rule for rule in RULES_BY_MODEL.get(type(obj).__name__, ()) if not rule.check(obj)]
    if broken:
        problems = [[rule.field, rule.message] for rule in broken]
        text = "; ".join(f"{field} {fix}" for field, fix in problems)
        raise PydanticCustomError("ganops_rule", text, {"problems": problems})

"""Cross-field rules, written once and enforced twice.

Each rule carries a CEL expression (emitted into the CRD as `x-kubernetes-validations`, so the API server rejects
the job at admission) and the same predicate in Python (run by the pydantic models, so `ganops validate`, the
trainer and the operator reject it too). `tests/unit/api/test_crd.py` evaluates both on the same inputs and fails
when they disagree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError

from ganops.api.uris import MLFLOW_SHAPE, OBJECT_STORE_SHAPE, mlflow_cel, mlflow_ok, object_store_cel, object_store_ok
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
    # Examples, as patches of a job file (merged into a valid one): `good` ones satisfy the rule, `bad` ones break it.
    # tests/unit/api/test_crd.py generates the agreement cases between CEL and Python from them, so each branch of a
    # rule (each accepted scheme, each limit) needs an example that only it lets through or stops.
    good: tuple[dict[str, Any], ...] = ()
    bad: tuple[dict[str, Any], ...] = ()

    @property
    def full_message(self) -> str:
        return f"{self.node}.{self.field} {self.message}" if self.node else f"{self.field} {self.message}"


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


# The syntax the Kubernetes API (apimachinery's validation) enforces on the fields the operator copies into the
# Job and its pod template, as RE2 patterns that CEL's matches() (in raw string literals, r'...') and Python's re
# read alike (the prefix of a qualified name is not held to its 253 characters here). A value the CRD accepts must
# not be refused later at Job creation (a 422 the user never sees at `kubectl apply`).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"  # at most 63 characters
# a qualified name (label and taint keys): an optional DNS-subdomain prefix and '/', then a name of <= 63 characters
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# resource.Quantity as ParseQuantity reads it, without a sign (requests and limits must not be negative)
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
MAX_HOSTNAME = 63  # a DNS label: the Indexed Job's pod hostnames <name>-<index>


def _re(pattern: str) -> str:
    """The pattern as Python reads it (the constants above are written for CEL string literals: '\\.')."""
    return pattern.replace("\\\\", "\\")


def matches(pattern: str, value: str) -> bool:
    return re.search(pattern, value) is not None


def qualified_name(key: str) -> bool:
    return matches(QUALIFIED_NAME, key)


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` merged into `base` (dicts deeply, everything else replaced)."""
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _spec(**fields: Any) -> dict[str, Any]:
    return {"spec": fields}


def _res(**fields: Any) -> dict[str, Any]:
    return _spec(resources=fields)


def _tol(**fields: Any) -> dict[str, Any]:
    return _res(tolerations=[fields])


_PVC_A = {"name": "a", "mountPath": "/data/a", "persistentVolumeClaim": {"claimName": "a"}}
_NFS_B = {"name": "b", "mountPath": "/mnt/b", "nfs": {"server": "nfs", "path": "/exports/b"}}


def _name(name: str, replicas: int | None = None) -> dict[str, Any]:
    patch: dict[str, Any] = {"metadata": {"name": name}}
    return _merge(patch, _res(replicas=replicas)) if replicas is not None else patch


# a 2-D job (the examples' base is an image job)
_POINTS = _spec(model={"architecture": "mlp", "imageSize": 2}, dataset={"uri": "builtin:grid25"},
                evaluation={"metrics": ["modes"], "featureExtractor": "raw"})


def _tolerations_ok(tolerations: Any, check: Callable[[Any], bool]) -> bool:
    return all(check(t) for t in tolerations)


RULES: tuple[Rule, ...] = (
    # ---- metadata.name, at the root (the only metadata CEL sees there): the name is the ganops.io/job label, the
    # Service and the Job's name, and the Job is Indexed, so every pod's hostname is <name>-<index>: DNS labels.
    Rule(
        model="GanTrainingJob",
        node="",
        field="metadata.name",
        cel=f"!has(self.metadata.name) || self.metadata.name.matches(r'{DNS_LABEL}')",
        check=lambda j: matches(DNS_LABEL, j.metadata.name),
        message="must be a DNS label: lower-case letters, digits and '-', starting and ending with a letter or "
        "digit (it names the Job, its pods' hostnames and the ganops.io/job label)",
        good=(_name("digits-2"), _name("a" * 61)),
        bad=(_name("Digits"), _name("a.b"), _name("-x"), _name("x_y")),
    ),
    Rule(
        model="GanTrainingJob",
        node="",
        field="metadata.name",
        cel=f"!has(self.metadata.name) || "
        f"size(self.metadata.name) + 1 + size(string(self.spec.resources.replicas - 1)) <= {MAX_HOSTNAME}",
        check=lambda j: len(j.metadata.name) + 1 + len(str(j.spec.resources.replicas - 1)) <= MAX_HOSTNAME,
        message=f"is too long: the pods' hostnames <name>-<index> must be at most {MAX_HOSTNAME} characters "
        "(a name of up to 61 characters for up to 10 replicas, 60 for up to 100)",
        good=(_name("a" * 61), _name("a" * 61, replicas=10), _name("a" * 60, replicas=100)),
        bad=(_name("a" * 62), _name("a" * 61, replicas=11), _name("a" * 60, replicas=101)),
    ),
    Rule(
        model="GanTrainingJob",
        node="",
        field="metadata.name",
        cel="!has(self.metadata.name) || self.spec.resources.replicas == 1 || self.metadata.name.matches('^[a-z]')",
        check=lambda j: j.spec.resources.replicas == 1 or matches("^[a-z]", j.metadata.name),
        message="must start with a letter when resources.replicas > 1: it names the headless Service that the "
        "replicas rendezvous through",
        good=(_name("1x"), _name("x1", replicas=2)),
        bad=(_name("1x", replicas=2),),
    ),
    # ---- the pod-shaping fields, as the Job API validates them
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="cpu",
        cel=f"!has(self.cpu) || self.cpu.matches(r'{QUANTITY}')",
        check=lambda r: r.cpu is None or matches(QUANTITY, r.cpu),
        message="must be a Kubernetes quantity, e.g. 500m or 2",
        good=(_res(cpu="500m"), _res(cpu="2"), _res(cpu="1.5"), _res(cpu="1e3"), _res(cpu=".5")),
        bad=(_res(cpu="2 cores"), _res(cpu="-1"), _res(cpu="1.5.3"), _res(cpu="two")),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="memory",
        cel=f"!has(self.memory) || self.memory.matches(r'{QUANTITY}')",
        check=lambda r: r.memory is None or matches(QUANTITY, r.memory),
        message="must be a Kubernetes quantity, e.g. 512Mi or 8Gi",
        good=(_res(memory="8Gi"), _res(memory="512Mi"), _res(memory="1G"), _res(memory="1000000")),
        bad=(_res(memory="8GB"), _res(memory="8 Gi"), _res(memory="8gi")),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="nodeSelector",
        cel=f"self.nodeSelector.all(k, k.matches(r'{QUALIFIED_NAME}') "
        f"&& self.nodeSelector[k].matches(r'{LABEL_VALUE}'))",
        check=lambda r: all(qualified_name(k) and matches(LABEL_VALUE, v) for k, v in r.node_selector.items()),
        message="keys must be label keys ([prefix/]name, the name at most 63 characters of letters, digits, "
        "'-', '_', '.') and values label values (at most 63 such characters, or empty)",
        good=(_res(nodeSelector={"example.com/pool": "gpu-a_1.x"}), _res(nodeSelector={"pool": ""})),
        bad=(_res(nodeSelector={"bad key": "x"}), _res(nodeSelector={"pool": "a b"}),
             _res(nodeSelector={"a/b/c": "x"})),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="gpuType",
        cel=f"!has(self.gpuType) || self.gpuType.matches(r'{LABEL_VALUE}')",
        check=lambda r: r.gpu_type is None or matches(LABEL_VALUE, r.gpu_type),
        message="must be a label value (letters, digits, '-', '_', '.'; it selects nodes by the GPU type label)",
        good=(_res(gpuType="a100-80gb", gpusPerReplica=1), _res(gpuType="A100_80GB.sxm", gpusPerReplica=1)),
        bad=(_res(gpuType="a100 80gb", gpusPerReplica=1), _res(gpuType="a100/80", gpusPerReplica=1)),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="priorityClassName",
        cel=f"!has(self.priorityClassName) || self.priorityClassName.matches(r'{DNS_SUBDOMAIN}')",
        check=lambda r: r.priority_class_name is None or matches(DNS_SUBDOMAIN, r.priority_class_name),
        message="must be a PriorityClass name (lower-case letters, digits, '-' and '.')",
        good=(_res(priorityClassName="high-priority"), _res(priorityClassName="team.high")),
        bad=(_res(priorityClassName="High"), _res(priorityClassName="high_priority")),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="tolerations",
        cel=f"self.tolerations.all(t, !has(t.key) || t.key == '' || t.key.matches(r'{QUALIFIED_NAME}'))",
        check=lambda r: _tolerations_ok(r.tolerations, lambda t: not t.key or qualified_name(t.key)),
        message="key must be a label key ([prefix/]name)",
        good=(_tol(key="example.com/gpu", operator="Exists"), _tol(operator="Exists")),
        bad=(_tol(key="bad key", operator="Exists"), _tol(key="a/b/c", operator="Exists")),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="tolerations",
        cel="self.tolerations.all(t, (has(t.key) && t.key != '') || (has(t.operator) && t.operator == 'Exists'))",
        check=lambda r: _tolerations_ok(r.tolerations, lambda t: bool(t.key) or t.operator == "Exists"),
        message="operator must be Exists when the key is empty (a toleration of every taint)",
        good=(_tol(operator="Exists"), _tol(key="k", value="v")),
        bad=(_tol(operator="Equal", value="x"), _tol(value="x")),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="tolerations",
        cel="self.tolerations.all(t, !has(t.operator) || t.operator != 'Exists' || !has(t.value) || t.value == '')",
        check=lambda r: _tolerations_ok(r.tolerations, lambda t: t.operator != "Exists" or not t.value),
        message="value must be empty when the operator is Exists",
        good=(_tol(key="k", operator="Exists"), _tol(key="k", operator="Equal", value="x")),
        bad=(_tol(key="k", operator="Exists", value="x"),),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="tolerations",
        cel=f"self.tolerations.all(t, !has(t.value) || t.value.matches(r'{LABEL_VALUE}'))",
        check=lambda r: _tolerations_ok(r.tolerations, lambda t: t.value is None or matches(LABEL_VALUE, t.value)),
        message="value must be a label value (at most 63 letters, digits, '-', '_', '.')",
        good=(_tol(key="k", value="a-1"), _tol(key="k", value="")),
        bad=(_tol(key="k", value="a b"),),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="tolerations",
        cel="self.tolerations.all(t, !has(t.tolerationSeconds) || (has(t.effect) && t.effect == 'NoExecute'))",
        check=lambda r: _tolerations_ok(r.tolerations, lambda t: t.toleration_seconds is None
                                        or t.effect == "NoExecute"),
        message="tolerationSeconds only applies to effect NoExecute: set the effect or remove tolerationSeconds",
        good=(_tol(key="k", operator="Exists", effect="NoExecute", tolerationSeconds=60),),
        bad=(_tol(key="k", operator="Exists", effect="NoSchedule", tolerationSeconds=60),
             _tol(key="k", operator="Exists", tolerationSeconds=60)),
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="podLabels",
        cel=f"self.podLabels.all(k, k.matches(r'{QUALIFIED_NAME}') && !k.startsWith('ganops.io/') "
        f"&& self.podLabels[k].matches(r'{LABEL_VALUE}'))",
        check=lambda s: all(qualified_name(k) and not k.startswith("ganops.io/") and matches(LABEL_VALUE, v)
                            for k, v in s.pod_labels.items()),
        message="keys must be label keys ([prefix/]name) outside ganops.io/ (the operator's own) and values label "
        "values (at most 63 letters, digits, '-', '_', '.')",
        good=(_spec(podLabels={"team": "vision", "example.com/cost-center": "ml-1"}),),
        bad=(_spec(podLabels={"ganops.io/job": "other"}), _spec(podLabels={"team": "a b"}),
             _spec(podLabels={"bad key": "x"})),
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="queueName",
        cel=f"!has(self.queueName) || self.queueName.matches(r'{LABEL_VALUE}')",
        check=lambda s: s.queue_name is None or matches(LABEL_VALUE, s.queue_name),
        message="must be a label value (the Job's kueue.x-k8s.io/queue-name label): at most 63 letters, digits, "
        "'-', '_', '.'",
        good=(_spec(queueName="team-a"), _spec(queueName="Team_A.1")),
        bad=(_spec(queueName="team a"),),
    ),
    Rule(
        model="DatasetSpec",
        node="spec.dataset",
        field="uri",
        cel=f"self.uri in [{_quoted(BUILTIN_DATASETS)}] || ({object_store_cel('self.uri')})",
        check=lambda d: d.uri in BUILTIN_DATASETS or object_store_ok(d.uri),
        message=f"must be one of {', '.join(BUILTIN_DATASETS)}, or a folder or archive given as {OBJECT_STORE_SHAPE}",
        good=(_spec(dataset={"uri": "file:///data/digits.zip"}), _spec(dataset={"uri": "s3://b/digits.zip"}),
              *(_spec(dataset={"uri": uri}) for uri in BUILTIN_DATASETS)),
        bad=(_spec(dataset={"uri": "gs://b/x.zip"}), _spec(dataset={"uri": "builtin:cifar"}),
             _spec(dataset={"uri": "https://example.com/x.zip"}),
             _spec(dataset={"uri": "s3://b/x.zip?X-Amz-Signature=abc"}), _spec(dataset={"uri": "s3://b/x.zip#f"}),
             _spec(dataset={"uri": "s3://b/../other/x.zip"}), _spec(dataset={"uri": "s3://key:secret@b/x.zip"})),
    ),
    Rule(
        model="ModelSpec",
        node="spec.model",
        field="imageSize",
        cel=f"self.architecture == 'mlp' || self.imageSize in [{', '.join(map(str, CONV_IMAGE_SIZES))}]",
        check=lambda m: m.architecture == "mlp" or m.image_size in CONV_IMAGE_SIZES,
        message="must be one of 8, 16, 32, 64, 128 for the conv architectures (dcgan, resnet)",
        good=(_spec(model={"imageSize": 8}), _spec(model={"imageSize": 128}),
              _spec(model={"architecture": "mlp", "imageSize": 2})),
        bad=(_spec(model={"imageSize": 24}), _spec(model={"architecture": "resnet", "imageSize": 2})),
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="model.architecture",
        cel=f"(self.model.architecture == 'mlp') == (self.dataset.uri in [{_quoted(POINT_DATASETS)}])",
        check=lambda s: (s.model.architecture == "mlp") == (s.dataset.uri in POINT_DATASETS),
        message="must be 'mlp' for the 2-D datasets (builtin:ring8, builtin:grid25) and 'dcgan' or 'resnet' "
        "for image datasets: change the architecture or the dataset",
        good=(_POINTS, _spec(dataset={"uri": "s3://b/x.zip"})),
        bad=(_spec(model={"architecture": "mlp"}), _spec(dataset={"uri": "builtin:grid25"})),
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="model.channels",
        cel="self.dataset.uri != 'builtin:digits' || self.model.channels == 1",
        check=lambda s: s.dataset.uri != "builtin:digits" or s.model.channels == 1,
        message="must be 1 for builtin:digits (grey-scale)",
        good=(_spec(model={"channels": 1}), _spec(dataset={"uri": "s3://b/x.zip"}, model={"channels": 3})),
        bad=(_spec(model={"channels": 3}),),
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
        good=(_spec(model={"numClasses": 10}), _spec(dataset={"uri": "s3://b/x.zip"}, model={"numClasses": 3})),
        bad=(_spec(model={"numClasses": 3}), _merge(_POINTS, _spec(model={"numClasses": 2}))),
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="evaluation.metrics",
        cel="!('modes' in self.evaluation.metrics) || self.model.architecture == 'mlp'",
        check=lambda s: "modes" not in s.evaluation.metrics or s.model.architecture == "mlp",
        message="may only include 'modes' for the 2-D datasets: remove it or use fid/kid/precision_recall",
        good=(_merge(_POINTS, _spec(evaluation={"metrics": ["modes"]})),),
        bad=(_spec(evaluation={"metrics": ["modes", "fid"]}),),
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="promotion.gates.minModes",
        cel="!has(self.promotion.gates.minModes) || self.model.architecture == 'mlp'",
        check=lambda s: s.promotion.gates.min_modes is None or s.model.architecture == "mlp",
        message="only applies to the 2-D datasets: remove it or gate on maxFID / minRecall",
        good=(_merge(_POINTS, _spec(promotion={"gates": {"minModes": 3}})),),
        bad=(_spec(promotion={"gates": {"minModes": 3}}),),
    ),
    Rule(
        model="EvaluationSpec",
        node="spec.evaluation",
        field="inceptionWeightsUri",
        cel="self.featureExtractor != 'inception' || has(self.inceptionWeightsUri)",
        check=lambda e: e.feature_extractor != "inception" or e.inception_weights_uri is not None,
        message="is required when featureExtractor is 'inception' (the pt_inception-2015-12-05 weights; "
        "nothing is downloaded at run time)",
        good=(_spec(evaluation={"featureExtractor": "inception", "inceptionWeightsUri": "s3://m/w.pth"}),),
        bad=(_spec(evaluation={"featureExtractor": "inception"}),),
    ),
    Rule(
        model="ResourcesSpec",
        node="spec.resources",
        field="gpuType",
        cel="!has(self.gpuType) || self.gpusPerReplica > 0",
        check=lambda r: r.gpu_type is None or r.gpus_per_replica > 0,
        message="needs gpusPerReplica > 0: set gpusPerReplica or remove gpuType",
        good=(_res(gpuType="a100", gpusPerReplica=1),),
        bad=(_res(gpuType="a100"),),
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="volumes",
        cel="self.volumes.all(v, has(v.persistentVolumeClaim) != has(v.nfs))",
        check=lambda s: all((v.persistent_volume_claim is None) != (v.nfs is None) for v in s.volumes),
        message="must each have exactly one source: persistentVolumeClaim or nfs",
        good=(_spec(volumes=[_PVC_A, _NFS_B]),),
        bad=(_spec(volumes=[{"name": "a", "mountPath": "/data/a"}]),
             _spec(volumes=[{"name": "a", "mountPath": "/data/a", "persistentVolumeClaim": {"claimName": "a"},
                             "nfs": {"server": "nfs", "path": "/exports/a"}}])),
    ),
    Rule(
        model="GanTrainingJobSpec",
        node="spec",
        field="volumes",
        cel="self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name) "
        "&& self.volumes.exists_one(w, w.mountPath == v.mountPath))",
        check=lambda s: len({v.name for v in s.volumes}) == len({v.mount_path for v in s.volumes}) == len(s.volumes),
        message="must have distinct names and distinct mountPaths",
        good=(_spec(volumes=[_PVC_A, _NFS_B]),),
        bad=(_spec(volumes=[_PVC_A,
                            {"name": "a", "mountPath": "/data/b", "persistentVolumeClaim": {"claimName": "b"}}]),
             _spec(volumes=[_PVC_A,
                            {"name": "b", "mountPath": "/data/a", "persistentVolumeClaim": {"claimName": "b"}}])),
    ),
    Rule(
        model="CheckpointSpec",
        node="spec.checkpoint",
        field="uri",
        cel=f"!has(self.uri) || ({object_store_cel('self.uri')})",
        check=lambda c: c.uri is None or object_store_ok(c.uri),
        message=f"must be {OBJECT_STORE_SHAPE}",
        good=(_spec(checkpoint={"uri": "s3://b/ckpt"}), _spec(checkpoint={"uri": "file:///var/ckpt"}),
              _spec(checkpoint={"uri": "s3://bucket"}), _spec(checkpoint={"uri": "s3://my.bucket/runs/v1..2"})),
        bad=(_spec(checkpoint={"uri": "gs://b"}), _spec(checkpoint={"uri": "/var/ckpt"}),
             _spec(checkpoint={"uri": "s3://b/ckpt/../../other"}), _spec(checkpoint={"uri": "s3://b/c?token=x"}),
             _spec(checkpoint={"uri": "s3://bucket:9000/x"}), _spec(checkpoint={"uri": "file:///data/../etc/x"})),
    ),
    Rule(
        model="EvaluationSpec",
        node="spec.evaluation",
        field="inceptionWeightsUri",
        cel=f"!has(self.inceptionWeightsUri) || ({object_store_cel('self.inceptionWeightsUri')})",
        check=lambda e: e.inception_weights_uri is None or object_store_ok(e.inception_weights_uri),
        message=f"must be {OBJECT_STORE_SHAPE}",
        good=(_spec(evaluation={"inceptionWeightsUri": "s3://b/pt_inception.safetensors"}),),
        bad=(_spec(evaluation={"inceptionWeightsUri": "https://example.com/w.safetensors"}),
             _spec(evaluation={"inceptionWeightsUri": "s3://b/w.safetensors?X-Amz-Signature=abc"})),
    ),
    Rule(
        model="TrackingSpec",
        node="spec.tracking",
        field="mlflowUri",
        cel=f"!has(self.mlflowUri) || ({mlflow_cel('self.mlflowUri')})",
        check=lambda t: t.mlflow_uri is None or mlflow_ok(t.mlflow_uri),
        message=f"must be {MLFLOW_SHAPE}",
        good=(_spec(tracking={"mlflowUri": "http://mlflow.ganops:5000"}),
              _spec(tracking={"mlflowUri": "https://mlflow.example.com/mlflow"})),
        bad=(_spec(tracking={"mlflowUri": "https://user:pw@mlflow.example.com"}),
             _spec(tracking={"mlflowUri": "http://mlflow:5000/?token=x"}), _spec(tracking={"mlflowUri": "ftp://x"}),
             _spec(tracking={"mlflowUri": "sqlite:///tmp/mlflow.db"}), _spec(tracking={"mlflowUri": "file:///mlruns"}),
             _spec(tracking={"mlflowUri": "databricks://profile"})),
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

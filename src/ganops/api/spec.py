"""GanTrainingJob spec and status: the single source of the job's shape.

The CRD's OpenAPI schema (`ganops.api.crd`), the validation of example files and the trainer's
configuration are all derived from these models. Wire names are camelCase; units live in the names.
"""

from __future__ import annotations

import hashlib
import json
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from ganops.api.rules import check_rules


def _scalar_kinds(annotation: Any) -> set[Any]:
    """The plain types a field accepts at its top level: int | None → {int, NoneType}; Annotated is unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _scalar_kinds(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_scalar_kinds(arg) for arg in get_args(annotation)))
    return {annotation}


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected (typos must not pass silently)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML `true` is not 1: pydantic's lax mode would read it as a number, the CRD schema (and so the API
        server) refuses it; both must say the same."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and int in kinds:
                raise PydanticCustomError("int_type", "Input should be a valid integer")
            if bool not in kinds and float in kinds:
                raise PydanticCustomError("float_type", "Input should be a valid number")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Any:
        check_rules(self)
        return self


MetricName = Literal["fid", "kid", "precision_recall", "modes"]


class EmaSpec(_Wire):
    enabled: bool = True
    decay: float = Field(0.999, ge=0.0, lt=1.0, description="Generator EMA decay per step.")
    start_step: int = Field(0, ge=0, description="Steps before EMA starts tracking (copies weights until then).")


class ModelSpec(_Wire):
    architecture: Literal["dcgan", "resnet", "mlp"] = Field(
        "dcgan", description="dcgan/resnet: convolutional, for images; mlp: for 2-D point data."
    )
    latent_dim: int = Field(64, ge=1, le=4096)
    image_size: int = Field(32, ge=2, le=128, description="Side in pixels (8..128, a power of 2); 2 for mlp.")
    channels: int = Field(3, ge=1, le=4)
    num_classes: int | None = Field(None, ge=2, le=10000, description="Set to train a conditional GAN.")
    width: int = Field(64, ge=4, le=1024, description="Base feature maps (conv) or hidden units (mlp).")
    depth: int = Field(3, ge=1, le=16, description="Hidden layers of the mlp pair.")
    spectral_norm: bool = False
    minibatch_std: bool = False
    ema: EmaSpec = Field(default_factory=EmaSpec)


class LossSpec(_Wire):
    type: Literal["non-saturating", "wgan-gp", "hinge", "lsgan"] = "non-saturating"
    gradient_penalty: float = Field(10.0, ge=0.0, description="λ of the WGAN-GP penalty (wgan-gp only).")
    r1: float = Field(0.0, ge=0.0, description="γ of the R1 penalty on real data; 0 disables it.")
    r1_interval: int = Field(
        1, ge=1, le=64,
        description="Lazy R1 (StyleGAN2): the penalty every r1Interval discriminator steps, weighted by r1Interval; "
        "1 computes it every step.",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="One-sided: real targets become 1 - labelSmoothing."
    )


class OptimizerSpec(_Wire):
    lr_generator: float = Field(2e-4, gt=0.0, le=1.0)
    lr_discriminator: float = Field(2e-4, gt=0.0, le=1.0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.5, 0.999)
    critic_steps: int = Field(1, ge=1, le=20, description="Discriminator steps per generator step.")


class DatasetSpec(_Wire):
    uri: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description="builtin:ring8 | builtin:grid25 | builtin:digits | file://… or s3://… folder or archive.",
    )
    augmentations: list[Literal["hflip", "translate"]] = Field(default_factory=list, max_length=4)


class PersistentVolumeClaimSource(_Wire):
    claim_name: str = Field(..., min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class NfsSource(_Wire):
    server: str = Field(..., min_length=1, max_length=253)
    path: str = Field(..., min_length=1, max_length=1024, pattern=r"^/")


class VolumeSpec(_Wire):
    """A dataset volume of the trainer pods: a PersistentVolumeClaim or an NFS export, mounted (read-only by default)
    under /data or /mnt, where a `file://` dataset URI can name it (`file:///data/faces`)."""

    name: str = Field(..., min_length=1, max_length=58, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="Unique among the job's volumes; the pod's volume is `data-<name>`.")
    mount_path: str = Field(..., max_length=1024, pattern=r"^/(data|mnt)(/[^/:]+)*$",
                            description="Under /data or /mnt (the image's folders and the pod's /tmp and /cache "
                                        "stay as they are).")
    read_only: bool = True
    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    nfs: NfsSource | None = None


class TrainingSpec(_Wire):
    steps: int = Field(2000, ge=1, le=100_000_000)
    batch_size: int = Field(64, ge=1, le=65536)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    matmul_precision: Literal["tf32", "ieee"] = Field(
        "tf32",
        description="fp32 matmuls and convolutions on CUDA: tf32 (TensorFloat-32 on Ampere and later) or ieee (full "
        "fp32). Recorded in every checkpoint; evaluation always extracts features in ieee.",
    )
    compile: bool = Field(
        False, description="torch.compile G and D: needs a C compiler and Python headers where the trainer runs "
        "(the stock trainer image has neither, so the operator refuses it there).",
    )
    deterministic: bool = False
    log_every_steps: int = Field(50, ge=1)
    num_workers: int = Field(0, ge=0, le=64)
    distributed_timeout_seconds: int = Field(
        1800, ge=60, le=86400,
        description="Timeout of every collective (the NCCL watchdog): covers rank 0 uploading a checkpoint while "
        "the other ranks wait.",
    )


# Bounds on every string a CEL rule matches against a pattern: the API server estimates a rule's cost from them and
# refuses the CRD when the estimate is over budget (an unbounded string is costed at the request size).
class Toleration(_Wire):
    key: str | None = Field(None, max_length=317)  # a qualified name: prefix (253) + '/' + name (63)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourcesSpec(_Wire):
    replicas: int = Field(1, ge=1, le=512, description="Nodes (pods); each runs torchrun.")
    gpus_per_replica: int = Field(0, ge=0, le=16)
    gpu_type: str | None = Field(None, max_length=63, description="Key into the price table, e.g. a100-80gb.")
    cpu: str | None = Field(
        None, max_length=16, description="CPU request per replica; default 2, or 4 per GPU with gpusPerReplica > 0.",
    )
    memory: str | None = Field(
        None, max_length=16, description="Memory per replica; default 8Gi, or 16Gi per GPU with gpusPerReplica > 0.",
    )
    node_selector: dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    spot: bool = False
    priority_class_name: str | None = Field(None, max_length=253)
    image: str | None = Field(None, max_length=512, description="Trainer image; the operator's default if unset.")


class CheckpointSpec(_Wire):
    uri: str | None = Field(
        None, max_length=2048, description="s3://bucket/prefix or file://dir; the platform default if unset."
    )
    every_steps: int = Field(500, ge=1)
    keep_last: int = Field(3, ge=1, le=1000)
    keep_best: int = Field(1, ge=0, le=100)


class EvaluationSpec(_Wire):
    every_steps: int = Field(1000, ge=1)
    num_samples: int = Field(2000, ge=10, le=200_000)
    metrics: list[MetricName] = Field(default_factory=lambda: list[MetricName](["fid"]), max_length=4)
    feature_extractor: Literal["auto", "inception", "digits", "raw"] = "auto"
    inception_weights_uri: str | None = Field(None, max_length=2048)


class TrackingSpec(_Wire):
    mlflow_uri: str | None = Field(None, max_length=2048)
    experiment: str | None = Field(None, max_length=256)


class BudgetSpec(_Wire):
    max_cost_usd: float | None = Field(None, gt=0.0, alias="maxCostUSD")
    max_gpu_hours: float | None = Field(None, gt=0.0, alias="maxGPUHours")
    price_per_gpu_hour: float | None = Field(None, ge=0.0, alias="pricePerGPUHour")
    spot_discount: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction off the price when spot is set.")


class GatesSpec(_Wire):
    max_fid: float | None = Field(None, ge=0.0, alias="maxFID")
    min_recall: float | None = Field(None, ge=0.0, le=1.0)
    min_modes: int | None = Field(None, ge=0)
    min_high_quality: float | None = Field(None, ge=0.0, le=1.0)
    max_safety_block_rate: float | None = Field(None, ge=0.0, le=1.0)


class PromotionSpec(_Wire):
    model_name: str | None = Field(
        None,
        max_length=190,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?[.])?[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="Defaults to the job name. Registered as <namespace>.<modelName>: model names belong to the "
        "job's namespace (a name already qualified with it is kept; one qualified with another namespace is "
        "refused at promotion).",
    )
    alias: str = Field("production", max_length=63, pattern=r"^[a-z][a-z0-9_-]*$")
    gates: GatesSpec = Field(default_factory=GatesSpec)
    auto: bool = True


class RunPolicySpec(_Wire):
    backoff_limit: int = Field(3, ge=0, le=100, description="Application failures tolerated; preemptions are free.")
    active_deadline_seconds: int | None = Field(None, ge=1)
    start_timeout_seconds: int | None = Field(
        None, ge=1, description="How long an attempt's pods may take to start (from the Job's start: after Kueue "
        "admits it) before the attempt fails with the reason they are waiting for; unset: they may wait forever.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    suspend: bool = False


class GanTrainingJobSpec(_Wire):
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    dataset: DatasetSpec
    volumes: list[VolumeSpec] = Field(
        default_factory=list, max_length=8, description="PVC or NFS volumes for file:// datasets (trainer pods)."
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    queue_name: str | None = Field(None, max_length=63)
    pod_labels: dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32,
        description="Labels for the trainer pods (the job's own labels are not copied to its children).")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)

    @property
    def is_2d(self) -> bool:
        return self.model.architecture == "mlp"


# ---------------------------------------------------------------- status
# Written by the operator only (`ganops.operator.reconcile`), through these models: every field it writes is declared
# here, so the CRD's status schema is explicit and a mistyped key fails instead of reaching the cluster.

Phase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed", "BudgetExceeded"]
ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Wire):
    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class CheckpointRef(_Wire):
    uri: str
    step: int
    sha256: str | None = None
    time: str | None = None
    metric: float | None = Field(None, description="Promotion metric of this checkpoint (lower is better).")


class Restarts(_Wire):
    preemptions: int = 0
    failures: int = 0


class Cost(_Wire):
    usd: float = 0.0
    gpu_hours: float = 0.0


class GpuAccounting(_Wire):
    attempt: int = 0
    banked_gpu_seconds: float = 0.0
    pods: dict[str, float] = Field(default_factory=dict)


class PromotionCounts(_Wire):
    promoted: int = 0
    rejected: int = 0


# On the wire (`to_wire`) only the fields that were read or set appear, and a field set to None is left out (the
# operator's merge patch then removes it): the status a user sees has exactly the keys the operator gave it.
class GanTrainingJobStatus(_Wire):
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    attempt: int | None = Field(None, description="The current attempt (the Job's ganops.io/attempt label).")
    step: int | None = None
    last_checkpoint: CheckpointRef | None = None
    best_checkpoint: CheckpointRef | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    restarts: Restarts = Field(default_factory=Restarts)
    cost: Cost = Field(default_factory=Cost)
    accounting: GpuAccounting | None = Field(
        None, description="The GPU-seconds behind cost: banked from earlier attempts, and per pod of the current one."
    )
    mlflow_run_id: str | None = None
    promoted_version: str | None = None
    promoted_metrics: dict[str, float] | None = Field(
        None, description="Evaluation metrics of the promoted version, as recorded on it in the registry."
    )
    promotions: PromotionCounts | None = Field(None, description="Promotion decisions so far, by outcome.")
    promotion_attempted_at: str | None = Field(None, description="Last try while the registry was unavailable.")
    start_time: str | None = None
    completion_time: str | None = None
    message: str | None = None

    @classmethod
    def from_wire(cls, data: Any) -> GanTrainingJobStatus:
        """The status from the resource (camelCase; an absent status is an empty one). Strict: a key this model
        does not declare, or a value of the wrong type, is a ValidationError (see `salvage` for the edge)."""
        return cls.model_validate(data or {})

    @classmethod
    def salvage(cls, data: Any) -> tuple[GanTrainingJobStatus, list[str]]:
        """The status from the resource, without the top-level keys that do not validate (a hand edit, or a field
        of a newer operator), and those keys: one malformed status must not stop its job's reconciles; the operator
        rewrites what it can observe (the attempt counter is also on the Job, the step in latest.json)."""
        raw = dict(data) if isinstance(data, dict) else {}
        dropped: list[str] = []
        while True:
            try:
                return cls.model_validate(raw), dropped
            except ValidationError as exc:
                bad = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]} & raw.keys())
                if not bad:  # pragma: no cover - every error of a dict input is located under one of its keys
                    return cls(), sorted(raw)
                for key in bad:
                    del raw[key]
                dropped += bad

    def to_wire(self) -> dict[str, Any]:
        """camelCase, JSON types, without the fields nobody read or set and without those set to None."""
        wire: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
        return wire


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    # its syntax and length are rules (ganops.api.rules), stated once for the CRD's root and for this model
    name: str = Field(..., min_length=1, max_length=253)
    namespace: str | None = Field(None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class GanTrainingJob(_Wire):
    """A whole job file, as `kubectl apply -f` takes it."""

    api_version: Literal["ganops.io/v1alpha1"] = "ganops.io/v1alpha1"
    kind: Literal["GanTrainingJob"] = "GanTrainingJob"
    metadata: ObjectMeta
    spec: GanTrainingJobSpec
    status: GanTrainingJobStatus | None = None



# The parts of a spec that decide the weights: a checkpoint written under another value is a different model.
_WEIGHT_DECIDING = {"model", "loss", "optimizer", "dataset", "training"}


def spec_hash(spec: GanTrainingJob | GanTrainingJobSpec) -> str:
    """Hash of what decides the weights (checkpoint manifests and MLflow runs record it); budget, promotion or run
    policy edits leave it unchanged, so they never make a job's own checkpoints foreign."""
    spec = spec.spec if isinstance(spec, GanTrainingJob) else spec
    relevant = spec.model_dump(mode="json", include=_WEIGHT_DECIDING)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

"""The operator's configuration (environment variables, set by its Deployment) and the one place that sets kopf's
settings from it.

| variable | default | meaning |
|---|---|---|
| GANOPS_TRAINER_IMAGE | ghcr.io/ganops/trainer:0.1.0 | image of the trainer pods when `spec.resources.image` is unset |
| GANOPS_IMAGE_PULL_POLICY | (unset) | imagePullPolicy of the trainer container |
| GANOPS_CHECKPOINT_URI | (unset) | checkpoint root for jobs without `spec.checkpoint.uri` |
| GANOPS_MLFLOW_URI | MLFLOW_TRACKING_URI | MLflow for jobs without `spec.tracking.mlflowUri` (and for promotion) |
| GANOPS_S3_SECRET | (unset) | Secret (in the job's namespace) with AWS_* keys: pods get it via `envFrom` |
| GANOPS_MLFLOW_SECRET | (unset) | Secret with MLFLOW_TRACKING_* keys: pods get it via `envFrom` |
| GANOPS_S3_ENDPOINT_URL | (unset) | S3 endpoint handed to pods (not a credential) |
| GANOPS_TRAINER_SERVICE_ACCOUNT | (unset) | serviceAccountName of trainer pods (e.g. for IRSA) |
| GANOPS_TERMINATION_GRACE_SECONDS | 120 | time a trainer gets after SIGTERM to write its emergency checkpoint |
| GANOPS_TRAINER_METRICS_PORT | 9400 | the trainer's /metrics port (GANOPS_METRICS_PORT in the pod) |
| GANOPS_RENDEZVOUS_PORT | 29500 | torchrun's static rendezvous port on replica 0 |
| GANOPS_SPOT_NODE_LABEL | karpenter.sh/capacity-type=spot | node label required for `spec.resources.spot` |
| GANOPS_SPOT_TOLERATION | karpenter.sh/capacity-type=spot:NoSchedule | spot taint tolerated: key[=value][:effect] |
| GANOPS_GPU_TYPE_LABEL | (unset) | node label whose value must equal `spec.resources.gpuType` |
| GANOPS_OPERATOR_RESYNC_SECONDS | 15 | how often each job is re-read (latest.json, cost, deadline) without events |
| GANOPS_BUDGET_WARNING_FRACTION | 0.8 | share of the budget that raises the BudgetWarning event |
| GANOPS_OPERATOR_METRICS_PORT | 8080 | the operator's Prometheus /metrics port; 0 disables it |
| GANOPS_OPERATOR_REPLICAS | 1 | >1 turns kopf peering on (one active operator, the others on standby) |
| GANOPS_OPERATOR_PEERING | ganops-operator | name of the KopfPeering object |
| GANOPS_OPERATOR_POSTING_LEVEL | INFO | lowest level of Events posted (Normal is INFO, Warning is WARNING) |
| GANOPS_OPERATOR_WORKERS | 8 | threads that run reconciles (API and object-store I/O) |

Which namespaces are watched is kopf's own choice, also set by environment: `KOPF_RUN_CLUSTERWIDE=true` (what
`--all-namespaces` does) or `KOPF_RUN_NAMESPACE="team-a,team-b"` (comma-separated globs, `!` excludes; what
`--namespace` does). The Deployment in manifests/operator sets the first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ganops.contracts import API_GROUP, LABEL_JOB, MLFLOW_TRACKING_URI_ENV

DEFAULT_IMAGE = "ghcr.io/ganops/trainer:0.1.0"
FINALIZER = f"{API_GROUP}/finalizer"
ANNOTATIONS_PREFIX = API_GROUP
LAST_HANDLED_KEY = "last-handled-configuration"


class ConfigError(ValueError):
    """The operator's environment is wrong; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Toleration:
    key: str
    value: str | None = None
    effect: str | None = None

    def as_wire(self) -> dict[str, str]:
        out = {"key": self.key, "operator": "Equal" if self.value is not None else "Exists"}
        if self.value is not None:
            out["value"] = self.value
        if self.effect:
            out["effect"] = self.effect
        return out


@dataclass(frozen=True)
class OperatorConfig:
    image: str = DEFAULT_IMAGE
    image_pull_policy: str | None = None
    checkpoint_uri: str | None = None
    mlflow_uri: str | None = None
    s3_secret: str | None = None
    mlflow_secret: str | None = None
    s3_endpoint_url: str | None = None
    trainer_service_account: str | None = None
    termination_grace_seconds: int = 120
    trainer_metrics_port: int = 9400
    rendezvous_port: int = 29500
    spot_node_label: tuple[str, str] | None = ("karpenter.sh/capacity-type", "spot")
    spot_toleration: Toleration | None = field(
        default_factory=lambda: Toleration("karpenter.sh/capacity-type", "spot", "NoSchedule")
    )
    gpu_type_label: str | None = None
    resync_seconds: float = 15.0
    budget_warning_fraction: float = 0.8
    metrics_port: int = 8080
    replicas: int = 1
    peering_name: str = "ganops-operator"
    posting_level: int = logging.INFO
    workers: int = 8

    @property
    def relaunch_wait_seconds(self) -> float:
        """How long a relaunch waits for the previous attempt's pods to finish their emergency checkpoint."""
        return float(self.termination_grace_seconds + 30)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        problems: list[str] = []

        def text(name: str, default: str | None = None) -> str | None:
            value = env.get(name, "").strip()
            return value or default

        def number(name: str, default: float, *, low: float, high: float, whole: bool = False) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                problems.append(f"{name} must be a number (got {raw!r})")
                return default
            if not low <= value <= high or (whole and not value.is_integer()):
                kind = "a whole number" if whole else "a number"
                problems.append(f"{name} must be {kind} between {low:g} and {high:g} (got {raw!r})")
                return default
            return value

        spot_label: tuple[str, str] | None = cls.spot_node_label
        raw_label = env.get("GANOPS_SPOT_NODE_LABEL")
        if raw_label is not None:
            if not raw_label.strip():
                spot_label = None
            elif "=" not in raw_label:
                problems.append(f"GANOPS_SPOT_NODE_LABEL must be key=value (got {raw_label!r})")
            else:
                key, _, value = raw_label.strip().partition("=")
                spot_label = (key, value)
        spot_toleration: Toleration | None = Toleration("karpenter.sh/capacity-type", "spot", "NoSchedule")
        raw_toleration = env.get("GANOPS_SPOT_TOLERATION")
        if raw_toleration is not None:
            spot_toleration = _parse_toleration(raw_toleration.strip(), problems)
        level_name = (text("GANOPS_OPERATOR_POSTING_LEVEL", "INFO") or "INFO").upper()
        level = logging.getLevelName(level_name)
        if not isinstance(level, int):
            problems.append(f"GANOPS_OPERATOR_POSTING_LEVEL must be a logging level name (got {level_name!r})")
            level = logging.INFO
        pull = text("GANOPS_IMAGE_PULL_POLICY")
        if pull is not None and pull not in ("Always", "IfNotPresent", "Never"):
            problems.append(f"GANOPS_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never (got {pull!r})")
            pull = None
        config = cls(
            image=text("GANOPS_TRAINER_IMAGE", DEFAULT_IMAGE) or DEFAULT_IMAGE,
            image_pull_policy=pull,
            checkpoint_uri=text("GANOPS_CHECKPOINT_URI"),
            mlflow_uri=text("GANOPS_MLFLOW_URI") or text(MLFLOW_TRACKING_URI_ENV),
            s3_secret=text("GANOPS_S3_SECRET"),
            mlflow_secret=text("GANOPS_MLFLOW_SECRET"),
            s3_endpoint_url=text("GANOPS_S3_ENDPOINT_URL"),
            trainer_service_account=text("GANOPS_TRAINER_SERVICE_ACCOUNT"),
            termination_grace_seconds=int(
                number("GANOPS_TERMINATION_GRACE_SECONDS", 120, low=1, high=86400, whole=True)
            ),
            trainer_metrics_port=int(number("GANOPS_TRAINER_METRICS_PORT", 9400, low=1, high=65535, whole=True)),
            rendezvous_port=int(number("GANOPS_RENDEZVOUS_PORT", 29500, low=1, high=65535, whole=True)),
            spot_node_label=spot_label,
            spot_toleration=spot_toleration,
            gpu_type_label=text("GANOPS_GPU_TYPE_LABEL"),
            resync_seconds=number("GANOPS_OPERATOR_RESYNC_SECONDS", 15.0, low=0.05, high=3600),
            budget_warning_fraction=number("GANOPS_BUDGET_WARNING_FRACTION", 0.8, low=0.0, high=1.0),
            metrics_port=int(number("GANOPS_OPERATOR_METRICS_PORT", 8080, low=0, high=65535, whole=True)),
            replicas=int(number("GANOPS_OPERATOR_REPLICAS", 1, low=1, high=100, whole=True)),
            peering_name=text("GANOPS_OPERATOR_PEERING", "ganops-operator") or "ganops-operator",
            posting_level=level,
            workers=int(number("GANOPS_OPERATOR_WORKERS", 8, low=1, high=256, whole=True)),
        )
        if problems:
            raise ConfigError(problems)
        return config


def _parse_toleration(raw: str, problems: list[str]) -> Toleration | None:
    """`key[=value][:effect]`; empty = no toleration."""
    if not raw:
        return None
    rest, _, effect = raw.partition(":")
    key, eq, value = rest.partition("=")
    if not key or (effect and effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute")):
        problems.append("GANOPS_SPOT_TOLERATION must be key[=value][:NoSchedule|PreferNoSchedule|NoExecute] "
                        f"(got {raw!r})")
        return None
    return Toleration(key, value if eq else None, effect or None)


def configure_kopf(settings: Any, config: OperatorConfig) -> None:
    """Every kopf setting the operator relies on, in one place (called from the startup handler)."""
    import kopf

    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key=LAST_HANDLED_KEY
    )
    settings.posting.enabled = True
    settings.posting.loggers = False  # Events only from explicit kopf.event() calls: one per transition
    settings.posting.level = config.posting_level
    settings.posting.reporting_component = "ganops-operator"
    settings.posting.event_name_prefix = "ganops-"
    # Watch only the pods and Jobs this operator made (server-side selector), not every pod in the cluster.
    settings.watching.label_selectors["pods"] = LABEL_JOB
    settings.watching.label_selectors["batch", "jobs"] = LABEL_JOB
    settings.watching.server_timeout = settings.watching.server_timeout or 300
    settings.watching.client_timeout = settings.watching.client_timeout or 330
    settings.execution.max_workers = max(settings.execution.max_workers or 0, config.workers)
    if config.replicas > 1:
        settings.peering.standalone = False
        settings.peering.mandatory = True
        settings.peering.name = config.peering_name
    else:
        settings.peering.standalone = True

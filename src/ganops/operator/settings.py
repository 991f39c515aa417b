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
| GANOPS_TRAINER_IMAGE_COMPILES | false | the trainer image has gcc and Python headers: allow `training.compile` on it |
| GANOPS_TRAINER_METRICS_PORT | 9400 | the trainer's /metrics port (GANOPS_METRICS_PORT in the pod) |
| GANOPS_RENDEZVOUS_PORT | 29500 | torchrun's static rendezvous port on replica 0 |
| GANOPS_SPOT_NODE_LABEL | karpenter.sh/capacity-type=spot | node label required for `spec.resources.spot` |
| GANOPS_SPOT_TOLERATION | karpenter.sh/capacity-type=spot:NoSchedule | spot taint tolerated: key[=value][:effect] |
| GANOPS_GPU_TYPE_LABEL | (unset) | node label whose value must equal `spec.resources.gpuType` |
| GANOPS_OPERATOR_RESYNC_SECONDS | 15 | how often each job is re-read (latest.json, cost, deadline) without events |
| GANOPS_BUDGET_WARNING_FRACTION | 0.8 | share of the budget that raises the BudgetWarning event |
| GANOPS_OPERATOR_METRICS_PORT | 8080 | the operator's Prometheus /metrics port; 0 disables it |
| GANOPS_OPERATOR_REPLICAS | 1 | >1 turns kopf peering on (one active operator, the others on standby) |
| GANOPS_OPERATOR_SCAN_CLUSTER | true | false: no namespace/CRD scanning (named `--namespace`s: not granted) |
| GANOPS_OPERATOR_PEERING | ganops-operator | name of the KopfPeering object |
| GANOPS_OPERATOR_POSTING_LEVEL | INFO | lowest level of Events posted (Normal is INFO, Warning is WARNING) |
| GANOPS_OPERATOR_WORKERS | 8 | threads that run reconciles (API and object-store I/O) |

The platform's policy for what a job (a tenant) may choose; a job outside it gets `InvalidSpec` naming the field
(`ganops.operator.policy`; docs/security.md). Lists are comma-separated; `*` allows anything.

| variable | default | meaning |
|---|---|---|
| GANOPS_ALLOWED_MLFLOW_URIS | (none) | MLflow servers `spec.tracking.mlflowUri` may name, besides GANOPS_MLFLOW_URI |
| GANOPS_ALLOWED_CHECKPOINT_URIS | (none) | prefixes `spec.checkpoint.uri` may be under, besides GANOPS_CHECKPOINT_URI |
| GANOPS_ALLOWED_IMAGES | (none) | `spec.resources.image` besides GANOPS_TRAINER_IMAGE: exact references, prefixes |
|   |   | ending in `/`, `:` or `@`, or digests `sha256:<hex>` |
| GANOPS_ALLOWED_PRIORITY_CLASSES | (none) | `spec.resources.priorityClassName` values allowed |
| GANOPS_ALLOWED_NODE_SELECTORS | (none) | `spec.resources.nodeSelector` entries: `key=value`, or `key` for any value |
| GANOPS_ALLOWED_TOLERATIONS | (none) | `spec.resources.tolerations`: `key[=value][:effect]` (a part left out matches |
|   |   | any; a toleration without a key needs `*`) |
| GANOPS_MIN_GATES | (none) | promotion gates no job can lower, e.g. `maxFID=60,minRecall=0.2` |
| GANOPS_ALLOW_FORCE_PROMOTION | true | `ganops.io/promote: force` may skip a job's own gates (never GANOPS_MIN_GATES) |
| GANOPS_TRAINER_NETWORK_POLICY | (unset) | JSON `{"egress": [rules], "metricsFrom": [peers]}`: every job gets a |
|   |   | default-deny NetworkPolicy (`ganops.operator.children.network_policy`) |

Which namespaces are watched is kopf's own choice, by argument: `--all-namespaces`, or one `--namespace=<name>` per
namespace (the chart's `operator.watchNamespaces`; with GANOPS_OPERATOR_SCAN_CLUSTER=false, since that mode's RBAC
grants no namespace listing). Not a comma list: kopf reads `team-a,team-b` as one pattern of globs, which only a
namespace listing resolves; without that permission it watches nothing (issue 14, finding 1).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ganops.api.spec import GatesSpec
from ganops.api.uris import OBJECT_STORE_SHAPE, mlflow_ok, object_store_ok
from ganops.contracts import API_GROUP, LABEL_JOB, MLFLOW_TRACKING_URI_ENV

# The oldest kopf the operator runs on (pyproject.toml's floor says the same; a test keeps them equal):
# `settings.watching.label_selectors`, which `configure_kopf` sets so the Job and pod watches are filtered by the
# API server, first appeared in kopf 1.45.0 (absent from 1.37.0, 1.40.0, 1.43.0 and 1.44.0's configuration.py); an
# older kopf fails at startup with an AttributeError.
KOPF_FLOOR = (1, 45)
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


ANY = "*"
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class JobPolicy:
    """What the platform admin lets a GanTrainingJob choose (`ganops.operator.policy` checks a spec against it).
    Empty tuples allow nothing beyond the operator's own defaults; `("*",)` allows anything."""

    allowed_mlflow_uris: tuple[str, ...] = ()
    allowed_checkpoint_uris: tuple[str, ...] = ()
    allowed_images: tuple[str, ...] = ()
    allowed_priority_classes: tuple[str, ...] = ()
    allowed_node_selectors: tuple[str, ...] = ()
    allowed_tolerations: tuple[str, ...] = ()
    min_gates: tuple[tuple[str, float], ...] = ()  # (wire name, threshold), e.g. (("maxFID", 60.0),)
    allow_force_promotion: bool = True

    def min_gates_spec(self) -> GatesSpec | None:
        return GatesSpec.model_validate(dict(self.min_gates)) if self.min_gates else None


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
    # The default trainer image has no C compiler or Python headers (Triton needs both for torch.compile): jobs with
    # training.compile and no resources.image of their own are refused as invalid. Set when your image has them.
    trainer_image_compiles: bool = False
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
    scan_cluster: bool = True  # kopf's namespace and CRD scanning (needs cluster-wide list/watch on namespaces)
    peering_name: str = "ganops-operator"
    posting_level: int = logging.INFO
    workers: int = 8
    policy: JobPolicy = field(default_factory=JobPolicy)
    trainer_network_policy: str | None = None  # JSON {"egress": [...], "metricsFrom": [...]}; None: no policy

    @property
    def mlflow_uris(self) -> tuple[str, ...]:
        """Every MLflow server of the platform: the default first."""
        return tuple(dict.fromkeys(([self.mlflow_uri] if self.mlflow_uri else []) + list(
            self.policy.allowed_mlflow_uris)))

    @property
    def checkpoint_uris(self) -> tuple[str, ...]:
        """Every object-store prefix the operator reads checkpoints under: the default first."""
        return tuple(dict.fromkeys(([self.checkpoint_uri] if self.checkpoint_uri else []) + list(
            self.policy.allowed_checkpoint_uris)))

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
            spot_toleration = parse_toleration(raw_toleration.strip(), problems)
        level_name = (text("GANOPS_OPERATOR_POSTING_LEVEL", "INFO") or "INFO").upper()
        level = logging.getLevelName(level_name)
        if not isinstance(level, int):
            problems.append(f"GANOPS_OPERATOR_POSTING_LEVEL must be a logging level name (got {level_name!r})")
            level = logging.INFO
        compiles_raw = (text("GANOPS_TRAINER_IMAGE_COMPILES", "false") or "false").lower()
        if compiles_raw not in ("true", "false"):
            problems.append(f"GANOPS_TRAINER_IMAGE_COMPILES must be true or false (got {compiles_raw!r})")
        pull = text("GANOPS_IMAGE_PULL_POLICY")
        if pull is not None and pull not in ("Always", "IfNotPresent", "Never"):
            problems.append(f"GANOPS_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never (got {pull!r})")
            pull = None
        mlflow_uri = text("GANOPS_MLFLOW_URI") or text(MLFLOW_TRACKING_URI_ENV)
        checkpoint_uri = text("GANOPS_CHECKPOINT_URI")
        policy = _parse_policy(env, problems)
        for name, uri in (("GANOPS_MLFLOW_URI", mlflow_uri), *(("GANOPS_ALLOWED_MLFLOW_URIS", u) for u in
                                                               policy.allowed_mlflow_uris)):
            if uri is not None and not uri.startswith(("http://", "https://")):
                continue  # a local store (sqlite:, file:) for a laptop operator: nothing to compare hosts with
            if uri is not None and not mlflow_ok(uri):
                problems.append(f"{name} must be an http(s)://host[:port][/path] URL without user-info or query "
                                f"string (got {uri!r}); credentials come from the operator's Secret")
        for name, uri in (("GANOPS_CHECKPOINT_URI", checkpoint_uri), *(("GANOPS_ALLOWED_CHECKPOINT_URIS", u) for u in
                                                                        policy.allowed_checkpoint_uris)):
            if uri is not None and not object_store_ok(uri):
                problems.append(f"{name} must be {OBJECT_STORE_SHAPE} (got {uri!r})")
        network_policy = text("GANOPS_TRAINER_NETWORK_POLICY")
        if network_policy is not None:
            _check_network_policy(network_policy, problems)
        config = cls(
            image=text("GANOPS_TRAINER_IMAGE", DEFAULT_IMAGE) or DEFAULT_IMAGE,
            image_pull_policy=pull,
            checkpoint_uri=checkpoint_uri,
            mlflow_uri=mlflow_uri,
            s3_secret=text("GANOPS_S3_SECRET"),
            mlflow_secret=text("GANOPS_MLFLOW_SECRET"),
            s3_endpoint_url=text("GANOPS_S3_ENDPOINT_URL"),
            trainer_service_account=text("GANOPS_TRAINER_SERVICE_ACCOUNT"),
            termination_grace_seconds=int(
                number("GANOPS_TERMINATION_GRACE_SECONDS", 120, low=1, high=86400, whole=True)
            ),
            trainer_image_compiles=compiles_raw == "true",
            trainer_metrics_port=int(number("GANOPS_TRAINER_METRICS_PORT", 9400, low=1, high=65535, whole=True)),
            rendezvous_port=int(number("GANOPS_RENDEZVOUS_PORT", 29500, low=1, high=65535, whole=True)),
            spot_node_label=spot_label,
            spot_toleration=spot_toleration,
            gpu_type_label=text("GANOPS_GPU_TYPE_LABEL"),
            resync_seconds=number("GANOPS_OPERATOR_RESYNC_SECONDS", 15.0, low=0.05, high=3600),
            budget_warning_fraction=number("GANOPS_BUDGET_WARNING_FRACTION", 0.8, low=0.0, high=1.0),
            metrics_port=int(number("GANOPS_OPERATOR_METRICS_PORT", 8080, low=0, high=65535, whole=True)),
            replicas=int(number("GANOPS_OPERATOR_REPLICAS", 1, low=1, high=100, whole=True)),
            scan_cluster=_flag(text("GANOPS_OPERATOR_SCAN_CLUSTER"), "GANOPS_OPERATOR_SCAN_CLUSTER", problems),
            peering_name=text("GANOPS_OPERATOR_PEERING", "ganops-operator") or "ganops-operator",
            posting_level=level,
            workers=int(number("GANOPS_OPERATOR_WORKERS", 8, low=1, high=256, whole=True)),
            policy=policy,
            trainer_network_policy=network_policy,
        )
        if problems:
            raise ConfigError(problems)
        return config


def _items(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item.strip() for item in env.get(name, "").split(",") if item.strip()))


def _parse_policy(env: Mapping[str, str], problems: list[str]) -> JobPolicy:
    images = _items(env, "GANOPS_ALLOWED_IMAGES")
    for image in images:
        if image != ANY and (" " in image or (image.startswith("sha256:") and len(image) != 71)):
            problems.append(f"GANOPS_ALLOWED_IMAGES: {image!r} is not an image reference, a prefix ending in /, : "
                            "or @, or a digest sha256:<64 hex>")
    selectors = _items(env, "GANOPS_ALLOWED_NODE_SELECTORS")
    for entry in selectors:
        if entry != ANY and not entry.partition("=")[0]:
            problems.append(f"GANOPS_ALLOWED_NODE_SELECTORS: {entry!r} must be key or key=value")
    tolerations = _items(env, "GANOPS_ALLOWED_TOLERATIONS")
    for entry in tolerations:
        if entry != ANY:
            parse_toleration(entry, problems, name="GANOPS_ALLOWED_TOLERATIONS")
    gates: dict[str, float] = {}
    for entry in _items(env, "GANOPS_MIN_GATES"):
        key, eq, raw = entry.partition("=")
        try:
            gates[key.strip()] = float(raw) if eq else float("nan")
        except ValueError:
            problems.append(f"GANOPS_MIN_GATES: {entry!r} must be gate=number")
    if gates:
        try:
            GatesSpec.model_validate(gates)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            problems.append(f"GANOPS_MIN_GATES must name gates of spec.promotion.gates (maxFID, minRecall, minModes, "
                            f"minHighQuality, maxSafetyBlockRate) with valid thresholds ({details})")
            gates = {}
    force = (env.get("GANOPS_ALLOW_FORCE_PROMOTION") or "true").strip().lower()
    if force not in ("true", "false"):
        problems.append(f"GANOPS_ALLOW_FORCE_PROMOTION must be true or false (got {force!r})")
    return JobPolicy(
        allowed_mlflow_uris=_items(env, "GANOPS_ALLOWED_MLFLOW_URIS"),
        allowed_checkpoint_uris=_items(env, "GANOPS_ALLOWED_CHECKPOINT_URIS"),
        allowed_images=images,
        allowed_priority_classes=_items(env, "GANOPS_ALLOWED_PRIORITY_CLASSES"),
        allowed_node_selectors=selectors,
        allowed_tolerations=tolerations,
        min_gates=tuple(sorted(gates.items())),
        allow_force_promotion=force != "false",
    )


def _check_network_policy(raw: str, problems: list[str]) -> None:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        problems.append(f"GANOPS_TRAINER_NETWORK_POLICY must be JSON ({exc})")
        return
    if not isinstance(value, dict) or set(value) - {"egress", "metricsFrom"} or not all(
            isinstance(value.get(key, []), list) for key in ("egress", "metricsFrom")):
        problems.append('GANOPS_TRAINER_NETWORK_POLICY must be {"egress": [NetworkPolicy egress rules], '
                        '"metricsFrom": [NetworkPolicy peers]}')


def _flag(raw: str | None, name: str, problems: list[str], default: bool = True) -> bool:
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    problems.append(f"{name} must be true or false (got {raw!r})")
    return default


def parse_toleration(raw: str, problems: list[str], name: str = "GANOPS_SPOT_TOLERATION") -> Toleration | None:
    """`key[=value][:effect]`; empty = no toleration."""
    if not raw:
        return None
    rest, _, effect = raw.partition(":")
    key, eq, value = rest.partition("=")
    if not key or (effect and effect not in TOLERATION_EFFECTS):
        problems.append(f"{name} must be key[=value][:NoSchedule|PreferNoSchedule|NoExecute] (got {raw!r})")
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
    # Named namespaces only (the chart's watchNamespaces): nothing to scan, and no RBAC to list namespaces with.
    settings.scanning.disabled = not config.scan_cluster
    if config.replicas > 1:
        settings.peering.standalone = False
        settings.peering.mandatory = True
        settings.peering.name = config.peering_name
    else:
        settings.peering.standalone = True

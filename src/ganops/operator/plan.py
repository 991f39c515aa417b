"""What goes into the reconcile decision and what comes out of it.

In: the GanTrainingJob as the operator sees it (`JobInput`), what it observed of its children and latest.json
(`Observed`) and the operator's settings (`Policy`). Out: a `Plan`: the new status, the Events to post and the
actions that bring the children in line, executed by the controller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ganops.api.spec import GanTrainingJobSpec, GanTrainingJobStatus
from ganops.checkpoints import LatestRecord
from ganops.operator.conditions import Event
from ganops.operator.observe import JobView, PodView


@dataclass(frozen=True)
class JobInput:
    """The GanTrainingJob as the operator sees it. `spec` is None when it did not validate (see `problems`)."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: GanTrainingJobSpec | None
    status: GanTrainingJobStatus
    problems: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Observed:
    job: JobView | None = None  # the batch Job (any attempt)
    pods: tuple[PodView, ...] = ()  # every pod labelled with the job (any attempt)
    record: LatestRecord | None = None  # latest.json, when read this time
    record_error: str | None = None  # the object store failed: the record is unknown, not absent
    record_expected: bool = True  # False when the job has no checkpoint URI at all
    failed_create: str | None = None  # the newest FailedCreate event of the Job (its pods refused at admission)


@dataclass(frozen=True)
class Policy:
    warning_fraction: float = 0.8
    resync_seconds: float = 15.0
    mlflow_uri: str | None = None  # the platform's MLflow (GANOPS_MLFLOW_URI)
    price_table: dict[str, float] | None = None
    allowed_mlflow_uris: tuple[str, ...] = ()  # other MLflow servers jobs may name (GANOPS_ALLOWED_MLFLOW_URIS)
    min_gates: tuple[tuple[str, float], ...] = ()  # GANOPS_MIN_GATES
    allow_force: bool = True  # GANOPS_ALLOW_FORCE_PROMOTION

    @property
    def mlflow_uris(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(([self.mlflow_uri] if self.mlflow_uri else []) + list(self.allowed_mlflow_uris)))


@dataclass(frozen=True)
class EnsureChildren:
    """Create whatever is missing of the attempt's children (ConfigMap, Service, Job); existing ones are kept."""

    attempt: int
    restarts: Mapping[str, int]
    resume_from: str | None = None


@dataclass(frozen=True)
class SyncJobFile:
    """The spec changed: rewrite the ConfigMap's job file (read by the next attempt)."""


@dataclass(frozen=True)
class DeleteJob:
    """Delete the Job (foreground: its pods get SIGTERM and their grace period to checkpoint)."""

    uid: str | None
    reason: str


@dataclass(frozen=True)
class DeleteSelf:
    reason: str


@dataclass(frozen=True)
class Promote:
    """Judge the job's best checkpoint against the gates, register it, move the alias if it passes (or `force`)."""

    tracking_uri: str  # always one of the platform's MLflow servers (`Policy.mlflow_uris`)
    model_name: str  # the registered name, `<namespace>.<model>`
    alias: str
    force: bool = False
    clear_annotation: str | None = None  # manual promotion: remove the annotation once done
    min_gates: tuple[tuple[str, float], ...] = ()  # the platform's floor under the job's gates


@dataclass(frozen=True)
class Rollback:
    tracking_uri: str
    model_name: str
    alias: str
    version: str


@dataclass(frozen=True)
class ClearAnnotation:
    key: str


Action = EnsureChildren | SyncJobFile | DeleteJob | DeleteSelf | Promote | Rollback | ClearAnnotation


@dataclass
class Plan:
    status: GanTrainingJobStatus
    events: list[Event] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # None: nothing is due; wake up on events (and a slow safety net)

    def wake_in(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


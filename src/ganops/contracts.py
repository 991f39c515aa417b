"""Names that two parts of ganops agree on, defined once: both ends import them from here.

In the style of Kubeflow's constants modules: environment variables the operator sets and the trainer reads, the
labels and annotations of the operator's children, the MLflow tags promotion writes and serving reads, the built-in
dataset names. A name that only one module uses stays in that module. Nothing here imports anything of ganops.
"""

from __future__ import annotations

from typing import Final

# ------------------------------------------------------------------------------------------------ Kubernetes

API_GROUP: Final = "ganops.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{API_GROUP}/{VERSION}"  # the apiVersion field of a GanTrainingJob
KIND: Final = "GanTrainingJob"
PLURAL: Final = "gantrainingjobs"
SHORT_NAME: Final = "gtj"

LABEL_JOB: Final = "ganops.io/job"  # on every child of a job: its name
LABEL_ATTEMPT: Final = "ganops.io/attempt"  # on the Job and its pods: the attempt number
ANNOTATION_RESTARTS: Final = "ganops.io/restarts"  # on the Job: restart counters at launch (JSON)
ANNOTATION_RESUME_FROM: Final = "ganops.io/resume-from"  # on the Job: the checkpoint it resumes from
# on the Job's pods: the uid of the GanTrainingJob they belong to (a job deleted and re-created under the same name has
# a new uid; its predecessor's pods, still terminating, must not count as the new job's)
ANNOTATION_OWNER_UID: Final = "ganops.io/owner-uid"
ANNOTATION_PROMOTE: Final = "ganops.io/promote"  # on a job: "true" (gates apply) or "force"
ANNOTATION_ROLLBACK_TO: Final = "ganops.io/rollback-to"  # on a job: a model version to point the alias back at
COMPLETION_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"

# ------------------------------------------------------------------------------------------------ trainer pods
# Set by the operator on every trainer container (`ganops.operator.children`), read by the trainer.

ENV_NAMESPACE: Final = "GANOPS_NAMESPACE"
ENV_JOB_NAME: Final = "GANOPS_JOB_NAME"
ENV_JOB_UID: Final = "GANOPS_JOB_UID"  # the trainer tags its MLflow run with it (TAG_JOB_UID)
ENV_CHECKPOINT_URI: Final = "GANOPS_CHECKPOINT_URI"
ENV_METRICS_PORT: Final = "GANOPS_METRICS_PORT"  # rank 0's /metrics; 0 turns it off
ENV_METRICS_ADDR: Final = "GANOPS_METRICS_ADDR"
ENV_WORK_DIR: Final = "GANOPS_WORK_DIR"
ENV_S3_ENDPOINT_URL: Final = "GANOPS_S3_ENDPOINT_URL"
ENV_S3_ADDRESSING_STYLE: Final = "GANOPS_S3_ADDRESSING_STYLE"
ENV_INCEPTION_WEIGHTS_URI: Final = "GANOPS_INCEPTION_WEIGHTS_URI"
ENV_PRICE_TABLE: Final = "GANOPS_PRICE_TABLE"
ENV_LOG_LEVEL: Final = "GANOPS_LOG_LEVEL"
ENV_LOG_FORMAT: Final = "GANOPS_LOG_FORMAT"  # "json" or "text"; default: text on a TTY, JSON otherwise
ENV_GIT_COMMIT: Final = "GANOPS_GIT_COMMIT"
ENV_IMAGE: Final = "GANOPS_IMAGE"
# The pod's terminationGracePeriodSeconds, for `ganops launch` (torchrun's shutdown timeout is set inside it).
ENV_TERMINATION_GRACE: Final = "GANOPS_TERMINATION_GRACE_SECONDS"
# Set by `ganops launch` for its torchrun workers: where each writes `stopped-<rank>.json` after its SIGTERM checkpoint.
ENV_STOP_MARKER_DIR: Final = "GANOPS_STOP_MARKER_DIR"
MLFLOW_TRACKING_URI_ENV: Final = "MLFLOW_TRACKING_URI"

DEFAULT_METRICS_PORT: Final = 9400

# ------------------------------------------------------------------------------------------------ MLflow tags
# Runs (written by the trainer's tracking hook, read back to resume a run):
TAG_JOB: Final = "ganops.job"  # "<namespace>/<name>"
TAG_JOB_UID: Final = "ganops.jobUid"
TAG_SPEC_HASH: Final = "ganops.specHash"
TAG_DATASET_DIGEST: Final = "ganops.datasetDigest"
TAG_GIT_COMMIT: Final = "ganops.gitCommit"
TAG_IMAGE: Final = "ganops.image"
TAG_VERSION_PREFIX: Final = "ganops.version."
TAG_HEALTH_LAST_EVENT: Final = "ganops.health.lastEvent"
TAG_PURPOSE: Final = "ganops.purpose"
MLFLOW_GIT_COMMIT_TAG: Final = "mlflow.source.git.commit"

# Model versions (written by promotion, read by serving and the operator):
TAG_CHECKPOINT_URI: Final = "ganops.checkpoint_uri"  # the step folder holding the weights
TAG_STEP: Final = "ganops.step"
TAG_GATES: Final = "ganops.gates"  # "passed" | "rejected"
TAG_GATE_FAILURES: Final = "ganops.gates.failures"
TAG_METRIC_PREFIX: Final = "ganops.metric."  # + metric name = repr(value)
TAG_GENERATION_PREFIX: Final = "ganops.generation."  # + latentDim, numClasses, imageSize, channels, …
TAG_GENERATION_EMA: Final = TAG_GENERATION_PREFIX + "ema"
TAG_GENERATION_TRUNCATION: Final = TAG_GENERATION_PREFIX + "truncation"  # "" means none
TAG_SAMPLES_SHA256: Final = "ganops.samples.sha256"
TAG_SAMPLES_N: Final = "ganops.samples.n"
TAG_MANIFEST_SHA256: Final = "ganops.manifestSha256"
TAG_MEMORIZATION_INDEX: Final = "ganops.memorization_index"  # URI serving's memorization filter loads

REGISTRY_EXPERIMENT: Final = "ganops-registry"  # pointer runs for checkpoints registered without a run

# ------------------------------------------------------------------------------------------------ datasets

DATASET_RING8: Final = "builtin:ring8"
DATASET_GRID25: Final = "builtin:grid25"
DATASET_DIGITS: Final = "builtin:digits"
BUILTIN_DATASETS: Final = (DATASET_RING8, DATASET_GRID25, DATASET_DIGITS)
MIXTURE_DATASETS: Final = (DATASET_RING8, DATASET_GRID25)  # infinite 2-D Gaussian mixtures

# ------------------------------------------------------------------------------------------------ tenancy
# Registry model names belong to a namespace: the operator registers a job's model as `<namespace>.<model>`.
# Kubernetes namespace names hold no dots, so the text before the first dot is the owner, unambiguously.

MODEL_NAMESPACE_SEPARATOR: Final = "."


def registered_model_name(namespace: str, model: str) -> str:
    """The registry name of `model` for a job in `namespace`: ``team-a.digits`` for ``digits``; a name already
    qualified (``team-a.digits``) is returned as is, whatever namespace qualifies it (see `model_namespace`)."""
    return model if MODEL_NAMESPACE_SEPARATOR in model else f"{namespace}{MODEL_NAMESPACE_SEPARATOR}{model}"


def model_namespace(registered: str) -> str | None:
    """The namespace owning a registered model name (``team-a`` for ``team-a.digits``); None for a name without a
    qualifier (registered before names were owned by namespaces, or by hand)."""
    owner, separator, _ = registered.partition(MODEL_NAMESPACE_SEPARATOR)
    return owner if separator and owner else None

"""The children of a GanTrainingJob, as pure functions from (owner, spec, operator config, attempt) to manifests.

- ConfigMap `<job>-spec`: the job file (`ganops.api.loader.dump_job`), mounted at /etc/ganops/job.yaml.
- Service `<job>` (replicas > 1): headless, so replica 0 is reachable as `<job>-0.<job>` for torchrun's rendezvous.
- NetworkPolicy `<job>-trainer` (when the platform configured one): default deny for the job's pods; their only
  peers are each other, DNS, the object store and MLflow.
- Job `<job>` (batch/v1, Indexed, one pod per replica): each attempt replaces the previous one under the same name,
  so the API server itself guarantees there is never more than one live Job per GanTrainingJob. The attempt number
  and the restart counters at launch are on the Job (label `ganops.io/attempt`, annotation `ganops.io/restarts`).

Every child is owned by the GanTrainingJob (`kopf.adopt`) and labelled `app.kubernetes.io/*` + `ganops.io/job`.
Credentials only ever appear as Secret references (`envFrom.secretRef`), never as values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from ganops.api.loader import dump_job
from ganops.api.spec import GanTrainingJob, GanTrainingJobSpec, ObjectMeta
from ganops.contracts import (
    ANNOTATION_OWNER_UID,
    ANNOTATION_RESTARTS,
    ANNOTATION_RESUME_FROM,
    API_VERSION,
    COMPLETION_INDEX_ANNOTATION,
    ENV_CHECKPOINT_URI,
    ENV_JOB_NAME,
    ENV_JOB_UID,
    ENV_METRICS_PORT,
    ENV_NAMESPACE,
    ENV_S3_ENDPOINT_URL,
    ENV_TERMINATION_GRACE,
    ENV_WORK_DIR,
    KIND,
    LABEL_ATTEMPT,
    LABEL_JOB,
    MLFLOW_TRACKING_URI_ENV,
)
from ganops.operator.observe import controller_uid
from ganops.operator.settings import OperatorConfig

JOB_FILE_DIR = "/etc/ganops"
JOB_FILE_KEY = "job.yaml"
JOB_FILE_PATH = f"{JOB_FILE_DIR}/{JOB_FILE_KEY}"
CONTAINER = "trainer"
# The USER of the trainer image (trainer/Dockerfile) and the chart's podSecurityContext.runAsUser: the smoke run of
# the built image (tests/images) runs the operator's pod spec under this context.
RUN_AS_USER = 10001
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
MAX_HOSTNAME = 63


@dataclass(frozen=True)
class Owner:
    """The GanTrainingJob the children belong to (what `kopf.adopt` needs)."""

    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str] | None = None

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "labels": dict(self.labels or {}),
            },
        }


def configmap_name(job: str) -> str:
    return f"{job}-spec"


def service_name(job: str) -> str:
    return job


def job_name(job: str) -> str:
    return job


def labels(job: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "ganops",
        "app.kubernetes.io/instance": job,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "ganops",
        "app.kubernetes.io/managed-by": "ganops-operator",
        LABEL_JOB: job,
    }


def naming_problems(name: str, spec: GanTrainingJobSpec) -> list[str]:
    """Constraints that come from Kubernetes naming rather than from the spec itself (one line each)."""
    problems = []
    replicas = spec.resources.replicas
    if replicas > 1:
        if not name[0].isalpha():
            problems.append("metadata.name must start with a letter when resources.replicas > 1: it names the "
                            "headless Service that the replicas rendezvous through")
        longest = f"{name}-{replicas - 1}"
        if len(longest) > MAX_HOSTNAME:
            problems.append(f"metadata.name is too long for {replicas} replicas: the pod hostname {longest!r} "
                            f"must be at most {MAX_HOSTNAME} characters")
    if len(configmap_name(name)) > 253:  # pragma: no cover - names are at most 63 characters
        problems.append("metadata.name is too long")
    return problems


def inherited_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The job's labels its children get (kopf.adopt copies the owner's labels): only ganops.io/* ones. Any other
    label of the job - a kueue.x-k8s.io/* one, say - means something to a controller and must not spread to the
    Job and its pods; pod labels are asked for explicitly (spec.podLabels)."""
    return {key: value for key, value in labels.items() if key.startswith("ganops.io/")}


def holder(obj: Mapping[str, Any] | None, uid: str) -> str | None:
    """Why an existing child of this name is not ours to use, or None when it is: it belongs to another
    GanTrainingJob (a deleted one of the same name, whose children the garbage collector has not removed yet), to
    nobody, or it is being deleted. Such an object is never patched or adopted: the operator waits for it to go."""
    if obj is None:
        return "it was deleted meanwhile"
    meta = obj.get("metadata") or {}
    owner = controller_uid(meta, KIND, API_VERSION)
    if owner != uid:
        return (f"it belongs to another GanTrainingJob (uid {owner}), deleted and not yet garbage-collected"
                if owner else "it has no GanTrainingJob owner")
    if meta.get("deletionTimestamp"):
        return "it is being deleted"
    return None


def image_problems(spec: GanTrainingJobSpec, config: OperatorConfig) -> list[str]:
    """What the trainer image cannot run, refused before any pod starts (one line each).

    ``training.compile`` needs a C compiler and Python headers at run time (Triton builds its launcher stubs with
    them; inductor's CPU kernels too). The stock trainer image has neither - its final stage carries no build tools -
    so a job asking for compile on it would fail at its first step on every attempt. A job with its own
    ``resources.image`` is let through: the trainer checks the toolchain at start and exits 3 if it is missing.
    """
    if spec.training.compile and spec.resources.image is None and not config.trainer_image_compiles:
        return ["spec.training.compile needs a C compiler and Python headers in the trainer image (Triton compiles "
                "with them) and the default trainer image has none: set compile: false, or resources.image to an "
                "image with gcc and python3-dev (docs/gpu.md)"]
    return []


def spec_problems(name: str, spec: GanTrainingJobSpec, config: OperatorConfig) -> list[str]:
    """Every reason the operator refuses a job that the schema accepted: `naming_problems` + `image_problems`."""
    return naming_problems(name, spec) + image_problems(spec, config)


def _adopt(obj: dict[str, Any], owner: Owner, nested: str | None = None) -> dict[str, Any]:
    kopf.adopt(obj, owner=owner.body(), nested=nested)  # type: ignore[arg-type]
    return obj


# ------------------------------------------------------------------------------------------------ ConfigMap


def job_file(owner: Owner, spec: GanTrainingJobSpec) -> str:
    return dump_job(GanTrainingJob(metadata=ObjectMeta(name=owner.name, namespace=owner.namespace), spec=spec))


def configmap(owner: Owner, spec: GanTrainingJobSpec) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap_name(owner.name), "labels": labels(owner.name, "job-file")},
        "data": {JOB_FILE_KEY: job_file(owner, spec)},
    }
    return _adopt(obj, owner)


# ------------------------------------------------------------------------------------------------ Service


def service(owner: Owner, spec: GanTrainingJobSpec, config: OperatorConfig) -> dict[str, Any] | None:
    """The headless Service of a multi-replica job (None for a single replica)."""
    if spec.resources.replicas <= 1:
        return None
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(owner.name), "labels": labels(owner.name, "rendezvous")},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # replicas rendezvous before any of them is "ready"
            "selector": {LABEL_JOB: owner.name},
            "ports": [{"name": "rendezvous", "port": config.rendezvous_port, "targetPort": config.rendezvous_port,
                       "protocol": "TCP"}],
        },
    }
    return _adopt(obj, owner)


# ------------------------------------------------------------------------------------------------ NetworkPolicy


def network_policy_name(job: str) -> str:
    return f"{job}-trainer"


def network_policy(owner: Owner, spec: GanTrainingJobSpec, config: OperatorConfig) -> dict[str, Any] | None:
    """The job's default-deny NetworkPolicy (None when the platform configured none: GANOPS_TRAINER_NETWORK_POLICY).

    It selects the job's trainer pods. In: the job's own pods (every TCP port: torchrun's rendezvous on
    GANOPS_RENDEZVOUS_PORT, then NCCL/gloo, whose ports are ephemeral) and the platform's scrapers on the metrics
    port. Out: the job's own pods, and the platform's rules (DNS, the object store, MLflow) as the chart renders
    them from its values. Nothing else: not another job's pods, not the cluster, not the internet.
    """
    if config.trainer_network_policy is None:
        return None
    platform = json.loads(config.trainer_network_policy)
    peers = [{"podSelector": {"matchLabels": {LABEL_JOB: owner.name, "app.kubernetes.io/component": "trainer"}}}]
    ingress: list[dict[str, Any]] = []
    egress: list[dict[str, Any]] = []
    if spec.resources.replicas > 1:
        ingress.append({"from": peers})
        egress.append({"to": peers})
    if platform.get("metricsFrom"):
        ingress.append({"from": platform["metricsFrom"],
                        "ports": [{"protocol": "TCP", "port": config.trainer_metrics_port}]})
    egress += platform.get("egress") or []
    obj: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": network_policy_name(owner.name), "labels": labels(owner.name, "network-policy")},
        "spec": {
            "podSelector": {"matchLabels": {LABEL_JOB: owner.name, "app.kubernetes.io/component": "trainer"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }
    return _adopt(obj, owner)


# ------------------------------------------------------------------------------------------------ Job


def trainer_command(owner: Owner, spec: GanTrainingJobSpec, config: OperatorConfig, attempt: int) -> list[str]:
    replicas = spec.resources.replicas
    procs = max(1, spec.resources.gpus_per_replica)
    train = ["train", "--job", JOB_FILE_PATH, "--no-progress"]
    if replicas == 1 and procs == 1:
        return ["ganops", *train]
    # `ganops launch` is torchrun under a supervisor (PID 1): a SIGTERM becomes a checkpoint and exit 0 on every
    # rank within the grace period, where torchrun alone exits 1 (ganops.trainer.launch).
    launcher = ["ganops", "launch", f"--nproc-per-node={procs}", "--max-restarts=0"]
    if replicas == 1:
        return [*launcher, "--standalone", "--nnodes=1", "-m", "ganops.cli", *train]
    return [
        *launcher,
        f"--nnodes={replicas}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--rdzv-backend=static",
        "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)",
        f"--rdzv-id={owner.name}-a{attempt}",
        "-m",
        "ganops.cli",
        *train,
    ]


def checkpoint_uri(spec: GanTrainingJobSpec, config: OperatorConfig) -> str | None:
    return spec.checkpoint.uri or config.checkpoint_uri


def _env(owner: Owner, spec: GanTrainingJobSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": ENV_NAMESPACE, "value": owner.namespace},
        {"name": ENV_JOB_NAME, "value": owner.name},
        # The trainer tags its MLflow run with it (ganops.jobUid), so a re-created job of the same name gets its own
        # run instead of continuing the deleted job's.
        {"name": ENV_JOB_UID, "value": owner.uid},
        {"name": ENV_METRICS_PORT, "value": str(config.trainer_metrics_port)},
        {"name": ENV_WORK_DIR, "value": "/tmp/ganops"},
        {"name": ENV_TERMINATION_GRACE, "value": str(config.termination_grace_seconds)},
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "XDG_CACHE_HOME", "value": "/cache"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/cache/torchinductor"},
        {"name": "TRITON_CACHE_DIR", "value": "/cache/triton"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
    ]
    uri = checkpoint_uri(spec, config)
    if uri:
        env.append({"name": ENV_CHECKPOINT_URI, "value": uri})
    if config.s3_endpoint_url:
        env.append({"name": ENV_S3_ENDPOINT_URL, "value": config.s3_endpoint_url})
    if config.mlflow_uri and not spec.tracking.mlflow_uri:
        env.append({"name": MLFLOW_TRACKING_URI_ENV, "value": config.mlflow_uri})
    if spec.resources.replicas > 1:
        env += [
            {"name": "MASTER_ADDR", "value": f"{job_name(owner.name)}-0.{service_name(owner.name)}"},
            {"name": "MASTER_PORT", "value": str(config.rendezvous_port)},
        ]
    return env


def _env_from(config: OperatorConfig) -> list[dict[str, Any]]:
    """Credentials by reference only: the kubelet reads these Secrets, the operator never does."""
    return [
        {"secretRef": {"name": secret, "optional": False}}
        for secret in (config.s3_secret, config.mlflow_secret)
        if secret
    ]


CPU_DEFAULT, MEMORY_DEFAULT_GI = 2, 8  # a CPU-only replica
CPU_PER_GPU, MEMORY_PER_GPU_GI = 4, 16  # per GPU: a data-feeding process, its pinned buffers, NCCL, checkpoints
SHM_MIN_GI, SHM_PER_GPU_GI = 2, 1  # /dev/shm: NCCL's intra-node buffers grow with the local ranks


def default_cpu(gpus: int) -> str:
    return str(CPU_PER_GPU * gpus if gpus > 0 else CPU_DEFAULT)


def default_memory(gpus: int) -> str:
    return f"{MEMORY_PER_GPU_GI * gpus if gpus > 0 else MEMORY_DEFAULT_GI}Gi"


def _resources(spec: GanTrainingJobSpec) -> dict[str, Any]:
    """Requests and limits of one replica; unset cpu and memory grow with gpusPerReplica (`default_cpu` …)."""
    res = spec.resources
    gpus = res.gpus_per_replica
    cpu = res.cpu or default_cpu(gpus)
    memory = res.memory or default_memory(gpus)
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    limits: dict[str, str] = {"memory": memory}
    if res.gpus_per_replica > 0:
        requests[GPU_RESOURCE] = str(res.gpus_per_replica)
        limits[GPU_RESOURCE] = str(res.gpus_per_replica)  # extended resources: limits must equal requests
    return {"requests": requests, "limits": limits}


def _scheduling(owner: Owner, spec: GanTrainingJobSpec, config: OperatorConfig) -> dict[str, Any]:
    res = spec.resources
    out: dict[str, Any] = {}
    node_selector = dict(res.node_selector)
    if res.gpu_type and config.gpu_type_label:
        node_selector.setdefault(config.gpu_type_label, res.gpu_type)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in res.tolerations]
    if res.gpus_per_replica > 0:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    affinity: dict[str, Any] = {}
    if res.spot:
        if config.spot_toleration is not None:
            tolerations.append(config.spot_toleration.as_wire())
        if config.spot_node_label is not None:
            key, value = config.spot_node_label
            affinity["nodeAffinity"] = {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}]
                }
            }
    if res.replicas > 1:  # one replica per node: spreading is what replicas are for
        affinity["podAntiAffinity"] = {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {LABEL_JOB: owner.name}},
                    },
                }
            ]
        }
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    if affinity:
        out["affinity"] = affinity
    if res.priority_class_name:
        out["priorityClassName"] = res.priority_class_name
    return out


def _volumes(owner: Owner, spec: GanTrainingJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    shm = max(SHM_MIN_GI, SHM_PER_GPU_GI * spec.resources.gpus_per_replica)
    volumes: list[dict[str, Any]] = [
        {"name": "job-file", "configMap": {"name": configmap_name(owner.name),
                                           "items": [{"key": JOB_FILE_KEY, "path": JOB_FILE_KEY}]}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm}Gi"}},  # dataloader workers, NCCL
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "job-file", "mountPath": JOB_FILE_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for volume in spec.volumes:  # dataset volumes (spec.volumes): a PVC or an NFS export, under /data or /mnt
        name = f"data-{volume.name}"
        if volume.persistent_volume_claim is not None:
            source = {"persistentVolumeClaim": {"claimName": volume.persistent_volume_claim.claim_name,
                                                "readOnly": volume.read_only}}
        else:
            assert volume.nfs is not None  # the spec's rules: exactly one source
            source = {"nfs": {"server": volume.nfs.server, "path": volume.nfs.path, "readOnly": volume.read_only}}
        volumes.append({"name": name, **source})
        mounts.append({"name": name, "mountPath": volume.mount_path, "readOnly": volume.read_only})
    return volumes, mounts


def restricted_pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restarts_annotation(restarts: Mapping[str, int]) -> str:
    return json.dumps({"preemptions": int(restarts.get("preemptions", 0)),
                       "failures": int(restarts.get("failures", 0))}, sort_keys=True)


def training_job(
    owner: Owner,
    spec: GanTrainingJobSpec,
    config: OperatorConfig,
    *,
    attempt: int,
    restarts: Mapping[str, int] | None = None,
    resume_from: str | None = None,
) -> dict[str, Any]:
    """The Indexed batch/v1 Job of one attempt: completions = parallelism = replicas, one pod per replica.

    `backoffLimit: 0` and a podFailurePolicy that fails the Job on any pod failure: the Job never retries by
    itself, the operator does (a preemption is free, an application failure spends `runPolicy.backoffLimit`).
    """
    replicas = spec.resources.replicas
    job_labels = {**labels(owner.name, "trainer"), LABEL_ATTEMPT: str(attempt)}
    if spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    pod_labels = {**spec.pod_labels, **labels(owner.name, "trainer"), LABEL_ATTEMPT: str(attempt)}
    annotations = {ANNOTATION_RESTARTS: restarts_annotation(restarts or {})}
    if resume_from:
        annotations[ANNOTATION_RESUME_FROM] = resume_from
    volumes, mounts = _volumes(owner, spec)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.resources.image or config.image,
        "command": trainer_command(owner, spec, config, attempt),
        "env": _env(owner, spec, config),
        "resources": _resources(spec),
        "ports": [{"name": "metrics", "containerPort": config.trainer_metrics_port, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "securityContext": restricted_container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if replicas > 1:
        container["ports"].append(
            {"name": "rendezvous", "containerPort": config.rendezvous_port, "protocol": "TCP"}
        )
    env_from = _env_from(config)
    if env_from:
        container["envFrom"] = env_from
    if config.image_pull_policy:
        container["imagePullPolicy"] = config.image_pull_policy
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
        **_scheduling(owner, spec, config),
    }
    if replicas > 1:
        pod_spec["subdomain"] = service_name(owner.name)
    if config.trainer_service_account:
        pod_spec["serviceAccountName"] = config.trainer_service_account
    obj: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(owner.name), "labels": job_labels, "annotations": annotations},
        "spec": {
            "completionMode": "Indexed",
            "completions": replicas,
            "parallelism": replicas,
            "backoffLimit": 0,
            "podFailurePolicy": {
                "rules": [
                    {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn",
                                                          "values": [0]}},
                ]
            },
            "suspend": bool(spec.queue_name),  # Kueue admits a queued Job by un-suspending it
            "template": {"metadata": {"labels": pod_labels, "annotations": {ANNOTATION_OWNER_UID: owner.uid}},
                         "spec": pod_spec},
        },
    }
    return _adopt(obj, owner, nested="spec.template")


def render(
    owner: Owner,
    spec: GanTrainingJobSpec,
    config: OperatorConfig,
    *,
    attempt: int,
    restarts: Mapping[str, int] | None = None,
    resume_from: str | None = None,
) -> list[dict[str, Any]]:
    """Every child of one attempt, in creation order (the Job last: its pods mount the ConfigMap and start behind
    their NetworkPolicy)."""
    children = [configmap(owner, spec)]
    policy = network_policy(owner, spec, config)
    if policy is not None:
        children.append(policy)
    svc = service(owner, spec, config)
    if svc is not None:
        children.append(svc)
    children.append(training_job(owner, spec, config, attempt=attempt, restarts=restarts, resume_from=resume_from))
    return children

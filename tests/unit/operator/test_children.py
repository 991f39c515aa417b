"""The operator's child manifests: pure functions of (owner, spec, config, attempt), valid Kubernetes objects."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ganops.api.loader import job_from_object, spec_from_object
from ganops.api.spec import GanTrainingJobSpec
from ganops.operator import children
from ganops.operator.settings import OperatorConfig, Toleration
from tests.support.jobs import digits_job, grid_job
from tests.support.schema import KUBERNETES_VERSION

OWNER = children.Owner("gan-1", "team-a", "0b6a1c8e-1111-2222-3333-444455556666", {"team": "vision"})
CONFIG = OperatorConfig(checkpoint_uri="s3://ckpt/runs", s3_secret="ganops-s3", mlflow_secret="ganops-mlflow",
                        mlflow_uri="http://mlflow:5000", s3_endpoint_url="http://minio:9000")


def spec_of(**spec: Any) -> GanTrainingJobSpec:
    return spec_from_object(grid_job("gan-1", **spec)["spec"])


VARIANTS: dict[str, GanTrainingJobSpec] = {
    "cpu": spec_of(),
    "one-gpu": spec_of(resources={"gpusPerReplica": 1, "gpuType": "a100-80gb"}),
    "one-node-4-gpus": spec_of(resources={"gpusPerReplica": 4}),
    "multi-node": spec_of(resources={"replicas": 3, "gpusPerReplica": 8, "spot": True,
                                     "priorityClassName": "training", "nodeSelector": {"pool": "gpu"},
                                     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                                      "effect": "NoSchedule"}]},
                          queueName="team-a-queue"),
    "digits": spec_from_object(digits_job("gan-1", resources={"image": "registry.local/trainer:dev"})["spec"]),
    "dataset-volumes": spec_from_object(digits_job("gan-1", dataset={"uri": "file:///data/faces/train.tar"}, volumes=[
        {"name": "faces", "mountPath": "/data/faces", "persistentVolumeClaim": {"claimName": "faces-pvc"}},
        {"name": "shared", "mountPath": "/mnt/shared", "readOnly": False,
         "nfs": {"server": "nfs.example.com", "path": "/exports/datasets"}},
    ])["spec"]),
}


def validate(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{obj['kind']}: {str(exc).splitlines()[0]}") from None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_child_validates_against_the_kubernetes_schemas(variant: str) -> None:
    rendered = children.render(OWNER, VARIANTS[variant], CONFIG, attempt=2, restarts={"preemptions": 1},
                               resume_from="s3://ckpt/runs/team-a/gan-1/step-000000500")
    kinds = [obj["kind"] for obj in rendered]
    assert kinds == (["ConfigMap", "Service", "Job"] if VARIANTS[variant].resources.replicas > 1
                     else ["ConfigMap", "Job"])
    for obj in rendered:
        validate(obj)
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        (ref,) = meta["ownerReferences"]
        assert ref == {"apiVersion": "ganops.io/v1alpha1", "kind": "GanTrainingJob", "name": "gan-1",
                       "uid": OWNER.uid, "controller": True, "blockOwnerDeletion": True}
        assert meta["labels"]["ganops.io/job"] == "gan-1"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "ganops"
        assert meta["labels"]["team"] == "vision"  # kopf.adopt carries the owner's labels


def test_the_job_file_round_trips_through_the_configmap() -> None:
    spec = VARIANTS["one-gpu"]
    data = children.configmap(OWNER, spec)["data"]["job.yaml"]
    job = job_from_object(yaml.safe_load(data))
    assert job.metadata.name == "gan-1" and job.metadata.namespace == "team-a" and job.spec == spec


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_single_replica_runs_the_trainer_directly_or_through_torchrun_standalone() -> None:
    cpu = children.training_job(OWNER, VARIANTS["cpu"], CONFIG, attempt=1)
    assert _container(cpu)["command"] == ["ganops", "train", "--job", "/etc/ganops/job.yaml", "--no-progress"]
    four = children.training_job(OWNER, VARIANTS["one-node-4-gpus"], CONFIG, attempt=1)
    command = _container(four)["command"]
    # torchrun's arguments under `ganops launch`, the supervisor that makes a SIGTERM exit 0 (ganops.trainer.launch)
    assert command[:3] == ["ganops", "launch", "--nproc-per-node=4"] and "--standalone" in command
    assert command[command.index("-m") + 1:] == ["ganops.cli", "train", "--job", "/etc/ganops/job.yaml",
                                                 "--no-progress"]
    assert "subdomain" not in four["spec"]["template"]["spec"]


def test_multi_node_job_is_indexed_with_static_rendezvous_on_replica_zero() -> None:
    spec = VARIANTS["multi-node"]
    job = children.training_job(OWNER, spec, CONFIG, attempt=3)
    service = children.service(OWNER, spec, CONFIG)
    assert service is not None and service["metadata"]["name"] == "gan-1"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    js = job["spec"]
    assert js["completionMode"] == "Indexed" and js["completions"] == js["parallelism"] == 3
    pod = js["template"]["spec"]
    assert pod["subdomain"] == "gan-1"
    container = _container(job)
    command = container["command"]
    for flag in ("--nnodes=3", "--nproc-per-node=8", "--node-rank=$(JOB_COMPLETION_INDEX)", "--rdzv-backend=static",
                 "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)", "--rdzv-id=gan-1-a3", "--max-restarts=0"):
        assert flag in command
    env = {e["name"]: e for e in container["env"]}
    assert env["MASTER_ADDR"]["value"] == "gan-1-0.gan-1"  # the pod hostname of index 0 in the Service's domain
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    # One replica per node, preferably.
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_gpus_spot_and_scheduling() -> None:
    spec = VARIANTS["multi-node"]
    pod = children.training_job(OWNER, spec, CONFIG, attempt=1)["spec"]["template"]["spec"]
    resources = _container({"spec": {"template": {"spec": pod}}})["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "8"
    # unset cpu and memory grow with the GPUs of a replica (8 here): 4 CPUs and 16Gi per GPU
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "128Gi"
    assert resources["requests"]["cpu"] == "32"
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["priorityClassName"] == "training"
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["dedicated", "nvidia.com/gpu", "karpenter.sh/capacity-type"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]

    custom = OperatorConfig(spot_node_label=("cloud.google.com/gke-spot", "true"),
                            spot_toleration=Toleration("cloud.google.com/gke-spot", "true", "NoSchedule"),
                            gpu_type_label="ganops.io/gpu-type")
    pod = children.training_job(OWNER, spec_of(resources={"gpusPerReplica": 1, "gpuType": "l4", "spot": True}),
                                custom, attempt=1)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"ganops.io/gpu-type": "l4"}
    assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in (
        pod["tolerations"])

    cpu = children.training_job(OWNER, VARIANTS["cpu"], CONFIG, attempt=1)["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in _container({"spec": {"template": {"spec": cpu}}})["resources"]["requests"]
    assert "tolerations" not in cpu and "affinity" not in cpu and "nodeSelector" not in cpu


def test_kueue_label_and_suspended_creation_only_with_a_queue() -> None:
    queued = children.training_job(OWNER, VARIANTS["multi-node"], CONFIG, attempt=1)
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-queue"
    assert queued["spec"]["suspend"] is True
    plain = children.training_job(OWNER, VARIANTS["cpu"], CONFIG, attempt=1)
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"] and plain["spec"]["suspend"] is False


def test_restricted_pod_security_profile() -> None:
    job = children.training_job(OWNER, VARIANTS["one-gpu"], CONFIG, attempt=1)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = _container(job)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in _container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/cache", "/dev/shm"):  # writable places on a read-only root file system
        assert "emptyDir" in volumes[mounts[path]]
    assert volumes[mounts["/etc/ganops"]]["configMap"]["name"] == "gan-1-spec"
    assert "hostPath" not in str(pod) and "privileged" not in str(pod)


def test_credentials_only_by_secret_reference() -> None:
    job = children.training_job(OWNER, VARIANTS["one-gpu"], CONFIG, attempt=1)
    container = _container(job)
    assert container["envFrom"] == [{"secretRef": {"name": "ganops-s3", "optional": False}},
                                    {"secretRef": {"name": "ganops-mlflow", "optional": False}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} & set(env)
    assert env["GANOPS_CHECKPOINT_URI"] == "s3://ckpt/runs" and env["GANOPS_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["GANOPS_NAMESPACE"] == "team-a" and env["GANOPS_JOB_NAME"] == "gan-1"
    assert env["GANOPS_METRICS_PORT"] == "9400"
    no_secrets = children.training_job(OWNER, VARIANTS["cpu"], OperatorConfig(), attempt=1)
    assert "envFrom" not in _container(no_secrets)
    assert "GANOPS_CHECKPOINT_URI" not in {e["name"] for e in _container(no_secrets)["env"]}


def test_the_trainer_gets_the_job_uid_it_tags_its_mlflow_run_with() -> None:
    from ganops.contracts import ENV_JOB_UID as JOB_UID_ENV  # what the trainer's tracking hook reads

    env = {e["name"]: e.get("value") for e in _container(children.training_job(OWNER, VARIANTS["cpu"], CONFIG,
                                                                                attempt=2))["env"]}
    assert env[JOB_UID_ENV] == OWNER.uid


def test_the_operator_decides_retries_and_the_trainer_gets_time_to_checkpoint() -> None:
    job = children.training_job(OWNER, VARIANTS["cpu"], OperatorConfig(termination_grace_seconds=300), attempt=4,
                                restarts={"preemptions": 2, "failures": 1}, resume_from="s3://x/step-000000010")
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"type": "DisruptionTarget", "status": "True"} in rules[0]["onPodConditions"]
    assert job["metadata"]["labels"]["ganops.io/attempt"] == "4"
    assert job["spec"]["template"]["metadata"]["labels"]["ganops.io/attempt"] == "4"
    assert job["metadata"]["annotations"]["ganops.io/restarts"] == '{"failures": 1, "preemptions": 2}'
    assert job["metadata"]["annotations"]["ganops.io/resume-from"] == "s3://x/step-000000010"


def test_naming_problems_for_multi_replica_jobs() -> None:
    spec = VARIANTS["multi-node"]
    assert children.naming_problems("gan-1", spec) == []
    assert "must start with a letter" in children.naming_problems("1gan", spec)[0]
    assert "too long" in children.naming_problems("g" * 62, spec)[0]
    assert children.naming_problems("1gan", VARIANTS["cpu"]) == []


# ------------------------------------------------------------------------------------------------ NetworkPolicy

PLATFORM_EGRESS = {
    "egress": [
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
         "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mlflow"}}}],
         "ports": [{"protocol": "TCP", "port": 5000}]},
    ],
    "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
}


def test_each_job_gets_a_default_deny_network_policy_for_its_pods() -> None:
    config = dataclasses.replace(CONFIG, trainer_network_policy=json.dumps(PLATFORM_EGRESS))
    assert children.network_policy(OWNER, VARIANTS["cpu"], CONFIG) is None  # the platform configured none
    rendered = children.render(OWNER, VARIANTS["multi-node"], config, attempt=1)
    assert [obj["kind"] for obj in rendered] == ["ConfigMap", "NetworkPolicy", "Service", "Job"]
    policy = rendered[1]
    validate(policy)
    spec = policy["spec"]
    job_pods = {"ganops.io/job": "gan-1", "app.kubernetes.io/component": "trainer"}
    # It selects exactly the job's trainer pods (the labels the Job's pod template carries), both directions.
    pod_labels = rendered[-1]["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"] == {"matchLabels": job_pods} and job_pods.items() <= pod_labels.items()
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    # In: the job's own pods (rendezvous, then NCCL's ephemeral ports), and the scrapers on the metrics port only.
    assert spec["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": job_pods}}]},
        {"from": PLATFORM_EGRESS["metricsFrom"], "ports": [{"protocol": "TCP", "port": CONFIG.trainer_metrics_port}]},
    ]
    # Out: the job's own pods, then only what the platform listed (DNS, object store, MLflow).
    assert spec["egress"] == [{"to": [{"podSelector": {"matchLabels": job_pods}}]}, *PLATFORM_EGRESS["egress"]]
    assert not any(peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for rule in spec["egress"] for peer in rule["to"])
    # A single replica has no peers: nobody may connect but the scrapers.
    single = children.network_policy(OWNER, VARIANTS["cpu"], config)
    assert single is not None and single["spec"]["ingress"] == [spec["ingress"][1]]
    assert single["spec"]["egress"] == PLATFORM_EGRESS["egress"]


@pytest.mark.parametrize(("resources", "cpu", "memory", "shm"), [
    ({}, "2", "8Gi", "2Gi"),  # a CPU job: the old defaults
    ({"gpusPerReplica": 1}, "4", "16Gi", "2Gi"),
    ({"gpusPerReplica": 4}, "16", "64Gi", "4Gi"),
    ({"gpusPerReplica": 8, "cpu": "12", "memory": "200Gi"}, "12", "200Gi", "8Gi"),  # what the user set wins
])
def test_cpu_memory_and_shm_defaults_scale_with_the_gpus_of_a_replica(resources: dict[str, Any], cpu: str,
                                                                       memory: str, shm: str) -> None:
    job = children.training_job(OWNER, spec_of(resources=resources), CONFIG, attempt=1)
    container = _container(job)
    assert container["resources"]["requests"]["cpu"] == cpu
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"] == memory
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == shm
    validate(job)


def test_multi_gpu_pods_run_torchrun_under_the_launcher_with_the_grace_period() -> None:
    config = OperatorConfig(termination_grace_seconds=300)
    for variant in ("one-node-4-gpus", "multi-node"):
        container = _container(children.training_job(OWNER, VARIANTS[variant], config, attempt=1))
        assert container["command"][:2] == ["ganops", "launch"]
        assert "--max-restarts=0" in container["command"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["GANOPS_TERMINATION_GRACE_SECONDS"] == "300"  # the launcher fits torchrun's shutdown into it


def test_compile_is_refused_on_the_default_trainer_image() -> None:
    compiled = spec_of(training={"compile": True})
    (problem,) = children.spec_problems("gan-1", compiled, CONFIG)
    assert problem.startswith("spec.training.compile needs a C compiler")
    # an image of the job's own (checked by the trainer at start), or an operator told its image compiles
    assert children.spec_problems("gan-1", spec_of(training={"compile": True},
                                                   resources={"image": "registry.local/trainer:cc"}), CONFIG) == []
    assert children.spec_problems("gan-1", compiled, OperatorConfig(trainer_image_compiles=True)) == []
    assert children.spec_problems("gan-1", VARIANTS["cpu"], CONFIG) == []


def test_dataset_volumes_are_mounted_where_the_job_says() -> None:
    """spec.volumes: each PVC or NFS export becomes a pod volume `data-<name>` mounted at its mountPath (read-only
    unless the job says otherwise), next to the operator's own volumes, which stay as they are."""
    job = children.training_job(OWNER, VARIANTS["dataset-volumes"], CONFIG, attempt=1)
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert volumes["data-faces"]["persistentVolumeClaim"] == {"claimName": "faces-pvc", "readOnly": True}
    assert volumes["data-shared"]["nfs"] == {"server": "nfs.example.com", "path": "/exports/datasets",
                                             "readOnly": False}
    assert mounts["data-faces"] == {"name": "data-faces", "mountPath": "/data/faces", "readOnly": True}
    assert mounts["data-shared"] == {"name": "data-shared", "mountPath": "/mnt/shared", "readOnly": False}
    assert {"job-file", "tmp", "cache", "dshm"} <= set(volumes)
    plain = children.training_job(OWNER, VARIANTS["digits"], CONFIG, attempt=1)["spec"]["template"]["spec"]
    assert {v["name"] for v in plain["volumes"]} == {"job-file", "tmp", "cache", "dshm"}


@pytest.mark.parametrize(("volume", "problem"), [
    ({"name": "a", "mountPath": "/opt/data", "persistentVolumeClaim": {"claimName": "a"}}, "mountPath"),
    ({"name": "a", "mountPath": "/tmp/data", "persistentVolumeClaim": {"claimName": "a"}}, "mountPath"),
    ({"name": "A_b", "mountPath": "/data/a", "persistentVolumeClaim": {"claimName": "a"}}, "name"),
    ({"name": "a", "mountPath": "/data/a", "nfs": {"server": "nfs", "path": "exports"}}, "path"),
])
def test_dataset_volumes_cannot_shadow_the_image_or_the_pods_own_folders(volume: dict[str, Any],
                                                                          problem: str) -> None:
    from ganops.api.loader import JobFileError

    with pytest.raises(JobFileError) as caught:
        job_from_object(digits_job("gan-1", volumes=[volume]))
    assert any(problem in line for line in caught.value.problems), caught.value.problems

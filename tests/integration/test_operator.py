"""The operator (`ganops.operator.main`) in the real kopf runtime, against the Kubernetes emulator over HTTP.

The tests play the controllers the emulator does not run (the Job controller and the kubelet, through
`tests.support.kube.workloads`) and the trainer (writing latest.json into moto's S3 server, as the trainer does).
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import kubernetes_validate
import pytest

from ganops import storage, tracking
from ganops.api.crd import build_crd
from ganops.checkpoints import latest_uri
from ganops.operator import metrics
from tests.support.jobs import grid_job
from tests.support.kube import KopfRunner, KopfRunnerFactory, KubeAPI
from tests.support.kube.workloads import complete_job, job_pods, start_job_pods, terminate_pod
from tests.support.schema import KUBERNETES_VERSION

pytest_plugins = ["tests.support.kube.fixtures", "tests.support.mlflow_server"]

GTJ = "ganops.io/v1alpha1"
NS = "team-a"
RESYNC = "0.3"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def checkpoints(s3_bucket: str) -> str:
    return f"{s3_bucket}/checkpoints"


def start_operator(kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch,
                   checkpoints: str, **env: str) -> KopfRunner:
    for name, value in {
        "GANOPS_OPERATOR_RESYNC_SECONDS": RESYNC,
        "GANOPS_OPERATOR_METRICS_PORT": "0",
        "GANOPS_CHECKPOINT_URI": checkpoints,
        "GANOPS_S3_SECRET": "ganops-s3",
        "GANOPS_MLFLOW_SECRET": "ganops-mlflow",
        "GANOPS_TERMINATION_GRACE_SECONDS": "90",
        **env,
    }.items():
        monkeypatch.setenv(name, value)
    kube_api.register_crd(build_crd())
    return kopf_runner(["ganops.operator.main"])


@pytest.fixture
def operator(
    kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch, checkpoints: str
) -> KopfRunner:
    return start_operator(kube_api, kopf_runner, monkeypatch, checkpoints)


def gtj(name: str, **spec: Any) -> dict[str, Any]:
    job = grid_job(name, **spec)
    job["metadata"]["namespace"] = NS
    return job


def status_of(kube: KubeAPI, name: str) -> dict[str, Any]:
    return dict(kube.get(GTJ, "gtj", NS, name).get("status") or {})


def wait_status(kube: KubeAPI, name: str, check: Callable[[dict[str, Any]], Any], what: str,
                timeout: float = 10.0) -> dict[str, Any]:
    kube.wait_for(lambda: check(status_of(kube, name)), timeout=timeout,
                  message=f"{name}: {what} (status: {status_of(kube, name)})")
    return status_of(kube, name)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def reasons(kube: KubeAPI, name: str) -> list[str]:
    return [event.reason for event in kube.events(NS, involved_name=name)]


def reconciles() -> float:
    """Reconciles the operator (in this process) has finished: its `ganops_operator_reconcile_seconds` count."""
    return metrics.REGISTRY.get_sample_value("ganops_operator_reconcile_seconds_count") or 0.0


def wait_reconciles(kube: KubeAPI, more: int, timeout: float = 10.0) -> None:
    """Wait until the operator has finished `more` reconciles after now. A reconcile's Events are queued before the
    loop starts the next one, so after `more` + 1 of them, what `more` reconciles did is all on its way."""
    target = reconciles() + more + 1
    kube.wait_for(lambda: reconciles() >= target, timeout=timeout, message=f"{more} more reconciles")


def write_latest(checkpoints: str, name: str, step: int, **extra: Any) -> dict[str, Any]:
    """What the trainer writes last after a verified checkpoint upload."""
    root = latest_uri(checkpoints, NS, name).rsplit("/", 1)[0]
    record = {"step": step, "uri": f"{root}/step-{step:09d}", "time": "2024-01-01T00:00:00Z",
              "manifestSha256": "ab" * 32, **extra}
    storage.open_store(checkpoints).put_json(latest_uri(checkpoints, NS, name), record)
    return record


def write_checkpoint(checkpoints: str, name: str, step: int, metrics: dict[str, float]) -> dict[str, Any]:
    """A checkpoint's manifest.json (what promotion reads; the weights are not needed without rendering), then
    latest.json."""
    root = latest_uri(checkpoints, NS, name).rsplit("/", 1)[0]
    manifest = {"formatVersion": 1, "step": step, "time": "2024-01-01T00:00:00Z", "files": {}, "sizes": {},
                "metric": -metrics.get("modes", 0.0), "metrics": metrics,
                "model": {"architecture": "mlp", "latentDim": 2, "imageSize": 2, "channels": 3}}
    storage.open_store(checkpoints).put_json(f"{root}/step-{step:09d}/manifest.json", manifest)
    return write_latest(checkpoints, name, step, metrics=metrics)


def the_job(kube: KubeAPI, name: str) -> dict[str, Any] | None:
    return kube.get_or_none("batch/v1", "Job", NS, name)


def wait_job(kube: KubeAPI, name: str) -> dict[str, Any]:
    kube.wait_for(lambda: the_job(kube, name) is not None, message=f"Job {name}")
    return kube.get("batch/v1", "Job", NS, name)


def attempt_of(kube: KubeAPI, name: str) -> int | None:
    job = the_job(kube, name)
    return int(job["metadata"]["labels"]["ganops.io/attempt"]) if job else None


def validate(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {str(exc).splitlines()[0]}") from None


# ------------------------------------------------------------------------------------------------ children


def test_create_makes_schema_valid_children_owned_by_the_job(kube_api: KubeAPI, operator: KopfRunner) -> None:
    created = kube_api.create(gtj("solo", resources={"gpusPerReplica": 1, "spot": True}))
    job = wait_job(kube_api, "solo")
    configmap = kube_api.get("v1", "ConfigMap", NS, "solo-spec")
    assert kube_api.get_or_none("v1", "Service", NS, "solo") is None  # one replica: no rendezvous Service

    for child in (job, configmap):
        validate(child)
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == created["metadata"]["uid"] and owner["controller"] is True
        assert child["metadata"]["labels"]["ganops.io/job"] == "solo"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ganops-operator"
    assert "name: solo" in configmap["data"]["job.yaml"] and "builtin:grid25" in configmap["data"]["job.yaml"]

    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 1
    assert spec["backoffLimit"] == 0 and spec["podFailurePolicy"]["rules"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:2] == ["ganops", "train"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GANOPS_NAMESPACE"] == NS and env["GANOPS_JOB_NAME"] == "solo"
    assert env["GANOPS_CHECKPOINT_URI"].endswith("/checkpoints")
    assert container["envFrom"] == [{"secretRef": {"name": "ganops-s3", "optional": False}},
                                    {"secretRef": {"name": "ganops-mlflow", "optional": False}}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["terminationGracePeriodSeconds"] == 90
    assert any(t.get("key") == "karpenter.sh/capacity-type" for t in pod["tolerations"])

    status = wait_status(kube_api, "solo", lambda s: s.get("phase") == "Pending", "Pending")
    assert condition(status, "Created")["status"] == "True" and status["attempt"] == 1
    assert status["observedGeneration"] == 1 and status["startTime"]
    kube_api.wait_for(lambda: "Created" in reasons(kube_api, "solo"), message="a Created event")

    # The kubelet starts the pod: the phase follows.
    start_job_pods(kube_api, NS, "solo")
    status = wait_status(kube_api, "solo", lambda s: s.get("phase") == "Running", "Running")
    assert condition(status, "Running")["status"] == "True"
    kube_api.wait_for(lambda: "Running" in reasons(kube_api, "solo"), message="a Running event")
    assert len(kube_api.requests("POST", "jobs")) == 1
    assert not operator.error_records, operator.messages()


def test_multi_replica_job_rendezvous_through_a_headless_service(kube_api: KubeAPI, operator: KopfRunner) -> None:
    kube_api.create(gtj("duo", resources={"replicas": 2, "gpusPerReplica": 4}, queueName="gpu-queue"))
    job = wait_job(kube_api, "duo")
    service = kube_api.get("v1", "Service", NS, "duo")
    validate(job)
    validate(service)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"ganops.io/job": "duo"}
    assert service["spec"]["publishNotReadyAddresses"] is True

    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["suspend"] is True  # Kueue admits it by un-suspending
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "duo"
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MASTER_ADDR"] == "duo-0.duo" and env["MASTER_PORT"] == "29500"
    command = container["command"]
    assert command[:2] == ["ganops", "launch"] and "--nnodes=2" in command and "--nproc-per-node=4" in command
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in command
    assert command[-4:] == ["train", "--job", "/etc/ganops/job.yaml", "--no-progress"]
    assert command[command.index("-m") + 1] == "ganops.cli"

    # Queued in Kueue: Pending with a message saying so; admitted and running: Running.
    wait_status(kube_api, "duo", lambda s: "gpu-queue" in (s.get("message") or ""), "queued message")
    kube_api.patch("batch/v1", "Job", NS, "duo", {"spec": {"suspend": False}})
    start_job_pods(kube_api, NS, "duo")
    wait_status(kube_api, "duo", lambda s: s.get("phase") == "Running", "Running")
    assert len(job_pods(kube_api, NS, "duo")) == 2


# ------------------------------------------------------------------------------------------------ faults


def test_preemption_relaunches_from_the_checkpoint_without_spending_backoff(
    kube_api: KubeAPI, operator: KopfRunner, checkpoints: str
) -> None:
    kube_api.create(gtj("pre", training={"steps": 100}, runPolicy={"backoffLimit": 0}))
    kube_api.wait_for(lambda: the_job(kube_api, "pre"))
    (pod,) = start_job_pods(kube_api, NS, "pre")
    wait_status(kube_api, "pre", lambda s: s.get("phase") == "Running", "Running")
    record = write_latest(checkpoints, "pre", 40, metrics={"modes": 20.0}, mlflowRunId="run-1",
                          health={"events": [{"type": "mode_collapse", "step": 30, "message": "8 of 25 modes"}],
                                  "rollbacks": 1})
    status = wait_status(kube_api, "pre", lambda s: s.get("step") == 40, "the checkpoint read from latest.json")
    assert status["lastCheckpoint"]["uri"] == record["uri"] and status["mlflowRunId"] == "run-1"
    assert condition(status, "ModeCollapseSuspected")["status"] == "True"
    assert condition(status, "DivergenceRollback")["status"] == "True"

    # The scheduler preempts the pod: the trainer checkpoints on SIGTERM and exits 0 (or 143 when it is killed).
    first_uid = wait_job(kube_api, "pre")["metadata"]["uid"]
    terminate_pod(kube_api, NS, pod, exit_code=143, disruption="PreemptionByScheduler")
    status = wait_status(kube_api, "pre", lambda s: s.get("attempt") == 2, "a second attempt")
    assert status["restarts"] == {"preemptions": 1, "failures": 0}  # backoffLimit 0 is untouched
    kube_api.wait_for(lambda: attempt_of(kube_api, "pre") == 2, message="attempt 2's Job")
    job = wait_job(kube_api, "pre")
    assert job["metadata"]["uid"] != first_uid
    assert job["metadata"]["annotations"]["ganops.io/resume-from"] == record["uri"]
    assert job["metadata"]["annotations"]["ganops.io/restarts"] == '{"failures": 0, "preemptions": 1}'
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GANOPS_CHECKPOINT_URI"] == checkpoints  # the trainer resumes from latest.json under it
    assert job_pods(kube_api, NS, "pre") == []  # the old attempt's pods went with its Job

    start_job_pods(kube_api, NS, "pre")
    status = wait_status(kube_api, "pre", lambda s: s.get("phase") == "Running", "Running again")
    assert status["phase"] == "Running"
    events = reasons(kube_api, "pre")
    assert {"Preempted", "Relaunched", "ModeCollapseSuspected", "DivergenceRollback"} <= set(events)
    assert len(kube_api.requests("POST", "jobs")) == 2

    # The trainer finishes (the last checkpoint is the last step): Succeeded.
    write_latest(checkpoints, "pre", 100)
    complete_job(kube_api, NS, "pre")
    status = wait_status(kube_api, "pre", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    assert status["completionTime"] and status["step"] == 100


def test_pods_stopped_by_sigterm_before_the_last_step_count_as_preempted(
    kube_api: KubeAPI, operator: KopfRunner, checkpoints: str
) -> None:
    kube_api.create(gtj("drain", training={"steps": 100}))
    kube_api.wait_for(lambda: the_job(kube_api, "drain"))
    start_job_pods(kube_api, NS, "drain")
    write_latest(checkpoints, "drain", 60)
    complete_job(kube_api, NS, "drain")  # every pod exited 0 - after a SIGTERM checkpoint at step 60
    status = wait_status(kube_api, "drain", lambda s: s.get("attempt") == 2, "relaunched")
    assert status["restarts"] == {"preemptions": 1, "failures": 0} and status["phase"] == "Pending"


def test_application_failures_spend_the_backoff_limit(kube_api: KubeAPI, operator: KopfRunner) -> None:
    kube_api.create(gtj("crash", runPolicy={"backoffLimit": 1}))
    for attempt in (1, 2):
        kube_api.wait_for(lambda attempt=attempt: attempt_of(kube_api, "crash") == attempt,  # type: ignore[misc]
                          message=f"attempt {attempt}")
        (pod,) = start_job_pods(kube_api, NS, "crash")
        terminate_pod(kube_api, NS, pod, exit_code=1)
    status = wait_status(kube_api, "crash", lambda s: s.get("phase") == "Failed", "Failed")
    assert status["restarts"] == {"preemptions": 0, "failures": 2}
    assert condition(status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "exit code 1" in condition(status, "Failed")["message"]
    assert len(kube_api.requests("POST", "jobs")) == 2  # backoffLimit + 1 attempts, no more
    kube_api.wait_for(lambda: "BackoffLimitExceeded" in reasons(kube_api, "crash"))
    events = kube_api.events(NS, involved_name="crash")
    assert [e.type for e in events if e.reason in ("Failed", "BackoffLimitExceeded")] == ["Warning", "Warning"]


# ------------------------------------------------------------------------------------------------ run policy


def test_suspend_removes_the_pods_and_resume_starts_a_new_attempt(kube_api: KubeAPI, operator: KopfRunner) -> None:
    kube_api.create(gtj("nap"))
    kube_api.wait_for(lambda: the_job(kube_api, "nap"))
    start_job_pods(kube_api, NS, "nap")
    wait_status(kube_api, "nap", lambda s: s.get("phase") == "Running", "Running")

    kube_api.patch(GTJ, "GanTrainingJob", NS, "nap", {"spec": {"runPolicy": {"suspend": True}}})
    status = wait_status(kube_api, "nap", lambda s: s.get("phase") == "Suspended", "Suspended")
    kube_api.wait_for(lambda: the_job(kube_api, "nap") is None, message="the Job is removed")
    assert job_pods(kube_api, NS, "nap") == []
    assert condition(status, "Suspended")["status"] == "True" and status["observedGeneration"] == 2
    assert kube_api.get_or_none("v1", "ConfigMap", NS, "nap-spec") is not None  # the rest stays

    kube_api.patch(GTJ, "GanTrainingJob", NS, "nap", {"spec": {"runPolicy": {"suspend": False}}})
    kube_api.wait_for(lambda: attempt_of(kube_api, "nap") == 2, message="a new attempt")
    status = wait_status(kube_api, "nap", lambda s: s.get("phase") == "Pending", "Pending")
    assert condition(status, "Suspended")["status"] == "False"
    assert status["restarts"] == {"preemptions": 0, "failures": 0}  # a suspension is no restart
    assert {"Suspended", "Resumed"} <= set(reasons(kube_api, "nap"))


def test_active_deadline_fails_the_job_and_stops_its_pods(kube_api: KubeAPI, operator: KopfRunner) -> None:
    kube_api.create(gtj("late", runPolicy={"activeDeadlineSeconds": 3}))
    kube_api.wait_for(lambda: the_job(kube_api, "late"))
    start_job_pods(kube_api, NS, "late")
    wait_status(kube_api, "late", lambda s: s.get("phase") == "Running", "Running")
    status = wait_status(kube_api, "late", lambda s: s.get("phase") == "Failed", "Failed", timeout=8)
    assert condition(status, "Failed")["reason"] == "DeadlineExceeded"
    kube_api.wait_for(lambda: the_job(kube_api, "late") is None, message="the Job is removed")
    assert job_pods(kube_api, NS, "late") == []
    assert "DeadlineExceeded" in reasons(kube_api, "late")


def test_ttl_after_finished_deletes_the_resource(kube_api: KubeAPI, operator: KopfRunner, checkpoints: str) -> None:
    kube_api.create(gtj("brief", runPolicy={"ttlSecondsAfterFinished": 1}, promotion={"auto": False}))
    kube_api.wait_for(lambda: the_job(kube_api, "brief"))
    start_job_pods(kube_api, NS, "brief")
    write_latest(checkpoints, "brief", 20)
    complete_job(kube_api, NS, "brief")
    wait_status(kube_api, "brief", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    kube_api.wait_for(lambda: kube_api.get_or_none(GTJ, "gtj", NS, "brief") is None, timeout=20,
                      message="deleted after its TTL")
    assert kube_api.get_or_none("v1", "ConfigMap", NS, "brief-spec") is None


# ------------------------------------------------------------------------------------------------ budget


def test_budget_warns_at_80_percent_and_stops_the_job_at_100(
    kube_api: KubeAPI, operator: KopfRunner, checkpoints: str
) -> None:
    kube_api.create(gtj("thrifty", resources={"gpusPerReplica": 1},
                        budget={"maxCostUSD": 10.0, "pricePerGPUHour": 2.0}))
    kube_api.wait_for(lambda: the_job(kube_api, "thrifty"))
    start_job_pods(kube_api, NS, "thrifty")
    write_latest(checkpoints, "thrifty", 5, cost={"usd": 8.5, "gpuHours": 4.25})  # the trainer's own figures
    status = wait_status(kube_api, "thrifty", lambda s: condition(s, "BudgetWarning").get("status") == "True",
                         "BudgetWarning")
    assert status["phase"] == "Running" and status["cost"]["usd"] == pytest.approx(8.5)
    kube_api.wait_for(lambda: "BudgetWarning" in reasons(kube_api, "thrifty"))
    # The trainer checkpoints again, still over 80 %: once the operator has read it (status.step) and reconciled
    # a few more times at 86 %, there is still one warning.
    write_latest(checkpoints, "thrifty", 6, cost={"usd": 8.6, "gpuHours": 4.3})
    wait_status(kube_api, "thrifty", lambda s: s.get("step") == 6, "the step-6 record read")
    wait_reconciles(kube_api, 3)
    assert reasons(kube_api, "thrifty").count("BudgetWarning") == 1

    write_latest(checkpoints, "thrifty", 7, cost={"usd": 10.4, "gpuHours": 5.2})
    status = wait_status(kube_api, "thrifty", lambda s: s.get("phase") == "BudgetExceeded", "BudgetExceeded")
    assert condition(status, "BudgetExceeded")["status"] == "True" and status["completionTime"]
    kube_api.wait_for(lambda: the_job(kube_api, "thrifty") is None, message="the pods are stopped")
    kube_api.wait_for(lambda: "BudgetExceeded" in reasons(kube_api, "thrifty"))
    # Events are posted in order: every reconcile before BudgetExceeded has posted what it had to.
    assert reasons(kube_api, "thrifty").count("BudgetWarning") == 1

    # Raising the budget resumes the job from its checkpoint.
    kube_api.patch(GTJ, "GanTrainingJob", NS, "thrifty", {"spec": {"budget": {"maxCostUSD": 50.0}}})
    kube_api.wait_for(lambda: attempt_of(kube_api, "thrifty") == 2, message="resumed after the budget was raised")


def test_cost_accrues_from_observed_gpu_time(kube_api: KubeAPI, operator: KopfRunner, checkpoints: str) -> None:
    kube_api.create(gtj("meter", resources={"replicas": 2, "gpusPerReplica": 2},
                        budget={"maxGPUHours": 3.0, "pricePerGPUHour": 1.0}))
    kube_api.wait_for(lambda: the_job(kube_api, "meter"))
    # Both pods ran for exactly 30 minutes (the start and finish times the kubelet records): 2 pods × 2 GPUs ×
    # 0.5 h = 2 GPU-hours (67 %), whenever the operator looks. They exit 0 short of the last step (a SIGTERM
    # checkpoint at step 10 of 20): a free relaunch, with those 2 GPU-hours banked.
    finished = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    write_latest(checkpoints, "meter", 10)
    for pod in start_job_pods(kube_api, NS, "meter", phase="Pending"):
        terminate_pod(kube_api, NS, pod, exit_code=0, started_at=finished - dt.timedelta(minutes=30),
                      finished_at=finished)
    status = wait_status(kube_api, "meter", lambda s: s.get("attempt") == 2, "relaunched after the SIGTERM checkpoint")
    assert status["cost"] == {"gpuHours": 2.0, "usd": 2.0}
    assert status["accounting"] == {"attempt": 2, "bankedGpuSeconds": 7200.0, "pods": {}}
    assert condition(status, "BudgetWarning") == {}

    # The next attempt's two pods have been running for 20 minutes: 1.33 GPU-hours more, over the 3 GPU-hour budget
    # (one pod alone, 0.67 GPU-hours, is not).
    kube_api.wait_for(lambda: attempt_of(kube_api, "meter") == 2, message="attempt 2's Job")
    start_job_pods(kube_api, NS, "meter", started_at=dt.datetime.now(tz=dt.UTC) - dt.timedelta(minutes=20))
    status = wait_status(kube_api, "meter", lambda s: s.get("phase") == "BudgetExceeded", "BudgetExceeded")
    accounting = status["accounting"]
    assert accounting["bankedGpuSeconds"] == 7200.0 and len(accounting["pods"]) == 2
    # The cost is the GPU time observed: what was banked plus each running pod's (rounded to the millisecond).
    assert status["cost"]["gpuHours"] == pytest.approx((7200.0 + sum(accounting["pods"].values())) / 3600, abs=1e-6)
    assert status["cost"]["gpuHours"] >= 3.0 and status["cost"]["usd"] == status["cost"]["gpuHours"]


# ------------------------------------------------------------------------------------------------ promotion


def test_promotion_moves_the_alias_when_the_gates_pass_and_rejects_otherwise(
    kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch, checkpoints: str,
    mlflow_uri: str
) -> None:
    # The job names the platform's MLflow (the only one the operator promotes on); the model is registered under
    # the job's namespace.
    start_operator(kube_api, kopf_runner, monkeypatch, checkpoints, GANOPS_MLFLOW_URI=mlflow_uri)
    bare = f"grid-{uuid.uuid4().hex[:8]}"
    model = f"{NS}.{bare}"
    promotion = {"modelName": bare, "alias": "production", "gates": {"minModes": 20, "minHighQuality": 0.5}}

    def train(name: str, modes: float) -> None:
        kube_api.create(gtj(name, tracking={"mlflowUri": mlflow_uri}, promotion=promotion))
        wait_job(kube_api, name)
        start_job_pods(kube_api, NS, name)
        write_checkpoint(checkpoints, name, 20, {"modes": modes, "high_quality": 0.9})
        complete_job(kube_api, NS, name)

    train("good", 24.0)
    good = wait_status(kube_api, "good", lambda s: condition(s, "Promoted").get("status") == "True", "Promoted",
                       timeout=30)
    assert good["phase"] == "Succeeded" and good["promotedVersion"] == "1"
    assert condition(good, "Promoted")["message"].startswith(f"{model}@production → version 1 (passed: modes 24")
    info = tracking.get_alias(mlflow_uri, model, "production")
    assert info is not None and info.version == "1" and info.checkpoint_uri.endswith("/good/step-000000020")
    assert info.tags["ganops.job"] == f"{NS}/good" and info.tags["ganops.gates"] == "passed"

    train("bad", 12.0)
    bad = wait_status(kube_api, "bad", lambda s: condition(s, "PromotionRejected").get("status") == "True",
                      "PromotionRejected", timeout=30)
    assert bad["phase"] == "Succeeded" and "promotedVersion" not in bad
    assert "modes 12 < minModes 20" in condition(bad, "PromotionRejected")["message"]
    kube_api.wait_for(lambda: "PromotionRejected" in reasons(kube_api, "bad"))
    assert tracking.get_alias(mlflow_uri, model, "production").version == "1"  # type: ignore[union-attr]
    (rejected,) = [v for v in tracking.list_versions(mlflow_uri, model) if v.version == "2"]
    assert rejected.tags["ganops.gates"] == "rejected"  # registered for the record, not served

    # A human forces the rejected one in, then rolls back to version 1: both through annotations.
    kube_api.patch(GTJ, "gtj", NS, "bad", {"metadata": {"annotations": {"ganops.io/promote": "force"}}})
    bad = wait_status(kube_api, "bad", lambda s: s.get("promotedVersion") == "2", "forced promotion", timeout=30)
    assert tracking.get_alias(mlflow_uri, model, "production").version == "2"  # type: ignore[union-attr]
    kube_api.wait_for(lambda: "ganops.io/promote" not in (
        kube_api.get(GTJ, "gtj", NS, "bad")["metadata"].get("annotations") or {}), message="annotation cleared")
    kube_api.patch(GTJ, "gtj", NS, "bad", {"metadata": {"annotations": {"ganops.io/rollback-to": "1"}}})
    bad = wait_status(kube_api, "bad", lambda s: condition(s, "Promoted").get("reason") == "RolledBack", "rollback",
                      timeout=30)
    assert bad["promotedVersion"] == "1"
    assert tracking.get_alias(mlflow_uri, model, "production").version == "1"  # type: ignore[union-attr]
    assert len(tracking.list_versions(mlflow_uri, model)) == 2  # idempotent: nothing registered twice


# ------------------------------------------------------------------------------------------------ validation


def test_an_invalid_spec_gets_invalid_spec_and_no_retry_storm(kube_api: KubeAPI, operator: KopfRunner) -> None:
    bad = gtj("broken")
    bad["spec"]["model"]["architecture"] = "dcgan"  # conv model on 2-D points
    bad["spec"]["training"]["stepz"] = 5  # a typo
    bad["spec"]["training"]["batchSize"] = 0
    kube_api.create(bad)
    status = wait_status(kube_api, "broken", lambda s: s.get("phase") == "Failed", "Failed")
    message = condition(status, "InvalidSpec")["message"]
    assert condition(status, "InvalidSpec")["status"] == "True"
    assert "spec.training.stepz is not a known field" in message and "did you mean 'steps'?" in message
    assert "spec.training.batchSize must be >= 1" in message
    kube_api.wait_for(lambda: [e.type for e in kube_api.events(NS, involved_name="broken")] == ["Warning"])
    wait_reconciles(kube_api, 2, timeout=20)  # two resyncs later (a finished job's come every 10 × 0.3 s): nothing new
    status_writes = [r for r in kube_api.requests("PATCH", "gantrainingjobs", "broken") if r.subresource == "status"]
    assert len(status_writes) == 1 and len(kube_api.events(NS, involved_name="broken")) == 1
    assert the_job(kube_api, "broken") is None and kube_api.requests("POST", "configmaps") == []

    # Fixed by a spec update: the job starts.
    kube_api.patch(GTJ, "gtj", NS, "broken", [
        {"op": "replace", "path": "/spec/model/architecture", "value": "mlp"},
        {"op": "remove", "path": "/spec/training/stepz"},
        {"op": "replace", "path": "/spec/training/batchSize", "value": 8},
    ])
    kube_api.wait_for(lambda: the_job(kube_api, "broken"), message="started once valid")
    status = wait_status(kube_api, "broken", lambda s: s.get("phase") == "Pending", "Pending")
    assert condition(status, "InvalidSpec")["status"] == "False"
    assert not operator.error_records, operator.messages()


# ------------------------------------------------------------------------------------------------ lifecycle


def test_deleting_the_job_removes_its_children(kube_api: KubeAPI, operator: KopfRunner) -> None:
    kube_api.create(gtj("gone", resources={"replicas": 2}))
    kube_api.wait_for(lambda: the_job(kube_api, "gone"))
    start_job_pods(kube_api, NS, "gone")
    wait_status(kube_api, "gone", lambda s: s.get("phase") == "Running", "Running")
    kube_api.delete(GTJ, "GanTrainingJob", NS, "gone")
    kube_api.wait_for(lambda: kube_api.get_or_none(GTJ, "gtj", NS, "gone") is None, message="finalizer released")
    for api_version, kind, name in (("batch/v1", "Job", "gone"), ("v1", "Service", "gone"),
                                    ("v1", "ConfigMap", "gone-spec")):
        assert kube_api.get_or_none(api_version, kind, NS, name) is None, kind
    assert kube_api.list("v1", "pods", NS, label_selector="ganops.io/job=gone") == []


def test_metrics_endpoint(kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("GANOPS_OPERATOR_METRICS_PORT", str(port))
    monkeypatch.setenv("GANOPS_OPERATOR_RESYNC_SECONDS", RESYNC)
    monkeypatch.delenv("GANOPS_CHECKPOINT_URI", raising=False)
    kube_api.register_crd(build_crd())
    kopf_runner(["ganops.operator.main"])
    kube_api.create(gtj("metered"))
    kube_api.wait_for(lambda: the_job(kube_api, "metered"))
    start_job_pods(kube_api, NS, "metered")
    wait_status(kube_api, "metered", lambda s: s.get("phase") == "Running", "Running")

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    kube_api.wait_for(lambda: 'ganops_operator_jobs{phase="Running"} 1.0' in scrape(), message="jobs by phase")
    text = scrape()
    assert "ganops_operator_reconcile_seconds_count" in text and "ganops_operator_reconcile_errors_total" in text

"""The operator's job-level series over HTTP (`/metrics` of the real operator: kopf on the Kubernetes emulator), and
trainer health events from a real `ganops train` becoming conditions on the GanTrainingJob.

The names and labels are the contract of `dashboards/METRICS.md`; the values follow the job's status.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ganops import storage
from ganops.api.crd import build_crd
from ganops.checkpoints import latest_uri
from tests.support.jobs import grid_job, write_job
from tests.support.kube import KopfRunner, KopfRunnerFactory, KubeAPI
from tests.support.kube.workloads import complete_job, start_job_pods, terminate_pod

pytest_plugins = ["tests.support.kube.fixtures", "tests.support.mlflow_server"]

GTJ = "ganops.io/v1alpha1"
NS = "team-m"
RESYNC = "0.3"
PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed", "BudgetExceeded")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Scraper:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def samples(self, job: str) -> Samples:
        """Every sample of the job-level series of `NS/job`: (name, sorted labels without namespace/job) → value."""
        out: Samples = {}
        for family in text_string_to_metric_families(httpx.get(self.url, timeout=5).text):
            for s in family.samples:
                if s.labels.get("namespace") == NS and s.labels.get("job") == job:
                    rest = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("namespace", "job")))
                    out[(s.name, rest)] = s.value
        return out

    def wait(self, kube: KubeAPI, job: str, check: Callable[[Samples], bool], what: str,
             timeout: float = 15.0) -> Samples:
        kube.wait_for(lambda: check(self.samples(job)), timeout=timeout,
                      message=f"{job}: {what} (series: {self.samples(job)})")
        return self.samples(job)


def phase_of(samples: Samples) -> dict[str, float]:
    return {dict(labels)["phase"]: v for (name, labels), v in samples.items() if name == "ganops_operator_job_phase"}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def status_of(kube: KubeAPI, name: str) -> dict[str, Any]:
    return dict(kube.get(GTJ, "gtj", NS, name).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def gtj(name: str, **spec: Any) -> dict[str, Any]:
    job = grid_job(name, **spec)
    job["metadata"]["namespace"] = NS
    return job


@pytest.fixture
def metered(kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path, request: pytest.FixtureRequest) -> tuple[KopfRunner, Scraper, str]:
    """The operator with /metrics on a free port and a file:// checkpoint root (the trainer's layout); for a test
    that takes `mlflow_uri`, that server is the platform's MLflow (the only one the operator promotes on)."""
    port = free_port()
    checkpoints = f"file://{tmp_path / 'checkpoints'}"
    env = {"GANOPS_OPERATOR_RESYNC_SECONDS": RESYNC, "GANOPS_OPERATOR_METRICS_PORT": str(port),
           "GANOPS_CHECKPOINT_URI": checkpoints}
    if "mlflow_uri" in request.fixturenames:
        env["GANOPS_MLFLOW_URI"] = request.getfixturevalue("mlflow_uri")
    for name, val in env.items():
        monkeypatch.setenv(name, val)
    kube_api.register_crd(build_crd())
    return kopf_runner(["ganops.operator.main"]), Scraper(port), checkpoints


def write_checkpoint(checkpoints: str, name: str, step: int, metrics: dict[str, float], **extra: Any) -> None:
    """A checkpoint's manifest.json (what promotion reads), then latest.json, as the trainer writes them."""
    root = latest_uri(checkpoints, NS, name).rsplit("/", 1)[0]
    uri = f"{root}/step-{step:09d}"
    manifest = {"formatVersion": 1, "step": step, "time": "2024-01-01T00:00:00Z", "files": {}, "sizes": {},
                "metric": -metrics.get("modes", 0.0), "metrics": metrics,
                "model": {"architecture": "mlp", "latentDim": 2, "imageSize": 2, "channels": 3}}
    store = storage.open_store(checkpoints)
    store.put_json(f"{uri}/manifest.json", manifest)
    store.put_json(latest_uri(checkpoints, NS, name), {"step": step, "uri": uri, "time": "2024-01-01T00:00:00Z",
                                                       "metrics": metrics, **extra})


def test_job_series_follow_the_status_and_go_with_the_job(
    kube_api: KubeAPI, metered: tuple[KopfRunner, Scraper, str], mlflow_uri: str
) -> None:
    runner, scrape, checkpoints = metered
    bare = f"grid-{uuid.uuid4().hex[:8]}"
    model = f"{NS}.{bare}"  # registered under the job's namespace: the label serving's series carry too
    kube_api.create(gtj("seen", training={"steps": 100}, resources={"gpusPerReplica": 1},
                        budget={"maxGPUHours": 4.0, "pricePerGPUHour": 2.5},
                        tracking={"mlflowUri": mlflow_uri},
                        promotion={"modelName": bare, "gates": {"minModes": 20}}))
    kube_api.wait_for(lambda: kube_api.get_or_none("batch/v1", "Job", NS, "seen"), message="the Job")
    samples = scrape.wait(kube_api, "seen", lambda s: phase_of(s).get("Pending") == 1, "Pending")
    assert phase_of(samples) == {p: float(p == "Pending") for p in PHASES}  # every phase, one of them 1
    assert value(samples, "ganops_operator_job_restarts_total", kind="preemption") == 0
    assert value(samples, "ganops_operator_job_restarts_total", kind="failure") == 0
    assert value(samples, "ganops_job_budget_usd") == pytest.approx(10.0)  # 4 GPU-hours × $2.5
    assert value(samples, "ganops_operator_promotions_total", model=model, outcome="promoted") == 0
    assert value(samples, "ganops_operator_promotions_total", model=model, outcome="rejected") == 0
    assert not [k for k in samples if k[0] == "ganops_model_version_quality"]  # nothing promoted yet

    (pod,) = start_job_pods(kube_api, NS, "seen")
    scrape.wait(kube_api, "seen", lambda s: phase_of(s).get("Running") == 1, "Running")
    write_checkpoint(checkpoints, "seen", 40, {"modes": 21.0}, cost={"usd": 3.0, "gpuHours": 1.2})
    samples = scrape.wait(kube_api, "seen", lambda s: value(s, "ganops_job_cost_usd_total") == 3.0, "the cost")
    assert value(samples, "ganops_job_gpu_hours_total") == pytest.approx(1.2)
    assert status_of(kube_api, "seen")["cost"] == {"usd": 3.0, "gpuHours": 1.2}  # the same figures as status

    terminate_pod(kube_api, NS, pod, exit_code=143, disruption="PreemptionByScheduler")
    samples = scrape.wait(kube_api, "seen", lambda s: value(s, "ganops_operator_job_restarts_total",
                                                            kind="preemption") == 1, "one preemption")
    assert value(samples, "ganops_operator_job_restarts_total", kind="failure") == 0
    assert status_of(kube_api, "seen")["restarts"] == {"preemptions": 1, "failures": 0}

    kube_api.wait_for(lambda: (kube_api.get_or_none("batch/v1", "Job", NS, "seen") or {}).get("metadata", {}).get(
        "labels", {}).get("ganops.io/attempt") == "2", message="attempt 2")
    start_job_pods(kube_api, NS, "seen")
    quality = {"modes": 24.0, "high_quality": 0.9, "fid": 3.25, "kid": 0.0125, "precision": 0.8, "recall": 0.7}
    write_checkpoint(checkpoints, "seen", 100, quality, cost={"usd": 4.0, "gpuHours": 1.6})
    complete_job(kube_api, NS, "seen")
    samples = scrape.wait(kube_api, "seen", lambda s: value(s, "ganops_operator_promotions_total", model=model,
                                                            outcome="promoted") == 1, "a promotion", timeout=30)
    status = status_of(kube_api, "seen")
    assert status["phase"] == "Succeeded" and status["promotedVersion"] == "1"
    assert phase_of(samples) == {p: float(p == "Succeeded") for p in PHASES}
    assert value(samples, "ganops_operator_promotions_total", model=model, outcome="rejected") == 0
    recorded = {dict(labels)["metric"]: (dict(labels)["version"], dict(labels)["model"], v)
                for (name, labels), v in samples.items() if name == "ganops_model_version_quality"}
    assert recorded == {"fid": ("1", model, 3.25), "kid": ("1", model, 0.0125), "precision": ("1", model, 0.8),
                        "recall": ("1", model, 0.7), "modes": ("1", model, 24.0)}
    assert value(samples, "ganops_job_cost_usd_total") == 4.0

    # Deleted: every series of the job goes with it (no stale phase for a job that does not exist).
    kube_api.delete(GTJ, "GanTrainingJob", NS, "seen")
    kube_api.wait_for(lambda: kube_api.get_or_none(GTJ, "gtj", NS, "seen") is None, message="deleted")
    scrape.wait(kube_api, "seen", lambda s: s == {}, "no series of the deleted job")
    assert not runner.error_records, runner.messages()


def test_a_rejected_promotion_counts_as_rejected_and_records_no_quality(
    kube_api: KubeAPI, metered: tuple[KopfRunner, Scraper, str], mlflow_uri: str
) -> None:
    _runner, scrape, checkpoints = metered
    bare = f"grid-{uuid.uuid4().hex[:8]}"
    model = f"{NS}.{bare}"  # registered under the job's namespace: the label serving's series carry too
    kube_api.create(gtj("weak", training={"steps": 100}, tracking={"mlflowUri": mlflow_uri},
                        promotion={"modelName": bare, "gates": {"minModes": 20}}))
    kube_api.wait_for(lambda: kube_api.get_or_none("batch/v1", "Job", NS, "weak"), message="the Job")
    start_job_pods(kube_api, NS, "weak")
    write_checkpoint(checkpoints, "weak", 100, {"modes": 9.0, "high_quality": 0.2})
    complete_job(kube_api, NS, "weak")
    samples = scrape.wait(kube_api, "weak", lambda s: value(s, "ganops_operator_promotions_total", model=model,
                                                            outcome="rejected") == 1, "a rejection", timeout=30)
    assert value(samples, "ganops_operator_promotions_total", model=model, outcome="promoted") == 0
    assert not [k for k in samples if k[0] in ("ganops_model_version_quality", "ganops_job_budget_usd")]
    assert condition(status_of(kube_api, "weak"), "PromotionRejected")["status"] == "True"


# ------------------------------------------------------------------------------------------------ trainer health


def test_a_real_trainers_divergence_rollback_becomes_a_condition(
    kube_api: KubeAPI, metered: tuple[KopfRunner, Scraper, str], tmp_path: Path
) -> None:
    """`ganops train` with a learning rate that blows the LSGAN losses up: the trainer rolls back to its last
    checkpoint (DivergenceRollback), saves later checkpoints with `health` in latest.json; the operator reads them
    into the condition and a Warning Event."""
    _runner, _scrape, checkpoints = metered
    # 0.9: since the GPU work (D frozen in G's step, σ in fp32) 0.3 no longer blows up; 0.9 rolls back once, 1.0
    # diverges past the rollback limit
    job = gtj("wild", loss={"type": "lsgan"}, optimizer={"lrGenerator": 0.9, "lrDiscriminator": 0.9},
              training={"steps": 200, "logEverySteps": 10}, checkpoint={"everySteps": 5})
    kube_api.create(job)
    kube_api.wait_for(lambda: kube_api.get_or_none("batch/v1", "Job", NS, "wild"), message="the Job")
    start_job_pods(kube_api, NS, "wild")  # the emulator runs no pods: the trainer runs here, as the pod would
    env = {"GANOPS_CHECKPOINT_URI": checkpoints, "GANOPS_NAMESPACE": NS, "GANOPS_JOB_NAME": "wild",
           "GANOPS_METRICS_PORT": "0", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "OMP_NUM_THREADS": "1", "GANOPS_LOG_LEVEL": "WARNING"}
    train = subprocess.run(
        [sys.executable, "-m", "ganops.cli", "train", "--job", str(write_job(job, tmp_path / "job.yaml")),
         "--no-progress", "--work-dir", str(tmp_path / "work")],
        env={**os.environ, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    latest = storage.open_store(checkpoints).get_json(latest_uri(checkpoints, NS, "wild"))
    assert latest["health"]["rollbacks"] >= 1, latest  # what the trainer wrote

    def rolled_back() -> dict[str, Any]:
        return condition(status_of(kube_api, "wild"), "DivergenceRollback")

    kube_api.wait_for(lambda: rolled_back().get("status") == "True", timeout=15,
                      message=f"DivergenceRollback (status: {status_of(kube_api, 'wild')})")
    got = rolled_back()
    first = next(e for e in latest["health"]["events"] if e["type"] == "DivergenceRollback")
    assert got["reason"] == "TrainerHealthCheck"
    assert got["message"].startswith(f"{latest['health']['rollbacks']} divergence rollback(s), last at step ")
    assert f"at step {first['step']}" in got["message"]
    kube_api.wait_for(lambda: any(e.reason == "DivergenceRollback" and e.type == "Warning"
                                  for e in kube_api.events(NS, involved_name="wild")), message="the Warning Event")
    assert condition(status_of(kube_api, "wild"), "Diverged") == {}  # a rollback is not giving up

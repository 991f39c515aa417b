"""Preemption end to end: the real operator (kopf on the Kubernetes emulator) renders a Job, the test plays the node
and runs that pod's trainer as a real process against moto's S3; the scheduler preempts the pod (SIGTERM, a grace
period, then the DisruptionTarget condition). The trainer checkpoints inside the grace period, the operator
relaunches the pod without spending backoff, and the new attempt resumes exactly where the old one stopped."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ganops.api.crd import build_crd
from tests.resilience.checkpoint_audit import audit_checkpoints, read_latest
from tests.resilience.pods import run_job_pod
from tests.resilience.report import sized
from tests.support.jobs import grid_job
from tests.support.kube import KopfRunner, KopfRunnerFactory, KubeAPI
from tests.support.kube.workloads import complete_job, job_pods, start_job_pods, terminate_pod
from tests.support.moto_server import MotoS3Server

pytest_plugins = ["tests.support.kube.fixtures"]

GTJ = "ganops.io/v1alpha1"
NS = "team-r"
GRACE_S = 30


@pytest.fixture
def operator(kube_api: KubeAPI, kopf_runner: KopfRunnerFactory, monkeypatch: pytest.MonkeyPatch,
             s3_bucket: str) -> KopfRunner:
    for name, value in {
        "GANOPS_OPERATOR_RESYNC_SECONDS": "0.3",
        "GANOPS_OPERATOR_METRICS_PORT": "0",
        "GANOPS_CHECKPOINT_URI": f"{s3_bucket}/checkpoints",
        "GANOPS_S3_SECRET": "ganops-s3",
        "GANOPS_TERMINATION_GRACE_SECONDS": str(GRACE_S),
    }.items():
        monkeypatch.setenv(name, value)
    kube_api.register_crd(build_crd())
    return kopf_runner(["ganops.operator.main"])


def status_of(kube: KubeAPI, name: str) -> dict[str, Any]:
    return dict(kube.get(GTJ, "gtj", NS, name).get("status") or {})


def attempt_of(kube: KubeAPI, name: str) -> str | None:
    job = kube.get_or_none("batch/v1", "Job", NS, name)
    return job["metadata"]["labels"].get("ganops.io/attempt") if job else None


def test_preempted_pods_checkpoint_in_the_grace_period_and_resume_without_spending_backoff(
    kube_api: KubeAPI, operator: KopfRunner, moto_s3: MotoS3Server, s3_bucket: str, tmp_path: Path,
    figures: dict[str, Any],
) -> None:
    preemptions = sized(1, 3)
    every = 20
    steps = 150 * (preemptions + 1)
    job = grid_job("spot", training={"steps": steps, "logEverySteps": 5}, checkpoint={"everySteps": every},
                   runPolicy={"backoffLimit": 0})  # any failure counted would end the job
    job["metadata"]["namespace"] = NS
    kube_api.create(job)
    root = f"{s3_bucket}/checkpoints/{NS}/spot"
    secret = moto_s3.env()  # what the ganops-s3 Secret holds

    stopped_at: list[int] = []
    grace_used: list[float] = []
    for attempt in range(1, preemptions + 2):
        kube_api.wait_for(lambda a=attempt: attempt_of(kube_api, "spot") == str(a),  # type: ignore[misc]
                          timeout=20, message=f"attempt {attempt}'s Job")
        job_obj = kube_api.get("batch/v1", "Job", NS, "spot")
        assert job_obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == GRACE_S
        (pod,) = start_job_pods(kube_api, NS, "spot")
        kube_api.wait_for(lambda: status_of(kube_api, "spot").get("phase") == "Running", message="Running")
        trainer = run_job_pod(kube_api, NS, "spot", tmp_path / f"pod-{attempt}", secret)
        try:
            if stopped_at:  # a relaunch: the Job says where to resume from, the trainer does exactly that
                assert job_obj["metadata"]["annotations"]["ganops.io/resume-from"].endswith(
                    f"/step-{stopped_at[-1]:09d}")
                resumed = trainer.wait_event(lambda e: e["event"] == "resumed", timeout=120)
                assert resumed is not None and resumed["step"] == stopped_at[-1], trainer.tail()
            if attempt <= preemptions:
                target = (stopped_at[-1] if stopped_at else 0) + every + 5  # past a periodic checkpoint
                reached = trainer.wait_event(lambda e, t=target: e["event"] == "progress" and e["step"] >= t,
                                             timeout=180)
                assert reached is not None, trainer.tail()
                sent = time.monotonic()
                trainer.signal(signal.SIGTERM)  # the kubelet, for the preempting scheduler
                code = trainer.finish(timeout=GRACE_S)  # SIGKILL after the grace period, as the kubelet would
                grace_used.append(time.monotonic() - sent)
                assert code == 0, f"exit {code} (killed after the grace period?)\n{trainer.tail()}"
                (stop,) = trainer.named("stopped")
                stopped_at.append(int(stop["step"]))
                record = read_latest(root)
                assert record is not None and record["step"] == stop["step"], "the SIGTERM checkpoint is latest"
                terminate_pod(kube_api, NS, pod, exit_code=code, disruption="PreemptionByScheduler")
                status = kube_api.wait_for(
                    lambda a=attempt: (s := status_of(kube_api, "spot")).get("attempt") == a + 1 and s,  # type: ignore[misc]
                    timeout=20, message="the operator relaunches")
                assert status["restarts"] == {"preemptions": attempt, "failures": 0}
                assert status["phase"] != "Failed"
            else:  # the last attempt runs to the end
                code = trainer.finish(timeout=300)
                assert code == 0, trainer.tail()
                complete_job(kube_api, NS, "spot")
        finally:
            trainer.signal(signal.SIGKILL)
            trainer.finish()

    status = kube_api.wait_for(lambda: (s := status_of(kube_api, "spot")).get("phase") == "Succeeded" and s,
                               timeout=20, message="Succeeded")
    assert status["restarts"] == {"preemptions": preemptions, "failures": 0}
    assert status["step"] == steps and status["lastCheckpoint"]["step"] == steps
    assert len(kube_api.list("batch/v1", "jobs", NS, label_selector="ganops.io/job=spot")) == 1
    assert job_pods(kube_api, NS, "spot") != []
    audit = audit_checkpoints(root)
    assert audit.latest_step == steps and not audit.corrupt, audit
    figures.update(preemptions=preemptions, recoveries=preemptions, backoff_spent=status["restarts"]["failures"],
                   stopped_at=stopped_at, max_grace_used_s=round(max(grace_used), 2), grace_period_s=GRACE_S,
                   corrupt_checkpoints=len(audit.corrupt))

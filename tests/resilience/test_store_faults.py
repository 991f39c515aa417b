"""Bad weather for the real trainer: a fault-injecting proxy in front of moto's S3 answers a share of requests with
500/503, drops connections, and cuts downloads short; meanwhile the MLflow server is stopped and started again.
Training goes on, every checkpoint verifies, the resume after a stop lands exactly on the stopped step, and every
metric point reaches MLflow exactly once when it is back."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mlflow import MlflowClient

from tests.resilience.checkpoint_audit import audit_checkpoints, read_latest
from tests.resilience.faults import FaultPlan, FaultProxy
from tests.resilience.report import FULL, sized
from tests.resilience.trainer_proc import TrainerProcess
from tests.support.jobs import grid_job, write_job
from tests.support.moto_server import MotoS3Server

if TYPE_CHECKING:
    from tests.support.mlflow_server import MlflowServer

pytest_plugins = ["tests.support.mlflow_server"]

LOG_EVERY = 5


def _progress_at(step: int) -> Any:
    return lambda e: e["event"] == "progress" and e["step"] >= step


@pytest.mark.skipif(not FULL, reason="full run only (make resilience): an MLflow restart costs ~20 s")
def test_s3_errors_and_mlflow_restarts_lose_nothing(
    moto_s3: MotoS3Server, mlflow_server: MlflowServer, mlflow_uri: str, tmp_path: Path, figures: dict[str, Any]
) -> None:
    weather(moto_s3, tmp_path, figures, rounds=3, mlflow=mlflow_server)


def test_s3_errors_mid_upload_and_mid_download_lose_nothing(
    moto_s3: MotoS3Server, tmp_path: Path, figures: dict[str, Any]
) -> None:
    weather(moto_s3, tmp_path, figures, rounds=sized(1, 3), mlflow=None)


def weather(moto_s3: MotoS3Server, tmp_path: Path, figures: dict[str, Any], *, rounds: int,
            mlflow: MlflowServer | None) -> None:
    rate = 0.25
    ahead = sized(10, 20)  # steps trained per phase (the checkpoint interval is 10)
    name = f"weather-{uuid.uuid4().hex[:6]}"
    bucket = moto_s3.create_bucket("weather")
    job = grid_job(name, training={"steps": 1_000_000, "logEverySteps": LOG_EVERY},
                   checkpoint={"uri": f"s3://{bucket}/ckpt", "everySteps": 10, "keepLast": 3, "keepBest": 0},
                   tracking={"mlflowUri": mlflow.url, "experiment": name} if mlflow else {})
    path = write_job(job, tmp_path / "job.yaml")
    root = f"s3://{bucket}/ckpt/ns/{name}"
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        env = {**moto_s3.env(), "AWS_ENDPOINT_URL_S3": proxy.url, "GANOPS_NAMESPACE": "ns", "OMP_NUM_THREADS": "1"}
        stopped: list[int] = []
        outages = 0
        uploads = downloads = before = 0
        for round_ in range(rounds):
            trainer = TrainerProcess(path, tmp_path / "work", env)
            try:
                if stopped:  # resumed through the download faults set at the end of the previous round
                    resumed = trainer.wait_event(lambda e: e["event"] == "resumed", timeout=180)
                    assert resumed is not None and resumed["step"] == stopped[-1], trainer.tail()
                    downloads += proxy.faults() - before
                # Uploads fail (PUT, multipart POST) while this attempt trains and checkpoints.
                proxy.set_faults(FaultPlan(rate=rate, methods=("PUT", "POST"), seed=round_, first=1))
                before = proxy.faults()
                start = stopped[-1] if stopped else 0
                assert trainer.wait_event(_progress_at(start + ahead), timeout=180), trainer.tail()
                if mlflow is not None:
                    mlflow.stop()  # MLflow goes away mid-training ...
                    mlflow.launch()  # ... and comes back in its own time (~10 s) while training goes on
                    outages += 1
                    mlflow.wait(120)
                here = trainer.max_step()
                assert trainer.wait_event(_progress_at(here + ahead), timeout=180), trainer.tail()
                uploads += proxy.faults() - before
                # Downloads fail too from here: the next attempt resumes through them.
                proxy.set_faults(FaultPlan(rate=rate, methods=("GET", "HEAD"),
                                           kinds=("500", "503", "drop", "truncate"), seed=100 + round_,
                                           first=2))
                before = proxy.faults()
                trainer.signal(signal.SIGTERM)
                assert trainer.finish(60) == 0, trainer.tail()
            finally:
                trainer.signal(signal.SIGKILL)
                trainer.finish()
            (stop,) = trainer.named("stopped")
            stopped.append(int(stop["step"]))
            assert trainer.named("checkpoint_failed") == [], trainer.named("checkpoint_failed")
            if mlflow is not None:
                assert any("unreachable" in line for line in trainer.lines), "the MLflow outage went unnoticed"
        # One more attempt resumes through the download faults, then stops cleanly.
        final = TrainerProcess(path, tmp_path / "work", env)
        try:
            resumed = final.wait_event(lambda e: e["event"] == "resumed", timeout=180)
            assert resumed is not None and resumed["step"] == stopped[-1], final.tail()
            assert final.wait_event(_progress_at(stopped[-1] + LOG_EVERY), timeout=180), final.tail()
            downloads += proxy.faults() - before
            proxy.set_faults(FaultPlan())
            final.signal(signal.SIGTERM)
            assert final.finish(60) == 0, final.tail()
        finally:
            final.signal(signal.SIGKILL)
            final.finish()
        (stop,) = final.named("stopped")
        last = int(stop["step"])
        counts = dict(proxy.counts)

    assert uploads > 0 and downloads > 0, (uploads, downloads)  # the faults really happened, on both paths
    audit = audit_checkpoints(root)
    assert audit.latest_step == last and not audit.corrupt, audit

    figures.update(s3_faults_injected=uploads + downloads, s3_upload_faults=uploads, s3_download_faults=downloads,
                   s3_requests=counts.get("requests", 0), recoveries=rounds, corrupt_checkpoints=len(audit.corrupt),
                   checkpoints_verified=len(audit.verified))
    if mlflow is None:
        return
    client = MlflowClient(tracking_uri=mlflow.url)
    history = sorted(m.step for m in client.get_metric_history(_run_id_of(root), "loss_g"))
    expected = list(range(LOG_EVERY, last + 1, LOG_EVERY))
    missing = sorted(set(expected) - set(history))
    duplicates = len(history) - len(set(history))
    figures.update(mlflow_outages=outages, mlflow_points_missing=len(missing), mlflow_points_duplicated=duplicates)
    assert missing == [] and duplicates == 0, (missing, history)
    assert history == expected


def _run_id_of(root: str) -> str:
    record = read_latest(root)
    assert record is not None and record.get("mlflowRunId"), record
    return str(record["mlflowRunId"])

"""The trainer's MLflow hook against a real ``mlflow server``: one run per job across attempts, and outages."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mlflow import MlflowClient

from ganops.trainer.checkpoint import CheckpointManager
from ganops.trainer.loop import Trainer
from ganops.trainer.run import train_session
from tests.support.jobs import as_job, grid_job, write_job

if TYPE_CHECKING:
    from tests.support.mlflow_server import MlflowServer

pytest_plugins = ["tests.support.mlflow_server"]

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _no_metrics_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANOPS_METRICS_PORT", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in _client(uri).get_metric_history(run_id, key))


def _artifacts(uri: str, run_id: str, path: str) -> list[str]:
    return sorted(f.path for f in _client(uri).list_artifacts(run_id, path))


def _job(name: str, uri: str, experiment: str, **spec: Any) -> Any:
    base: dict[str, Any] = {
        "training": {"steps": 40, "logEverySteps": 5},
        "checkpoint": {"everySteps": 10, "keepLast": 10},
        "evaluation": {"everySteps": 20, "numSamples": 500},
        "tracking": {"mlflowUri": uri, "experiment": experiment},
    }
    base.update(spec)
    return as_job(grid_job(name, **base))


def _stop_at(step: int) -> Any:
    def hook(trainer: Trainer, moment: str) -> None:
        if moment == "log" and trainer.step >= step:
            trainer.stop.requested = True

    return hook


def test_resumed_job_continues_its_mlflow_run(mlflow_uri: str, tmp_path: Path) -> None:
    experiment, name = _name("exp"), _name("resume")
    job = _job(name, mlflow_uri, experiment)
    ckpt = f"file://{tmp_path}/ckpt"

    first = train_session(job, work_dir=tmp_path / "w", checkpoint_uri=ckpt, progress=False, hooks=[_stop_at(20)])
    assert first.result.status == "stopped" and first.result.step == 20
    run_id = first.mlflow_run_id
    assert run_id and first.tracking_report is None
    assert _client(mlflow_uri).get_run(run_id).info.status == "RUNNING"  # left open for the next attempt
    root = f"{ckpt}/default/{name}"
    latest = CheckpointManager(root).latest_record()
    assert latest is not None and latest["mlflowRunId"] == run_id
    assert set(latest["cost"]) == {"usd", "gpuHours"}  # the operator reads cost from latest.json
    manifest = json.loads((tmp_path / "ckpt/default" / name / "step-000000020/manifest.json").read_text())
    assert manifest["mlflowRunId"] == run_id

    second = train_session(job, work_dir=tmp_path / "w", checkpoint_uri=ckpt, progress=False)
    assert second.result.status == "completed" and second.result.step == 40
    assert second.mlflow_run_id == run_id and second.tracking_report is None

    run = _client(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ganops.job"] == f"default/{name}"
    assert run.data.params["model.architecture"] == "mlp" and run.data.params["training.steps"] == "40"
    # metrics from both attempts, in one run
    assert _steps(mlflow_uri, run_id, "loss_g") == list(range(5, 41, 5))
    assert _steps(mlflow_uri, run_id, "loss_d") == list(range(5, 41, 5))
    assert _steps(mlflow_uri, run_id, "images_per_second") == list(range(5, 41, 5))
    assert _steps(mlflow_uri, run_id, "cost_usd") == list(range(5, 41, 5))
    assert _steps(mlflow_uri, run_id, "modes") == [20, 40]  # evaluations, attempt 1 and attempt 2
    assert _steps(mlflow_uri, run_id, "high_quality") == [20, 40]
    assert "health/diversity" in run.data.metrics
    assert _artifacts(mlflow_uri, run_id, "samples") == [f"samples/step-{s:06d}.png" for s in (10, 20, 30, 40)]
    assert _artifacts(mlflow_uri, run_id, "evaluations") == ["evaluations/step-000020.json",
                                                             "evaluations/step-000040.json"]
    local = _client(mlflow_uri).download_artifacts(run_id, "evaluations/step-000040.json", str(tmp_path / "dl"))
    report = json.loads(Path(local).read_text())
    assert report["step"] == 40 and "modes" in report["metrics"]
    grid = _client(mlflow_uri).download_artifacts(run_id, "samples/step-000040.png", str(tmp_path / "dl"))
    assert Path(grid).read_bytes().startswith(b"\x89PNG")


def test_mlflow_outage_mid_run_loses_no_checkpoint_and_no_metric(
    mlflow_server: MlflowServer, mlflow_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    experiment, name = _name("exp"), _name("outage")
    job = _job(name, mlflow_uri, experiment, training={"steps": 50, "logEverySteps": 5},
               evaluation={"everySteps": 1000, "numSamples": 500})
    events: list[str] = []

    def outage(trainer: Trainer, moment: str) -> None:
        if moment != "log":
            return
        if trainer.step == 10:
            mlflow_server.stop()  # down: refused connections from here
            mlflow_server.launch()  # and starting again in the background (~10 s), while training goes on
            events.append("down")
        elif trainer.step == 45:
            mlflow_server.wait(120)  # a long job: MLflow is back before it ends
            events.append("back")

    caplog.set_level(logging.WARNING, logger="ganops.tracking")
    session = train_session(job, work_dir=tmp_path / "w", checkpoint_uri=f"file://{tmp_path}/ckpt",
                            progress=False, hooks=[outage])
    assert events == ["down", "back"]
    assert session.result.status == "completed" and session.result.step == 50
    manager = CheckpointManager(f"file://{tmp_path}/ckpt/default/{name}")
    assert manager.steps() == [10, 20, 30, 40, 50]
    for step in manager.steps():
        manager.load_step(step)  # every one verifies
    assert any("unreachable" in r.getMessage() for r in caplog.records), "the outage must be reported"
    run_id = session.mlflow_run_id
    assert run_id and session.tracking_report is None
    # what was logged while the server was down arrived once it was back
    assert _steps(mlflow_uri, run_id, "loss_g") == list(range(5, 51, 5))
    assert _artifacts(mlflow_uri, run_id, "samples") == [f"samples/step-{s:06d}.png" for s in (10, 20, 30, 40, 50)]
    assert _client(mlflow_uri).get_run(run_id).info.status == "FINISHED"


def test_mlflow_never_reachable_training_completes_and_reports_the_loss(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    job = grid_job("dead-mlflow", training={"steps": 20, "logEverySteps": 5}, checkpoint={"everySteps": 10},
                   evaluation={"metrics": []})
    env = {**os.environ, "MLFLOW_TRACKING_URI": dead, "GANOPS_CHECKPOINT_URI": f"file://{tmp_path}/ckpt",
           "GANOPS_METRICS_PORT": "0"}
    result = subprocess.run(
        [str(BIN / "ganops"), "train", "--job", str(write_job(job, tmp_path / "j.yaml")),
         "--work-dir", str(tmp_path / "w"), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "completed at step 20"
    assert "could not be logged to MLflow" in result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning and "metric points" in warning[0] and "artifact" in warning[0], result.stderr[-2000:]
    manager = CheckpointManager(f"file://{tmp_path}/ckpt/default/dead-mlflow")
    assert manager.steps()[-1] == 20 and manager.load_latest() is not None

"""One training attempt with what surrounds the loop: in a pod (`ganops train`) or on a laptop (`ganops run`, which
adds promotion and samples around it: `ganops.local`).

Around the loop it attaches, on rank 0 only: the Prometheus endpoint (`GANOPS_METRICS_PORT`, default 9400, 0
disables it) and, when a tracking URI is known (`spec.tracking.mlflowUri`, else `MLFLOW_TRACKING_URI`), the MLflow
hook.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ganops import contracts, storage
from ganops.api.spec import GanTrainingJob
from ganops.trainer import distributed as dist_utils
from ganops.trainer.data import DataError
from ganops.trainer.launch import write_stop_marker
from ganops.trainer.loop import DEFAULT_CHECKPOINT_URI, CompileUnavailable, RunContext, StopSignal, Trainer, TrainResult
from ganops.trainer.telemetry import TrainingTelemetry, metrics_port_from_env
from ganops.trainer.tracking_hook import MlflowTrainingHook

Hook = Callable[[Trainer, str], None]


class TrainerCannotStart(RuntimeError):
    """The job is valid but cannot run here: data, credentials or storage. Reported before training starts."""


def context_for(job: GanTrainingJob, *, work_dir: Path, checkpoint_uri: str | None = None,
                progress: bool = True) -> RunContext:
    spec = job.spec
    namespace = os.environ.get(contracts.ENV_NAMESPACE) or job.metadata.namespace or "default"
    name = os.environ.get(contracts.ENV_JOB_NAME) or job.metadata.name
    uri = (spec.checkpoint.uri or checkpoint_uri or os.environ.get(contracts.ENV_CHECKPOINT_URI)
           or DEFAULT_CHECKPOINT_URI)
    dist = dist_utils.init_distributed(want_cuda=spec.resources.gpus_per_replica > 0,
                                       timeout_seconds=spec.training.distributed_timeout_seconds)
    return RunContext(namespace=namespace, job_name=name, checkpoint_uri=uri, work_dir=work_dir,
                      dist=dist, progress=progress)


def build_trainer(job: GanTrainingJob, ctx: RunContext) -> Trainer:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer = Trainer(job, ctx)
        if ctx.dist.is_main:
            trainer.manager.preflight()
        return trainer
    except (DataError, CompileUnavailable) as exc:
        raise TrainerCannotStart(str(exc)) from exc
    except storage.StorageError as exc:
        raise TrainerCannotStart(f"spec.checkpoint.uri: {exc}") from exc


def tracking_uri_for(job: GanTrainingJob, explicit: str | None = None) -> str | None:
    """Where the job logs: the argument, else `spec.tracking.mlflowUri`, else `MLFLOW_TRACKING_URI`, else nowhere."""
    return explicit or job.spec.tracking.mlflow_uri or os.environ.get(contracts.MLFLOW_TRACKING_URI_ENV) or None


@dataclass
class TrainingSession:
    """One attempt's outcome with what surrounds the loop: the MLflow run and what could not be logged."""

    result: TrainResult
    trainer: Trainer
    ctx: RunContext
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    tracking_report: str | None = None  # "12 metric points could not be logged to MLflow", None if all arrived
    metrics_port: int | None = None


def train_session(
    job: GanTrainingJob,
    *,
    work_dir: Path,
    progress: bool = True,
    checkpoint_uri: str | None = None,
    tracking_uri: str | None = None,
    mlflow_artifact_root: str | None = None,
    metrics_port: int | None = None,
    metrics_addr: str | None = None,
    hooks: Sequence[Hook] = (),
) -> TrainingSession:
    """Train one attempt (resuming from the latest checkpoint) with telemetry and tracking attached on rank 0.

    ``tracking_uri`` None means :func:`tracking_uri_for`'s choice; ``metrics_port`` None means
    ``GANOPS_METRICS_PORT`` (default 9400); 0 disables the endpoint. ``hooks`` run after the built-in ones.
    """
    ctx = context_for(job, work_dir=work_dir, checkpoint_uri=checkpoint_uri, progress=progress)
    trainer = build_trainer(job, ctx)
    stop = StopSignal()
    stop.install()
    trainer.stop = stop
    telemetry: TrainingTelemetry | None = None
    mlflow_hook: MlflowTrainingHook | None = None
    uri = tracking_uri_for(job, tracking_uri)
    bound: int | None = None
    if ctx.dist.is_main:
        telemetry = TrainingTelemetry(job.spec, namespace=ctx.namespace, job=ctx.job_name)
        bound = telemetry.serve(metrics_port_from_env() if metrics_port is None else metrics_port, metrics_addr)
        trainer.hooks.append(telemetry)
        if uri:
            mlflow_hook = MlflowTrainingHook(job, tracking_uri=uri, namespace=ctx.namespace, job_name=ctx.job_name,
                                             artifact_root=mlflow_artifact_root)
            trainer.hooks.append(mlflow_hook)
    trainer.hooks.extend(hooks)
    try:
        try:
            result = trainer.fit()
        except BaseException:
            if mlflow_hook is not None:
                mlflow_hook.close("FAILED")
            raise
        if result.status == "stopped":  # after the checkpoint and its barrier: `ganops launch` may now exit 0
            write_stop_marker(result.step, signal_name=stop.signal_name)
        report: str | None = None
        if mlflow_hook is not None:  # completed: closed at "end" already; stopped: left RUNNING for the resume
            report = mlflow_hook.close("FINISHED" if result.status == "completed" else None)
        return TrainingSession(result=result, trainer=trainer, ctx=ctx, tracking_uri=uri,
                               mlflow_run_id=mlflow_hook.run_id if mlflow_hook else None,
                               tracking_report=report, metrics_port=bound)
    finally:
        if telemetry is not None:
            telemetry.close()
        dist_utils.shutdown(ctx.dist)

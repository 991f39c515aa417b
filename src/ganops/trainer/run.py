"""Entry points that turn a job file into a training run: in a pod (`ganops train`) or on a laptop (`ganops run`).

Around the loop they attach, on rank 0 only: the Prometheus endpoint (`GANOPS_METRICS_PORT`, default 9400, 0
disables it) and, when a tracking URI is known (`spec.tracking.mlflowUri`, else `MLFLOW_TRACKING_URI`; `ganops
run` falls back to a local sqlite store), the MLflow hook. `ganops run` then promotes when
`spec.promotion.auto` is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ganops import storage
from ganops.api.spec import GanTrainingJob
from ganops.trainer import distributed as dist_utils
from ganops.trainer.data import DataError
from ganops.trainer.loop import DEFAULT_CHECKPOINT_URI, RunContext, StopSignal, Trainer, TrainResult
from ganops.trainer.sampling import write_samples
from ganops.trainer.telemetry import TrainingTelemetry, metrics_port_from_env
from ganops.trainer.tracking_hook import MlflowTrainingHook

Hook = Callable[[Trainer, str], None]
LOCAL_MLFLOW_DB = "mlflow.db"
LOCAL_MLFLOW_ARTIFACTS = "mlartifacts"


class TrainerCannotStart(RuntimeError):
    """The job is valid but cannot run here: data, credentials or storage. Reported before training starts."""


def context_for(job: GanTrainingJob, *, work_dir: Path, checkpoint_uri: str | None = None,
                progress: bool = True) -> RunContext:
    spec = job.spec
    namespace = os.environ.get("GANOPS_NAMESPACE") or job.metadata.namespace or "default"
    name = os.environ.get("GANOPS_JOB_NAME") or job.metadata.name
    uri = spec.checkpoint.uri or checkpoint_uri or os.environ.get("GANOPS_CHECKPOINT_URI") or DEFAULT_CHECKPOINT_URI
    dist = dist_utils.init_distributed(want_cuda=spec.resources.gpus_per_replica > 0)
    return RunContext(namespace=namespace, job_name=name, checkpoint_uri=uri, work_dir=work_dir,
                      dist=dist, progress=progress)


def build_trainer(job: GanTrainingJob, ctx: RunContext) -> Trainer:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer = Trainer(job, ctx)
        if ctx.dist.is_main:
            trainer.manager.preflight()
        return trainer
    except DataError as exc:
        raise TrainerCannotStart(str(exc)) from exc
    except storage.StorageError as exc:
        raise TrainerCannotStart(f"spec.checkpoint.uri: {exc}") from exc


def tracking_uri_for(job: GanTrainingJob, explicit: str | None = None) -> str | None:
    """Where the job logs: the argument, else `spec.tracking.mlflowUri`, else `MLFLOW_TRACKING_URI`, else nowhere."""
    return explicit or job.spec.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def local_tracking_uri(home: Path) -> str:
    return f"sqlite:///{home.resolve() / LOCAL_MLFLOW_DB}"


def local_artifact_root(home: Path) -> str:
    return (home.resolve() / LOCAL_MLFLOW_ARTIFACTS).as_uri()


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


def train_job(job: GanTrainingJob, *, work_dir: Path, progress: bool = True,
              checkpoint_uri: str | None = None, tracking_uri: str | None = None,
              metrics_port: int | None = None, hooks: Sequence[Hook] = ()) -> TrainResult:
    return train_session(job, work_dir=work_dir, progress=progress, checkpoint_uri=checkpoint_uri,
                         tracking_uri=tracking_uri, metrics_port=metrics_port, hooks=hooks).result


class EvaluationLog:
    """Hook keeping every evaluation of this attempt, for the summary of `ganops run`."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def __call__(self, trainer: Trainer, moment: str) -> None:
        report = getattr(trainer, "last_evaluation", None)
        if moment == "evaluated" and report is not None:
            step = report.step if report.step is not None else trainer.step
            self.rows.append((int(step), report.numeric()))


def _shown(numbers: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(numbers.items()) if k != "kid_std")


def _quality_lines(session: TrainingSession, evaluations: EvaluationLog) -> list[str]:
    from ganops.promotion import manifest_metrics

    spec = session.trainer.spec.evaluation
    if evaluations.rows:
        lines = [f"quality:    {spec.num_samples} samples of the EMA generator vs real data, per evaluation"]
        lines.extend(f"  step {step:>7}: {_shown(numbers)}" for step, numbers in evaluations.rows)
        return lines
    record = session.result.last_checkpoint or session.trainer.manager.latest_record() or {}
    numbers = manifest_metrics(record)  # a re-run with nothing left to train: what the last checkpoint measured
    return [f"quality:    {_shown(numbers)} (step {record.get('step')})"] if numbers else []


def run_local(job: GanTrainingJob, *, home: Path, metrics_port: int | None = None) -> list[str]:
    """`ganops run`: train on this machine with local defaults (checkpoints under `home`, an MLflow sqlite store
    `home/mlflow.db` unless the job or `MLFLOW_TRACKING_URI` names a server), then promote when
    `spec.promotion.auto` is set, and write the sample grid. Returns the summary lines to print."""
    from ganops import tracking
    from ganops.promotion import PromotionError, promote

    home = home.resolve()
    checkpoint_uri = job.spec.checkpoint.uri or f"file://{home / 'checkpoints'}"
    uri = tracking_uri_for(job)
    artifact_root: str | None = None
    if uri is None:
        home.mkdir(parents=True, exist_ok=True)
        uri = local_tracking_uri(home)
        artifact_root = local_artifact_root(home)
    evaluations = EvaluationLog()
    session = train_session(
        job, work_dir=home / "work", checkpoint_uri=checkpoint_uri, tracking_uri=uri,
        mlflow_artifact_root=artifact_root, metrics_port=metrics_port,
        metrics_addr=os.environ.get("GANOPS_METRICS_ADDR") or "127.0.0.1", hooks=[evaluations],
    )
    result = session.result
    lines = [f"training {result.status} at step {result.step}"]
    record = result.last_checkpoint or session.trainer.manager.latest_record()
    if record is not None:
        lines.append(f"checkpoint: {record['uri']}")
    lines.extend(_quality_lines(session, evaluations))
    if session.mlflow_run_id:
        lines.append(f"mlflow:     run {session.mlflow_run_id} at {tracking.redact(uri)}")
    if session.tracking_report:
        lines.append(f"warning:    {session.tracking_report}")
    samples = home / "samples" / f"{job.metadata.name}.png"
    if result.status == "completed" and job.spec.promotion.auto and record is not None:
        try:
            promotion = promote(job, session.ctx.checkpoint_root, uri, namespace=session.ctx.namespace,
                                job=session.ctx.job_name, artifact_root=artifact_root)
        except (PromotionError, tracking.TrackingError) as exc:
            lines.append(f"promotion failed: {exc}")
        else:
            lines.extend(promotion.lines())
            if promotion.samples_png is not None:
                samples.parent.mkdir(parents=True, exist_ok=True)
                samples.write_bytes(promotion.samples_png)
                lines.append(f"samples:    {samples} (step {promotion.step}, seed 0, EMA generator)")
            return lines
    if record is not None:
        write_samples(record["uri"], n=64, output=samples, seed=0, ema=True)
        lines.append(f"samples:    {samples}")
    return lines

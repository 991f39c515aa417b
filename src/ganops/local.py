"""What `ganops run` and `ganops generate` do on this machine: the app layer above trainer and promotion.

`run_local` trains with local defaults (checkpoints under ``--home``, an MLflow sqlite store there unless the job
or ``MLFLOW_TRACKING_URI`` names a server), promotes when ``spec.promotion.auto`` is set, and writes the sample
grid; `write_samples` draws a grid (or ``.npy``) from any checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ganops import contracts, images, storage, tracking
from ganops.api.spec import GanTrainingJob
from ganops.checkpoints import CheckpointError, manifest_metrics
from ganops.generator import checkpoint_samples
from ganops.home import local_artifact_root, local_tracking_uri
from ganops.promotion import PromotionError, promote
from ganops.trainer.loop import Trainer
from ganops.trainer.run import TrainingSession, tracking_uri_for, train_session

__all__ = ["EvaluationLog", "SamplingError", "run_local", "write_samples"]


class SamplingError(RuntimeError):
    pass


def write_samples(checkpoint_uri: str, *, n: int, output: Path, seed: int = 0, ema: bool = True) -> np.ndarray:
    """Samples of a checkpoint's generator (``seed``, labels cycling) written as a PNG grid (a scatter plot for 2-D
    data) or, for an ``.npy`` output, the raw array."""
    try:
        samples, _ = checkpoint_samples(checkpoint_uri, n, seed, ema=ema)
    except (CheckpointError, storage.StorageError, KeyError, ValueError) as exc:
        raise SamplingError(f"cannot load a generator from {checkpoint_uri}: {exc}") from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npy":
        np.save(output, samples)
    elif samples.ndim == 2:  # 2-D points
        output.write_bytes(images.encode_png(images.scatter(samples)))
    else:
        output.write_bytes(images.encode_png(images.grid(samples)))
    return samples


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
        metrics_addr=os.environ.get(contracts.ENV_METRICS_ADDR) or "127.0.0.1", hooks=[evaluations],
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

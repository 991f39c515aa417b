"""Entry points that turn a job file into a training run: in a pod (`ganops train`) or on a laptop (`ganops run`)."""

from __future__ import annotations

import os
from pathlib import Path

from ganops import storage
from ganops.api.spec import GanTrainingJob
from ganops.trainer import distributed as dist_utils
from ganops.trainer.data import DataError
from ganops.trainer.loop import DEFAULT_CHECKPOINT_URI, RunContext, StopSignal, Trainer, TrainResult
from ganops.trainer.sampling import write_samples


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
        return Trainer(job, ctx)
    except DataError as exc:
        raise TrainerCannotStart(str(exc)) from exc
    except storage.StorageError as exc:
        raise TrainerCannotStart(f"spec.checkpoint.uri: {exc}") from exc


def train_job(job: GanTrainingJob, *, work_dir: Path, progress: bool = True,
              checkpoint_uri: str | None = None) -> TrainResult:
    ctx = context_for(job, work_dir=work_dir, checkpoint_uri=checkpoint_uri, progress=progress)
    trainer = build_trainer(job, ctx)
    stop = StopSignal()
    stop.install()
    trainer.stop = stop
    try:
        return trainer.fit()
    finally:
        dist_utils.shutdown(ctx.dist)


def run_local(job: GanTrainingJob, *, home: Path) -> list[str]:
    """`ganops run`: train on this machine with local defaults, then write a sample grid."""
    home = home.resolve()
    checkpoint_uri = job.spec.checkpoint.uri or f"file://{home / 'checkpoints'}"
    result = train_job(job, work_dir=home / "work", checkpoint_uri=checkpoint_uri)
    lines = [f"training {result.status} at step {result.step}"]
    if result.last_checkpoint is not None:
        samples = home / "samples" / f"{job.metadata.name}.png"
        write_samples(result.last_checkpoint["uri"], n=64, output=samples, seed=0, ema=True)
        lines.append(f"checkpoint: {result.last_checkpoint['uri']}")
        lines.append(f"samples:    {samples}")
    return lines

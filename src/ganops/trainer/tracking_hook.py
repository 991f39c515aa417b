"""The trainer's MLflow hook: one run per job, continued by every resumed attempt.

Attach on rank 0 only (``ganops.trainer.run`` does). What lands in the run:

* **params**: the flattened spec (:func:`ganops.tracking.flatten_spec`), once; **tags**: lineage
  (:func:`ganops.tracking.lineage_tags`: job, spec hash, git commit, versions, image).
* **metrics by step**, at each log moment: the loop's values (``loss_g``, ``loss_d``, ``grad_norm_g``,
  ``grad_norm_d`` and loss parts such as ``gp``/``r1``), ``images_per_second``, ``cost_usd``, ``gpu_hours`` and the
  health monitor's numbers (``health/diversity``, ``health/d_accuracy``, …); at each evaluation the report's numbers
  under their own names (``fid``, ``kid``, ``precision``, ``recall``, ``modes``, ``high_quality``: the names of
  ``status.metrics`` and of the promotion gates); ``health_events`` (count) when the monitor raises one.
* **artifacts**: ``samples/step-000500.png``, a fixed-seed sample grid (scatter plot for 2-D data) of the EMA
  generator at every evaluation and checkpoint, and ``evaluations/step-000500.json``, the evaluation report.

The run id goes into every checkpoint's manifest and ``latest.json`` (``mlflowRunId``, through
``extra_state["checkpoint_info"]``); the next attempt reads it back from the restored ``extra_state`` (or
``latest.json``) and continues that run. MLflow being down never stops or slows training: the
:class:`~ganops.tracking.Tracker` buffers and retries, and :meth:`MlflowTrainingHook.close` says what was lost.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from ganops import contracts, images
from ganops.api.spec import GanTrainingJob
from ganops.cost import cost_of
from ganops.logs import event
from ganops.tracking import Tracker, flatten_spec, job_key, lineage_tags, redact
from ganops.trainer.telemetry import AttemptClock, SeenEvents, health_events_of, health_state_of

if TYPE_CHECKING:
    from ganops.trainer.loop import Trainer

log = logging.getLogger(__name__)

SAMPLE_SEED = 0  # the fixed latent seed of every logged grid: grids of different steps compare like for like
IMAGE_GRID_SAMPLES = 64
POINT_SAMPLES = 2000
RUN_ID_KEY = "mlflowRunId"


def step_name(step: int) -> str:
    """``step-000500``: how artifacts of one step are named."""
    return f"step-{step:06d}"


def sample_grid_png(trainer: Trainer, *, seed: int = SAMPLE_SEED) -> bytes:
    """A PNG of the EMA generator's samples from fixed latents: a grid for images, a scatter plot for 2-D data."""
    n = POINT_SAMPLES if trainer.spec.is_2d else IMAGE_GRID_SAMPLES
    samples = trainer.sample(n, seed).numpy()
    pixels = images.scatter(samples) if samples.ndim == 2 else images.grid(samples)
    return images.encode_png(pixels)


def stored_run_id(trainer: Trainer) -> str | None:
    """The run id of an earlier attempt: from the restored ``extra_state``, else from ``latest.json``."""
    info = trainer.extra_state.get("checkpoint_info")
    if isinstance(info, Mapping) and info.get(RUN_ID_KEY):
        return str(info[RUN_ID_KEY])
    record = trainer.manager.latest_record() if trainer.ctx.dist.is_main else None
    if record and record.get(RUN_ID_KEY):
        return str(record[RUN_ID_KEY])
    return None


def default_experiment(job: GanTrainingJob, namespace: str) -> str:
    return job.spec.tracking.experiment or namespace


def _safe_dir_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "default"


class MlflowTrainingHook:
    """Trainer hook that logs one job's run to MLflow. ``close()`` it when training returns or fails."""

    def __init__(
        self,
        job: GanTrainingJob,
        *,
        tracking_uri: str,
        namespace: str,
        job_name: str,
        experiment: str | None = None,
        artifact_root: str | None = None,
        open_timeout: float | None = None,
        final_flush_seconds: float = 30.0,
        degraded_flush_seconds: float = 10.0,
    ) -> None:
        self.job = job
        self.tracking_uri = tracking_uri
        self.namespace = namespace
        self.job_name = job_name
        self.experiment = experiment or default_experiment(job, namespace)
        self.artifact_location = (
            f"{artifact_root.rstrip('/')}/{_safe_dir_name(self.experiment)}" if artifact_root else None
        )
        self.open_timeout = open_timeout
        self.final_flush_seconds = final_flush_seconds
        self.degraded_flush_seconds = degraded_flush_seconds
        self.tracker: Tracker | None = None
        self.clock = AttemptClock()
        self._run_id: str | None = None
        self._sampled_steps: set[int] = set()
        self._events = SeenEvents()
        self._closed = False
        self._report: str | None = None
        self._warned = False

    @property
    def run_id(self) -> str | None:
        """The run's id: the tracker's once the server answered, else the one the previous attempt stored."""
        if self.tracker is not None and self.tracker.run_id:
            self._run_id = self.tracker.run_id
        return self._run_id

    # ----------------------------------------------------------------- hook

    def __call__(self, trainer: Trainer, moment: str) -> None:
        if self._closed:
            return
        try:
            self._on(trainer, moment)
        except Exception as exc:  # tracking must never stop training
            if not self._warned:
                self._warned = True
                log.warning("MLflow hook failed at %r (%s); training continues", moment, redact(str(exc)))
            else:
                log.debug("MLflow hook failed at %r: %s", moment, exc)

    def _on(self, trainer: Trainer, moment: str) -> None:
        if moment == "start":
            self._start(trainer)
            return
        tracker = self.tracker
        if tracker is None:
            return
        if moment == "log":
            self._log(trainer, tracker)
        elif moment == "evaluated":
            self._evaluated(trainer, tracker)
        elif moment == "health":
            self._health(trainer, tracker)
        elif moment == "before_checkpoint":
            self._remember_run_id(trainer)
            self._log_samples(trainer, tracker)
            if not tracker.degraded:  # bounds what a hard crash could lose; never waits on a server that is down
                tracker.flush(1.0)
        elif moment == "end":
            self._remember_run_id(trainer)
            self.close("FINISHED")

    def _start(self, trainer: Trainer) -> None:
        self.clock.start(trainer)
        self._events.mark(health_events_of(trainer))
        previous = stored_run_id(trainer)
        self._run_id = previous
        tags = lineage_tags(self.job, job=job_key(self.namespace, self.job_name))
        uid = os.environ.get(contracts.ENV_JOB_UID, "").strip()  # the job's Kubernetes UID, from the operator
        if uid:
            tags[contracts.TAG_JOB_UID] = uid
        self.tracker = Tracker.open(
            self.tracking_uri, self.experiment, run_name=self.job_name, run_id=previous, tags=tags,
            open_timeout=self.open_timeout, artifact_location=self.artifact_location,
        )
        self.tracker.log_params(flatten_spec(self.job))
        run_id = self.run_id
        self._remember_run_id(trainer)
        event(log, "mlflow_run", run_id=run_id, resumed=self.tracker.resumed if run_id else None,
              experiment=self.experiment, tracking_uri=redact(self.tracking_uri),
              reachable=not self.tracker.degraded)

    def _remember_run_id(self, trainer: Trainer) -> None:
        run_id = self.run_id
        if run_id:
            info = trainer.extra_state.get("checkpoint_info")
            if not isinstance(info, dict):
                info = {}
                trainer.extra_state["checkpoint_info"] = info
            info[RUN_ID_KEY] = run_id

    def _log(self, trainer: Trainer, tracker: Tracker) -> None:
        values = trainer.extra_state.get("last_values") or {}
        metrics: dict[str, float] = {
            str(k): float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        rate = self.clock.images_per_second(trainer)
        if rate is not None:
            metrics["images_per_second"] = rate
        figures = cost_of(trainer.spec, self.clock.running_seconds())
        metrics["cost_usd"] = figures.usd
        metrics["gpu_hours"] = figures.gpu_hours
        for key, value in health_state_of(trainer).items():
            if isinstance(value, int | float):  # bools too: collapse_suspected → 0/1
                metrics[f"health/{key}"] = float(value)
        tracker.log_metrics(metrics, step=trainer.step)

    def _evaluated(self, trainer: Trainer, tracker: Tracker) -> None:
        report = getattr(trainer, "last_evaluation", None)
        if report is None:
            return
        step = int(report.step) if getattr(report, "step", None) is not None else trainer.step
        numeric: dict[str, float] = report.numeric()
        if numeric:
            tracker.log_metrics(numeric, step=step)
        tracker.log_artifact_bytes(report.to_json(indent=2).encode(), f"evaluations/{step_name(step)}.json")
        self._log_samples(trainer, tracker, step=step)

    def _health(self, trainer: Trainer, tracker: Tracker) -> None:
        fresh = self._events.new(health_events_of(trainer))
        if not fresh:
            return
        last = fresh[-1]
        tracker.log_metrics({"health_events": float(len(fresh))}, step=trainer.step)
        summary = f"{last.get('type')} at step {last.get('step')}: {last.get('message')}"
        tracker.set_tags({contracts.TAG_HEALTH_LAST_EVENT: summary[:4000]})

    def _log_samples(self, trainer: Trainer, tracker: Tracker, step: int | None = None) -> None:
        step = trainer.step if step is None else step
        if step in self._sampled_steps:
            return
        self._sampled_steps.add(step)
        tracker.log_artifact_bytes(sample_grid_png(trainer), f"samples/{step_name(step)}.png")

    # ----------------------------------------------------------------- end

    def close(self, status: Literal["FINISHED", "FAILED", "KILLED"] | None = None) -> str | None:
        """End the run with ``status`` (None leaves it RUNNING, for a stopped job that will resume), after sending
        what is buffered (up to 30 s; 10 s while MLflow is unreachable). Returns, and logs, what could not be
        logged (None when everything arrived). Calling it again returns the same answer."""
        if self._closed:
            return self._report
        self._closed = True
        tracker = self.tracker
        if tracker is None:
            return None
        timeout = self.degraded_flush_seconds if tracker.degraded else self.final_flush_seconds
        if status is None:
            tracker.close(timeout)
        else:
            tracker.finish(status, timeout)
        self._report = tracker.report()
        if self._report:
            event(log, "mlflow_incomplete", run_id=self.run_id, lost=self._report,
                  tracking_uri=redact(self.tracking_uri))
        else:
            event(log, "mlflow_complete", run_id=self.run_id, status=status or "RUNNING")
        return self._report

    def __repr__(self) -> str:
        return f"MlflowTrainingHook({redact(self.tracking_uri)!r}, experiment={self.experiment!r})"


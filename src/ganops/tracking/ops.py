"""What a :class:`~ganops.tracking.Tracker` buffers, and the MLflow request each buffered item becomes.

Items (metric points, params, tags, artifacts, the run's end) wait as ops in the tracker's buffer; the counts say
what is pending or was dropped; the limits say how much is kept while MLflow is away. The functions at the end
are the tracker's MLflow requests: find or create the experiment, find the run to continue, send one batch.
"""

from __future__ import annotations

import logging
import posixpath
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ganops import contracts
from ganops.tracking.connection import _quote
from ganops.tracking.errors import _already_exists, _not_found

_LOG = logging.getLogger(__name__)

RESUMABLE_STATUSES = ("RUNNING", "FINISHED")
_MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit


@dataclass
class TrackingCounts:
    """Items waiting to be sent (:meth:`Tracker.pending`) or given up on (:attr:`Tracker.dropped`)."""

    metric_points: int = 0
    params: int = 0
    tags: int = 0
    artifacts: int = 0
    artifact_bytes: int = 0
    other: int = 0  # run status changes

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        """``"12 metric points, 1 artifact (3.2 KB)"``; ``"nothing"`` when empty."""
        parts: list[str] = []
        for count, noun in (
            (self.metric_points, "metric point"),
            (self.params, "param"),
            (self.tags, "tag"),
            (self.artifacts, "artifact"),
            (self.other, "status change"),
        ):
            if count:
                parts.append(f"{count} {noun}{'' if count == 1 else 's'}")
                if noun == "artifact":
                    parts[-1] += f" ({self.artifact_bytes / 1024:.1f} KB)"
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class BufferLimits:
    """What a tracker keeps while MLflow is away. Past a limit the oldest items of that kind are dropped."""

    max_metric_points: int = 10_000
    max_artifact_bytes: int = 64 * 1024 * 1024
    max_other_ops: int = 1_000  # param and tag batches, status changes


@dataclass(eq=False)  # identity: the buffer removes exact items
class _Op:
    def count_into(self, counts: TrackingCounts) -> None:
        raise NotImplementedError


@dataclass(eq=False)  # identity: the buffer removes exact items
class _MetricsOp(_Op):
    points: list[tuple[str, float, int, int]]  # key, value, timestamp ms, step
    solo: bool = False  # sent alone (after a merged batch was refused, to find the bad op)

    def count_into(self, counts: TrackingCounts) -> None:
        counts.metric_points += len(self.points)


@dataclass(eq=False)  # identity: the buffer removes exact items
class _ParamsOp(_Op):
    params: dict[str, str]

    def count_into(self, counts: TrackingCounts) -> None:
        counts.params += len(self.params)


@dataclass(eq=False)  # identity: the buffer removes exact items
class _TagsOp(_Op):
    tags: dict[str, str]

    def count_into(self, counts: TrackingCounts) -> None:
        counts.tags += len(self.tags)


@dataclass(eq=False)  # identity: the buffer removes exact items
class _ArtifactOp(_Op):
    data: bytes
    path: str

    def count_into(self, counts: TrackingCounts) -> None:
        counts.artifacts += 1
        counts.artifact_bytes += len(self.data)


@dataclass(eq=False)  # identity: the buffer removes exact items
class _FinishOp(_Op):
    status: str
    end_time_ms: int

    def count_into(self, counts: TrackingCounts) -> None:
        counts.other += 1


def _kind(op: _Op) -> tuple[str, int]:
    """Which buffer limit ``op`` counts against, and how much of it."""
    if isinstance(op, _MetricsOp):
        return "points", len(op.points)
    if isinstance(op, _ArtifactOp):
        return "bytes", len(op.data)
    return "other", 1


_VALID_KEY = re.compile(r"[/\w.\- :]+")


def _valid_key(key: str) -> bool:
    """MLflow's rule for metric, param and tag names (checked here so one bad key cannot sink a batch)."""
    return (
        len(key) <= 250
        and _VALID_KEY.fullmatch(key) is not None
        and posixpath.normpath(key) == key
        and not key.startswith(("..", "/"))
    )


def _check_artifact_path(artifact_path: str) -> str:
    path = artifact_path.replace("\\", "/").strip()
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"artifact_path must be a relative path like 'samples/step-000500.png', got {artifact_path!r}")
    return path


# ------------------------------------------------------------------------------------------------ MLflow requests


def ensure_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return str(client.create_experiment(name, artifact_location=artifact_location))
        except Exception as exc:
            if not _already_exists(exc):
                raise
            experiment = client.get_experiment_by_name(name)  # created concurrently
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return str(experiment.experiment_id)


def find_run(client: Any, experiment_id: str, requested_run_id: str | None, tags: Mapping[str, str]) -> Any:
    job = tags.get(contracts.TAG_JOB)
    if requested_run_id:
        try:
            run = client.get_run(requested_run_id)
        except Exception as exc:
            if not _not_found(exc):
                raise
            _LOG.warning("MLflow run %s not found; looking for the job's run instead", requested_run_id)
        else:
            if run.info.lifecycle_stage != "deleted":
                return run
            _LOG.warning("MLflow run %s was deleted; starting another", requested_run_id)
    if not job:
        return None
    filters = [f"tags.`{contracts.TAG_JOB}` = '{_quote(job)}'"]
    uid = tags.get(contracts.TAG_JOB_UID)
    if uid:
        filters.append(f"tags.`{contracts.TAG_JOB_UID}` = '{_quote(uid)}'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=" and ".join(filters),
        max_results=50,
        order_by=["attributes.start_time DESC"],
    )
    return next((run for run in runs if run.info.status in RESUMABLE_STATUSES), None)


def send_batch(client: Any, run_id: str | None, batch: list[_Op], known_params: Callable[[], dict[str, str]]) -> None:
    """One batch as one MLflow request. ``known_params()`` gives the run's params (read once, then kept up to date
    here): params are immutable in MLflow, so keys already on the run are skipped."""
    from mlflow.entities import Metric, Param, RunTag

    head = batch[0]
    if isinstance(head, _MetricsOp):
        metrics = [
            Metric(key, value, ts, step)
            for op in batch
            if isinstance(op, _MetricsOp)
            for key, value, ts, step in op.points
        ]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif isinstance(head, _ParamsOp):
        known = known_params()
        new = {k: v for k, v in head.params.items() if k not in known}
        conflicts = sorted(k for k, v in head.params.items() if k in known and known[k] != v)
        if conflicts:
            _LOG.warning(
                "MLflow params are immutable: %d changed value(s) not logged on run %s (%s)",
                len(conflicts),
                run_id,
                ", ".join(conflicts[:10]) + (" …" if len(conflicts) > 10 else ""),
            )
        if new:
            client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()], synchronous=True)
            known.update(new)
    elif isinstance(head, _TagsOp):
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in head.tags.items()], synchronous=True)
    elif isinstance(head, _ArtifactOp):
        directory, name = posixpath.split(head.path)
        with tempfile.TemporaryDirectory(prefix="ganops-artifact-") as tmp:
            local = Path(tmp) / name
            local.write_bytes(head.data)
            client.log_artifact(run_id, str(local), artifact_path=directory or None)
    elif isinstance(head, _FinishOp):
        client.set_terminated(run_id, status=head.status, end_time=head.end_time_ms)
    else:  # pragma: no cover
        raise TypeError(f"unknown op {head!r}")


__all__ = ["BufferLimits", "TrackingCounts"]

"""MLflow access for the whole platform: one run per job, lineage tags, and the model registry.

Two kinds of callers, two failure policies:

* **Training-time logging** (:class:`Tracker`) never stops or slows training. Every call appends to a bounded
  in-memory buffer and returns at once; one background thread per tracker sends the buffer in order, with
  backoff. When MLflow is unreachable the tracker turns *degraded*: it logs one warning, keeps buffering (dropping
  the oldest items past the limits, counted in :attr:`Tracker.dropped`), retries every few seconds and sends
  everything in order once the server answers again. Even :meth:`Tracker.open` does not need the server: the run
  is created or resumed when the server comes back.

* **Registry calls** (:func:`register_version`, :func:`get_alias`, …) are used by promotion and serving, which
  need an answer: they retry briefly and then raise :class:`TrackingUnavailable`.

Only :class:`mlflow.MlflowClient` is used (never the fluent ``mlflow.start_run`` state), so a process may hold
several trackers. Credentials reach MLflow only through its own environment variables
(``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``); every message this module writes is redacted.

On first use this module sets process-wide defaults for MLflow's HTTP client unless already set in the
environment: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` (retries are ours, so an outage is noticed at once),
``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` and ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import importlib.metadata
import json
import logging
import os
import posixpath
import re
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from ganops.api.spec import GanTrainingJob, GanTrainingJobSpec, spec_hash

_LOG = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ tag names

JOB_TAG = "ganops.job"  # "<namespace>/<name>": how a job finds its run again
JOB_UID_TAG = "ganops.jobUid"  # Kubernetes UID: set it to keep a re-created job with the same name apart
SPEC_HASH_TAG = "ganops.specHash"
DATASET_DIGEST_TAG = "ganops.datasetDigest"
GIT_COMMIT_TAG = "ganops.gitCommit"
IMAGE_TAG = "ganops.image"
VERSION_TAG_PREFIX = "ganops.version."
CHECKPOINT_URI_TAG = "ganops.checkpoint_uri"  # on model versions: where the weights are
MLFLOW_GIT_COMMIT_TAG = "mlflow.source.git.commit"  # shown by the MLflow UI

REGISTRY_EXPERIMENT = "ganops-registry"  # holds pointer runs for local checkpoints registered without a run
RESUMABLE_STATUSES = ("RUNNING", "FINISHED")
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

MAX_PARAM_VALUE_CHARS = 6000  # MLflow's limit for a param value
_MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit

_MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
_SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
)

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ errors


class TrackingError(Exception):
    """MLflow refused a request (bad argument, missing model or version, permission): retrying will not help."""


class TrackingUnavailable(TrackingError):
    """MLflow did not answer (down, unreachable, timing out, 5xx) after a few quick retries."""


# ------------------------------------------------------------------------------------------------ small helpers


def _configure_mlflow_env() -> None:
    for name, value in _MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_QUERY = re.compile(r"(?i)\b((?:access_?token|token|password|passwd|secret|api_?key|signature)=)[^&\s'\"]+")


def redact(text: str) -> str:
    """``text`` without credentials: URL user-info, secret query parameters and values of known secret env vars."""
    text = _USERINFO.sub("***@", text)
    text = _SECRET_QUERY.sub(r"\1***", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _short(exc: BaseException, limit: int = 300) -> str:
    """One redacted line describing ``exc`` (MLflow's messages can carry pages of advice)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an MLflow or requests error stands for; None for transport failures (refused, reset,
    DNS, timeout), which MLflow's client wraps as plain INTERNAL_ERROR exceptions."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    try:
        from mlflow.exceptions import ERROR_CODE_TO_HTTP_STATUS, MlflowException, RestException
    except ImportError:  # pragma: no cover - mlflow is an extra
        return None
    if not isinstance(exc, MlflowException):
        return None
    if not isinstance(exc, RestException):
        message = str(exc)
        if message.startswith("API request to") and (
            " failed with exception " in message or " failed with timeout exception " in message
        ):
            return None
    code = _error_code(exc)
    return ERROR_CODE_TO_HTTP_STATUS.get(code, 500) if code else 500


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, str) else None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying later may succeed: transport failures, timeouts, 5xx, 429, and auth failures (401/403: a
    rotated Secret is picked up by the next attempt; discarding data because a token expired would be worse).
    Anything else (4xx, or a non-I/O error such as a TypeError) will fail again the same way."""
    if _error_code(exc) == "ENDPOINT_NOT_FOUND":  # a proxy in front of a server that is still starting
        return True
    status = _http_status(exc)
    if status is None:
        return isinstance(exc, OSError | TimeoutError) or _error_code(exc) is not None
    return status >= 500 or status in (401, 403, 408, 429)


def _not_found(exc: BaseException) -> bool:
    return _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"


def _already_exists(exc: BaseException) -> bool:
    return _error_code(exc) == "RESOURCE_ALREADY_EXISTS"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _client(tracking_uri: str) -> Any:
    _configure_mlflow_env()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# ------------------------------------------------------------------------------------------------ spec → params, tags


def job_key(namespace: str | None, name: str) -> str:
    """The value of the ``ganops.job`` tag: ``<namespace>/<name>`` (namespace ``default`` when unset)."""
    return f"{namespace or 'default'}/{name}"


def _as_spec(spec: GanTrainingJob | GanTrainingJobSpec) -> GanTrainingJobSpec:
    return spec.spec if isinstance(spec, GanTrainingJob) else spec


def flatten_spec(spec: GanTrainingJob | GanTrainingJobSpec) -> dict[str, str]:
    """The spec as MLflow params: dotted camelCase wire names (``model.latentDim``) → string values.

    Unset (null) fields and empty maps are left out; lists are JSON (``optimizer.betas`` → ``[0.5, 0.999]``);
    booleans are ``true``/``false`` as in the job file. Values longer than MLflow's limit are truncated.
    """
    wire = _as_spec(spec).model_dump(mode="json", by_alias=True)
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
            return
        if value is None:
            return
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        flat[prefix] = text[:MAX_PARAM_VALUE_CHARS]

    walk("", wire)
    return flat


def _git_commit() -> str | None:
    commit = os.environ.get("GANOPS_GIT_COMMIT", "").strip()
    if commit:
        return commit
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return out if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", out) else None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def lineage_tags(
    spec: GanTrainingJob | GanTrainingJobSpec,
    dataset_digest: str | None = None,
    image: str | None = None,
    *,
    job: str | None = None,
) -> dict[str, str]:
    """Run tags that say where a run's weights came from.

    ``ganops.job`` (from ``job``, else a :class:`GanTrainingJob`'s metadata), ``ganops.specHash``,
    ``ganops.datasetDigest``, ``ganops.gitCommit`` (env ``GANOPS_GIT_COMMIT``, else ``git rev-parse HEAD`` when
    run inside a repository; also as ``mlflow.source.git.commit``), ``ganops.version.{ganops,torch,mlflow}``
    (installed distributions, without importing them) and ``ganops.image`` (``image``, else env ``GANOPS_IMAGE``,
    else the spec's ``resources.image``). Unknown values are left out, never set to a placeholder.
    """
    tags: dict[str, str] = {}
    if job is None and isinstance(spec, GanTrainingJob):
        job = job_key(spec.metadata.namespace, spec.metadata.name)
    if job:
        tags[JOB_TAG] = job
    tags[SPEC_HASH_TAG] = spec_hash(spec)
    if dataset_digest:
        tags[DATASET_DIGEST_TAG] = dataset_digest
    commit = _git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
        tags[MLFLOW_GIT_COMMIT_TAG] = commit
    for package in ("ganops", "torch", "mlflow"):
        version = _package_version(package)
        if version:
            tags[VERSION_TAG_PREFIX + package] = version
    image = image or os.environ.get("GANOPS_IMAGE") or _as_spec(spec).resources.image
    if image:
        tags[IMAGE_TAG] = image
    return tags


# ------------------------------------------------------------------------------------------------ buffered ops


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


# ------------------------------------------------------------------------------------------------ Tracker


class Tracker:
    """One MLflow run per job, tolerant of MLflow outages. Create with :meth:`open`.

    All logging methods return immediately (they only append to the buffer); a background thread sends the
    buffer in order. Call :meth:`flush` at checkpoints and :meth:`finish` (or :meth:`close`) at the end.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None,
        run_id: str | None,
        tags: Mapping[str, str],
        *,
        artifact_location: str | None = None,
        limits: BufferLimits | None = None,
        retry_interval: float = 10.0,
        min_retry_interval: float = 0.5,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        self.run_name = run_name
        self.limits = limits or BufferLimits()
        self._requested_run_id = run_id
        self._tags = {str(k): str(v) for k, v in tags.items() if _valid_key(str(k))}
        for bad in sorted(set(map(str, tags)) - set(self._tags)):
            _LOG.warning("Not set on the MLflow run: tag name %r is not valid in MLflow", bad)
        self._artifact_location = artifact_location
        self._max_retry = max(retry_interval, min_retry_interval)
        self._min_retry = min_retry_interval
        self._flush_retry = min(0.25, min_retry_interval)
        self._display_uri = redact(tracking_uri)

        self._cond = threading.Condition()
        self._ops: collections.deque[_Op] = collections.deque()
        self._in_flight: list[_Op] = []
        self._used = {"points": 0, "bytes": 0, "other": 0}  # buffered amounts, in-flight included
        self._dropped = TrackingCounts()
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._resolved = False
        self._resumed = False
        self._disabled_reason: str | None = None
        self._degraded = False
        self._attempts = 0  # finished send attempts (success or failure): lets open() wait for the first one
        self._next_attempt = 0.0
        self._backoff = self._min_retry
        self._last_attempt = 0.0
        self._flush_waiters = 0
        self._closed = False
        self._close_result = False
        self._overflow_warned = False
        self._warned_permanent: set[str] = set()
        self._known_params: dict[str, str] | None = None
        self._client: Any = None
        self._thread = threading.Thread(target=self._worker, name="ganops-mlflow", daemon=True)

    # --------------------------------------------------------------------------------------- construction

    @classmethod
    def open(
        cls,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        open_timeout: float | None = None,
        artifact_location: str | None = None,
        limits: BufferLimits | None = None,
        retry_interval: float = 10.0,
    ) -> Tracker:
        """Open the job's run: resume ``run_id`` if given (the id stored in the checkpoint manifest); else continue
        the newest RUNNING/FINISHED run of the experiment tagged ``ganops.job`` (and ``ganops.jobUid``, when
        ``tags`` has one) with the same value; else create a run. The experiment is created when missing (with
        ``artifact_location`` if given). ``tags`` are set on the run, new or resumed.

        Waits at most ``open_timeout`` seconds for the server (default 5 s for http(s) URIs; 120 s for a local
        store such as ``sqlite:///…``, whose first use creates the database). If it does not answer, the returned
        tracker is degraded (``run_id`` is None) and opens the run once the server is back; logging works
        meanwhile (a trainer resuming a run should keep the run id it already has while ``run_id`` is None).
        A resumed run that had ended is set back to RUNNING.
        """
        tracker = cls(
            tracking_uri,
            experiment,
            run_name,
            run_id,
            tags or {},
            artifact_location=artifact_location,
            limits=limits,
            retry_interval=retry_interval,
        )
        tracker._thread.start()
        _LIVE.add(tracker)
        if open_timeout is None:
            remote = urllib.parse.urlparse(tracking_uri).scheme in ("http", "https")
            open_timeout = 5.0 if remote else 120.0
        deadline = time.monotonic() + open_timeout
        with tracker._cond:
            while not tracker._resolved and tracker._attempts == 0 and tracker._disabled_reason is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                tracker._cond.wait(remaining)
        return tracker

    # --------------------------------------------------------------------------------------- state

    @property
    def run_id(self) -> str | None:
        """The run's id once known (None while a tracker opened during an outage waits for the server)."""
        with self._cond:
            return self._run_id

    @property
    def experiment_id(self) -> str | None:
        with self._cond:
            return self._experiment_id

    @property
    def resumed(self) -> bool:
        """Whether the run existed before this tracker opened it."""
        with self._cond:
            return self._resumed

    @property
    def degraded(self) -> bool:
        """True while MLflow is unreachable (the last attempt failed) and items wait in the buffer."""
        with self._cond:
            return self._degraded

    @property
    def dropped(self) -> TrackingCounts:
        """What could not be logged: buffer overflow during an outage, items MLflow rejected, items left at close."""
        with self._cond:
            return TrackingCounts(**{f.name: getattr(self._dropped, f.name) for f in fields(TrackingCounts)})

    def pending(self) -> TrackingCounts:
        """What is buffered and not yet confirmed by the server (in-flight items included)."""
        counts = TrackingCounts()
        with self._cond:
            for op in (*self._in_flight, *self._ops):
                op.count_into(counts)
        return counts

    def report(self) -> str | None:
        """``"120 metric points, 1 artifact (2.0 KB) could not be logged to MLflow"``, or None if nothing was lost."""
        dropped = self.dropped
        return None if dropped.empty else f"{dropped.describe()} could not be logged to MLflow"

    # --------------------------------------------------------------------------------------- logging API

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (e.g. :func:`flatten_spec`). Keys already on the run are skipped (params are immutable in
        MLflow, and a resumed run has them); a key whose logged value differs is kept and reported once."""
        clean = {k: str(v)[:MAX_PARAM_VALUE_CHARS] for k, v in params.items() if self._accept_key(str(k), "param")}
        if clean:
            self._enqueue(_ParamsOp(clean))

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Log one value per key at ``step`` (sent in batches; the time of this call is kept)."""
        ts = _now_ms() if timestamp_ms is None else timestamp_ms
        points: list[tuple[str, float, int, int]] = []
        for key, value in metrics.items():
            if not self._accept_key(str(key), "metric point"):
                continue
            try:
                points.append((str(key), float(value), ts, int(step)))
            except (TypeError, ValueError):
                self._reject("metric point", f"metric {key!r}: value {value!r} or step {step!r} is not a number")
        if points:
            self._enqueue(_MetricsOp(points))

    def log_artifact_bytes(self, data: bytes, artifact_path: str) -> None:
        """Store ``data`` as the run artifact ``artifact_path`` (e.g. ``samples/step-000500.png``)."""
        self._enqueue(_ArtifactOp(bytes(data), _check_artifact_path(artifact_path)))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (mutable: a later value replaces an earlier one)."""
        clean = {str(k): str(v) for k, v in tags.items() if self._accept_key(str(k), "tag")}
        if clean:
            self._enqueue(_TagsOp(clean))

    def flush(self, timeout: float = 10.0) -> bool:
        """Try to send everything now; wait up to ``timeout`` seconds. True when the buffer is empty (and the run
        open). While MLflow is down this returns False after ``timeout`` without losing anything."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                while not self._idle():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed or not self._thread.is_alive():
                        return False
                    self._cond.wait(min(remaining, 0.5))
                return self._disabled_reason is None
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float = 30.0) -> bool:
        """Flush (up to ``timeout`` s) and stop the background thread, leaving the run's status as it is (what a
        preempted trainer does: the next attempt resumes the run). Whatever could not be sent is added to
        :attr:`dropped` and reported in one warning. Returns whether the buffer was emptied (items refused
        earlier are in :attr:`dropped` either way); calling it again returns the first answer."""
        with self._cond:
            if self._closed:
                return self._close_result
        delivered = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._close_result = delivered
            for op in (*self._in_flight, *self._ops):
                op.count_into(self._dropped)
            self._in_flight.clear()
            self._ops.clear()
            self._used = {"points": 0, "bytes": 0, "other": 0}
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
        message = self.report()
        if message:
            _LOG.warning("%s (tracking server %s)", message, self._display_uri)
        return delivered

    def finish(self, status: RunStatus = "FINISHED", timeout: float = 30.0) -> bool:
        """End the run with ``status`` (FINISHED, FAILED or KILLED) after everything buffered, then :meth:`close`."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(TERMINAL_STATUSES)}, got {status!r}")
        self._enqueue(_FinishOp(status, _now_ms()))
        return self.close(timeout)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Leaving the block closes the tracker; it does not end the run (call :meth:`finish` for that)."""
        self.close()

    # --------------------------------------------------------------------------------------- buffer

    def _accept_key(self, key: str, kind: Literal["metric point", "param", "tag"]) -> bool:
        if _valid_key(key):
            return True
        rule = "letters, digits, '_', '-', '.', ' ', ':', '/'; at most 250"
        self._reject(kind, f"{kind} name {key!r} is not valid in MLflow ({rule})")
        return False

    def _reject(self, kind: Literal["metric point", "param", "tag"], message: str) -> None:
        """Drop one item the caller got wrong: counted in ``dropped``, one warning per distinct message."""
        with self._cond:
            if kind == "metric point":
                self._dropped.metric_points += 1
            elif kind == "param":
                self._dropped.params += 1
            else:
                self._dropped.tags += 1
            first = message not in self._warned_permanent
            self._warned_permanent.add(message)
        if first:
            _LOG.warning("Not logged to MLflow: %s", message)

    def _idle(self) -> bool:
        return (self._resolved or self._disabled_reason is not None) and not self._ops and not self._in_flight

    def _enqueue(self, op: _Op) -> None:
        with self._cond:
            if self._closed or self._disabled_reason is not None:
                op.count_into(self._dropped)
                return
            kind, size = _kind(op)
            limit = self._limit(kind)
            if size > limit and not isinstance(op, _FinishOp):
                op.count_into(self._dropped)  # cannot fit even alone
                self._warn_overflow()
                return
            while self._used[kind] + size > limit:  # drop the oldest queued items of this kind (never in-flight)
                victim = next((o for o in self._ops if _kind(o)[0] == kind and not isinstance(o, _FinishOp)), None)
                if victim is None:
                    break
                self._ops.remove(victim)
                self._used[kind] -= _kind(victim)[1]
                victim.count_into(self._dropped)
                self._warn_overflow()
            if self._used[kind] + size > limit and not isinstance(op, _FinishOp):
                op.count_into(self._dropped)
                self._warn_overflow()
                return
            self._used[kind] += size
            self._ops.append(op)
            self._cond.notify_all()

    def _limit(self, kind: str) -> int:
        if kind == "points":
            return self.limits.max_metric_points
        if kind == "bytes":
            return self.limits.max_artifact_bytes
        return self.limits.max_other_ops

    def _release(self, ops: list[_Op]) -> None:
        for op in ops:
            kind, size = _kind(op)
            self._used[kind] -= size

    def _warn_overflow(self) -> None:
        if not self._overflow_warned:
            self._overflow_warned = True
            _LOG.warning(
                "MLflow buffer full (%s): dropping the oldest items; the total is reported at the end",
                f"{self.limits.max_metric_points} metric points / {self.limits.max_artifact_bytes} artifact bytes",
            )

    # --------------------------------------------------------------------------------------- worker

    def _retry_delay(self) -> float:
        """Seconds to wait before the next attempt (0: go)."""
        if not self._degraded:
            return 0.0
        now = time.monotonic()
        if self._flush_waiters:
            return max(0.0, min(self._next_attempt, self._last_attempt + self._flush_retry) - now)
        return max(0.0, self._next_attempt - now)

    def _take(self) -> list[_Op] | None:
        """The next unit of work, moved to in-flight: None means "open the run first"."""
        if not self._resolved:
            return None
        head = self._ops[0]
        batch: list[_Op] = [head]
        if isinstance(head, _MetricsOp) and not head.solo:
            total = len(head.points)
            for op in list(self._ops)[1:]:
                if not isinstance(op, _MetricsOp) or op.solo or total + len(op.points) > _MAX_METRICS_PER_REQUEST:
                    break
                batch.append(op)
                total += len(op.points)
        for _ in batch:
            self._ops.popleft()
        self._in_flight = batch
        return batch

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    has_work = self._disabled_reason is None and (not self._resolved or bool(self._ops))
                    if has_work:
                        delay = self._retry_delay()
                        if delay <= 0:
                            break
                        self._cond.wait(delay)
                    else:
                        self._cond.wait()
                batch = self._take()
            try:
                if batch is None:
                    self._open_run()
                else:
                    self._send(batch)
            except Exception as exc:  # every failure is either retried or counted
                self._failed(batch, exc)
            else:
                self._succeeded(batch)

    def _succeeded(self, batch: list[_Op] | None) -> None:
        with self._cond:
            self._attempts += 1
            self._last_attempt = time.monotonic()
            if batch is not None and not self._closed:
                self._release(batch)
                self._in_flight = []
            if self._degraded:
                self._degraded = False
                self._overflow_warned = False
                _LOG.warning(
                    "MLflow at %s is reachable again; sending %s buffered",
                    self._display_uri,
                    self._pending_describe_locked(),
                )
            self._backoff = self._min_retry
            self._cond.notify_all()

    def _pending_describe_locked(self) -> str:
        counts = TrackingCounts()
        for op in (*self._in_flight, *self._ops):
            op.count_into(counts)
        return counts.describe()

    def _failed(self, batch: list[_Op] | None, exc: Exception) -> None:
        transient = is_transient(exc)
        with self._cond:
            self._attempts += 1
            self._last_attempt = time.monotonic()
            if self._closed:
                return
            if transient:
                if batch is not None:  # back to the front, order kept
                    self._ops.extendleft(reversed(batch))
                    self._in_flight = []
                if not self._degraded:
                    self._degraded = True
                    _LOG.warning(
                        "MLflow at %s is unreachable (%s); training continues, logging is buffered and retried "
                        "every %.0f s at most",
                        self._display_uri,
                        _short(exc),
                        self._max_retry,
                    )
                else:
                    _LOG.debug("MLflow still unreachable: %s", _short(exc))
                self._next_attempt = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, self._max_retry)
            elif batch is None:
                self._disabled_reason = _short(exc)
                for op in self._ops:
                    op.count_into(self._dropped)
                self._ops.clear()
                self._used = {"points": 0, "bytes": 0, "other": 0}
                _LOG.error(
                    "MLflow at %s refused to open the run (%s); nothing will be logged for this job",
                    self._display_uri,
                    self._disabled_reason,
                )
            elif len(batch) > 1:  # a merged metrics batch was refused: resend its parts one by one
                for op in batch:
                    if isinstance(op, _MetricsOp):
                        op.solo = True
                self._ops.extendleft(reversed(batch))
                self._in_flight = []
            else:
                self._release(batch)
                for op in batch:
                    op.count_into(self._dropped)
                self._in_flight = []
                kind = type(batch[0]).__name__.strip("_").removesuffix("Op").lower()
                message = _short(exc)
                if kind not in self._warned_permanent:
                    self._warned_permanent.add(kind)
                    _LOG.warning("MLflow rejected %s (%s); dropped, see the report at the end", kind, message)
                else:
                    _LOG.debug("MLflow rejected %s: %s", kind, message)
            self._cond.notify_all()

    # --------------------------------------------------------------------------------------- MLflow calls

    def _mlflow(self) -> Any:
        if self._client is None:
            self._client = _client(self.tracking_uri)
        return self._client

    def _ensure_experiment(self, client: Any) -> str:
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            try:
                return str(client.create_experiment(self.experiment_name, artifact_location=self._artifact_location))
            except Exception as exc:
                if not _already_exists(exc):
                    raise
                experiment = client.get_experiment_by_name(self.experiment_name)  # created concurrently
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)

    def _find_run(self, client: Any, experiment_id: str) -> Any:
        job = self._tags.get(JOB_TAG)
        if self._requested_run_id:
            try:
                run = client.get_run(self._requested_run_id)
            except Exception as exc:
                if not _not_found(exc):
                    raise
                _LOG.warning("MLflow run %s not found; looking for the job's run instead", self._requested_run_id)
            else:
                if run.info.lifecycle_stage != "deleted":
                    return run
                _LOG.warning("MLflow run %s was deleted; starting another", self._requested_run_id)
        if not job:
            return None
        filters = [f"tags.`{JOB_TAG}` = '{_quote(job)}'"]
        uid = self._tags.get(JOB_UID_TAG)
        if uid:
            filters.append(f"tags.`{JOB_UID_TAG}` = '{_quote(uid)}'")
        runs = client.search_runs(
            [experiment_id],
            filter_string=" and ".join(filters),
            max_results=50,
            order_by=["attributes.start_time DESC"],
        )
        return next((run for run in runs if run.info.status in RESUMABLE_STATUSES), None)

    def _open_run(self) -> None:
        from mlflow.entities import RunTag

        client = self._mlflow()
        experiment_id = self._ensure_experiment(client)
        run = self._find_run(client, experiment_id)
        if run is None:
            run = client.create_run(experiment_id, tags=dict(self._tags), run_name=self.run_name)
            resumed = False
        else:
            resumed = True
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            if self._tags:
                client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in self._tags.items()], synchronous=True)
        with self._cond:
            self._run_id = str(run.info.run_id)
            self._experiment_id = str(run.info.experiment_id)
            self._resumed = resumed
            self._resolved = True
            self._known_params = None
        _LOG.info("MLflow run %s %s (experiment %s)", self._run_id, "resumed" if resumed else "created", experiment_id)

    def _send(self, batch: list[_Op]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self._mlflow()
        run_id = self._run_id
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
            if self._known_params is None:
                self._known_params = dict(client.get_run(run_id).data.params)
            known = self._known_params
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


_LIVE: weakref.WeakSet[Tracker] = weakref.WeakSet()
_EXIT_FLUSH_S = 2.0


@atexit.register
def _close_live_trackers() -> None:
    """Safety net for a process that exits without finish()/close(): a short last flush, and the report."""
    for tracker in list(_LIVE):
        with contextlib.suppress(Exception):
            tracker.close(_EXIT_FLUSH_S)


def _quote(value: str) -> str:
    """A value for an MLflow search filter's single-quoted string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


# ------------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered model version, as promotion and serving see it."""

    name: str
    version: str
    source: str  # what MLflow stores: the checkpoint URI, or a runs:/ pointer for local (file://) checkpoints
    checkpoint_uri: str  # where the weights are (tag ganops.checkpoint_uri, else source)
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    created_at_ms: int = 0


def _version_info(mv: Any, aliases: Mapping[str, str] | None = None) -> ModelVersionInfo:
    tags = {str(k): str(v) for k, v in (mv.tags or {}).items()}
    version = str(mv.version)
    if aliases is not None:
        names = tuple(sorted(a for a, v in aliases.items() if str(v) == version))
    else:
        names = tuple(sorted(mv.aliases or ()))
    return ModelVersionInfo(
        name=str(mv.name),
        version=version,
        source=str(mv.source or ""),
        checkpoint_uri=tags.get(CHECKPOINT_URI_TAG) or str(mv.source or ""),
        tags=tags,
        run_id=str(mv.run_id) if mv.run_id else None,
        aliases=names,
        description=str(mv.description or ""),
        created_at_ms=int(mv.creation_timestamp or 0),
    )


def _registry_call(tracking_uri: str, what: str, fn: Callable[[], T], attempts: int = 3, budget_s: float = 5.0) -> T:
    """Run ``fn``; retry transient errors briefly (``attempts`` tries, none that would likely end after
    ``budget_s`` seconds, so a hung server costs about one HTTP timeout); map failures to TrackingUnavailable /
    TrackingError."""
    start = time.monotonic()
    delay = 0.2
    for attempt in range(1, attempts + 1):
        tried = time.monotonic()
        try:
            return fn()
        except TrackingError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise TrackingError(f"MLflow at {redact(tracking_uri)} refused to {what}: {_short(exc)}") from None
            now = time.monotonic()
            if attempt == attempts or (now - start) + delay + (now - tried) > budget_s:  # next try would overrun
                raise TrackingUnavailable(
                    f"MLflow at {redact(tracking_uri)} is unavailable ({_short(exc)}); could not {what}"
                ) from None
            time.sleep(delay)
            delay *= 2.5
    raise AssertionError("unreachable")  # pragma: no cover


def _is_local_uri(uri: str) -> bool:
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and uri[1:3] in (":\\", ":/"))  # Windows drive


def _pointer_run(client: Any) -> str:
    experiment = client.get_experiment_by_name(REGISTRY_EXPERIMENT)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(REGISTRY_EXPERIMENT)
        except Exception as exc:
            if not _already_exists(exc):
                raise
            experiment_id = client.get_experiment_by_name(REGISTRY_EXPERIMENT).experiment_id
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(str(experiment_id), run_name="checkpoint pointers", tags={"ganops.purpose": "pointer"})
    run_id = str(run.info.run_id)
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def register_version(
    tracking_uri: str,
    model_name: str,
    source_uri: str,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    description: str | None = None,
) -> str:
    """Register the checkpoint at ``source_uri`` as a new version of ``model_name`` (created when missing) and
    return the version number. The checkpoint URI is always kept as tag ``ganops.checkpoint_uri`` (read it as
    :attr:`ModelVersionInfo.checkpoint_uri`).

    MLflow accepts remote sources (``s3://…``) as they are, but a tracking server refuses local paths
    (``file://…``) unless they lie inside the run's artifacts. For those, a small JSON pointer
    (``ganops/checkpoint-pointers/<model>/<id>.json``) is logged into ``run_id`` (or into a pointer run in the
    ``ganops-registry`` experiment) and the version's source is ``runs:/<run>/<that path>``.

    Raises :class:`TrackingUnavailable` when MLflow does not answer, :class:`TrackingError` when it refuses.
    """
    client = _client(tracking_uri)
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    all_tags[CHECKPOINT_URI_TAG] = source_uri

    def create_model() -> None:
        try:
            client.create_registered_model(model_name)
        except Exception as exc:
            if not _already_exists(exc):
                raise

    _registry_call(tracking_uri, f"create registered model {model_name!r}", create_model)
    source = source_uri
    if _is_local_uri(source_uri):
        holder = run_id or _registry_call(tracking_uri, "create a pointer run", lambda: _pointer_run(client))
        directory = f"ganops/checkpoint-pointers/{model_name}"
        name = f"{uuid.uuid4().hex[:12]}.json"
        pointer = json.dumps({"checkpoint_uri": source_uri, "model": model_name, "tags": all_tags}, indent=2)

        def log_pointer() -> None:
            with tempfile.TemporaryDirectory(prefix="ganops-pointer-") as tmp:
                path = Path(tmp) / name
                path.write_text(pointer)
                client.log_artifact(holder, str(path), artifact_path=directory)

        _registry_call(tracking_uri, "log the checkpoint pointer", log_pointer)
        source = f"runs:/{holder}/{directory}/{name}"
        version_run_id: str | None = holder
    else:
        version_run_id = run_id

    mv = _registry_call(
        tracking_uri,
        f"create a version of {model_name!r}",
        lambda: client.create_model_version(
            model_name,
            source,
            run_id=version_run_id,
            tags=all_tags,
            description=description,
            await_creation_for=0,
        ),
    )
    return str(mv.version)


def get_version(tracking_uri: str, model_name: str, version: str) -> ModelVersionInfo | None:
    """One version, or None if the model or version does not exist."""
    client = _client(tracking_uri)

    def get() -> ModelVersionInfo | None:
        try:
            return _version_info(client.get_model_version(model_name, str(version)))
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    return _registry_call(tracking_uri, f"read {model_name!r} version {version}", get)


def set_alias(tracking_uri: str, model_name: str, alias: str, version: str) -> None:
    """Point ``model_name@alias`` at ``version`` (moving it if set; rollback is setting it back)."""
    client = _client(tracking_uri)
    _registry_call(
        tracking_uri,
        f"set alias {model_name}@{alias} to version {version}",
        lambda: client.set_registered_model_alias(model_name, alias, str(version)),
    )


def get_alias(tracking_uri: str, model_name: str, alias: str) -> ModelVersionInfo | None:
    """The version ``model_name@alias`` points at, or None if the model or the alias does not exist."""
    client = _client(tracking_uri)

    def get() -> ModelVersionInfo | None:
        try:
            model = client.get_registered_model(model_name)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise
        aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
        version = aliases.get(alias)
        if version is None:
            return None
        try:
            return _version_info(client.get_model_version(model_name, version), aliases)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    return _registry_call(tracking_uri, f"resolve {model_name}@{alias}", get)


def list_versions(tracking_uri: str, model_name: str) -> list[ModelVersionInfo]:
    """Every version of ``model_name``, oldest first, with their aliases; empty if the model does not exist."""
    client = _client(tracking_uri)

    def get() -> list[ModelVersionInfo]:
        try:
            model = client.get_registered_model(model_name)
        except Exception as exc:
            if _not_found(exc):
                return []
            raise
        aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
        found: list[Any] = []
        token: str | None = None
        while True:
            page = client.search_model_versions(f"name = '{_quote(model_name)}'", max_results=1000, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        infos = [_version_info(mv, aliases) for mv in found]
        return sorted(infos, key=lambda info: int(info.version) if info.version.isdigit() else 0)

    return _registry_call(tracking_uri, f"list versions of {model_name!r}", get)


def delete_alias(tracking_uri: str, model_name: str, alias: str) -> None:
    """Remove ``model_name@alias``; no error if the alias or the model does not exist."""
    client = _client(tracking_uri)

    def delete() -> None:
        try:
            client.delete_registered_model_alias(model_name, alias)
        except Exception as exc:
            if not _not_found(exc):
                raise

    _registry_call(tracking_uri, f"delete alias {model_name}@{alias}", delete)


def ping(tracking_uri: str, timeout: float = 5.0) -> bool:
    """Whether MLflow answers a cheap request within about ``timeout`` seconds (never raises)."""
    client = _client(tracking_uri)
    result: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(Exception):
            client.search_experiments(max_results=1)
            result.append(True)

    thread = threading.Thread(target=probe, daemon=True, name="ganops-mlflow-ping")
    thread.start()
    thread.join(timeout)
    return bool(result)


__all__ = [
    "CHECKPOINT_URI_TAG",
    "JOB_TAG",
    "JOB_UID_TAG",
    "BufferLimits",
    "ModelVersionInfo",
    "Tracker",
    "TrackingCounts",
    "TrackingError",
    "TrackingUnavailable",
    "delete_alias",
    "flatten_spec",
    "get_alias",
    "get_version",
    "is_transient",
    "job_key",
    "lineage_tags",
    "list_versions",
    "ping",
    "redact",
    "register_version",
    "set_alias",
    "spec_hash",
]

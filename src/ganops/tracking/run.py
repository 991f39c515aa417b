"""One MLflow run per job, tolerant of MLflow outages: the buffered :class:`Tracker`.

Training-time logging never stops or slows training. Every call appends to a bounded in-memory buffer and returns
at once; one background thread per tracker sends the buffer in order, with backoff. When MLflow is unreachable the
tracker turns *degraded*: it logs one warning, keeps buffering (dropping the oldest items past the limits, counted
in :attr:`Tracker.dropped`), retries every few seconds and sends everything in order once the server answers
again. Even :meth:`Tracker.open` does not need the server: the run is created or resumed when the server comes
back. Every message it writes is redacted.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import threading
import time
import urllib.parse
import weakref
from collections.abc import Mapping
from dataclasses import fields
from types import TracebackType
from typing import Any, Literal

from ganops.retry import RetryPolicy
from ganops.tracking import connection
from ganops.tracking.errors import _short, is_transient, redact
from ganops.tracking.lineage import MAX_PARAM_VALUE_CHARS
from ganops.tracking.ops import (
    _MAX_METRICS_PER_REQUEST,
    BufferLimits,
    TrackingCounts,
    _ArtifactOp,
    _check_artifact_path,
    _FinishOp,
    _kind,
    _MetricsOp,
    _Op,
    _ParamsOp,
    _TagsOp,
    _valid_key,
    ensure_experiment,
    find_run,
    send_batch,
)

_LOG = logging.getLogger(__name__)

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


def _now_ms() -> int:
    return int(time.time() * 1000)


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
        self._tags = {str(k): redact(str(v)) for k, v in tags.items() if _valid_key(str(k))}
        for bad in sorted(set(map(str, tags)) - set(self._tags)):
            _LOG.warning("Not set on the MLflow run: tag name %r is not valid in MLflow", bad)
        self._artifact_location = artifact_location
        self._max_retry = max(retry_interval, min_retry_interval)
        # The worker keeps its queue and retries until closed, so only the policy's schedule is used: the wait
        # after n transient failures in a row is min_retry_interval doubling up to retry_interval.
        self._retry_policy = RetryPolicy(
            base_delay=min_retry_interval, max_delay=self._max_retry, multiplier=2.0, jitter=False
        )
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
        self._failures = 0  # transient failures in a row
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
        clean = {k: redact(str(v))[:MAX_PARAM_VALUE_CHARS] for k, v in params.items()
                 if self._accept_key(str(k), "param")}
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
        """Set run tags (mutable: a later value replaces an earlier one); values are redacted."""
        clean = {str(k): redact(str(v)) for k, v in tags.items() if self._accept_key(str(k), "tag")}
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
            self._failures = 0  # transient failures in a row
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
                self._next_attempt = time.monotonic() + self._retry_policy.delay(self._failures)
                self._failures += 1
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
            self._client = connection.client(self.tracking_uri)
        return self._client

    def _open_run(self) -> None:
        from mlflow.entities import RunTag

        client = self._mlflow()
        experiment_id = ensure_experiment(client, self.experiment_name, self._artifact_location)
        run = find_run(client, experiment_id, self._requested_run_id, self._tags)
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
        send_batch(self._mlflow(), self._run_id, batch, self._params_on_run)

    def _params_on_run(self) -> dict[str, str]:
        """The run's params, read once per opened run and kept up to date by :func:`~ganops.tracking.ops.send_batch`."""
        if self._known_params is None:
            self._known_params = dict(self._mlflow().get_run(self._run_id).data.params)
        return self._known_params


_LIVE: weakref.WeakSet[Tracker] = weakref.WeakSet()
_EXIT_FLUSH_S = 2.0


@atexit.register
def _close_live_trackers() -> None:
    """Safety net for a process that exits without finish()/close(): a short last flush, and the report."""
    for tracker in list(_LIVE):
        with contextlib.suppress(Exception):
            tracker.close(_EXIT_FLUSH_S)


__all__ = ["TERMINAL_STATUSES", "RunStatus", "Tracker"]

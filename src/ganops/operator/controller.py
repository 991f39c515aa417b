"""The operator's I/O around the pure decisions of `reconcile.reconcile()`.

One loop per GanTrainingJob (a kopf daemon, `Runtime.run_job`) reconciles it whenever something relevant happens
- its spec or promotion annotations change, one of its Jobs or pods changes (kopf event handlers "kick" the loop),
a requested wake-up is due (deadline, TTL, promotion retry) - and every `GANOPS_OPERATOR_RESYNC_SECONDS` anyway
(latest.json, cost). Kicks coalesce: a burst of pod events costs one reconcile. One loop per job also means one
reconcile at a time per job, with no locks.

A reconcile (`Controller.reconcile`, in a worker thread) reads its inputs from memory - kopf's indexes of the Jobs
and pods labelled `ganops.io/job`, filled from watch streams before any handler runs - plus latest.json when it is
due, decides, executes the actions, then writes the status (a merge patch of what changed). The loop keeps the
status it last wrote: the operator is its only writer, so it is never misled by a watch event that lags behind.

The status is typed (`GanTrainingJobStatus`) from here inwards; this module converts at the edge: the wire dict
(camelCase) is read with `GanTrainingJobStatus.from_wire` and the decided status is written back with `to_wire`
(only the fields that were read or set), so the merge patch holds what changed and nothing else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ganops import storage
from ganops.api.loader import JobFileError, spec_from_object
from ganops.api.spec import GanTrainingJobSpec, GanTrainingJobStatus
from ganops.checkpoints import LatestRecord, RecordUnavailable, job_root, latest_uri, read_latest_record
from ganops.contracts import ANNOTATION_PROMOTE, ANNOTATION_ROLLBACK_TO, API_VERSION, KIND, PLURAL
from ganops.operator import children, conditions, metrics, progress, registry
from ganops.operator import reconcile as decide
from ganops.operator.conditions import FINISHED, Event
from ganops.operator.kube import Kube, KubeError
from ganops.operator.observe import JobView, PodView, format_time
from ganops.operator.plan import (
    Action,
    ClearAnnotation,
    DeleteJob,
    DeleteSelf,
    EnsureChildren,
    JobInput,
    Observed,
    Policy,
    Promote,
    Rollback,
    SyncJobFile,
)
from ganops.operator.registry import PromotionOutcome
from ganops.operator.settings import OperatorConfig
from ganops.retry import RetryPolicy

log = logging.getLogger(__name__)

Key = tuple[str, str]
# After a reconcile that raised, the job's loop waits `ERROR_BACKOFF.delay(failures - 1)`: 1 s, 2 s, 4 s, … capped
# at 60 s, retrying for as long as it fails (only the schedule is used: `attempts` does not apply to the loop). No
# jitter: the loops of different jobs already wake at different times, and the delays stay predictable.
ERROR_BACKOFF = RetryPolicy(base_delay=1.0, multiplier=2.0, max_delay=60.0, jitter=False)
PERMANENT_ERROR_SECONDS = 300.0
IDLE_FACTOR = 10  # finished jobs wake up every IDLE_FACTOR × resync (events wake them at once)


def utcnow() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns `old` into `new` (lists are replaced whole)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if before == value and key in old:
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        else:
            patch[key] = copy.deepcopy(value)
    return patch


@dataclass
class JobMemory:
    """What one job's loop remembers between reconciles."""

    status: dict[str, Any] | None = None  # on the wire, as last written (authoritative: the only writer)
    spec_generation: int | None = None
    spec: GanTrainingJobSpec | None = None
    problems: tuple[str, ...] = ()
    record_read_at: float | None = None  # monotonic
    failures: int = 0
    seen: tuple[Any, ...] | None = None  # (generation, promotion annotations) last reconciled
    launched: tuple[int, float] | None = None  # (attempt, monotonic time) of the last Job this loop created
    job_seen_attempt: int | None = None  # newest attempt whose Job the index has shown


@dataclass(frozen=True)
class Snapshot:
    """Everything one reconcile reads, copied out of kopf's live structures in the event loop."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: Any
    status: Mapping[str, Any]
    annotations: Mapping[str, str]
    labels: Mapping[str, str]
    jobs: tuple[JobView, ...] = ()
    pods: tuple[PodView, ...] = ()

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def seen(self) -> tuple[Any, ...]:
        return seen_key(self.generation, self.annotations)


def seen_key(generation: Any, annotations: Mapping[str, str]) -> tuple[Any, ...]:
    return (generation, annotations.get(ANNOTATION_PROMOTE), annotations.get(ANNOTATION_ROLLBACK_TO))


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    phase: str | None = None
    gone: bool = False


class Controller:
    """Reconciles one snapshot: validate, read latest.json when due, decide, act, write status (sync I/O)."""

    def __init__(self, config: OperatorConfig, kube: Kube, *, now: Callable[[], dt.datetime] = utcnow) -> None:
        self.config = config
        self.kube = kube
        self.now = now
        self.policy = Policy(
            warning_fraction=config.budget_warning_fraction,
            resync_seconds=config.resync_seconds,
            mlflow_uri=config.mlflow_uri,
        )
        self._s3: storage.S3Store | None = None
        self._file = storage.FileStore()

    # -------------------------------------------------------------------------------------------- inputs
    def _spec(self, snap: Snapshot, memory: JobMemory) -> tuple[GanTrainingJobSpec | None, tuple[str, ...]]:
        if memory.spec_generation != snap.generation or (memory.spec is None and not memory.problems):
            try:
                spec = spec_from_object(snap.spec if snap.spec is not None else {})
                problems = tuple(children.naming_problems(snap.name, spec))
                memory.spec, memory.problems = (None if problems else spec), problems
            except JobFileError as exc:
                memory.spec, memory.problems = None, tuple(exc.problems)
            memory.spec_generation = snap.generation
        return memory.spec, memory.problems

    def _store(self, uri: str) -> storage.ObjectStore:
        if storage.split_uri(uri).scheme == "s3":
            if self._s3 is None:
                self._s3 = storage.S3Store(retry=storage.RetryPolicy(attempts=2, base_delay=0.2), max_attempts=2,
                                           connect_timeout=3.0, read_timeout=10.0)
            return self._s3
        return self._file

    def _read_record(self, uri: str) -> tuple[LatestRecord | None, str | None]:
        try:
            return read_latest_record(self._store(uri), uri), None
        except (RecordUnavailable, storage.StorageError) as exc:
            return None, str(exc)

    # -------------------------------------------------------------------------------------------- reconcile
    def reconcile(self, snap: Snapshot, memory: JobMemory) -> Outcome:
        now = self.now()
        memory.seen = snap.seen
        spec, problems = self._spec(snap, memory)
        current = memory.status if memory.status is not None else dict(snap.status)
        job_view = _pick_job(snap.jobs, children.job_name(snap.name))
        if job_view is not None:
            memory.job_seen_attempt = max(memory.job_seen_attempt or 0, job_view.attempt)
        ckpt = children.checkpoint_uri(spec, self.config) if spec is not None else None
        status, dropped = GanTrainingJobStatus.salvage(current)
        if dropped:
            log.warning("%s/%s: status fields %s do not validate; they are rebuilt from what is observed",
                        snap.namespace, snap.name, ", ".join(dropped))
        job_input = JobInput(
            name=snap.name, namespace=snap.namespace, uid=snap.uid, generation=snap.generation, spec=spec,
            status=status, problems=problems, annotations=snap.annotations,
        )
        observed = Observed(job=job_view, pods=snap.pods, record_expected=ckpt is not None)
        since = None if memory.record_read_at is None else time.monotonic() - memory.record_read_at
        if ckpt is not None and progress.wants_record(job_input, observed, seconds_since_read=since,
                                                      policy=self.policy):
            record, error = self._read_record(latest_uri(ckpt, snap.namespace, snap.name))
            if error is None:
                memory.record_read_at = time.monotonic()
            else:
                log.warning("cannot read latest.json of %s/%s: %s", snap.namespace, snap.name, error)
            observed = Observed(job=job_view, pods=snap.pods, record=record, record_error=error,
                                record_expected=True)
        plan = decide.reconcile(job_input, observed, now, self.policy)
        outcome = Outcome(events=list(plan.events), requeue_after=plan.requeue_after)
        new_status = plan.status
        posted = 0
        if any(isinstance(action, DeleteJob) for action in plan.actions):
            # Deleting a Job deletes its pods, the only evidence of why the attempt ended: record the decision
            # (attempt, restarts, events) first, so an operator killed in between resumes from it, not repeats it.
            self._post_events(snap, outcome.events, now)
            posted = len(outcome.events)
            if not self._write_status(snap, memory, current, new_status.to_wire()):
                return Outcome(events=outcome.events, gone=True, phase=new_status.phase)
            current = memory.status if memory.status is not None else current
        for action in plan.actions:
            if isinstance(action, EnsureChildren) and _just_launched(memory, action.attempt):
                continue  # created moments ago; kopf's index has not caught up yet: do not POST again
            new_status, extra_events, wake = self._execute(action, snap, spec, new_status, now)
            if isinstance(action, EnsureChildren) and wake is None:
                memory.launched = (action.attempt, time.monotonic())
            outcome.events += extra_events
            if wake == PERMANENT_ERROR_SECONDS:  # the API refused a child: retrying sooner would only repeat it
                outcome.requeue_after = wake
                break
            if wake is not None:
                outcome.requeue_after = wake if outcome.requeue_after is None else min(outcome.requeue_after, wake)
            if isinstance(action, DeleteSelf):
                outcome.gone = True
        outcome.phase = new_status.phase
        # Events before the status that records their transition: an operator killed in between posts them again
        # on its next reconcile (at least once), where the other order would lose them for good.
        self._post_events(snap, outcome.events[posted:], now)
        if not outcome.gone:
            outcome.gone = not self._write_status(snap, memory, current, new_status.to_wire())
        return outcome

    def _post_events(self, snap: Snapshot, events: list[Event], now: dt.datetime) -> None:
        involved = {"apiVersion": API_VERSION, "kind": KIND, "name": snap.name, "namespace": snap.namespace,
                    "uid": snap.uid}
        for event in events:
            level = logging.WARNING if event.type == "Warning" else logging.INFO
            if level < self.config.posting_level:
                continue
            try:
                self.kube.post_event(involved, event.type, event.reason, event.message, time=format_time(now))
            except (KubeError, OSError) as exc:  # an Event is worth a retry of its own, never a lost status
                log.warning("%s/%s: event %s not posted: %s", snap.namespace, snap.name, event.reason, exc)

    def _write_status(self, snap: Snapshot, memory: JobMemory, old: Mapping[str, Any],
                      new: dict[str, Any]) -> bool:
        """Write what changed; False when the resource is gone."""
        patch = merge_patch(old, new)
        if not patch:
            memory.status = new
            return True
        try:
            answer = self.kube.patch(API_VERSION, PLURAL, snap.namespace, snap.name, {"status": patch},
                                     subresource="status")
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        memory.status = dict(answer.get("status") or new)
        return True

    # -------------------------------------------------------------------------------------------- actions
    def _execute(
        self, action: Action, snap: Snapshot, spec: GanTrainingJobSpec | None, status_now: GanTrainingJobStatus,
        now: dt.datetime,
    ) -> tuple[GanTrainingJobStatus, list[Event], float | None]:
        if isinstance(action, EnsureChildren):
            assert spec is not None
            return self._ensure_children(action, snap, spec, status_now, now)
        if isinstance(action, SyncJobFile):
            assert spec is not None
            try:
                self.kube.patch("v1", "configmaps", snap.namespace, children.configmap_name(snap.name),
                                {"data": children.configmap(_owner(snap), spec)["data"]})
            except KubeError as exc:
                if not exc.not_found:
                    raise
            return status_now, [], None
        if isinstance(action, DeleteJob):
            self._delete_job(snap, action)
            return status_now, [], None
        if isinstance(action, DeleteSelf):
            log.info("deleting %s/%s: %s", snap.namespace, snap.name, action.reason)
            try:
                self.kube.delete(API_VERSION, PLURAL, snap.namespace, snap.name, uid=snap.uid)
            except KubeError as exc:
                if not (exc.not_found or exc.conflict):
                    raise
            return status_now, [], None
        if isinstance(action, ClearAnnotation):
            self._clear_annotation(snap, action.key)
            return status_now, [], None
        if isinstance(action, Promote):
            return self._promote(action, snap, spec, status_now, now)
        if isinstance(action, Rollback):
            return self._rollback(action, snap, status_now, now)
        raise TypeError(f"unknown action {action!r}")  # pragma: no cover

    def _ensure_children(
        self, action: EnsureChildren, snap: Snapshot, spec: GanTrainingJobSpec, status_now: GanTrainingJobStatus,
        now: dt.datetime,
    ) -> tuple[GanTrainingJobStatus, list[Event], float | None]:
        objs = children.render(_owner(snap), spec, self.config, attempt=action.attempt, restarts=action.restarts,
                               resume_from=action.resume_from)
        for obj in objs:
            try:
                self.kube.create(obj, snap.namespace)
            except KubeError as exc:
                if exc.conflict:
                    if obj["kind"] == "ConfigMap":  # keep the job file in step with the spec
                        self.kube.patch("v1", "configmaps", snap.namespace, obj["metadata"]["name"],
                                        {"data": obj["data"]})
                    elif obj["kind"] == "Job":  # ours (the index lags) or the previous attempt's, still going
                        return status_now, [], decide.WAIT_SECONDS
                    continue
                if exc.transient:
                    raise
                what = f"cannot create {obj['kind']} {obj['metadata']['name']}"
                log.error("%s/%s: %s: %s", snap.namespace, snap.name, what, exc.message)
                new, events = conditions.apply_action_error(status_now, what, exc.message or str(exc), now)
                return new, events, PERMANENT_ERROR_SECONDS
        return conditions.clear_action_error(status_now, now), [], None

    def _delete_job(self, snap: Snapshot, action: DeleteJob) -> None:
        log.info("deleting Job %s/%s: %s", snap.namespace, children.job_name(snap.name), action.reason)
        try:
            # Foreground: the Job stays (blocking a new one of the same name) until its pods have terminated,
            # each after its grace period - the trainer's SIGTERM checkpoint.
            self.kube.delete("batch/v1", "jobs", snap.namespace, children.job_name(snap.name), uid=action.uid,
                             propagation="Foreground")
        except KubeError as exc:
            if not (exc.not_found or exc.conflict):  # gone already, or a newer Job holds the name
                raise

    def _clear_annotation(self, snap: Snapshot, key: str) -> None:
        try:
            self.kube.patch(API_VERSION, PLURAL, snap.namespace, snap.name,
                            {"metadata": {"annotations": {key: None}}})
        except KubeError as exc:
            if not exc.not_found:
                raise

    def _promote(
        self, action: Promote, snap: Snapshot, spec: GanTrainingJobSpec | None, status_now: GanTrainingJobStatus,
        now: dt.datetime,
    ) -> tuple[GanTrainingJobStatus, list[Event], float | None]:
        from ganops.operator.promotion import promote_job

        assert spec is not None
        ckpt = children.checkpoint_uri(spec, self.config)
        if ckpt is None:
            result = PromotionOutcome("error", action.model_name, action.alias,
                                            message="the job has no checkpoint store")
        else:
            result = promote_job(spec, namespace=snap.namespace, name=snap.name, tracking_uri=action.tracking_uri,
                                 checkpoint_root=job_root(ckpt, snap.namespace, snap.name), force=action.force)
        new, events = registry.apply_promotion(status_now, result, now)
        if action.clear_annotation and result.kind != "unavailable":
            self._clear_annotation(snap, action.clear_annotation)
        wake = registry.PROMOTION_RETRY_SECONDS if result.kind == "unavailable" else None
        return new, events, wake

    def _rollback(
        self, action: Rollback, snap: Snapshot, status_now: GanTrainingJobStatus, now: dt.datetime,
    ) -> tuple[GanTrainingJobStatus, list[Event], float | None]:
        from ganops.operator.promotion import rollback

        result = rollback(action.tracking_uri, model_name=action.model_name, alias=action.alias,
                          version=action.version)
        new, events = registry.apply_promotion(status_now, result, now)
        if result.kind == "rollback_unavailable":
            return new, events, registry.PROMOTION_RETRY_SECONDS  # the annotation stays: retried
        self._clear_annotation(snap, ANNOTATION_ROLLBACK_TO)
        return new, events, None


LAUNCH_TRUST_SECONDS = 60.0


def _just_launched(memory: JobMemory, attempt: int) -> bool:
    """This loop created `attempt`'s Job recently and the index never showed it: that is index lag, not a
    missing Job. (A Job seen and then gone, or never seen for a minute, is created again.)"""
    if memory.launched is None or memory.launched[0] != attempt or memory.job_seen_attempt == attempt:
        return False
    return time.monotonic() - memory.launched[1] < LAUNCH_TRUST_SECONDS


def _owner(snap: Snapshot) -> children.Owner:
    return children.Owner(snap.name, snap.namespace, snap.uid, dict(snap.labels))


def _pick_job(jobs: Iterable[JobView], name: str) -> JobView | None:
    """The Job holding the name (several views only while the index catches up: prefer the newest attempt)."""
    mine = [job for job in jobs if job.name == name]
    if not mine:
        return None
    return max(mine, key=lambda job: (not job.deleting, job.attempt))


# ------------------------------------------------------------------------------------------------ the loops


class Runtime:
    """Process-wide state: configuration, API client, worker threads, one loop (and its memory) per job."""

    def __init__(self, config: OperatorConfig, kube: Kube, *, metrics_server: Any = None) -> None:
        self.config = config
        self.kube = kube
        self.controller = Controller(config, kube)
        self.executor = concurrent.futures.ThreadPoolExecutor(config.workers, thread_name_prefix="ganops-reconcile")
        self.kicks: dict[Key, asyncio.Event] = {}
        self.memories: dict[Key, JobMemory] = {}
        self.phases = metrics.PhaseBook()
        self.job_series = metrics.JOB_SERIES
        self.metrics_server = metrics_server
        self.reconciles = 0

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.job_series.clear()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        self.kube.close()

    def publish(self, key: Key, memory: JobMemory) -> None:
        """The job's series (`ganops_operator_job_phase`, restarts, budget, cost, promotions, quality) from the
        status this reconcile wrote."""
        if memory.status is None:
            return
        self.job_series.set(metrics.job_series(key[0], key[1], memory.spec, memory.status,
                                               self.controller.policy.price_table))

    # -------------------------------------------------------------------------------------------- kicks
    def kick(self, key: Key) -> None:
        event = self.kicks.get(key)
        if event is not None:
            event.set()

    def kick_soon(self, key: Key) -> None:
        """Kick after the current event is indexed (index handlers run before the index is updated)."""
        event = self.kicks.get(key)
        if event is not None:
            asyncio.get_running_loop().call_soon(event.set)

    def changed(self, namespace: str, name: str, generation: Any, annotations: Mapping[str, str]) -> bool:
        """Whether a GanTrainingJob event brings something to reconcile: a spec or promotion-annotation change,
        not the status writes the operator makes itself."""
        memory = self.memories.get((namespace, name))
        return memory is None or memory.seen != seen_key(generation, annotations)

    # -------------------------------------------------------------------------------------------- loop
    async def run_job(self, *, body: Any, stopped: Any, logger: logging.Logger | logging.LoggerAdapter[Any],
                      jobs_index: Any, pods_index: Any) -> None:

        meta = body.get("metadata", {})
        key: Key = (str(meta.get("namespace")), str(meta.get("name")))
        memory = self.memories.setdefault(key, JobMemory())
        kick = asyncio.Event()
        self.kicks[key] = kick
        kick.set()
        loop = asyncio.get_running_loop()
        delay = 0.0
        try:
            while not stopped:
                if not kick.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(kick.wait(), timeout=delay)
                if stopped:
                    break
                kick.clear()
                snap = snapshot(body, jobs_index, pods_index)
                started = time.perf_counter()
                try:
                    outcome = await loop.run_in_executor(self.executor, self.controller.reconcile, snap, memory)
                except Exception as exc:
                    memory.failures += 1
                    metrics.RECONCILE_ERRORS.inc()
                    delay = ERROR_BACKOFF.delay(memory.failures - 1)
                    if isinstance(exc, KubeError) and exc.transient:
                        logger.warning(f"reconcile failed ({exc}); retrying in {delay:.0f}s")
                    else:
                        logger.exception(f"reconcile failed; retrying in {delay:.0f}s")
                    continue
                finally:
                    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                    self.reconciles += 1
                memory.failures = 0
                for event in outcome.events:  # posted as Kubernetes Events by the reconcile, before its status
                    (logger.warning if event.type == "Warning" else logger.info)(f"{event.reason}: {event.message}")
                self.phases.set(key, outcome.phase)
                if outcome.gone:
                    break
                self.publish(key, memory)
                idle = self.config.resync_seconds * (IDLE_FACTOR if outcome.phase in FINISHED else 1)
                delay = idle if outcome.requeue_after is None else min(outcome.requeue_after, idle)
        finally:
            if self.kicks.get(key) is kick:
                del self.kicks[key]
                self.memories.pop(key, None)
                self.phases.forget(key)
                self.job_series.forget(key)


def snapshot(body: Any, jobs_index: Any, pods_index: Any) -> Snapshot:
    meta = body.get("metadata", {})
    key = (meta.get("namespace"), meta.get("name"))
    return Snapshot(
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace")),
        uid=str(meta.get("uid")),
        generation=int(meta.get("generation") or 1),
        spec=copy.deepcopy(body.get("spec")),
        status=copy.deepcopy(dict(body.get("status") or {})),
        annotations=dict(meta.get("annotations") or {}),
        labels=dict(meta.get("labels") or {}),
        jobs=tuple(jobs_index.get(key, ())),
        pods=tuple(pods_index.get(key, ())),
    )

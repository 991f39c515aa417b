"""Training telemetry for Prometheus: a ``/metrics`` endpoint served by rank 0 of a training job.

:class:`TrainingTelemetry` is a trainer hook (``trainer.hooks.append(telemetry)``) that copies what the loop
reports at its moments into a private :class:`~prometheus_client.CollectorRegistry`, and :meth:`serve` exposes
that registry on ``GANOPS_METRICS_PORT`` (default 9400; ``0`` disables it). Every series carries the labels
``namespace`` and ``job`` (the GanTrainingJob's), so a PodMonitor must keep them (``honorLabels: true``; without
it Prometheus renames the exposed ``job`` label to ``exported_job``).

Series (DESIGN's names, base units):

========================================================  =========  ===================================================
``ganops_train_step``                                     gauge      optimizer steps done (resumed jobs continue)
``ganops_train_images_per_second``                        gauge      throughput over the last log interval, all ranks
``ganops_train_loss{network="generator"|"discriminator"}`` gauge     last logged loss
``ganops_train_grad_norm{network}``                       gauge      last logged global L2 gradient norm
``ganops_eval_fid`` ``_kid`` ``_precision`` ``_recall``   gauge      last evaluation (absent until the first one)
``ganops_eval_modes`` ``ganops_eval_high_quality_ratio``  gauge      same, for the 2-D mode metrics
``ganops_checkpoint_last_success_timestamp_seconds``      gauge      Unix time of the newest verified checkpoint (at
                                                                     start: the resumed one's, else the start time)
``ganops_job_cost_usd_total`` ``ganops_job_gpu_hours_total`` counter cost so far over all attempts (live)
``ganops_train_diversity_ratio``                          gauge      sample diversity vs real data (health monitor)
``ganops_train_discriminator_accuracy``                   gauge      D accuracy on real+fake (health monitor)
``ganops_train_health_events_total{type}``                counter    health events raised by this process; the four
                                                                     known types start at 0
``ganops_train_rollbacks_total``                          counter    rollbacks of the job (resumed attempts continue)
``ganops_gpu_utilization_ratio{gpu}``                     gauge      NVML, 0..1; only when a GPU and pynvml exist
``ganops_gpu_memory_used_bytes{gpu}``                     gauge      NVML; only when a GPU and pynvml exist
========================================================  =========  ===================================================

A value that is not known is absent, never zero: the GPU series exist only when NVML finds a device, the
evaluation series appear with the first evaluation. Nothing here can stop training: the hook swallows (and logs
once) its own errors, and a busy port only costs the endpoint.
"""

from __future__ import annotations

import calendar
import importlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ganops.api.spec import GanTrainingJobSpec
from ganops.cost import CostFigures, cost_of
from ganops.trainer.health import COLLAPSE, D_OVERPOWERING, DIVERGED, ROLLBACK

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ganops.trainer.loop import Trainer

log = logging.getLogger(__name__)

METRICS_PORT_ENV = "GANOPS_METRICS_PORT"
METRICS_ADDR_ENV = "GANOPS_METRICS_ADDR"
DEFAULT_METRICS_PORT = 9400

# EvaluationReport metric key → series name
EVAL_SERIES: dict[str, tuple[str, str]] = {
    "fid": ("ganops_eval_fid", "Fréchet distance of the last evaluation (lower is better)."),
    "kid": ("ganops_eval_kid", "Kernel Inception Distance of the last evaluation (lower is better)."),
    "precision": ("ganops_eval_precision", "Improved precision of the last evaluation (0..1)."),
    "recall": ("ganops_eval_recall", "Improved recall of the last evaluation (0..1)."),
    "modes": ("ganops_eval_modes", "Modes captured at the last evaluation (2-D mixtures)."),
    "high_quality": ("ganops_eval_high_quality_ratio", "Fraction of high-quality samples at the last evaluation."),
}
NETWORKS = {"g": "generator", "d": "discriminator"}
HEALTH_EVENT_TYPES = (COLLAPSE, D_OVERPOWERING, ROLLBACK, DIVERGED)  # counters born at 0: increase() sees the 1st


def metrics_port_from_env(default: int = DEFAULT_METRICS_PORT) -> int:
    """``GANOPS_METRICS_PORT`` (0 disables the endpoint); a value that is not a port is reported and ignored."""
    raw = os.environ.get(METRICS_PORT_ENV, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
        if not 0 <= port <= 65535:
            raise ValueError(raw)
    except ValueError:
        log.warning("%s=%r is not a port number; using %d", METRICS_PORT_ENV, raw, default)
        return default
    return port


def _iso_to_unix(text: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class AttemptClock:
    """Throughput and cost as a hook sees them (the loop keeps its timers as locals).

    Cost uses the same accounting as the checkpoint manifest: the wall time of all earlier attempts (restored
    into ``trainer.elapsed_seconds``) plus the time since this attempt's loop started.
    """

    def __init__(self) -> None:
        self.base_seconds = 0.0
        self.started: float | None = None
        self._last_step = 0
        self._last_time = 0.0

    def start(self, trainer: Trainer) -> None:
        now = time.monotonic()
        self.base_seconds = float(trainer.elapsed_seconds)
        self.started = now
        self._last_step = trainer.step
        self._last_time = now

    def running_seconds(self) -> float:
        if self.started is None:
            return self.base_seconds
        return self.base_seconds + (time.monotonic() - self.started)

    def images_per_second(self, trainer: Trainer) -> float | None:
        """Images (all ranks) per second since the previous call; None when no step was taken."""
        now = time.monotonic()
        steps = trainer.step - self._last_step
        elapsed = now - self._last_time
        self._last_step, self._last_time = trainer.step, now
        if steps <= 0 or elapsed <= 0:
            return None
        batch = trainer.spec.training.batch_size * trainer.ctx.dist.world_size
        return steps * batch / elapsed


class SeenEvents:
    """Health events not counted yet (the trainer's list may be restored from a checkpoint or trimmed)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str, str, str]] = set()

    @staticmethod
    def _key(item: Mapping[str, Any]) -> tuple[str, str, str, str]:
        return (str(item.get("type")), str(item.get("step")), str(item.get("time")), str(item.get("message")))

    def mark(self, events: Iterable[Mapping[str, Any]]) -> None:
        for item in events:
            self._seen.add(self._key(item))

    def new(self, events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        fresh = []
        for item in events:
            key = self._key(item)
            if key not in self._seen:
                self._seen.add(key)
                fresh.append(item)
        return fresh


def health_events_of(trainer: Trainer) -> list[Mapping[str, Any]]:
    events = getattr(trainer, "health_events", None)
    return [e for e in events if isinstance(e, Mapping)] if isinstance(events, list) else []


def health_state_of(trainer: Trainer) -> Mapping[str, Any]:
    state = getattr(trainer, "health_state", None)
    return state if isinstance(state, Mapping) else {}


class TrainerCollector(Collector):
    """The trainer's series, built at scrape time from the last values the hook saw."""

    def __init__(self, spec: GanTrainingJobSpec, namespace: str, job: str, clock: AttemptClock) -> None:
        self.spec = spec
        self.labels = {"namespace": namespace, "job": job}
        self.clock = clock
        self.lock = threading.Lock()
        self.step: float | None = None
        self.images_per_second: float | None = None
        self.loss: dict[str, float] = {}
        self.grad_norm: dict[str, float] = {}
        self.eval: dict[str, float] = {}
        self.checkpoint_time: float | None = None
        self.diversity: float | None = None
        self.d_accuracy: float | None = None
        self.health_events: dict[str, float] = dict.fromkeys(HEALTH_EVENT_TYPES, 0.0)
        self.rollbacks = 0.0
        self.cost_started = False

    def _gauge(self, name: str, doc: str, value: float | None) -> Iterator[Metric]:
        if value is None:
            return
        family = GaugeMetricFamily(name, doc, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        yield family

    def _by(
        self, name: str, doc: str, key: str, values: Mapping[str, float], counter: bool = False
    ) -> Iterator[Metric]:
        if not values:
            return
        family: GaugeMetricFamily | CounterMetricFamily
        if counter:
            family = CounterMetricFamily(name, doc, labels=[*self.labels, key])
        else:
            family = GaugeMetricFamily(name, doc, labels=[*self.labels, key])
        for label, value in sorted(values.items()):
            family.add_metric([*self.labels.values(), label], value)
        yield family

    def _counter(self, name: str, doc: str, value: float) -> Iterator[Metric]:
        family = CounterMetricFamily(name, doc, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        yield family

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            yield from self._gauge("ganops_train_step", "Optimizer steps done.", self.step)
            yield from self._gauge(
                "ganops_train_images_per_second", "Training throughput over the last log interval, all ranks.",
                self.images_per_second,
            )
            yield from self._by("ganops_train_loss", "Last logged loss.", "network", self.loss)
            yield from self._by("ganops_train_grad_norm", "Last logged gradient L2 norm.", "network", self.grad_norm)
            for key, (name, doc) in EVAL_SERIES.items():
                yield from self._gauge(name, doc, self.eval.get(key))
            yield from self._gauge(
                "ganops_checkpoint_last_success_timestamp_seconds", "Unix time of the newest verified checkpoint.",
                self.checkpoint_time,
            )
            if self.cost_started:
                figures = cost_of(self.spec, self.clock.running_seconds())
                yield from self._counter("ganops_job_cost_usd", "Job cost so far over all attempts, USD.", figures.usd)
                yield from self._counter(
                    "ganops_job_gpu_hours", "GPU-hours used so far over all attempts.", figures.gpu_hours
                )
            yield from self._gauge(
                "ganops_train_diversity_ratio", "Sample diversity relative to real data (health monitor).",
                self.diversity,
            )
            yield from self._gauge(
                "ganops_train_discriminator_accuracy", "Discriminator accuracy on real and fake (health monitor).",
                self.d_accuracy,
            )
            if self.cost_started:
                yield from self._by(
                    "ganops_train_health_events", "Training health events raised by this process.", "type",
                    self.health_events, counter=True,
                )
                yield from self._counter(
                    "ganops_train_rollbacks", "Rollbacks to the last good checkpoint, over all attempts.",
                    self.rollbacks,
                )


class NvmlCollector(Collector):
    """GPU utilisation and memory through NVML. Built only when pynvml imports and finds a device."""

    def __init__(self, nvml: Any, handles: list[Any], labels: Mapping[str, str] | None = None) -> None:
        self.nvml = nvml
        self.handles = handles
        self.labels = dict(labels or {})

    @classmethod
    def create(cls, labels: Mapping[str, str] | None = None) -> NvmlCollector | None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError as exc:
            if _cuda_available():  # a GPU without the GPU series: say so, they are silently absent otherwise
                log.warning("nvidia-ml-py (pynvml) is not installed: the GPU utilisation and memory series "
                            "(ganops_gpu_*) are absent; install the trainer extra (%s)", exc)
            else:
                log.debug("NVML unavailable: %s", exc)
            return None
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # no driver, no device: the series are absent
            (log.warning if _cuda_available() else log.debug)("NVML unavailable: %s", exc)
            return None
        return cls(nvml, handles, labels) if handles else None

    def collect(self) -> Iterable[Metric]:
        names = [*self.labels, "gpu"]
        util = GaugeMetricFamily("ganops_gpu_utilization_ratio", "GPU busy fraction over the last sample (NVML).",
                                 labels=names)
        memory = GaugeMetricFamily("ganops_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=names)
        for index, handle in enumerate(self.handles):
            values = [*self.labels.values(), str(index)]
            try:
                busy = float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0
                used = float(self.nvml.nvmlDeviceGetMemoryInfo(handle).used)
            except Exception as exc:  # a GPU that fell off the bus: leave it out of this scrape
                log.debug("NVML read of GPU %d failed: %s", index, exc)
                continue
            util.add_metric(values, busy)
            memory.add_metric(values, used)
        if util.samples:
            yield util
        if memory.samples:
            yield memory


class TrainingTelemetry:
    """Trainer hook + private registry + optional HTTP endpoint. Attach on rank 0 only."""

    def __init__(self, spec: GanTrainingJobSpec, *, namespace: str, job: str, gpu: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.clock = AttemptClock()
        self.collector = TrainerCollector(spec, namespace, job, self.clock)
        self.registry.register(self.collector)
        self.gpu: NvmlCollector | None = NvmlCollector.create({"namespace": namespace, "job": job}) if gpu else None
        if self.gpu is not None:
            self.registry.register(self.gpu)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._events = SeenEvents()
        self._pending_checkpoint: int | None = None
        self._warned = False

    # ----------------------------------------------------------------- endpoint

    def serve(self, port: int, addr: str | None = None) -> int | None:
        """Serve ``/metrics`` on ``addr:port`` (``GANOPS_METRICS_ADDR``, default all interfaces); returns the
        bound port (``port=0`` here means "disabled", not "any"). A busy port is logged, not raised."""
        if port <= 0:
            return None
        addr = addr or os.environ.get(METRICS_ADDR_ENV) or "0.0.0.0"
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            log.warning("metrics endpoint not started on %s:%d (%s); training continues without it", addr, port, exc)
            return None
        bound = int(self._server.server_address[1])
        log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, bound)
        return bound

    @property
    def port(self) -> int | None:
        return int(self._server.server_address[1]) if self._server is not None else None

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ----------------------------------------------------------------- hook

    def __call__(self, trainer: Trainer, moment: str) -> None:
        try:
            self._on(trainer, moment)
        except Exception as exc:  # telemetry must never stop training
            if not self._warned:
                self._warned = True
                log.warning("telemetry hook failed at %r (%s); later failures are logged at debug", moment, exc)
            else:
                log.debug("telemetry hook failed at %r: %s", moment, exc)

    def _on(self, trainer: Trainer, moment: str) -> None:
        c = self.collector
        if moment == "start":
            self.clock.start(trainer)
            self._events.mark(health_events_of(trainer))
            record = trainer.manager.latest_record()
            with c.lock:
                c.cost_started = True
                c.step = float(trainer.step)
                c.rollbacks = _number(health_state_of(trainer).get("rollbacks")) or 0.0
                # the resumed checkpoint's time; a fresh job counts from its start ("no checkpoint for N hours")
                resumed = _iso_to_unix(str(record.get("time"))) if record is not None else None
                c.checkpoint_time = resumed or time.time()
            return
        self._settle_checkpoint(trainer, moment)
        with c.lock:
            c.step = float(trainer.step)
        if moment == "log":
            rate = self.clock.images_per_second(trainer)
            values = trainer.extra_state.get("last_values") or {}
            with c.lock:
                if rate is not None:
                    c.images_per_second = rate
                for short, network in NETWORKS.items():
                    if (loss := _number(values.get(f"loss_{short}"))) is not None:
                        c.loss[network] = loss
                    if (norm := _number(values.get(f"grad_norm_{short}"))) is not None:
                        c.grad_norm[network] = norm
            self._health(trainer)
        elif moment == "evaluated":
            report = getattr(trainer, "last_evaluation", None)
            if report is not None:
                numeric = report.numeric()
                with c.lock:
                    c.eval.update({k: v for k, v in numeric.items() if k in EVAL_SERIES})
        elif moment == "health":
            self._health(trainer)
        elif moment == "before_checkpoint":
            self._pending_checkpoint = trainer.step
        elif moment == "checkpointed":  # if the loop reports saves directly
            record = getattr(trainer, "last_checkpoint", None)
            if isinstance(record, Mapping):
                with c.lock:
                    c.checkpoint_time = _iso_to_unix(str(record.get("time"))) or time.time()
                self._pending_checkpoint = None

    def _settle_checkpoint(self, trainer: Trainer, moment: str) -> None:
        """After a ``before_checkpoint``, the next moment finds out whether that save made it into latest.json."""
        pending = self._pending_checkpoint
        if pending is None or moment in ("before_checkpoint", "checkpointed"):
            return
        self._pending_checkpoint = None
        if not trainer.ctx.dist.is_main:
            return
        record = trainer.manager.latest_record()
        if record is not None and int(record.get("step", -1)) >= pending:
            with self.collector.lock:
                self.collector.checkpoint_time = _iso_to_unix(str(record.get("time"))) or time.time()

    def _health(self, trainer: Trainer) -> None:
        state = health_state_of(trainer)
        fresh = self._events.new(health_events_of(trainer))
        rollbacks = _number(state.get("rollbacks"))
        c = self.collector
        with c.lock:
            if (diversity := _number(state.get("diversity"))) is not None:
                c.diversity = diversity
            if (accuracy := _number(state.get("d_accuracy"))) is not None:
                c.d_accuracy = accuracy
            for item in fresh:
                kind = str(item.get("type") or "unknown")
                c.health_events[kind] = c.health_events.get(kind, 0.0) + 1.0
            if rollbacks is not None and rollbacks > c.rollbacks:  # a counter: never goes down
                c.rollbacks = rollbacks

    # ----------------------------------------------------------------- helpers for callers and tests

    def cost(self) -> CostFigures:
        return cost_of(self.collector.spec, self.clock.running_seconds())

    def exposition(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


__all__ = [
    "DEFAULT_METRICS_PORT",
    "METRICS_PORT_ENV",
    "AttemptClock",
    "NvmlCollector",
    "TrainingTelemetry",
    "metrics_port_from_env",
]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - the trainer always has torch
        return False
    return bool(torch.cuda.is_available())

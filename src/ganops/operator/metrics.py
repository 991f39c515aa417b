"""The operator's own Prometheus metrics (served on GANOPS_OPERATOR_METRICS_PORT, default 8080, at /metrics).

Operator-level (the target's `namespace`/`job` labels apply):

- `ganops_operator_jobs{phase}`: GanTrainingJobs this operator handles, by phase ("" = not yet reconciled).
- `ganops_operator_reconcile_seconds`: duration of one reconcile (inputs, decisions, API and object-store I/O).
- `ganops_operator_reconcile_errors_total`: reconciles that raised (they are retried with backoff).

Job-level (labels `namespace`, `job` name the GanTrainingJob; the monitor needs `honorLabels: true`), the contract
of `dashboards/METRICS.md`:

- `ganops_operator_job_phase{phase}`: 1 for the job's phase, 0 for the other five.
- `ganops_operator_job_restarts_total{kind="preemption"|"failure"}`: `status.restarts`, both kinds always present.
- `ganops_job_budget_usd`: the budget in USD (`maxCostUSD`, or `maxGPUHours` × price; the smaller when both).
- `ganops_job_cost_usd_total`, `ganops_job_gpu_hours_total`: `status.cost` (the trainer exports the same figures
  while it runs; the operator's stay after it ends).
- `ganops_operator_promotions_total{model, outcome="promoted"|"rejected"}`: `status.promotions`, both at 0 from
  the start.
- `ganops_model_version_quality{model, version, metric}`: `status.promotedMetrics` of `status.promotedVersion`
  (fid, kid, precision, recall, modes).

The job-level values are a pure function of the job's spec and the status the reconcile decided (`job_series`);
`JobSeriesCollector` only holds the latest value per job and renders it at scrape time, so a job's series go
the moment its loop ends (resource deleted) - there are no stale series, and counters read straight from status
survive an operator restart.

A private registry, so that reloading the handler modules (tests do) never registers a metric twice.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ganops.api.spec import GanTrainingJobSpec
from ganops.contracts import registered_model_name
from ganops.cost import price_per_gpu_hour
from ganops.operator.conditions import PHASES

REGISTRY = CollectorRegistry(auto_describe=True)
JOBS = Gauge("ganops_operator_jobs", "GanTrainingJobs handled by this operator, by phase.", ["phase"],
             registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "ganops_operator_reconcile_seconds", "Duration of one reconcile of a GanTrainingJob.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=REGISTRY,
)
RECONCILE_ERRORS = Counter("ganops_operator_reconcile_errors_total", "Reconciles that raised an error.",
                           registry=REGISTRY)

_KNOWN_PHASES = ("", *PHASES)


class PhaseBook:
    """Which phase each job is in, kept in step with the `ganops_operator_jobs` gauge."""

    def __init__(self, gauge: Gauge = JOBS) -> None:
        self._gauge = gauge
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for phase in _KNOWN_PHASES:
            gauge.labels(phase=phase).set(0)

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        value = phase or ""
        with self._lock:
            old = self._phases.get(key)
            if old == value:
                return
            if old is not None:
                self._gauge.labels(phase=old).dec()
            self._phases[key] = value
            self._gauge.labels(phase=value).inc()

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            old = self._phases.pop(key, None)
            if old is not None:
                self._gauge.labels(phase=old).dec()

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = dict.fromkeys(_KNOWN_PHASES, 0)
            for phase in self._phases.values():
                out[phase] = out.get(phase, 0) + 1
            return out


# ------------------------------------------------------------------------------------------------ job-level series

RESTART_KINDS = (("preemption", "preemptions"), ("failure", "failures"))  # label value, status.restarts key
PROMOTION_OUTCOMES = ("promoted", "rejected")
QUALITY_METRICS = ("fid", "kid", "precision", "recall", "modes")


@dataclass(frozen=True)
class JobSeries:
    """Every job-level value the operator exports for one GanTrainingJob."""

    namespace: str
    job: str
    phase: str | None = None
    restarts: Mapping[str, int] = field(default_factory=dict)  # kind → count
    budget_usd: float | None = None
    cost_usd: float | None = None
    gpu_hours: float | None = None
    model: str | None = None  # set when the job can promote: the promotions counter exists
    promotions: Mapping[str, int] = field(default_factory=dict)  # outcome → count
    version: str | None = None  # the promoted version, with its quality
    quality: Mapping[str, float] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: Any) -> int:
    number = _number(value)
    return max(0, int(number)) if number is not None else 0


def _section(status: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = status.get(key)
    return value if isinstance(value, Mapping) else {}


def budget_usd(spec: GanTrainingJobSpec, table: dict[str, float] | None = None) -> float | None:
    """The job's budget in USD: `maxCostUSD`, or `maxGPUHours` × the price per GPU-hour, the smaller when both are
    set (the guard stops at whichever comes first); None without a budget or with a free GPU-hours budget."""
    limits = []
    if spec.budget.max_cost_usd is not None:
        limits.append(spec.budget.max_cost_usd)
    if spec.budget.max_gpu_hours is not None:
        price = price_per_gpu_hour(spec, table)
        if price > 0:
            limits.append(spec.budget.max_gpu_hours * price)
    return min(limits) if limits else None


def job_series(namespace: str, name: str, spec: GanTrainingJobSpec | None, status: Mapping[str, Any],
               price_table: dict[str, float] | None = None) -> JobSeries:
    """The job-level series of one job, from its spec (None when invalid) and the status the reconcile decided."""
    restarts = _section(status, "restarts")
    cost = _section(status, "cost")
    phase = status.get("phase") if isinstance(status.get("phase"), str) else None
    model = None
    promotions: dict[str, int] = {}
    version = None
    quality: dict[str, float] = {}
    if spec is not None:
        model = registered_model_name(namespace, spec.promotion.model_name or name)  # what serving labels too
        raw = _section(status, "promotions")
        promotions = {outcome: _count(raw.get(outcome)) for outcome in PROMOTION_OUTCOMES}
        promoted = status.get("promotedVersion")
        metrics = _section(status, "promotedMetrics")
        if isinstance(promoted, str) and promoted:
            version = promoted
            quality = {k: v for k in QUALITY_METRICS if (v := _number(metrics.get(k))) is not None}
    return JobSeries(
        namespace=namespace,
        job=name,
        phase=phase,
        restarts={kind: _count(restarts.get(key)) for kind, key in RESTART_KINDS},
        budget_usd=budget_usd(spec, price_table) if spec is not None else None,
        cost_usd=_number(cost.get("usd")),
        gpu_hours=_number(cost.get("gpuHours")),
        model=model,
        promotions=promotions,
        version=version,
        quality=quality,
    )


class JobSeriesCollector(Collector):
    """The job-level series of every job the operator handles, rendered at scrape time from `JobSeries` values.

    `set()` replaces a job's values, `forget()` drops them: nothing lingers after a job is gone."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], JobSeries] = {}
        self._lock = threading.Lock()

    def set(self, series: JobSeries) -> None:
        with self._lock:
            self._jobs[(series.namespace, series.job)] = series

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()

    def get(self, key: tuple[str, str]) -> JobSeries | None:
        with self._lock:
            return self._jobs.get(key)

    def describe(self) -> list[Metric]:
        return []  # rendered per scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda s: (s.namespace, s.job))
        job = ["namespace", "job"]
        phase = GaugeMetricFamily("ganops_operator_job_phase", "1 for the GanTrainingJob's phase, 0 for the others.",
                                  labels=[*job, "phase"])
        restarts = CounterMetricFamily("ganops_operator_job_restarts", "Trainer relaunches of the GanTrainingJob "
                                       "(preemption: free; failure: spends backoffLimit).", labels=[*job, "kind"])
        budget = GaugeMetricFamily("ganops_job_budget_usd", "The GanTrainingJob's budget in USD.", labels=job)
        cost = CounterMetricFamily("ganops_job_cost_usd", "USD the GanTrainingJob has cost (status.cost.usd).",
                                   labels=job)
        hours = CounterMetricFamily("ganops_job_gpu_hours", "GPU-hours the GanTrainingJob has used "
                                    "(status.cost.gpuHours).", labels=job)
        promotions = CounterMetricFamily("ganops_operator_promotions", "Promotion decisions of the GanTrainingJob.",
                                         labels=[*job, "model", "outcome"])
        quality = GaugeMetricFamily("ganops_model_version_quality", "Evaluation metrics of the model version the "
                                    "GanTrainingJob promoted.", labels=[*job, "model", "version", "metric"])
        for s in jobs:
            ids = [s.namespace, s.job]
            if s.phase is not None:
                for p in PHASES:
                    phase.add_metric([*ids, p], 1.0 if p == s.phase else 0.0)
            for kind, count in s.restarts.items():
                restarts.add_metric([*ids, kind], float(count))
            if s.budget_usd is not None:
                budget.add_metric(ids, s.budget_usd)
            if s.cost_usd is not None:
                cost.add_metric(ids, s.cost_usd)
            if s.gpu_hours is not None:
                hours.add_metric(ids, s.gpu_hours)
            if s.model is not None:
                for outcome, count in s.promotions.items():
                    promotions.add_metric([*ids, s.model, outcome], float(count))
                if s.version is not None:
                    for metric, value in s.quality.items():
                        quality.add_metric([*ids, s.model, s.version, metric], value)
        yield from (phase, restarts, budget, cost, hours, promotions, quality)


JOB_SERIES = JobSeriesCollector()
REGISTRY.register(JOB_SERIES)


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Start the /metrics HTTP server in a daemon thread; returns the server (call `.shutdown()`), None if off."""
    if port <= 0:
        return None
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server

"""The operator's own Prometheus metrics (served on GANOPS_OPERATOR_METRICS_PORT, default 8080, at /metrics).

- `ganops_operator_jobs{phase}`: GanTrainingJobs this operator handles, by phase ("" = not yet reconciled).
- `ganops_operator_reconcile_seconds`: duration of one reconcile (inputs, decisions, API and object-store I/O).
- `ganops_operator_reconcile_errors_total`: reconciles that raised (they are retried with backoff).

A private registry, so that reloading the handler modules (tests do) never registers a metric twice.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ganops.operator.status import PHASES

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


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Start the /metrics HTTP server in a daemon thread; returns the server (call `.shutdown()`), None if off."""
    if port <= 0:
        return None
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server

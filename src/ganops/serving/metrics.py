"""Prometheus metrics of the serving process, on a registry of its own (one per app: tests run several apps in one
process). Labels are bounded: route templates (not raw paths), status codes, model/version/alias, filter names,
fixed outcome and stage names.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "STAGES", "ServingMetrics"]

# Generation on CPU spans ~1 ms (one small sample) to seconds (64 large ones through the NSFW detector).
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STAGES = ("queue", "generate", "safety", "encode")


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.request_duration = Histogram(
            "ganops_serving_request_duration_seconds",
            "HTTP request duration by route template and status code.",
            ["route", "status"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "ganops_serving_stage_duration_seconds",
            "Time per request stage: queue (waiting for a forward pass), generate (the batch's forward pass), "
            "safety (the filters), encode (watermark + image encoding).",
            ["stage"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.samples = Counter(
            "ganops_serving_samples_total",
            "Samples generated, by what the user got: allowed, withheld (blocked) or replaced (blocked, grey).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "ganops_serving_batch_size",
            "Samples per forward pass.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "ganops_serving_queue_depth", "Requests waiting for a forward pass.", registry=r
        )
        self.safety_decisions = Counter(
            "ganops_safety_decisions_total",
            "Safety filter verdicts (error = the filter failed and the sample was blocked: fail-closed).",
            ["filter", "outcome"],
            registry=r,
        )
        self.safety_skipped = Counter(
            "ganops_safety_skipped_total",
            "Samples a filter did not look at, by reason (below_min_size: NSFW on small images; no_index: no "
            "memorization index for the model; not_image: 2-D points).",
            ["filter", "reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "ganops_model_info",
            "1 for each model version being served, by the alias that points at it.",
            ["model", "version", "alias"],
            registry=r,
        )
        self.ready = Gauge("ganops_serving_ready", "1 when a model is loaded and requests are accepted.", registry=r)
        self.load_failures = Counter(
            "ganops_model_load_failures_total",
            "Model versions that failed to load (the previous version keeps serving).",
            ["model"],
            registry=r,
        )
        self.store_errors = Counter(
            "ganops_model_store_errors_total",
            "Failed polls of the model registry or checkpoint store (serving continues with what is loaded).",
            ["model"],
            registry=r,
        )
        self.swaps = Counter(
            "ganops_model_swaps_total",
            "Hot swaps: a new version took over an alias.",
            ["model", "alias"],
            registry=r,
        )
        self.rejected = Counter(
            "ganops_serving_rejected_total",
            "Requests refused before generation, by reason (docs/security.md: unauthorized, auth_failures, "
            "address_rate_limited, rate_limited, headers_too_large, header_timeout, body_timeout, verify_busy, "
            "queue_full, not_ready, draining, timeout).",
            ["reason"],
            registry=r,
        )
        self.api_keys = Gauge(
            "ganops_serving_api_keys", "API keys accepted now (key file + environment).", registry=r
        )
        self.api_key_file_errors = Counter(
            "ganops_serving_api_key_file_errors_total",
            "Key-file reloads that refused something (fail-closed): invalid_entry counts entries refused, "
            "unreadable counts reads that failed (then no key of the file is accepted).",
            ["reason"],
            registry=r,
        )
        for reason in ("invalid_entry", "unreadable"):
            self.api_key_file_errors.labels(reason)
        self.audit_records = Counter(
            "ganops_audit_records_total", "Audit records written to the audit log (one per request with a blocked "
            "sample).", registry=r,
        )
        self.audit_failures = Counter(
            "ganops_audit_failures_total",
            "Audit log trouble: queue_full counts records dropped because the writer fell behind (lost), "
            "write_error counts failed segment writes (kept and retried).",
            ["reason"],
            registry=r,
        )
        for reason in ("queue_full", "write_error"):
            self.audit_failures.labels(reason)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""A contract-shaped exporter: every series of dashboards/METRICS.md, with values that move over time.

It stands in for the trainer, operator, serving, DCGM, kube-state-metrics and OpenCost so that a real Prometheus
can scrape the exact label shapes the dashboards and rules expect (including DCGM's exported_pod relabelling and
the honor_labels settings the Helm chart's monitors use). Each component is one path: `/trainer`, `/operator`,
`/serving`, `/dcgm`, `/kube-state-metrics`, `/opencost`.

    python dashboards/synthetic.py --port 9464 --config prometheus.yml   # writes a scrape config, then serves
    prometheus --config.file=prometheus.yml --storage.tsdb.path=/tmp/prom --web.listen-address=127.0.0.1:9090
    python scripts/dashboards_preview.py --prometheus http://127.0.0.1:9090 --out reports/dashboards --range 5m
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

RULES_FILE = Path(__file__).resolve().parent / "prometheus" / "rules.yaml"

NS = "ml"
JOBS = ("faces", "digits")
# model, version, alias, the job that produced it
VERSIONS = (("faces", "3", "production", "faces-v3"), ("faces", "4", "canary", "faces"),
            ("digits", "1", "production", "digits"))
PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed", "BudgetExceeded")
JOB_PHASE = {"faces": "Running", "digits": "Running", "faces-v3": "Succeeded", "old": "Failed"}
SLI_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _gauge(name: str, labels: Iterable[str], rows: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    fam = GaugeMetricFamily(name, f"synthetic {name}", labels=list(labels))
    for values, value in rows:
        fam.add_metric(list(values), value)
    return fam


def _counter(name: str, labels: Iterable[str], rows: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    fam = CounterMetricFamily(name, f"synthetic {name}", labels=list(labels))
    for values, value in rows:
        fam.add_metric(list(values), value)
    return fam


def _histogram(name: str, labels: Iterable[str], rows: Iterable[tuple[tuple[str, ...], float, list[float],
                                                                       tuple[float, ...], float]]) -> Metric:
    """rows: (label values, count, cumulative share per bucket, bucket bounds, mean)."""
    fam = HistogramMetricFamily(name, f"synthetic {name}", labels=list(labels))
    for values, count, shares, bounds, mean in rows:
        buckets = [(floatToGoString(b), count * s) for b, s in zip(bounds, shares, strict=True)]
        buckets.append(("+Inf", count))
        fam.add_metric(list(values), buckets, count * mean)
    return fam


class _Collector:
    def __init__(self, fn: Callable[[float], list[Metric]], clock: Callable[[], float]) -> None:
        self.fn, self.clock = fn, clock

    def collect(self) -> Iterable[Metric]:
        return self.fn(self.clock())

    def describe(self) -> Iterable[Metric]:
        return []


class Synthetic:
    """Series as functions of t, the seconds since construction."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.registries: dict[str, CollectorRegistry] = {}
        for name, fn in (("trainer", self.trainer), ("operator", self.operator), ("serving", self.serving),
                         ("dcgm", self.dcgm), ("kube-state-metrics", self.ksm), ("opencost", self.opencost)):
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Collector(fn, self._t))  # type: ignore[arg-type]
            self.registries[name] = registry

    def _t(self) -> float:
        return time.time() - self.t0

    # -------------------------------------------------------------------------------------------- components
    def trainer(self, t: float) -> list[Metric]:
        lab = ("namespace", "job")
        rows = [((NS, j), i) for i, j in enumerate(JOBS)]
        ckpt = self.t0 + 5 * math.floor(t / 5)
        return [
            _gauge("ganops_train_step", lab, [(k, 10 * t + 1000 * i) for k, i in rows]),
            _gauge("ganops_train_images_per_second", lab, [(k, 900 + 100 * math.sin(t / 5 + i)) for k, i in rows]),
            _gauge("ganops_train_loss", (*lab, "network"),
                   [((*k, "generator"), 1.2 + 0.3 * math.sin(t / 3 + i)) for k, i in rows]
                   + [((*k, "discriminator"), 0.6 + 0.1 * math.cos(t / 4 + i)) for k, i in rows]),
            _gauge("ganops_train_grad_norm", (*lab, "network"),
                   [((*k, "generator"), 5 + 2 * math.sin(t / 2)) for k, _ in rows]
                   + [((*k, "discriminator"), 2 + math.cos(t / 2)) for k, _ in rows]),
            _gauge("ganops_train_diversity_ratio", lab, [(k, 0.8 + 0.1 * math.sin(t / 6 + i)) for k, i in rows]),
            _gauge("ganops_train_discriminator_accuracy", lab, [(k, 0.7 + 0.1 * math.sin(t / 7)) for k, _ in rows]),
            _counter("ganops_train_health_events_total", (*lab, "type"),
                     [((*k, typ), math.floor(t / 15) if (typ, i) == ("ModeCollapseSuspected", 0) else 0)
                      for k, i in rows
                      for typ in ("ModeCollapseSuspected", "DiscriminatorOverpowering", "DivergenceRollback",
                                  "Diverged")]),
            _counter("ganops_train_rollbacks_total", lab, [(k, math.floor(t / 20) * (1 - i)) for k, i in rows]),
            _gauge("ganops_eval_fid", lab, [(k, 10 + 5 * i + 150 * math.exp(-t / 30)) for k, i in rows]),
            _gauge("ganops_eval_kid", lab, [(k, 0.01 + 0.2 * math.exp(-t / 30)) for k, _ in rows]),
            _gauge("ganops_eval_precision", lab, [(k, 0.8 - 0.3 * math.exp(-t / 30)) for k, _ in rows]),
            _gauge("ganops_eval_recall", lab, [(k, 0.6 - 0.4 * math.exp(-t / 30)) for k, _ in rows]),
            _gauge("ganops_eval_modes", lab, [(k, min(25, 10 + t / 4)) for k, _ in rows]),
            _gauge("ganops_eval_high_quality_ratio", lab, [(k, 0.9 - 0.5 * math.exp(-t / 30)) for k, _ in rows]),
            _gauge("ganops_checkpoint_last_success_timestamp_seconds", lab, [(k, ckpt) for k, _ in rows]),
            _counter("ganops_job_cost_usd_total", lab, [(k, 0.02 * t / (1 + i)) for k, i in rows]),
            _counter("ganops_job_gpu_hours_total", lab, [(k, 0.01 * t / (1 + i)) for k, i in rows]),
            _gauge("ganops_gpu_utilization_ratio", (*lab, "gpu"),
                   [((*k, "0"), 0.5 + 0.2 * math.sin(t)) for k, _ in rows]),
            _gauge("ganops_gpu_memory_used_bytes", (*lab, "gpu"), [((*k, "0"), 6e9 + 1e9 * i) for k, i in rows]),
        ]

    def operator(self, t: float) -> list[Metric]:
        counts = {"Running": 2, "Succeeded": 1, "Failed": 1}
        jobs = list(JOB_PHASE)
        cost = {"faces": 0.02 * t, "digits": 0.01 * t, "faces-v3": 4.2, "old": 1.3}
        quality = {"3": {"fid": 14.0, "kid": 0.012, "precision": 0.74, "recall": 0.55, "modes": 0},
                   "4": {"fid": 11.0, "kid": 0.009, "precision": 0.78, "recall": 0.6, "modes": 0},
                   "1": {"fid": 6.5, "kid": 0.004, "precision": 0.85, "recall": 0.8, "modes": 10}}
        reconciles = 5 * t
        shares = [0.5, 0.8, 0.95, 0.99, 1.0, 1.0]
        return [
            _gauge("ganops_operator_jobs", ("phase",), [((p,), counts.get(p, 0)) for p in PHASES]),
            _histogram("ganops_operator_reconcile_seconds", (), [((), reconciles, shares, SLI_BUCKETS, 0.08)]),
            _counter("ganops_operator_reconcile_errors_total", (), [((), math.floor(t / 10))]),
            _gauge("ganops_operator_job_phase", ("namespace", "job", "phase"),
                   [((NS, j, p), 1.0 if JOB_PHASE[j] == p else 0.0) for j in jobs for p in PHASES]),
            _counter("ganops_operator_job_restarts_total", ("namespace", "job", "kind"),
                     [((NS, j, kind), math.floor(t / 12) if (j, kind) == ("faces", "preemption") else 0)
                      for j in jobs for kind in ("preemption", "failure")]),
            _gauge("ganops_job_budget_usd", ("namespace", "job"), [((NS, "faces"), 1.0), ((NS, "digits"), 10.0)]),
            _counter("ganops_job_cost_usd_total", ("namespace", "job"), [((NS, j), cost[j]) for j in jobs]),
            _counter("ganops_job_gpu_hours_total", ("namespace", "job"), [((NS, j), cost[j] / 2.93) for j in jobs]),
            _counter("ganops_operator_promotions_total", ("namespace", "job", "model", "outcome"),
                     [((NS, job, model, outcome), (1 + math.floor(t / 10)) if outcome == "promoted" else
                       math.floor(t / 25)) for model, _, _, job in VERSIONS for outcome in ("promoted", "rejected")]),
            _gauge("ganops_model_version_quality", ("namespace", "job", "model", "version", "metric"),
                   [((NS, job, model, version, metric), value) for model, version, _, job in VERSIONS
                    for metric, value in quality[version].items()]),
        ]

    def serving(self, t: float) -> list[Metric]:
        n = 20 * t
        sli = [0.1, 0.4, 0.8, 0.97, 0.995, 1.0]
        stages = {"queue": 0.01, "generate": 0.12, "safety": 0.05, "encode": 0.02}
        samples = {("faces", "3"): (30, 0.5), ("faces", "4"): (3, 0.2), ("digits", "1"): (5, 0.0)}
        decisions = {"degenerate": (0.995, 0.005, 0.0), "nsfw": (0.97, 0.03, 0.0), "memorization": (0.99, 0.0, 0.01)}
        return [
            _histogram("ganops_serving_request_duration_seconds", ("route", "status"), [
                (("/v1/generate", "200"), n, sli, SLI_BUCKETS, 0.2),
                (("/v1/generate", "500"), 0.02 * n, sli, SLI_BUCKETS, 0.05),
                (("/v1/generate", "422"), 0.05 * n, [1.0] * 6, SLI_BUCKETS, 0.01),
                (("/healthz", "200"), t, [1.0] * 6, SLI_BUCKETS, 0.001),
            ]),
            _histogram("ganops_serving_stage_duration_seconds", ("stage",), [
                ((stage,), n, [min(1.0, 0.05 / mean * 0.5 * (k + 1)) for k in range(6)], SLI_BUCKETS, mean)
                for stage, mean in stages.items()]),
            _counter("ganops_serving_samples_total", ("model", "version", "outcome"),
                     [((m, v, "allowed"), rate * t) for (m, v), (rate, _) in samples.items()]
                     + [((m, v, "withheld"), blocked * t) for (m, v), (_, blocked) in samples.items()]
                     + [((m, v, "replaced"), blocked / 4 * t) for (m, v), (_, blocked) in samples.items()]),
            _histogram("ganops_serving_batch_size", (), [((), 4 * t, [0.1, 0.3, 0.6, 0.9, 1.0, 1.0],
                                                          (1.0, 2.0, 4.0, 8.0, 16.0, 32.0), 5.0)]),
            _gauge("ganops_serving_queue_depth", (), [((), 3 + 2 * math.sin(t / 3))]),
            _counter("ganops_safety_decisions_total", ("filter", "outcome"),
                     [((f, o), share * 35 * t) for f, shares in decisions.items()
                      for o, share in zip(("pass", "block", "error"), shares, strict=True)]),
            _gauge("ganops_model_info", ("model", "version", "alias"), [((m, v, a), 1) for m, v, a, _ in VERSIONS]),
            _gauge("ganops_serving_ready", (), [((), 1)]),
            _counter("ganops_model_load_failures_total", ("model",),
                     [(("faces",), math.floor(t / 30)), (("digits",), 0)]),
            _counter("ganops_model_store_errors_total", ("model",),
                     [(("faces",), math.floor(t / 20)), (("digits",), 0)]),
            _counter("ganops_audit_failures_total", ("reason",),
                     [(("write_error",), math.floor(t / 10)), (("queue_full",), 0)]),
        ]

    def dcgm(self, t: float) -> list[Metric]:
        # DCGM's own pod/namespace labels name the workload; scraped with honor_labels false they become
        # exported_pod/exported_namespace (see prometheus_config). GPU 1's node has no profiling metrics.
        lab = ("gpu", "UUID", "Hostname", "modelName", "pod", "namespace", "container")
        g0 = ("0", "GPU-0000", "gpu-node-1", "NVIDIA A100-SXM4-40GB", "faces-trainer-0", NS, "trainer")
        g1 = ("1", "GPU-0001", "gpu-node-2", "NVIDIA L4", "digits-trainer-0", NS, "trainer")
        g2 = ("2", "GPU-0002", "gpu-node-2", "NVIDIA L4", "", "", "")  # idle
        return [
            _gauge("DCGM_FI_PROF_GR_ENGINE_ACTIVE", lab, [(g0, 0.75 + 0.15 * math.sin(t / 4))]),
            _gauge("DCGM_FI_DEV_GPU_UTIL", lab, [(g0, 88.0), (g1, 30 + 5 * math.sin(t / 5)), (g2, 0.0)]),
            _gauge("DCGM_FI_DEV_FB_USED", lab, [(g0, 30000.0), (g1, 9000.0), (g2, 0.0)]),
        ]

    def ksm(self, t: float) -> list[Metric]:
        lab = ("namespace", "pod", "label_ganops_io_job", "uid")
        return [_gauge("kube_pod_labels", lab, [
            ((NS, "faces-trainer-0", "faces", "u1"), 1), ((NS, "digits-trainer-0", "digits", "u2"), 1),
            (("gpu-operator", "dcgm-exporter-abcde", "", "u3"), 1)])]

    def opencost(self, t: float) -> list[Metric]:
        return [
            _gauge("node_gpu_hourly_cost", ("node", "instance_type"),
                   [(("gpu-node-1", "a2-highgpu-1g"), 2.93), (("gpu-node-2", "g2-standard-8"), 0.7)]),
            _gauge("container_gpu_allocation", ("namespace", "pod", "container", "node"),
                   [((NS, "faces-trainer-0", "trainer", "gpu-node-1"), 1),
                    ((NS, "digits-trainer-0", "trainer", "gpu-node-2"), 1)]),
        ]

    # ------------------------------------------------------------------------------------------------ serving
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
        registries = self.registries

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry = registries.get(self.path.split("?")[0].strip("/"))
                if registry is None:
                    self.send_error(404)
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="synthetic-exporter", daemon=True).start()
        return server


def scrape_configs(address: str, interval: str = "1s") -> list[dict[str, Any]]:
    """Scrape jobs as the Helm chart's monitors set them up (names, honor_labels, target labels)."""

    def job(name: str, path: str, honor: bool, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return {"job_name": name, "scrape_interval": interval, "metrics_path": f"/{path}", "honor_labels": honor,
                "static_configs": [{"targets": [address], "labels": labels or {}}]}

    return [
        job("ganops-trainer", "trainer", True),
        job("ganops-operator", "operator", True, {"namespace": "ganops-system", "pod": "ganops-operator-0"}),
        job("ganops-serving", "serving", False, {"namespace": "ganops", "pod": "ganops-serving-0"}),
        # A ServiceMonitor adds the exporter pod's own namespace/pod: DCGM's become exported_*.
        job("nvidia-dcgm-exporter", "dcgm", False, {"namespace": "gpu-operator", "pod": "dcgm-exporter-abcde"}),
        job("kube-state-metrics", "kube-state-metrics", True),
        job("opencost", "opencost", True),
    ]


def prometheus_config(address: str, interval: str = "1s", rule_files: list[str] | None = None) -> dict[str, Any]:
    return {"global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": rule_files if rule_files is not None else [str(RULES_FILE)],
            "scrape_configs": scrape_configs(address, interval)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve contract-shaped synthetic metrics for ganops dashboards.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9464)
    parser.add_argument("--config", type=Path, help="Write a prometheus.yml scraping this exporter here.")
    parser.add_argument("--interval", default="1s")
    args = parser.parse_args()
    server = Synthetic().serve(args.host, args.port)
    address = f"{args.host}:{server.server_address[1]}"
    if args.config:
        args.config.write_text(yaml.safe_dump(prometheus_config(address, args.interval), sort_keys=False))
        print(f"wrote {args.config}")
    print(f"serving synthetic metrics on http://{address}/<component>")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()

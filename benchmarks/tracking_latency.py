"""How long MLflow tracking keeps its callers waiting with the server up, down and hung.

These are the wall-clock limits `tests/integration/test_tracking.py` used to assert (its checks are now event-based:
what the tracker buffers and counts, how many requests a server saw); here they are measured, against a real
`mlflow server` (sqlite, proxied artifacts) on 127.0.0.1, each beside a baseline from the same run:

(a) logging calls of an open `Tracker` (`log_metrics`, and every 50 steps `log_artifact_bytes` and `set_tags`):
    p50 / p99 / max per call with the server up (the baseline), hung (SIGSTOP; MLflow's HTTP timeout 1 s) and stopped
    (connection refused). Limit: no call over 0.5 s.
(b) `Tracker.open` (default open_timeout: 5 s for http): the server up (baseline) and stopped. Limit: 2 s.
(c) a registry call (`get_alias`) until it answers: the live server (baseline: an answer), a hung server (1 s HTTP
    timeout) and a URI where nothing listens (both: `TrackingUnavailable`). Limits: 4 s hung, 3 s dead.

Usage: python -m benchmarks.tracking_latency [--calls 500]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tests.support.mlflow_server import start_mlflow_server

from benchmarks._report import write
from ganops import tracking
from ganops.tracking import Tracker, TrackingUnavailable

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
LOGGING_LIMIT_S = 0.5
OPEN_LIMIT_S = 2.0
REGISTRY_HUNG_LIMIT_S = 4.0
REGISTRY_DEAD_LIMIT_S = 3.0


def timed(fn: Callable[..., Any], *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def unavailable(fn: Callable[[], Any]) -> Callable[[], None]:
    """``fn``, which must raise TrackingUnavailable."""

    def call() -> None:
        try:
            fn()
        except TrackingUnavailable:
            return
        raise AssertionError("expected TrackingUnavailable")

    return call


def log_calls(tracker: Tracker, calls: int, first_step: int) -> list[float]:
    """Seconds per logging call: ``calls`` log_metrics, plus an artifact and a tag every 50 steps."""
    durations: list[float] = []
    for step in range(first_step, first_step + calls):
        durations.append(timed(tracker.log_metrics, {"loss": float(step), "lr": 1e-4}, step))
        if step % 50 == 0:
            durations.append(timed(tracker.log_artifact_bytes, PNG, f"samples/step-{step:06d}.png"))
            durations.append(timed(tracker.set_tags, {"ganops.step": str(step)}))
    return durations


def summary(durations: list[float]) -> dict[str, float]:
    ordered = sorted(durations)
    return {
        "calls": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 4),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4),
        "max_ms": round(1000 * ordered[-1], 3),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def measure(calls: int) -> dict[str, Any]:
    timeout_env = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    log_latency: dict[str, list[float]] = {}
    opening: dict[str, float] = {}
    registry: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ganops-bench-") as tmp, start_mlflow_server(tmp) as server:
        uri = server.url
        tracker = Tracker.open(uri, "bench-latency", "logging", retry_interval=1.0)
        assert tracker.run_id, "the MLflow server did not answer"
        log_latency["up"] = log_calls(tracker, calls, 0)
        assert tracker.flush(120)

        holder: list[Tracker] = []
        opening["up"] = timed(lambda: holder.append(Tracker.open(uri, "bench-latency", "open-up")))
        holder.pop().close(10)
        registry["up"] = timed(lambda: tracking.get_alias(uri, "bench-model", "production"))

        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "1"
        server.pause()
        try:
            log_latency["hung"] = log_calls(tracker, calls, calls)
            registry["hung"] = timed(unavailable(lambda: tracking.get_alias(uri, "bench-model", "production")))
        finally:
            server.resume()
            if timeout_env is None:
                os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)
            else:
                os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = timeout_env
        assert tracker.flush(120)

        server.stop()
        try:
            log_latency["down"] = log_calls(tracker, calls, 2 * calls)
            opening["down"] = timed(lambda: holder.append(Tracker.open(uri, "bench-latency", "open-down")))
            holder.pop().close(0)
        finally:
            server.start()
        assert tracker.flush(120) and tracker.finish(timeout=30)

    dead = f"http://127.0.0.1:{free_port()}"
    registry["dead"] = timed(unavailable(lambda: tracking.get_alias(dead, "bench-model", "production")))
    return {"log_latency": {k: summary(v) for k, v in log_latency.items()}, "open_s": opening, "registry_s": registry}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500, help="log_metrics calls per server state")
    args = parser.parse_args()
    figures = measure(args.calls)
    log_latency, opening, registry = figures["log_latency"], figures["open_s"], figures["registry_s"]
    base = log_latency["up"]
    checks = {
        "logging_max_s": max(s["max_ms"] for s in log_latency.values()) / 1000 <= LOGGING_LIMIT_S,
        "open_down_s": opening["down"] <= OPEN_LIMIT_S,
        "registry_hung_s": registry["hung"] <= REGISTRY_HUNG_LIMIT_S,
        "registry_dead_s": registry["dead"] <= REGISTRY_DEAD_LIMIT_S,
    }
    rows = "\n".join(
        f"| {state} | {s['calls']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} | "
        f"{s['p99_ms'] / base['p99_ms']:.2f}× |"
        for state, s in log_latency.items()
    )
    verdict = "meets every limit" if all(checks.values()) else "DOES NOT meet: " + ", ".join(
        k for k, ok in checks.items() if not ok
    )
    hung_limit, dead_limit = REGISTRY_HUNG_LIMIT_S, REGISTRY_DEAD_LIMIT_S
    md = f"""# MLflow tracking: how long callers wait (server up, hung, down)

Real `mlflow server` on 127.0.0.1; MLflow's HTTP timeout 1 s while hung (SIGSTOP). Baselines from the same run.

Logging calls of an open `Tracker` ({args.calls} `log_metrics`, plus an artifact and a tag every 50 steps), limit
{LOGGING_LIMIT_S * 1000:.0f} ms per call:

| server | calls | p50 ms | p99 ms | max ms | p99 vs up |
|---|---|---|---|---|---|
{rows}

| call | server up (baseline) | server down / hung | limit |
|---|---|---|---|
| `Tracker.open`, stopped | {opening['up']:.3f} s | {opening['down']:.3f} s | {OPEN_LIMIT_S} s |
| `get_alias` until TrackingUnavailable, hung | {registry['up']:.3f} s | {registry['hung']:.3f} s | {hung_limit} s |
| `get_alias` until TrackingUnavailable, dead | {registry['up']:.3f} s | {registry['dead']:.3f} s | {dead_limit} s |

Verdict: **{verdict}**.

Reproduce: `python -m benchmarks.tracking_latency --calls {args.calls}`
"""
    limits = {"logging_s": LOGGING_LIMIT_S, "open_down_s": OPEN_LIMIT_S, "registry_hung_s": REGISTRY_HUNG_LIMIT_S,
              "registry_dead_s": REGISTRY_DEAD_LIMIT_S}
    print(write("tracking_latency", {**figures, "limits": limits, "checks": checks}, md).read_text())


if __name__ == "__main__":
    main()

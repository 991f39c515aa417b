"""The model store against a real MLflow registry and a real uvicorn server: readiness, hot swap under concurrent
load with zero failed requests, canary split and sticky seeds, rollback, a version that fails to load, and an
MLflow outage (a TCP proxy in front of MLflow is cut and restored)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from ganops import tracking
from ganops.serving.app import create_app
from ganops.serving.model_store import canary_bucket
from ganops.serving.settings import ServingSettings

pytest.register_assert_rewrite("tests.support.serving")  # it is a plugin too: rewrite it before importing it
from tests.support.serving import (  # noqa: E402
    ServerThread,
    ServingCheckpoints,
    TcpProxy,
    binomial_tolerance,
    metric_value,
    metrics_text,
    wait_ready,
    wait_until,
)

pytest_plugins = ["tests.support.mlflow_server", "tests.support.serving"]

POLL_S = 0.2


def _model() -> str:
    return f"gan-{uuid.uuid4().hex[:8]}"


def _settings(mlflow_uri: str, model: str, tmp: Path, **extra: Any) -> ServingSettings:
    return ServingSettings(
        model=f"{model}@production",
        mlflow_uri=mlflow_uri,
        poll_interval_s=POLL_S,
        limits={"rate_limit_per_second": 0, "address_rate_limit_per_second": 0},
        safety={"audit_uri": (tmp / "audit").as_uri()},
        **extra,
    )


def _served_version(client: httpx.Client, seed: int = 0) -> str:
    response = client.post("/v1/generate", json={"n": 1, "seed": seed})
    assert response.status_code == 200, response.text
    version: str = response.json()["version"]
    return version


@pytest.fixture
def versions(mlflow_uri: str, serving_checkpoints: ServingCheckpoints) -> Iterator[tuple[str, list[str]]]:
    """A fresh registered model with versions 1 (step 20) and 2 (step 30) of the digits run."""
    model = _model()
    found = [tracking.register_version(mlflow_uri, model, uri) for uri in serving_checkpoints.digits[1:]]
    yield model, found


def test_readiness_is_false_until_a_model_is_loaded(
    mlflow_uri: str, serving_checkpoints: ServingCheckpoints, tmp_path: Path
) -> None:
    model = _model()
    with ServerThread(create_app(_settings(mlflow_uri, model, tmp_path))) as server:
        client = httpx.Client(base_url=server.url, timeout=30)
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "no model loaded" in ready.json()["reason"]
        assert client.get("/v2/health/ready").status_code == 503
        refused = client.post("/v1/generate", json={"n": 1})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "unavailable"
        assert metric_value(metrics_text(server.url), "ganops_serving_ready") == 0

        version = tracking.register_version(mlflow_uri, model, serving_checkpoints.digits[1])
        tracking.set_alias(mlflow_uri, model, "production", version)
        wait_ready(server.url, timeout=20)
        assert _served_version(client) == version
        assert metric_value(metrics_text(server.url), "ganops_serving_ready") == 1
        client.close()


def test_hot_swap_under_concurrent_load_then_rollback(
    mlflow_uri: str, versions: tuple[str, list[str]], tmp_path: Path
) -> None:
    model, (v1, v2) = versions
    tracking.set_alias(mlflow_uri, model, "production", v1)
    with ServerThread(create_app(_settings(mlflow_uri, model, tmp_path))) as server:
        wait_ready(server.url)
        stop = threading.Event()
        results: dict[int, list[tuple[int, str]]] = {worker: [] for worker in range(6)}

        def hammer(worker: int) -> None:
            seen = results[worker]  # appended as answers come: the test waits on these counts
            rng = random.Random(worker)
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while not stop.is_set():
                    try:
                        response = client.post("/v1/generate", json={"n": 2, "seed": rng.randrange(10**6)})
                        version = response.json().get("version", "?") if response.status_code == 200 else "?"
                        seen.append((response.status_code, version))
                    except httpx.HTTPError as exc:
                        seen.append((-1, type(exc).__name__))

        def answered_since(before: dict[int, int], at_least: int) -> bool:
            return all(len(seen) >= before.get(worker, 0) + at_least for worker, seen in results.items())

        threads = [threading.Thread(target=hammer, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        wait_until(lambda: answered_since({}, 5), timeout=60)  # every client has been answered before the swap
        tracking.set_alias(mlflow_uri, model, "production", v2)  # promote while requests are in flight
        swapped = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=30) as probe:
            wait_until(lambda: _served_version(probe) == v2, timeout=15)
        took = time.monotonic() - swapped
        seen_v2 = {worker: len(seen) for worker, seen in results.items()}
        wait_until(lambda: answered_since(seen_v2, 5), timeout=60)  # ... and again once v2 serves
        stop.set()
        for thread in threads:
            thread.join(30)

        outcomes = [item for seen in results.values() for item in seen]
        assert len(outcomes) > 50
        assert Counter(status for status, _ in outcomes) == Counter({200: len(outcomes)}), Counter(outcomes)
        assert {version for _, version in outcomes} == {v1, v2}
        for seen in results.values():  # each client sees the old version, then only the new one
            order = [version for _, version in seen]
            assert order == sorted(order, key=lambda v: v == v2), order
        assert took < 10

        tracking.set_alias(mlflow_uri, model, "production", v1)  # rollback = moving the alias back
        with httpx.Client(base_url=server.url, timeout=30) as probe:
            wait_until(lambda: _served_version(probe) == v1, timeout=15)
        text = metrics_text(server.url)
        assert metric_value(text, "ganops_model_info", {"model": model, "version": v1, "alias": "production"}) == 1
        assert metric_value(text, "ganops_model_info", {"model": model, "version": v2}) == 0
        assert metric_value(text, "ganops_model_swaps_total", {"model": model}) >= 3


def test_canary_split_and_sticky_seeds(mlflow_uri: str, versions: tuple[str, list[str]], tmp_path: Path) -> None:
    model, (v1, v2) = versions
    tracking.set_alias(mlflow_uri, model, "production", v1)
    tracking.set_alias(mlflow_uri, model, "canary", v2)
    settings = _settings(mlflow_uri, model, tmp_path, canary={"alias": "canary", "percent": 30})
    with ServerThread(create_app(settings)) as server:
        wait_ready(server.url)
        client = httpx.Client(base_url=server.url, timeout=30)
        wait_until(lambda: len(client.get("/v1/models").json()["models"]) == 2)
        listed = {m["role"]: m for m in client.get("/v1/models").json()["models"]}
        assert (listed["primary"]["version"], listed["primary"]["traffic_percent"]) == (v1, 70.0)
        assert (listed["canary"]["version"], listed["canary"]["alias"], listed["canary"]["traffic_percent"]) == (
            v2, "canary", 30.0)

        seeds = list(range(400))

        def ask(seed: int) -> tuple[str, str]:
            body = client.post("/v1/generate", json={"n": 1, "seed": seed}).json()
            return body["version"], body["alias"]

        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(ask, seeds))
            again = list(pool.map(ask, seeds[:100]))
        canary = sum(1 for version, _ in first if version == v2)
        assert abs(canary - 0.3 * len(seeds)) <= binomial_tolerance(len(seeds), 0.3)
        assert canary == sum(1 for s in seeds if canary_bucket(s) < 3000)  # the documented hash, exactly
        assert all(alias == ("canary" if version == v2 else "production") for version, alias in first)
        assert again == first[:100]  # sticky: a seed always lands on the same side

        tracking.delete_alias(mlflow_uri, model, "canary")  # end of the canary: everything to the primary
        wait_until(lambda: len(client.get("/v1/models").json()["models"]) == 1)
        with ThreadPoolExecutor(8) as pool:
            assert {version for version, _ in pool.map(ask, seeds[:40])} == {v1}
        client.close()


def test_a_failed_load_and_an_mlflow_outage_keep_the_old_version_serving(
    mlflow_uri: str, versions: tuple[str, list[str]], serving_checkpoints: ServingCheckpoints, tmp_path: Path
) -> None:
    model, (v1, v2) = versions
    tracking.set_alias(mlflow_uri, model, "production", v1)
    target = urlparse(mlflow_uri)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80).restore()
    try:
        with ServerThread(create_app(_settings(proxy.url, model, tmp_path))) as server:
            wait_ready(server.url)
            client = httpx.Client(base_url=server.url, timeout=30)
            assert _served_version(client) == v1

            broken = tracking.register_version(mlflow_uri, model, serving_checkpoints.broken)
            tracking.set_alias(mlflow_uri, model, "production", broken)
            wait_until(lambda: metric_value(metrics_text(server.url), "ganops_model_load_failures_total",
                                            {"model": model}) >= 1)
            assert client.get("/readyz").status_code == 200
            assert _served_version(client) == v1
            text = metrics_text(server.url)
            assert metric_value(text, "ganops_model_info", {"model": model, "version": v1}) == 1
            assert metric_value(text, "ganops_model_info", {"model": model, "version": broken}) == 0

            proxy.cut()  # MLflow unreachable: keep serving, count and log it
            wait_until(lambda: metric_value(metrics_text(server.url), "ganops_model_store_errors_total",
                                            {"model": model}) >= 1)
            assert [_served_version(client, seed) for seed in range(5)] == [v1] * 5
            assert client.get("/readyz").status_code == 200

            tracking.set_alias(mlflow_uri, model, "production", v2)
            proxy.restore()  # back: the next poll sees the moved alias
            wait_until(lambda: _served_version(client) == v2, timeout=15)
            client.close()
    finally:
        proxy.cut()

"""Serving under fire, with load running the whole time: unloadable versions are promoted one after the other
(checksum mismatch, missing files, weights that do not fit the architecture), then the model store's MLflow goes
away (the full run stops the real server and starts it again). The old model keeps serving, readiness never drops,
the failures are counted in metrics an alert rule watches, and the load sees no 5xx at all."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from ganops import tracking
from ganops.serving.app import create_app
from ganops.serving.settings import ServingSettings
from tests.resilience.report import FULL

pytest.register_assert_rewrite("tests.support.serving")
from tests.support.serving import (  # noqa: E402
    ServerThread,
    ServingCheckpoints,
    TcpProxy,
    derive_checkpoint,
    metric_value,
    metrics_text,
    wait_ready,
    wait_until,
)

if TYPE_CHECKING:
    from tests.support.mlflow_server import MlflowServer

pytest_plugins = ["tests.support.mlflow_server", "tests.support.serving"]

RULES = Path(__file__).parents[2] / "dashboards" / "prometheus" / "rules.yaml"


class Load:
    """Worker threads posting /v1/generate and one polling /readyz, until stopped; every answer is counted."""

    def __init__(self, url: str, workers: int = 3) -> None:
        self.url = url
        self.stop = threading.Event()
        self.codes: Counter[int] = Counter()
        self.versions: list[str] = []
        self.ready_codes: Counter[int] = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(w,)) for w in range(workers)]
        self._threads.append(threading.Thread(target=self._ready))

    def _work(self, worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/v1/generate", json={"n": 2, "seed": rng.randrange(10**6)})
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors.append(type(exc).__name__)
                    continue
                with self._lock:
                    self.codes[response.status_code] += 1
                    if response.status_code == 200:
                        self.versions.append(response.json()["version"])

    def _ready(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                try:
                    code = client.get("/readyz").status_code
                except httpx.HTTPError as exc:
                    code = -1
                    self.errors.append(type(exc).__name__)
                with self._lock:
                    self.ready_codes[code] += 1
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    def served(self) -> int:
        with self._lock:
            return self.codes[200]


def _counter(url: str, name: str, model: str) -> float:
    return metric_value(metrics_text(url), name, {"model": model})


def test_unloadable_versions_and_an_mlflow_outage_keep_the_old_model_serving_without_5xx(
    mlflow_server: MlflowServer, mlflow_uri: str, serving_checkpoints: ServingCheckpoints, tmp_path: Path,
    figures: dict[str, Any],
) -> None:
    model = f"gan-{uuid.uuid4().hex[:8]}"
    good, newer = serving_checkpoints.digits[1], serving_checkpoints.digits[2]
    v1 = tracking.register_version(mlflow_uri, model, good)
    tracking.set_alias(mlflow_uri, model, "production", v1)
    misfit = derive_checkpoint(good, (tmp_path / "misfit").as_uri(), lambda s: s,
                               model={"architecture": "dcgan", "imageSize": 8, "channels": 1, "latentDim": 8,
                                      "width": 32})  # the manifest describes a wider generator than the weights
    bad = {
        "checksum mismatch": serving_checkpoints.broken,
        "missing files": (tmp_path / "nothing" / "step-000000010").as_uri(),
        "weights that do not fit": misfit,
    }
    target = urlparse(mlflow_uri)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80).restore()
    settings = ServingSettings(model=f"{model}@production", mlflow_uri=proxy.url, poll_interval_s=0.2,
                               limits={"rate_limit_per_second": 0, "address_rate_limit_per_second": 0},
                               safety={"audit_uri": (tmp_path / "audit").as_uri()})
    try:
        with ServerThread(create_app(settings)) as server:
            wait_ready(server.url)
            with Load(server.url) as load:
                wait_until(lambda: load.served() >= 5, timeout=60)
                for i, uri in enumerate(bad.values(), start=1):
                    version = tracking.register_version(mlflow_uri, model, uri)
                    tracking.set_alias(mlflow_uri, model, "production", version)
                    wait_until(lambda i=i: _counter(server.url, "ganops_model_load_failures_total", model) >= i,
                               timeout=60)
                    served = load.served()
                    wait_until(lambda s=served: load.served() >= s + 5, timeout=60)  # still answering
                # The model store's MLflow goes away.
                proxy.cut()
                if FULL:
                    mlflow_server.stop()
                wait_until(lambda: _counter(server.url, "ganops_model_store_errors_total", model) >= 1, timeout=60)
                served = load.served()
                wait_until(lambda: load.served() >= served + 10, timeout=60)
                store_errors = _counter(server.url, "ganops_model_store_errors_total", model)
                v2 = None
                if FULL:
                    mlflow_server.start()
                proxy.restore()
                v2 = tracking.register_version(mlflow_uri, model, newer)
                tracking.set_alias(mlflow_uri, model, "production", v2)  # a good version after all that
                wait_until(lambda: v2 in load.versions[-3:], timeout=60)
                served = load.served()
                wait_until(lambda: load.served() >= served + 5, timeout=60)
            text = metrics_text(server.url)
    finally:
        proxy.cut()

    server_errors = sum(n for code, n in load.codes.items() if code >= 500)
    drops = sum(n for code, n in load.ready_codes.items() if code != 200)
    figures.update(serving_requests=sum(load.codes.values()), serving_5xx=server_errors,
                   serving_connection_errors=len(load.errors), readiness_checks=sum(load.ready_codes.values()),
                   readiness_drops=drops, bad_versions_promoted=len(bad),
                   load_failures_counted=metric_value(text, "ganops_model_load_failures_total", {"model": model}),
                   store_errors_counted=store_errors, mlflow_stopped=FULL)
    assert load.codes == Counter({200: load.codes[200]}), load.codes
    assert load.errors == [] and drops == 0, (load.errors, load.ready_codes)
    first_v2 = load.versions.index(v2)
    assert set(load.versions[:first_v2]) == {v1}, "only the old model served until the good new one"
    assert set(load.versions[first_v2:]) == {v2}
    assert metric_value(text, "ganops_model_load_failures_total", {"model": model}) >= len(bad)  # retried, counted
    assert metric_value(text, "ganops_model_info", {"model": model, "version": v2}) == 1
    # The failures are alert-worthy: a shipped alert rule watches the counter.
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert any("ganops_model_load_failures_total" in rule.get("expr", "") for rule in rules if "alert" in rule)

"""Security and limits over a real uvicorn server: API keys (401), per-key rate limits (429 + Retry-After), body size
(413), CORS off by default, a full queue (503 + Retry-After), request timeouts (504), and a shutdown that lets
in-flight requests finish."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from ganops.serving.app import create_app
from ganops.serving.model_store import LoadedModel
from ganops.serving.settings import ServingSettings

pytest.register_assert_rewrite("tests.support.serving")  # it is a plugin too: rewrite it before importing it
from tests.support.serving import (  # noqa: E402
    ServerThread,
    ServingCheckpoints,
    api_keys_file,
    metric_value,
    metrics_text,
    wait_ready,
    wait_until,
)

pytest_plugins = ["tests.support.serving"]

ALICE, BOB = "alice-key-0123456789", "bob-key-9876543210"


def _app(checkpoint: str, tmp: Path, **settings: Any) -> Any:
    settings.setdefault("safety", {"audit_uri": (tmp / "audit").as_uri()})
    return create_app(ServingSettings(checkpoint_uri=checkpoint, **settings))


@dataclass
class Gate:
    """Holds every forward pass until released: ``entered`` is set once a pass (so a request) is in flight."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def _gated(app: Any) -> Gate:
    """Hold the app's forward passes at a gate (white box: the batcher's forward function)."""
    generator = app.state.services.generator
    gate = Gate()

    def forward(model: LoadedModel, z: torch.Tensor, y: torch.Tensor | None) -> np.ndarray:
        gate.entered.set()
        assert gate.release.wait(60), "the test never released the forward pass"
        return model.forward(z, y)

    generator.forward = forward
    return gate


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


@pytest.fixture
def keyed(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> Iterator[ServerThread]:
    keys = api_keys_file(tmp_path / "keys", {"alice": ALICE, "bob": BOB})
    app = _app(serving_checkpoints.digits[2], tmp_path, api_keys_file=keys,
               limits={"rate_limit_per_second": 0.2, "rate_limit_burst": 3, "max_body_bytes": 4096})
    with ServerThread(app) as server:
        wait_ready(server.url)
        yield server


def test_api_keys_are_required_except_for_probes_and_metrics(keyed: ServerThread) -> None:
    url = keyed.url
    missing = httpx.post(url + "/v1/generate", json={"n": 1})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = httpx.post(url + "/v1/generate", json={"n": 1}, headers={"Authorization": "Bearer not-a-key"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
    basic = {"Authorization": "Basic YWxpY2U="}
    assert httpx.post(url + "/v1/generate", json={"n": 1}, headers=basic).status_code == 401
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v2/models/local").status_code == 401
    assert httpx.post(url + "/v1/watermark/verify", json={"image": "AAAA"}).status_code == 401
    bearer = {"Authorization": f"Bearer {ALICE}"}
    assert httpx.post(url + "/v1/generate", json={"n": 1}, headers=bearer).status_code == 200
    assert httpx.post(url + "/v1/generate", json={"n": 1}, headers={"X-API-Key": BOB}).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/openapi.json"):
        assert httpx.get(url + path).status_code == 200, path
    text = metrics_text(url)
    assert metric_value(text, "ganops_serving_rejected_total", {"reason": "unauthorized"}) >= 5
    assert ALICE not in text and BOB not in text


def test_rate_limit_per_key_answers_429_with_retry_after(keyed: ServerThread) -> None:
    alice = {"X-API-Key": ALICE}
    codes = [httpx.post(keyed.url + "/v1/generate", json={"n": 1}, headers=alice).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = httpx.post(keyed.url + "/v1/generate", json={"n": 1}, headers=alice)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"
    assert httpx.post(keyed.url + "/v1/generate", json={"n": 1}, headers={"X-API-Key": BOB}).status_code == 200


def test_oversized_bodies_get_413(keyed: ServerThread) -> None:
    alice = {"X-API-Key": ALICE}
    big = b'{"n": 1, "model": "' + b"x" * 8000 + b'"}'
    json_type = {**alice, "Content-Type": "application/json"}
    declared = httpx.post(keyed.url + "/v1/generate", content=big, headers=json_type)
    assert declared.status_code == 413 and declared.json()["error"]["field"] == "body"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"n": 1, "model": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    streamed = httpx.post(keyed.url + "/v1/generate", content=chunks(),
                          headers={**alice, "Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"
    upload = httpx.post(keyed.url + "/v1/watermark/verify", content=b"\x89PNG" + bytes(10000),
                        headers={**alice, "Content-Type": "image/png"})
    assert upload.status_code == 413


def test_cors_is_off_by_default_and_on_when_configured(
    keyed: ServerThread, serving_checkpoints: ServingCheckpoints, tmp_path: Path
) -> None:
    origin = {"Origin": "https://example.com"}
    plain = httpx.get(keyed.url + "/healthz", headers=origin)
    assert "access-control-allow-origin" not in plain.headers
    app = _app(serving_checkpoints.digits[2], tmp_path, cors_origins=["https://example.com"])
    with ServerThread(app) as server:
        preflight = httpx.options(server.url + "/v1/generate", headers={
            **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-API-Key"})
        assert preflight.headers["access-control-allow-origin"] == "https://example.com"


def test_a_full_queue_answers_503_with_retry_after(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> None:
    app = _app(serving_checkpoints.digits[2], tmp_path, batching={"max_queue": 2, "max_batch_size": 1},
               limits={"rate_limit_per_second": 0})
    gate = _gated(app)
    with ServerThread(app) as server, ThreadPoolExecutor(10) as pool:
        wait_ready(server.url)

        def generate(seed: int) -> httpx.Response:
            return httpx.post(server.url + "/v1/generate", json={"n": 1, "seed": seed}, timeout=30)

        def metric(name: str, labels: dict[str, str] | None = None) -> float:
            return metric_value(metrics_text(server.url), name, labels)

        try:
            running = pool.submit(generate, 0)
            assert gate.entered.wait(30)  # its pass is held: every later request waits in the queue
            queued = [pool.submit(generate, seed) for seed in (1, 2)]
            wait_until(lambda: metric("ganops_serving_queue_depth") == 2)
            extra = [pool.submit(generate, seed) for seed in range(3, 10)]  # the queue is full
            wait_until(lambda: metric("ganops_serving_rejected_total", {"reason": "queue_full"}) >= 7)
        finally:
            gate.release.set()
        answers = [f.result() for f in (running, *queued, *extra)]
        codes = Counter(a.status_code for a in answers)
        assert codes[200] >= 3 and codes[503] >= 1 and set(codes) == {200, 503}, codes
        assert [a.status_code for a in answers] == [200] * 3 + [503] * 7
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "queue full" in busy.json()["error"]["message"]
        assert metric_value(metrics_text(server.url), "ganops_serving_rejected_total", {"reason": "queue_full"}) >= 1


def test_requests_over_the_timeout_get_504(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> None:
    app = _app(serving_checkpoints.digits[2], tmp_path, limits={"request_timeout_s": 0.3})
    gate = _gated(app)  # the pass is held until the answer is in: only the timeout can answer
    with ServerThread(app) as server:
        wait_ready(server.url)
        try:
            answer = httpx.post(server.url + "/v1/generate", json={"n": 1}, timeout=30)
        finally:
            gate.release.set()
        assert gate.entered.is_set()
        assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"


class _LogEvent(logging.Handler):
    """Set once ``logger`` logs a message starting with ``prefix`` (the logger is opened to INFO meanwhile)."""

    def __init__(self, logger: str, prefix: str) -> None:
        super().__init__()
        self.logger, self.prefix, self.event = logging.getLogger(logger), prefix, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.event.set()

    def __enter__(self) -> threading.Event:
        self.logger_level = self.logger.level
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self.event

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.logger_level)


def test_shutdown_lets_in_flight_requests_finish(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> None:
    app = _app(serving_checkpoints.digits[2], tmp_path)
    gate = _gated(app)
    server = ServerThread(app).start()
    wait_ready(server.url)
    answers: list[httpx.Response] = []
    inflight = threading.Thread(
        target=lambda: answers.append(httpx.post(server.url + "/v1/generate", json={"n": 2, "seed": 1}, timeout=30)))
    inflight.start()
    stopping = threading.Thread(target=server.stop)
    try:
        with _LogEvent("uvicorn.error", "Waiting for connections to close") as draining:
            assert gate.entered.wait(30)  # the request is in its forward pass
            # What SIGTERM does: stop accepting, drain, then the lifespan shuts the batcher down.
            stopping.start()
            assert draining.wait(30)  # the server has stopped accepting and waits for the request in flight
            assert _refused(server.url) and not answers
    finally:
        gate.release.set()
    inflight.join(30)
    stopping.join(30)
    assert answers and answers[0].status_code == 200 and len(answers[0].json()["samples"]) == 2
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=2)

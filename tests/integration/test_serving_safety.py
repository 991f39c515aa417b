"""The safety pipeline's wiring in the real server (the filters' own behaviour is unit-tested in test_safety_*):
a degenerate model is blocked, a generator that reproduces training digits is blocked by the memorization index
found beside its checkpoint, NSFW verdicts reach the response, a failing filter blocks (fail-closed), replaced
images are watermarked, and blocked samples are written to the audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ganops.serving.app import create_app
from ganops.serving.settings import ServingSettings

pytest.register_assert_rewrite("tests.support.serving")  # it is a plugin too: rewrite it before importing it
from tests.support.serving import (  # noqa: E402
    FailingFilter,
    FlagEverything,
    ServerThread,
    ServingCheckpoints,
    api_keys_file,
    metric_value,
    metrics_text,
    wait_ready,
    wait_until,
)

pytest_plugins = ["tests.support.serving"]


def _serve(checkpoint: str, tmp: Path, safety: dict[str, Any] | None = None, **kwargs: Any) -> ServerThread:
    app_kwargs = {k: kwargs.pop(k) for k in ("nsfw_detector", "extra_filters") if k in kwargs}
    settings = ServingSettings(
        checkpoint_uri=checkpoint,
        safety={"audit_uri": (tmp / "audit").as_uri(), **(safety or {})},
        limits={"rate_limit_per_second": 0},
        **kwargs,
    )
    server = ServerThread(create_app(settings, **app_kwargs)).start()
    wait_ready(server.url)
    return server


def _generate(server: ServerThread, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    response = httpx.post(server.url + "/v1/generate", json=body, headers=headers or {}, timeout=30)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _audit_records(tmp: Path) -> list[dict[str, Any]]:
    """The audit log's records in chain order (the server has stopped: its writer stored everything)."""
    records = [json.loads(line) for path in sorted((tmp / "audit").rglob("*.jsonl"))
               for line in path.read_text().split("\n") if line]
    return sorted(records, key=lambda r: (r["chain"], r["seq"]))


def test_a_degenerate_model_is_blocked_and_audited(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> None:
    with _serve(serving_checkpoints.constant, tmp_path) as server:
        body = _generate(server, n=4, seed=1)
        assert body["blocked"] == 4
        for sample in body["samples"]:
            assert sample["allowed"] is False and sample["data"] is None and sample["blocked_by"] == "degenerate"
            assert "constant image" in sample["reason"]
            assert [v["outcome"] for v in sample["verdicts"]] == ["block"]  # later filters never saw it
        text = metrics_text(server.url)
        assert metric_value(text, "ganops_safety_decisions_total", {"filter": "degenerate", "outcome": "block"}) == 4
        assert metric_value(text, "ganops_serving_samples_total", {"outcome": "withheld"}) == 4
    (record,) = _audit_records(tmp_path)  # one record for the request, every blocked sample in it
    assert record["request_id"] == body["request_id"] and record["blocked"] == 4 and record["samples"] == 4
    blocked = record["blocked_samples"]
    assert {b["filter"] for b in blocked} == {"degenerate"} and all("pixels" not in b for b in blocked)
    assert sorted(b["index"] for b in blocked) == [0, 1, 2, 3]
    assert record["verdicts"] == {"degenerate": {"block": 4}} and record["prev"] == "0" * 64


def test_a_generator_reproducing_training_images_is_blocked_by_the_index_beside_it(
    serving_checkpoints: ServingCheckpoints, tmp_path: Path
) -> None:
    keys = api_keys_file(tmp_path / "keys", {"alice": "alice-key-0123456789"})
    headers = {"X-API-Key": "alice-key-0123456789"}
    with _serve(serving_checkpoints.memorizing, tmp_path, {"mode": "replace"}, api_keys_file=keys) as server:
        models = httpx.get(server.url + "/v1/models", headers=headers).json()["models"]
        assert models[0]["filters"] == ["degenerate", "memorization"] and models[0]["num_classes"] == 10
        body = _generate(server, headers, n=5, seed=2)
        assert body["blocked"] == 5
        for sample in body["samples"]:
            assert sample["blocked_by"] == "memorization" and sample["replaced"] is True
            assert "too close to a training example" in sample["reason"]
            assert sample["label"] == sample["index"]  # labels 0..4 cycle; each is that class's training digit
            verified = httpx.post(server.url + "/v1/watermark/verify", json={"image": sample["data"]},
                                  headers=headers).json()
            assert verified["present"] is True  # the grey replacement is watermarked too
        one = _generate(server, headers, n=1, seed=3, label=7)
        assert one["samples"][0]["blocked_by"] == "memorization"
        text = metrics_text(server.url)
        assert metric_value(text, "ganops_safety_decisions_total", {"filter": "memorization", "outcome": "block"}) == 6
        assert metric_value(text, "ganops_serving_samples_total", {"outcome": "replaced"}) == 6
    records = _audit_records(tmp_path)
    assert len(records) == 2 and {r["api_key_id"] for r in records} == {"alice"}
    assert [r["blocked"] for r in records] == [5, 1] and {r["mode"] for r in records} == {"replace"}
    assert {b["filter"] for r in records for b in r["blocked_samples"]} == {"memorization"}
    assert all(b["replaced"] for r in records for b in r["blocked_samples"])
    assert [r["request_label"] for r in records] == [None, 7] and [r["seq"] for r in records] == [0, 1]


def test_nsfw_verdicts_reach_the_response(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> None:
    checkpoint = serving_checkpoints.digits[2]
    with _serve(checkpoint, tmp_path, {"nsfw_min_image_size": 0}, nsfw_detector=FlagEverything()) as server:
        body = _generate(server, n=2, seed=4)
        assert body["blocked"] == 2
        assert {s["reason"] for s in body["samples"]} == {"nsfw: FEMALE_BREAST_EXPOSED (0.93 >= 0.50)"}
        assert metric_value(metrics_text(server.url), "ganops_safety_decisions_total",
                            {"filter": "nsfw", "outcome": "block"}) == 2
    # The real bundled detector (upscaling 8 px digits to 320 px) finds nothing to block.
    with _serve(checkpoint, tmp_path, {"nsfw_min_image_size": 0}) as server:
        body = _generate(server, n=2, seed=4)
        assert body["blocked"] == 0
        assert [[v["filter"] for v in s["verdicts"]] for s in body["samples"]] == [
            ["degenerate", "nsfw", "memorization"]] * 2
        assert all(s["verdicts"][1]["outcome"] == "pass" for s in body["samples"])


@pytest.mark.parametrize("how", ["settings", "dependency"])
def test_a_failing_filter_blocks_everything_fail_closed(
    serving_checkpoints: ServingCheckpoints, tmp_path: Path, how: str
) -> None:
    if how == "settings":
        plugin = {"extra_filters": ["tests.support.serving:FailingFilter"]}
        server = _serve(serving_checkpoints.digits[2], tmp_path, plugin)
    else:
        server = _serve(serving_checkpoints.digits[2], tmp_path, extra_filters=[FailingFilter()])
    with server:
        body = _generate(server, n=3, seed=5)
        assert body["blocked"] == 3
        for sample in body["samples"]:
            assert sample["allowed"] is False and sample["data"] is None
            assert sample["blocked_by"] == "always-fails"
            assert sample["reason"] == "filter always-fails failed: RuntimeError"  # no message, no traceback
            assert sample["verdicts"][-1]["outcome"] == "error"
        assert metric_value(metrics_text(server.url), "ganops_safety_decisions_total",
                            {"filter": "always-fails", "outcome": "error"}) == 3
    (record,) = _audit_records(tmp_path)
    assert record["blocked"] == 3 and record["verdicts"]["always-fails"] == {"error": 3}


def test_a_filter_failing_at_load_keeps_the_model_out(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> None:
    settings = ServingSettings(checkpoint_uri=serving_checkpoints.digits[2], poll_interval_s=0.2,
                               safety={"audit_uri": (tmp_path / "audit").as_uri()})
    with ServerThread(create_app(settings, extra_filters=[FailingFilter(works_for=0)])) as server:
        wait_until(lambda: metric_value(metrics_text(server.url), "ganops_model_load_failures_total") >= 2)
        assert httpx.get(server.url + "/readyz").status_code == 503
        assert httpx.post(server.url + "/v1/generate", json={"n": 1}).status_code == 503

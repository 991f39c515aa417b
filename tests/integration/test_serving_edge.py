"""The serving edge over a real uvicorn server (issue 13, finding 8 and the gaps mutation testing found): an empty key
file refuses everyone, a key-file reload fails closed and says so in a metric, a checkpoint whose bytes parse but
fail their checksum is refused, ``safety.require_memorization_index`` keeps a version without an index out, a
verification is charged by its uploaded pixels."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

from ganops import checkpoints, storage
from ganops.serving.app import create_app
from ganops.serving.settings import ServingSettings

pytest.register_assert_rewrite("tests.support.serving")
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


def _app(checkpoint: str, tmp: Path, **settings: Any) -> Any:
    settings.setdefault("safety", {"audit_uri": (tmp / "audit").as_uri()})
    settings.setdefault("poll_interval_s", 0.2)
    return create_app(ServingSettings(checkpoint_uri=checkpoint, **settings))


@pytest.mark.parametrize("content", ["", "# every key revoked\n\n"])
def test_an_empty_api_key_file_refuses_everyone(
    serving_checkpoints: ServingCheckpoints, tmp_path: Path, content: str
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(content)
    with ServerThread(_app(serving_checkpoints.digits[2], tmp_path, api_keys_file=keys)) as server:
        wait_ready(server.url)
        for headers in ({}, {"X-API-Key": "anything"}, {"Authorization": "Bearer x"}, {"X-API-Key": "x"}):
            answer = httpx.post(server.url + "/v1/generate", json={"n": 1}, headers=headers)
            assert answer.status_code == 401, (headers, answer.text)
        assert httpx.get(server.url + "/v1/models", headers={"X-API-Key": ""}).status_code == 401
        assert httpx.get(server.url + "/readyz").status_code == 200  # probes stay open
        assert metric_value(metrics_text(server.url), "ganops_serving_api_keys") == 0


def test_a_key_file_reload_fails_closed_and_says_so(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> None:
    keys = api_keys_file(tmp_path / "keys", {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789"})
    app = _app(serving_checkpoints.digits[2], tmp_path, api_keys_file=keys)
    app.state.services.keys.reload_interval_s = 0.0  # the Secret's change is seen at the next request
    with ServerThread(app) as server:
        wait_ready(server.url)

        def status(key: str) -> int:
            return httpx.get(server.url + "/v1/models", headers={"X-API-Key": key}).status_code

        assert status("alice-key-0123456789") == 200
        # The Secret revokes alice and adds carol; one line of the new file is garbled.
        rotated = api_keys_file(tmp_path / "rotated", {"bob": "bob-key-0123456789", "carol": "carol-key-0123456789"})
        keys.write_text(rotated.read_text() + "alice:5e88489\n")
        os.utime(keys, (keys.stat().st_atime, keys.stat().st_mtime + 10))
        assert status("alice-key-0123456789") == 401  # revoked: never kept because the file was broken
        assert status("carol-key-0123456789") == 200 and status("bob-key-0123456789") == 200
        text = metrics_text(server.url)
        assert metric_value(text, "ganops_serving_api_key_file_errors_total", {"reason": "invalid_entry"}) == 1
        assert metric_value(text, "ganops_serving_api_keys") == 2


def test_a_checkpoint_whose_bytes_parse_but_fail_their_checksum_is_refused(
    serving_checkpoints: ServingCheckpoints, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tampered = serving_checkpoints.tampered
    weights = storage.join(tampered, "generator_ema.safetensors")
    data = storage.open_store(weights).get_bytes(weights)
    assert load_safetensors(data)  # valid safetensors of the right architecture: only the checksum can refuse it
    manifest = checkpoints.require_manifest(tampered)
    assert manifest["files"]["generator_ema.safetensors"] != hashlib.sha256(data).hexdigest()
    caplog.set_level(logging.ERROR, logger="ganops.serving.model_store")
    with ServerThread(_app(tampered, tmp_path)) as server:
        wait_until(lambda: metric_value(metrics_text(server.url), "ganops_model_load_failures_total") >= 2)
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "no model loaded yet"
        assert httpx.post(server.url + "/v1/generate", json={"n": 1}).status_code == 503
    assert any("checksum mismatch" in r.getMessage() and "CheckpointError" in r.getMessage() for r in caplog.records)


def test_require_memorization_index_keeps_a_version_without_one_out(
    serving_checkpoints: ServingCheckpoints, tmp_path: Path
) -> None:
    without_index = serving_checkpoints.digits[0]  # step 10: no index beside it
    audit = {"audit_uri": (tmp_path / "audit").as_uri()}
    with ServerThread(_app(without_index, tmp_path, safety={**audit, "require_memorization_index": True})) as server:
        wait_until(lambda: metric_value(metrics_text(server.url), "ganops_model_load_failures_total") >= 2)
        assert httpx.get(server.url + "/readyz").status_code == 503
    with ServerThread(_app(without_index, tmp_path, safety=audit)) as server:  # the default: served, filter skipped
        wait_ready(server.url)
        (model,) = httpx.get(server.url + "/v1/models").json()["models"]
        assert model["skipped_filters"] == {"memorization": "no_index", "nsfw": "below_min_size"}
    with_index = serving_checkpoints.digits[2]
    with ServerThread(_app(with_index, tmp_path, safety={**audit, "require_memorization_index": True})) as server:
        wait_ready(server.url)
        (model,) = httpx.get(server.url + "/v1/models").json()["models"]
        assert "memorization" in model["filters"]


def test_a_verification_costs_its_uploaded_pixels(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> None:
    """The caller's bucket is charged one token per `rate_limit_pixels_per_token` uploaded pixels (issue 13, finding
    5: a request cost one token whatever its upload size). 128 × 128 = 16,384 pixels at 4,096 per token is 4 tokens:
    a bucket of 8 (no refill to speak of) lets two such uploads through and refuses the third, while 8-pixel-square
    uploads (one token each) get all 8 tokens' worth."""
    from ganops.images import encode_png

    limits = {"rate_limit_per_second": 0.001, "rate_limit_burst": 8, "rate_limit_pixels_per_token": 4096}
    big = encode_png(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    small = encode_png(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    with ServerThread(_app(serving_checkpoints.digits[2], tmp_path, limits=limits)) as server:
        wait_ready(server.url)

        def verify(png: bytes, client: str) -> int:  # one bucket per client address; X-Forwarded-For is not trusted
            with httpx.Client(transport=httpx.HTTPTransport(local_address=client)) as http:
                return http.post(server.url + "/v1/watermark/verify", content=png,
                                 headers={"Content-Type": "image/png"}).status_code

        assert [verify(big, "127.0.0.2") for _ in range(3)] == [200, 200, 429]
        assert [verify(small, "127.0.0.3") for _ in range(9)] == [200] * 8 + [429]

"""The HTTP API over a real uvicorn server resolving ``name@production`` through a real MLflow server: every format,
determinism, the watermark round trip, models/health/metrics, the Open Inference Protocol face, 2-D models, and
4xx answers that name the field."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from PIL import Image

from ganops import tracking
from ganops.images import encode_png
from ganops.serving.app import create_app
from ganops.serving.settings import ServingSettings

pytest.register_assert_rewrite("tests.support.serving")  # it is a plugin too: rewrite it before importing it
from tests.support.serving import (  # noqa: E402
    ServerThread,
    ServingCheckpoints,
    api_keys_file,
    digits_by_label,
    metric_value,
    wait_ready,
)

if TYPE_CHECKING:
    from tests.support.mlflow_server import MlflowServer

pytest_plugins = ["tests.support.mlflow_server", "tests.support.serving"]

KEY = "api-test-key-0123456789"
WATERMARK_KEY = "hex:" + "5a" * 32


@dataclass
class Live:
    url: str
    model: str
    version: str
    client: httpx.Client


@pytest.fixture(scope="module")
def live(
    mlflow_server: MlflowServer, serving_checkpoints: ServingCheckpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    if not mlflow_server.running:
        mlflow_server.start()
    model = f"digits-{uuid.uuid4().hex[:8]}"
    version = tracking.register_version(mlflow_server.url, model, serving_checkpoints.digits[2])
    tracking.set_alias(mlflow_server.url, model, "production", version)
    tmp = tmp_path_factory.mktemp("serving-api")
    settings = ServingSettings(
        model=f"{model}@production",
        mlflow_uri=mlflow_server.url,
        api_keys_file=api_keys_file(tmp / "keys", {"tests": KEY}),
        limits={"rate_limit_per_second": 0},
        safety={"audit_uri": (tmp / "audit").as_uri(), "watermark_key": WATERMARK_KEY},
    )
    with ServerThread(create_app(settings)) as server:
        wait_ready(server.url)
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            yield Live(server.url, model, version, client)


def generate(live: Live, **body: Any) -> dict[str, Any]:
    response = live.client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    assert response.headers["x-request-id"] == data["request_id"]
    return data


def decode(data: str) -> bytes:
    return base64.b64decode(data)


def png_pixels(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(decode(data))))


# ---------------------------------------------------------------------------------------------------- formats


def test_png_per_sample_with_model_version_and_verdicts(live: Live) -> None:
    body = generate(live, n=3, seed=5)
    assert (body["model"], body["version"], body["alias"]) == (live.model, live.version, "production")
    assert body["seed"] == 5 and body["n"] == 3 and body["format"] == "png" and body["media_type"] == "image/png"
    assert body["watermarked"] is True and body["blocked"] == 0 and body["grid"] is None
    assert [s["index"] for s in body["samples"]] == [0, 1, 2]
    for sample in body["samples"]:
        assert sample["allowed"] is True and sample["reason"] is None
        image = Image.open(io.BytesIO(decode(sample["data"])))
        assert image.format == "PNG" and image.size == (8, 8) and image.mode == "L"
        verdicts = {v["filter"]: v for v in sample["verdicts"]}
        assert set(verdicts) == {"degenerate", "memorization"}  # nsfw is off below 96 px (see /v1/models)
        assert all(v["outcome"] == "pass" for v in verdicts.values())
        assert verdicts["memorization"]["score"] > 0.1  # the distance to the nearest training digit


def test_jpeg_npy_and_grids(live: Live) -> None:
    jpeg = generate(live, n=2, seed=1, format="jpeg")
    assert jpeg["media_type"] == "image/jpeg"
    assert Image.open(io.BytesIO(decode(jpeg["samples"][0]["data"]))).format == "JPEG"

    npy = generate(live, n=2, seed=1, format="npy")
    array = np.load(io.BytesIO(decode(npy["samples"][0]["data"])), allow_pickle=False)
    assert array.dtype == np.uint8 and array.shape == (8, 8, 1)

    grid = generate(live, n=4, seed=1, grid=True)
    assert all(s["data"] is None for s in grid["samples"]) and grid["grid"]["count"] == 4
    assert png_pixels(grid["grid"]["data"]).shape == (22, 22)  # 2 x 2 tiles of 8 px with 2 px padding

    stacked = generate(live, n=4, seed=1, grid=True, format="npy")
    array = np.load(io.BytesIO(decode(stacked["grid"]["data"])), allow_pickle=False)
    assert array.shape == (4, 8, 8, 1) and array.dtype == np.uint8
    per_sample = generate(live, n=4, seed=1, format="npy")
    for i, sample in enumerate(per_sample["samples"]):
        assert np.array_equal(np.load(io.BytesIO(decode(sample["data"]))), array[i])


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_even_when_batched_with_other_requests(live: Live) -> None:
    alone = generate(live, n=3, seed=1234)
    with ThreadPoolExecutor(12) as pool:  # the same request again, batched together with eleven others
        others = [pool.submit(generate, live, n=2, seed=s) for s in range(11)]
        again = pool.submit(generate, live, n=3, seed=1234)
        [f.result() for f in others]
        batched = again.result()
    assert [s["data"] for s in batched["samples"]] == [s["data"] for s in alone["samples"]]
    different = generate(live, n=3, seed=1235)
    assert [s["data"] for s in different["samples"]] != [s["data"] for s in alone["samples"]]


def test_truncation_is_deterministic_and_changes_the_latents(live: Live) -> None:
    plain = generate(live, n=4, seed=9, format="npy")
    truncated = generate(live, n=4, seed=9, format="npy", truncation=0.5)
    again = generate(live, n=4, seed=9, format="npy", truncation=0.5)
    loose = generate(live, n=4, seed=9, format="npy", truncation=4.0)
    assert truncated["truncation"] == 0.5 and plain["truncation"] is None
    assert [s["data"] for s in truncated["samples"]] == [s["data"] for s in again["samples"]]
    assert [s["data"] for s in truncated["samples"]] != [s["data"] for s in plain["samples"]]
    # A threshold no latent entry reaches (|z| > 4 is rare for 32 values) changes nothing.
    assert [s["data"] for s in loose["samples"]] == [s["data"] for s in plain["samples"]]


def test_a_seed_is_chosen_and_returned_when_omitted(live: Live) -> None:
    first = generate(live, n=1)
    replay = generate(live, n=1, seed=first["seed"])
    assert first["samples"][0]["data"] == replay["samples"][0]["data"]


# -------------------------------------------------------------------------------------------------- watermark


def test_watermark_verify_true_on_outputs_false_on_clean_images(live: Live) -> None:
    sample = generate(live, n=1, seed=77)["samples"][0]["data"]
    as_json = live.client.post("/v1/watermark/verify", json={"image": sample})
    assert as_json.status_code == 200, as_json.text
    result = as_json.json()
    assert result["present"] is True and result["model"] == f"{live.model}:{live.version}"
    assert result["method"] == "keyed-qim" and result["payload"]

    raw = live.client.post("/v1/watermark/verify", content=decode(sample), headers={"Content-Type": "image/png"})
    assert raw.json()["present"] is True

    npy = generate(live, n=1, seed=77, format="npy")["samples"][0]["data"]
    as_npy = live.client.post("/v1/watermark/verify", content=decode(npy),
                              headers={"Content-Type": "application/x-npy"})
    assert as_npy.json()["present"] is True

    images, _ = digits_by_label()
    clean_verdicts = []
    for image in images[:20]:
        pixels = np.clip((image[0] + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)[..., None]
        answer = live.client.post("/v1/watermark/verify", content=encode_png(pixels),
                                  headers={"Content-Type": "image/png"})
        assert answer.status_code == 200
        clean_verdicts.append(answer.json()["present"])
    assert not any(clean_verdicts)

    garbage = live.client.post("/v1/watermark/verify", content=b"\x89PNG not really",
                               headers={"Content-Type": "image/png"})
    assert garbage.status_code == 400 and garbage.json()["error"]["field"] == "image"


# ---------------------------------------------------------------------------------------- models, health, metrics


def test_models_health_readiness_and_metrics(live: Live) -> None:
    models = live.client.get("/v1/models").json()["models"]
    assert len(models) == 1
    info = models[0]
    assert (info["name"], info["version"], info["alias"], info["role"]) == (live.model, live.version, "production",
                                                                             "primary")
    assert info["kind"] == "image" and info["image_size"] == 8 and info["traffic_percent"] == 100.0
    assert info["filters"] == ["degenerate", "memorization"] and info["skipped_filters"] == {"nsfw": "below_min_size"}
    assert info["step"] == 30 and "checkpoint_uri" not in info  # where the weights live is not every key holder's
    assert "file://" not in json.dumps(models)

    anonymous = httpx.Client(base_url=live.url, timeout=10)  # probes and metrics need no key
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["version"] == live.version
    assert anonymous.get("/v2/health/ready").json() == {"ready": True}
    text = anonymous.get("/metrics").text
    assert metric_value(text, "ganops_serving_ready") == 1
    assert metric_value(text, "ganops_model_info", {"model": live.model, "version": live.version,
                                                    "alias": "production"}) == 1
    assert metric_value(text, "ganops_serving_request_duration_seconds_count",
                        {"route": "/v1/generate", "status": "200"}) >= 1
    for stage in ("queue", "generate", "safety", "encode"):
        assert metric_value(text, "ganops_serving_stage_duration_seconds_count", {"stage": stage}) >= 1
    assert metric_value(text, "ganops_serving_samples_total", {"model": live.model, "outcome": "allowed"}) >= 1
    assert metric_value(text, "ganops_serving_batch_size_count") >= 1
    assert metric_value(text, "ganops_safety_decisions_total", {"filter": "memorization", "outcome": "pass"}) >= 1
    assert metric_value(text, "ganops_safety_skipped_total", {"filter": "nsfw", "reason": "below_min_size"}) >= 1
    assert "ganops_serving_queue_depth" in text
    assert anonymous.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"]["n"][
        "maximum"] == 64
    assert anonymous.get("/docs").status_code == 200
    anonymous.close()


# ------------------------------------------------------------------------------------- Open Inference Protocol v2


def test_open_inference_protocol_face(live: Live) -> None:
    meta = live.client.get(f"/v2/models/{live.model}").json()
    assert meta["name"] == live.model and meta["versions"] == [live.version]
    assert {"name": "samples", "datatype": "UINT8", "shape": [-1, 8, 8, 1]} in meta["outputs"]
    assert live.client.get(f"/v2/models/{live.model}/ready").json() == {"ready": True}

    request = {"id": "r1", "inputs": [{"name": "n", "shape": [1], "datatype": "INT32", "data": [2]},
                                      {"name": "seed", "shape": [1], "datatype": "INT64", "data": [31]}]}
    answer = live.client.post(f"/v2/models/{live.model}/infer", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == live.model and body["model_version"] == live.version and body["id"] == "r1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["samples"]["shape"] == [2, 8, 8, 1] and outputs["samples"]["datatype"] == "UINT8"
    assert outputs["allowed"]["data"] == [True, True]
    tensor = np.asarray(outputs["samples"]["data"], dtype=np.uint8).reshape(2, 8, 8, 1)
    same = generate(live, n=2, seed=31, format="npy")  # the same data plane: identical (watermarked) arrays
    for i, sample in enumerate(same["samples"]):
        assert np.array_equal(np.load(io.BytesIO(decode(sample["data"]))), tensor[i])

    pinned = live.client.post(f"/v2/models/{live.model}/versions/{live.version}/infer",
                              json={**request, "outputs": [{"name": "allowed"}]})
    assert [o["name"] for o in pinned.json()["outputs"]] == ["allowed"]
    assert live.client.post("/v2/models/nope/infer", json=request).status_code == 404
    assert live.client.post(f"/v2/models/{live.model}/versions/999/infer", json=request).status_code == 404
    bad = live.client.post(f"/v2/models/{live.model}/infer",
                           json={"inputs": [{"name": "n", "shape": [2], "datatype": "INT32", "data": [1, 2]}]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "inputs.0.shape"


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"n": 0}, 422, "n"),
        ({"n": 65}, 422, "n"),
        ({"n": "3"}, 422, "n"),
        ({"n": 2.0}, 422, "n"),
        ({"n": True}, 422, "n"),
        ({"seed": -1}, 422, "seed"),
        ({"seed": 2**64}, 422, "seed"),
        ({"truncation": 0}, 422, "truncation"),
        ({"truncation": -1.0}, 422, "truncation"),
        ({"truncation": 4.5}, 422, "truncation"),
        ({"truncation": "wide"}, 422, "truncation"),
        ({"label": 3}, 422, "label"),  # the served model is not conditional
        ({"format": "gif"}, 422, "format"),
        ({"grid": "yes"}, 422, "grid"),
        ({"colour": "red"}, 422, "colour"),
        ({"model": "someone-else"}, 404, "model"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(live: Live, body: Any, status: int, field: str) -> None:
    response = live.client.post("/v1/generate", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and field in error["message"]
    assert "Traceback" not in response.text


def test_malformed_json_nan_and_missing_body(live: Live) -> None:
    headers = {"Content-Type": "application/json"}
    broken = live.client.post("/v1/generate", content=b'{"n": 2,', headers=headers)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "malformed_json"
    nan = live.client.post("/v1/generate", content=b'{"n": 1, "truncation": NaN}', headers=headers)
    assert nan.status_code == 422 and nan.json()["error"]["field"] == "truncation"
    missing = live.client.post("/v1/generate", headers=headers)
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "body"
    unknown = live.client.get("/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    wrong_method = live.client.get("/v1/generate")
    assert wrong_method.status_code == 405 and "allow" in wrong_method.headers


# --------------------------------------------------------------------------------------------------- 2-D models


def test_points_of_a_2d_model(serving_checkpoints: ServingCheckpoints, tmp_path: Path) -> None:
    settings = ServingSettings(checkpoint_uri=serving_checkpoints.grid[-1], model_name="grid25",
                               safety={"audit_uri": (tmp_path / "audit").as_uri()})
    with ServerThread(create_app(settings)) as server:
        wait_ready(server.url)
        client = httpx.Client(base_url=server.url, timeout=30)
        body = client.post("/v1/generate", json={"n": 5, "seed": 3}).json()
        assert body["model"] == "grid25" and body["media_type"] == "application/json" and body["watermarked"] is False
        points = [s["point"] for s in body["samples"]]
        assert all(len(p) == 2 and s["data"] is None for p, s in zip(points, body["samples"], strict=True))
        again = client.post("/v1/generate", json={"n": 5, "seed": 3}).json()
        assert [s["point"] for s in again["samples"]] == points

        npy = client.post("/v1/generate", json={"n": 5, "seed": 3, "format": "npy", "grid": True}).json()
        array = np.load(io.BytesIO(decode(npy["grid"]["data"])))
        assert array.shape == (5, 2) and np.allclose(array, np.asarray(points, dtype=np.float32))

        scatter = client.post("/v1/generate", json={"n": 50, "seed": 3, "grid": True}).json()
        picture = scatter["grid"]["data"]
        assert png_pixels(picture).shape == (256, 256, 3)
        verified = client.post("/v1/watermark/verify", json={"image": picture}).json()
        assert verified["present"] is True and verified["model"] == "grid25:20"

        models = client.get("/v1/models").json()["models"]
        assert models[0]["kind"] == "points" and models[0]["skipped_filters"]["nsfw"] == "not_image"
        infer = client.post("/v2/models/grid25/infer",
                            json={"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [5]},
                                             {"name": "seed", "shape": [1], "datatype": "INT64", "data": [3]}]})
        outputs = {o["name"]: o for o in infer.json()["outputs"]}
        assert outputs["samples"]["datatype"] == "FP32" and outputs["samples"]["shape"] == [5, 2]
        assert np.allclose(np.asarray(outputs["samples"]["data"]).reshape(5, 2), np.asarray(points), atol=1e-6)
        label = client.post("/v1/generate", json={"n": 1, "label": 1})
        assert label.status_code == 422 and json.loads(label.text)["error"]["field"] == "label"
        client.close()

"""`precision: bf16` serving: bfloat16 weights and activations give the same bytes for the same seed whether a
request runs alone or inside a batch, stay within a few grey levels of fp32, and every filter still runs."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from ganops.serving.app import create_app
from ganops.serving.settings import ServingSettings

pytest.register_assert_rewrite("tests.support.serving")
from tests.support.serving import ServerThread, ServingCheckpoints, wait_ready  # noqa: E402

pytest_plugins = ["tests.support.serving"]


def _settings(checkpoint: str, tmp: Path, precision: str) -> ServingSettings:
    return ServingSettings(
        checkpoint_uri=checkpoint, precision=precision,  # type: ignore[arg-type]
        limits={"rate_limit_per_second": 0},
        safety={"audit_uri": (tmp / "audit").as_uri(), "watermark_key": "hex:" + "6b" * 32},
    )


def _npy(client: httpx.Client, **body: Any) -> list[np.ndarray]:
    answer = client.post("/v1/generate", json={"format": "npy", **body})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert all(s["allowed"] for s in data["samples"]), data["samples"]
    assert {v["filter"] for v in data["samples"][0]["verdicts"]} == {"degenerate", "memorization"}
    return [np.load(io.BytesIO(base64.b64decode(s["data"])), allow_pickle=False) for s in data["samples"]]


def test_bf16_is_deterministic_across_batches_and_close_to_fp32(
    serving_checkpoints: ServingCheckpoints, tmp_path: Path
) -> None:
    checkpoint = serving_checkpoints.digits[2]
    with ServerThread(create_app(_settings(checkpoint, tmp_path, "bf16"))) as bf16:
        wait_ready(bf16.url)
        with httpx.Client(base_url=bf16.url, timeout=30) as client:
            alone = _npy(client, n=3, seed=77)
            with ThreadPoolExecutor(12) as pool:
                others = [pool.submit(_npy, client, n=2, seed=s) for s in range(11)]
                again = pool.submit(_npy, client, n=3, seed=77)
                [f.result() for f in others]
                batched = again.result()
            grid = client.post("/v1/generate", json={"n": 4, "seed": 77, "grid": True}).json()["grid"]["data"]
    assert all(np.array_equal(a, b) for a, b in zip(alone, batched, strict=True))
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(grid)))).shape == (22, 22)

    with ServerThread(create_app(_settings(checkpoint, tmp_path, "fp32"))) as fp32:
        wait_ready(fp32.url)
        with httpx.Client(base_url=fp32.url, timeout=30) as client:
            reference = _npy(client, n=3, seed=77)
    # The watermark moves values by up to 2 levels on either side, bf16 rounding by a few more.
    diffs = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(alone, reference, strict=True)]
    assert max(int(d.max()) for d in diffs) <= 12 and float(np.mean([d.mean() for d in diffs])) < 3.0
    assert any(int(d.max()) > 0 for d in diffs)  # it did run in bfloat16

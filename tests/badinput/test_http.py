"""Malformed HTTP requests against the real serving app under uvicorn: every one gets a 4xx JSON error naming the
field (or the body), never a 5xx, and the server keeps serving well-formed requests afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ganops.serving.app import create_app
from ganops.serving.settings import ServingSettings

pytest.register_assert_rewrite("tests.support.serving")
from tests.support.serving import ServerThread, ServingCheckpoints, wait_ready  # noqa: E402

pytest_plugins = ["tests.support.serving"]

MAX_BODY = 65536
JSON = {"Content-Type": "application/json"}


def _infer(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _scalar(name: str, datatype: str, value: Any, shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "shape": shape or [1], "datatype": datatype, "data": [value]}


# (name, path, body, headers, expected status, field the error must name)
CASES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    # Deeply nested JSON: json.loads gives up (400, the body) - or, when a library in the process raised the
    # recursion limit, parses it and the field is refused (422, n). Either is a clear 4xx.
    ("truncated-json", "/v1/generate", b'{"n": 2,', JSON, 400, "body"),
    ("json-nested-30k", "/v1/generate", b'{"n": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", JSON, 400, "body"),
    ("json-nested-2k", "/v1/generate", b'{"n": ' + b"[" * 2000 + b"]" * 2000 + b"}", JSON, 400, "body"),
    ("json-5000-digit-number", "/v1/generate", b'{"n": ' + b"9" * 5000 + b"}", JSON, 400, "body"),
    ("json-not-utf8", "/v1/generate", b'{"n": "\xff\xfe"}', JSON, 400, "body"),
    ("json-a-string", "/v1/generate", b'"hello"', JSON, 422, "body"),
    ("json-null", "/v1/generate", b"null", JSON, 422, "body"),
    ("n-as-text", "/v1/generate", b'{"n": "4"}', JSON, 422, "n"),
    ("n-as-float", "/v1/generate", b'{"n": 4.0}', JSON, 422, "n"),
    ("n-as-bool", "/v1/generate", b'{"n": true}', JSON, 422, "n"),
    ("n-null", "/v1/generate", b'{"n": null}', JSON, 422, "n"),
    ("n-zero", "/v1/generate", b'{"n": 0}', JSON, 422, "n"),
    ("n-negative", "/v1/generate", b'{"n": -3}', JSON, 422, "n"),
    ("n-over-the-limit", "/v1/generate", b'{"n": 65}', JSON, 422, "n"),
    ("n-1e400", "/v1/generate", b'{"n": 1e400}', JSON, 422, "n"),
    ("seed-negative", "/v1/generate", b'{"seed": -1}', JSON, 422, "seed"),
    ("seed-2^64", "/v1/generate", b'{"seed": 18446744073709551616}', JSON, 422, "seed"),
    ("truncation-zero", "/v1/generate", b'{"truncation": 0}', JSON, 422, "truncation"),
    ("truncation-negative", "/v1/generate", b'{"truncation": -1.5}', JSON, 422, "truncation"),
    ("truncation-too-wide", "/v1/generate", b'{"truncation": 1000}', JSON, 422, "truncation"),
    ("truncation-NaN", "/v1/generate", b'{"truncation": NaN}', JSON, 422, "truncation"),
    ("truncation-Infinity", "/v1/generate", b'{"truncation": Infinity}', JSON, 422, "truncation"),
    ("truncation-as-text", "/v1/generate", b'{"truncation": "wide"}', JSON, 422, "truncation"),
    ("label-on-unconditional-model", "/v1/generate", b'{"label": 3}', JSON, 422, "label"),
    ("label-negative", "/v1/generate", b'{"label": -1}', JSON, 422, "label"),
    ("label-huge", "/v1/generate", b'{"label": 99999999999}', JSON, 422, "label"),
    ("format-gif", "/v1/generate", b'{"format": "gif"}', JSON, 422, "format"),
    ("grid-as-text", "/v1/generate", b'{"grid": "yes"}', JSON, 422, "grid"),
    ("unknown-field", "/v1/generate", b'{"n": 1, "colour": "red"}', JSON, 422, "colour"),
    ("unknown-model", "/v1/generate", b'{"model": "someone-else"}', JSON, 404, "model"),
    ("huge-model-name", "/v1/generate", json.dumps({"model": "m" * 60_000}).encode(), JSON, 422, "model"),
    ("oversized-body", "/v1/generate", b'{"model": "' + b"x" * (4 * MAX_BODY) + b'"}', JSON, 413, "body"),
    ("content-type-text", "/v1/generate", b'{"n": 1}', {"Content-Type": "text/plain"}, 422, "body"),
    ("content-type-form", "/v1/generate", b"n=1", {"Content-Type": "application/x-www-form-urlencoded"}, 422, "body"),
    ("content-type-missing", "/v1/generate", b'{"n": 1}', {}, 422, "body"),
    ("no-body", "/v1/generate", b"", JSON, 422, "body"),
    ("v2-unknown-model", "/v2/models/nope/infer", _infer(), JSON, 404, "name"),
    ("v2-unknown-version", "/v2/models/digits/versions/999/infer", _infer(), JSON, 404, "version"),
    ("v2-inputs-not-a-list", "/v2/models/digits/infer", b'{"inputs": 5}', JSON, 422, "inputs"),
    ("v2-unknown-input", "/v2/models/digits/infer", _infer(_scalar("colour", "INT64", 1)), JSON, 422,
     "inputs.0.name"),
    ("v2-huge-shape", "/v2/models/digits/infer", _infer(_scalar("n", "INT64", 1, [10**11, 10**11])), JSON, 422,
     "inputs.0.shape"),
    ("v2-n-too-many", "/v2/models/digits/infer", _infer(_scalar("n", "INT64", 100_000)), JSON, 422, "n"),
    ("v2-n-zero", "/v2/models/digits/infer", _infer(_scalar("n", "INT64", 0)), JSON, 422, "n"),
    ("v2-seed-negative", "/v2/models/digits/infer", _infer(_scalar("seed", "INT64", -1)), JSON, 422, "seed"),
    ("v2-truncation-1e400", "/v2/models/digits/infer", b'{"inputs": [{"name": "truncation", "shape": [1], '
     b'"datatype": "FP32", "data": [1e400]}]}', JSON, 422, "inputs.0.data"),
    ("v2-unknown-output", "/v2/models/digits/infer", _infer(outputs=[{"name": "zzz"}]), JSON, 422,
     "outputs.0.name"),
    ("watermark-not-base64", "/v1/watermark/verify", b'{"image": "!!!"}', JSON, 422, "image"),
    ("watermark-not-an-image", "/v1/watermark/verify", b'{"image": "aGVsbG8="}', JSON, 400, "image"),
    ("watermark-no-image", "/v1/watermark/verify", b"{}", JSON, 422, "image"),
]


@pytest.fixture(scope="module")
def server(serving_checkpoints: ServingCheckpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("badhttp")
    settings = ServingSettings(checkpoint_uri=serving_checkpoints.digits[-1], model_name="digits",
                               limits={"rate_limit_per_second": 0, "address_rate_limit_per_second": 0,
                                       "max_body_bytes": MAX_BODY},
                               safety={"audit_uri": (tmp / "audit").as_uri()})
    with ServerThread(create_app(settings)) as running:
        wait_ready(running.url, timeout=60)
        yield running.url


def test_malformed_requests_get_a_4xx_naming_the_field_never_a_5xx(server: str, figures: dict[str, Any]) -> None:
    failures = []
    server_errors = 0
    with httpx.Client(base_url=server, timeout=60) as client:
        for name, path, body, headers, status, field in CASES:
            response = client.post(path, content=body, headers=headers)
            server_errors += response.status_code >= 500
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                failures.append(f"{name}: {response.status_code} without a JSON error: {response.text[:200]!r}")
                continue
            if name.startswith("json-nested") and response.status_code == 422:
                status, field = 422, "n"
            named = error.get("field") == field or any(f.get("field") == field for f in error.get("fields") or [])
            if response.status_code != status or not named or not error.get("code") or "Traceback" in response.text:
                failures.append(f"{name}: {response.status_code} {error}"[:400])
        # Streamed without Content-Length: the limit holds while reading.
        streamed = client.post("/v1/generate", content=iter([b'{"model": "', b"x" * (4 * MAX_BODY), b'"}']),
                               headers=JSON)
        server_errors += streamed.status_code >= 500
        if streamed.status_code != 413 or streamed.json()["error"]["field"] != "body":
            failures.append(f"streamed oversized body: {streamed.status_code} {streamed.text[:200]}")
        # After all that, the server serves.
        ok = client.post("/v1/generate", json={"n": 2, "seed": 1})
        assert ok.status_code == 200, ok.text
    figures.update(http_bad_requests=len(CASES) + 1, http_5xx=server_errors, http_wrong_answers=len(failures))
    assert failures == []
    assert server_errors == 0

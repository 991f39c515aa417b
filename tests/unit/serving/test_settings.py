"""Serving settings: keyword arguments > GANOPS_SERVING_* environment > YAML/JSON file > defaults; validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ganops.serving.generation import encode_image, tile
from ganops.serving.settings import CONFIG_FILE_ENV, ServingSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GANOPS_SERVING_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)


def test_defaults_are_safe_for_local_use() -> None:
    settings = ServingSettings()
    assert settings.host == "127.0.0.1" and settings.cors_origins == [] and settings.model is None
    assert settings.batching.enabled and settings.safety.mode == "withhold"
    assert settings.safety.audit_uri is not None and settings.safety.audit_uri.startswith("file://")
    assert settings.registered_name == "local" and settings.alias == "checkpoint"


def test_environment_with_nested_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANOPS_SERVING_MODEL", "digits@canary")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("GANOPS_SERVING_CANARY__ALIAS", "canary2")
    monkeypatch.setenv("GANOPS_SERVING_CANARY__PERCENT", "12.5")
    monkeypatch.setenv("GANOPS_SERVING_SAFETY__NSFW_ENABLED", "false")
    monkeypatch.setenv("GANOPS_SERVING_SAFETY__WATERMARK_KEY", "hex:" + "00" * 16)
    monkeypatch.setenv("GANOPS_SERVING_LIMITS__MAX_N", "16")
    monkeypatch.setenv("GANOPS_SERVING_CORS_ORIGINS", '["https://a.example"]')
    settings = ServingSettings()
    assert (settings.registered_name, settings.alias, settings.resolved_mlflow_uri()) == (
        "digits", "canary", "http://mlflow:5000")
    assert settings.canary.alias == "canary2" and settings.canary.percent == 12.5
    assert settings.safety.nsfw_enabled is False and settings.limits.max_n == 16
    assert settings.cors_origins == ["https://a.example"]
    safety = settings.safety.for_model()
    assert safety.nsfw_enabled is False and safety.resolved_watermark_key() == bytes(16)
    assert "0000" not in repr(settings)  # secrets stay hidden
    assert settings.limits.policy().max_n == 16


def test_a_yaml_or_json_file_below_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "serving.yaml"
    config.write_text("checkpoint_uri: file:///ckpt/job\nport: 9000\nbatching:\n  max_batch_size: 8\n"
                      "safety:\n  mode: replace\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    monkeypatch.setenv("GANOPS_SERVING_PORT", "9100")
    settings = ServingSettings()
    assert settings.checkpoint_uri == "file:///ckpt/job" and settings.port == 9100  # env wins over the file
    assert settings.batching.max_batch_size == 8 and settings.safety.mode == "replace"
    assert ServingSettings(port=9200).port == 9200  # keyword arguments win over both

    as_json = tmp_path / "serving.json"
    as_json.write_text(json.dumps({"checkpoint_uri": "file:///other", "limits": {"max_n": 4}}))
    monkeypatch.delenv(CONFIG_FILE_ENV)
    from_json = ServingSettings(config_file=as_json)
    assert from_json.checkpoint_uri == "file:///other" and from_json.limits.max_n == 4
    with pytest.raises(FileNotFoundError):
        ServingSettings(config_file=tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "digits"}, "mlflow_uri"),
        ({"model": "digits@prod", "mlflow_uri": "http://m", "checkpoint_uri": "file:///c"}, "not both"),
        ({"model": "a@b@c", "mlflow_uri": "http://m"}, "name@alias"),
        ({"model": "digits@", "mlflow_uri": "http://m"}, "name@alias"),
        ({"canary": {"alias": "canary", "percent": 10}}, "canary.alias needs model"),
        ({"canary": {"percent": 101}}, "percent"),
        ({"limits": {"min_truncation": 2, "max_truncation": 1}}, "truncation"),
        ({"batching": {"max_batch": 8}}, "max_batch"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServingSettings(**kwargs)  # type: ignore[arg-type]


def test_tiles_and_jpeg_of_rgba() -> None:
    images = [np.full((4, 4, 4), i * 40, dtype=np.uint8) for i in range(5)]
    canvas = tile(images)
    assert canvas.shape == (2 * 6 + 2, 3 * 6 + 2, 4)
    assert canvas[0, 0, 3] == 255 and (canvas[2:6, 8:12] == 40).all()  # opaque padding; tile 1 in row 0
    assert encode_image(images[0], "jpeg")[:2] == b"\xff\xd8"
    assert encode_image(images[0], "png")[:4] == b"\x89PNG"
    assert encode_image(images[0], "npy").startswith(b"\x93NUMPY")

"""Feature extractors: raw, FID Inception (seeded random weights, never downloaded) and the bundled digits CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ganops.trainer.evaluate import (
    DigitsFeatures,
    FeatureExtractor,
    FeatureExtractorError,
    InceptionV3,
    RawFeatures,
    build_extractor,
    default_extractor_name,
)
from ganops.trainer.evaluate.features import DIGITS_WEIGHTS_PATH
from ganops.trainer.evaluate.inception import FIDInceptionV3


@pytest.fixture(scope="module")
def inception_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return FIDInceptionV3().state_dict()


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory, inception_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    # Like pytorch-fid's file: a plain state dict without BatchNorm num_batches_tracked buffers.
    torch.save({k: v for k, v in inception_state.items() if not k.endswith("num_batches_tracked")}, path)
    return path


def test_raw_features() -> None:
    points = torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    out = RawFeatures(2)(points)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, points.numpy())
    images = torch.zeros(3, 1, 4, 4)
    assert RawFeatures(16)(images).shape == (3, 16)
    with pytest.raises(ValueError, match="dimension"):
        RawFeatures(2)(images)
    assert isinstance(build_extractor("raw"), FeatureExtractor)


def test_inception_architecture_matches_pytorch_fid_state_dict(inception_state: dict[str, torch.Tensor]) -> None:
    # torchvision Inception3(aux_logits=False) with a 1008-class fc has 23,850,960 parameters.
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960
    assert inception_state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert inception_state["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert inception_state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert inception_state["fc.weight"].shape == (1008, 2048)


def test_inception_features_deterministic(inception_weights: Path) -> None:
    first = InceptionV3(str(inception_weights), batch_size=2)
    second = build_extractor("inception", weights_uri=inception_weights.as_uri())
    assert first.dim == 2048 and first.name == "inception"
    gray = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = first(gray)
    b = second(gray.repeat(1, 3, 1, 1))  # grayscale is repeated to three channels
    assert a.shape == (2, 2048) and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])


def test_inception_missing_file_names_the_uri(tmp_path: Path) -> None:
    uri = (tmp_path / "nowhere.pth").as_uri()
    with pytest.raises(FeatureExtractorError, match=r"nowhere\.pth"):
        InceptionV3(uri)
    with pytest.raises(FeatureExtractorError, match="weights_uri"):
        build_extractor("inception")


def test_inception_wrong_shape_names_the_key(
    tmp_path: Path, inception_state: dict[str, torch.Tensor]
) -> None:
    bad = dict(inception_state)
    bad["Mixed_6c.branch7x7_2.conv.weight"] = torch.zeros(160, 160, 7, 1)
    del bad["fc.bias"]
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(FeatureExtractorError) as info:
        InceptionV3(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "Mixed_6c.branch7x7_2.conv.weight: expected (160, 160, 1, 7), got (160, 160, 7, 1)" in message
    assert "missing keys: fc.bias" in message


def test_inception_rejects_non_state_dict_and_unknown_scheme(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(FeatureExtractorError, match=r"garbage\.pth"):
        InceptionV3(str(path))
    with pytest.raises(FeatureExtractorError, match="load_bytes"):
        InceptionV3("s3://bucket/pt_inception.pth")


def test_weights_through_load_bytes_and_safetensors(
    tmp_path: Path, inception_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in inception_state.items()}, str(path))
    seen: list[str] = []

    def load_bytes(uri: str) -> bytes:
        seen.append(uri)
        return path.read_bytes()

    extractor = build_extractor("inception", weights_uri="s3://models/inception.safetensors", load_bytes=load_bytes)
    assert seen == ["s3://models/inception.safetensors"]
    assert extractor.dim == 2048


def test_digits_weights_are_small_and_documented() -> None:
    assert DIGITS_WEIGHTS_PATH.stat().st_size < 1_000_000
    sidecar = json.loads(DIGITS_WEIGHTS_PATH.with_suffix(".json").read_text())
    assert sidecar["heldout_accuracy"] >= 0.97
    assert sidecar["split"] == {"test_size": 0.25, "random_state": 0, "stratify": True}


def test_digits_heldout_accuracy_and_features() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.asarray(data.images, dtype=np.float32) / 8.0 - 1.0
    _, x_test, _, y_test = train_test_split(
        images, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    x = torch.from_numpy(x_test).unsqueeze(1)
    extractor = build_extractor("digits")
    assert isinstance(extractor, DigitsFeatures)
    accuracy = float(np.mean(extractor.classify(x) == y_test))
    assert accuracy >= 0.97
    # Through the resolutions a GAN may produce (the dataset loader resizes with antialiasing).
    up = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert float(np.mean(extractor.classify(up) == y_test)) >= 0.97
    features = extractor(x)
    assert features.shape == (len(x_test), 128) == (len(x_test), extractor.dim)
    assert features.dtype == np.float32
    assert extractor(x.repeat(1, 3, 1, 1)).shape == (len(x_test), 128)


def test_digits_wrong_weights_are_rejected(tmp_path: Path, inception_weights: Path) -> None:
    with pytest.raises(FeatureExtractorError, match="digits CNN"):
        DigitsFeatures(str(inception_weights))


def test_unknown_extractor_and_auto_resolution() -> None:
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_extractor("vgg")
    assert default_extractor_name("builtin:grid25") == "raw"
    assert default_extractor_name("builtin:digits") == "digits"
    assert default_extractor_name("s3://bucket/faces/") == "inception"

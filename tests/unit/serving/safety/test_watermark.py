"""Watermark: verifies on our outputs after a PNG round trip, never on clean images, payload round trip.

The false-positive rate is measured on 260 clean images of many kinds (real digits at several sizes, tinted
digits, uniform noise, gradients, smooth noise, photo crops) plus 60 images watermarked with another key.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from ganops.images import encode_png
from ganops.serving.safety import Watermarker
from ganops.serving.safety.watermark import DWT_MIN_PIXELS, WatermarkError

TEST_KEY = b"ganops-test-watermark-key-0001"  # tests only: real keys come from a Secret
OTHER_KEY = b"some-other-operator-key-123456"
MODEL = "digits-dcgan:7"


def png_round_trip(pixels: np.ndarray) -> np.ndarray:
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels))))
    return decoded[..., None] if decoded.ndim == 2 else decoded


def jpeg_round_trip(pixels: np.ndarray, quality: int, subsampling: int = 2) -> np.ndarray:
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    decoded = np.asarray(Image.open(buffer))
    return decoded[..., None] if decoded.ndim == 2 else decoded


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    out = np.asarray(image)
    return out[..., None] if out.ndim == 2 else out


def photo() -> np.ndarray | None:
    try:
        import matplotlib
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    return np.asarray(Image.open(path).convert("RGB")) if os.path.isfile(path) else None


def clean_images() -> list[np.ndarray]:
    """260 unwatermarked images of the kinds and sizes this platform serves (8-64 px) and a few larger."""
    rng = np.random.default_rng(2024)
    digits = (load_digits().images / 16.0 * 255).astype(np.uint8)[..., None]
    out: list[np.ndarray] = []
    for i in range(80):  # real digits, grey, 8-32 px
        out.append(resize(digits[i], (8, 16, 28, 32)[i % 4]) if i % 4 else digits[i])
    for i in range(40):  # tinted digits, RGB / RGBA
        d = resize(digits[100 + i], (32, 64)[i % 2])[..., 0]
        rgb = np.stack([d, 255 - d, (d // 2 + 60).astype(np.uint8)], axis=2)
        out.append(np.concatenate([rgb, np.full_like(d[..., None], 255)], axis=2) if i % 5 == 0 else rgb)
    for i in range(40):  # uniform noise
        size, channels = (8, 16, 32, 64)[i % 4], (1, 3)[i % 2]
        out.append(rng.integers(0, 256, (size, size, channels), dtype=np.uint8))
    for i in range(40):  # gradients
        size = (16, 32, 64)[i % 3]
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
        angle = rng.uniform(0, np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / (abs(np.cos(angle)) + abs(np.sin(angle)))
        colours = rng.uniform(0, 255, (2, 3))
        out.append(np.clip(colours[0] + (colours[1] - colours[0]) * ramp[..., None], 0, 255).astype(np.uint8))
    for i in range(40):  # smooth noise
        size = (16, 32, 64)[i % 3]
        out.append(resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), size))
    picture = photo()
    for _ in range(20):  # photo crops (or more smooth noise without matplotlib)
        if picture is None:
            out.append(resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), 48))
        else:
            y, x = rng.integers(0, picture.shape[0] - 64), rng.integers(0, picture.shape[1] - 64)
            out.append(np.ascontiguousarray(picture[y : y + 64, x : x + 64]))
    return out


@pytest.fixture(scope="module")
def marker() -> Watermarker:
    return Watermarker(TEST_KEY, 32, model_id=MODEL)


@pytest.fixture(scope="module")
def clean() -> list[np.ndarray]:
    return clean_images()


def test_verifies_on_our_outputs_after_png_round_trip(marker: Watermarker, clean: list[np.ndarray]) -> None:
    results = [marker.verify(png_round_trip(marker.embed(pixels))) for pixels in clean]
    assert sum(r.present for r in results) == len(clean)  # TPR = 100 % over 260 images
    assert {r.payload for r in results} == {marker.payload_for(MODEL)}
    assert {r.method for r in results} == {"keyed-qim"}
    assert min(r.score for r in results) == 1.0


def test_never_verifies_on_clean_images(marker: Watermarker, clean: list[np.ndarray]) -> None:
    assert len(clean) >= 200
    results = [marker.verify(png_round_trip(pixels)) for pixels in clean]
    false_positives = sum(r.present for r in results)
    assert false_positives == 0  # FPR = 0 / 260
    assert all(r.payload is None for r in results)
    # Independent of the 32-bit tag, the agreement score alone separates clean images (< 0.75) from ours (1.0).
    assert max(r.score for r in results) < marker.min_score


def test_another_key_does_not_verify(marker: Watermarker, clean: list[np.ndarray]) -> None:
    other = Watermarker(OTHER_KEY, 32, model_id=MODEL)
    theirs = [other.embed(pixels) for pixels in clean[::4][:60]]
    assert not any(marker.verify(pixels).present for pixels in theirs)
    assert all(other.verify(pixels).present for pixels in theirs)


def test_payload_names_the_model(marker: Watermarker) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a = marker.verify(marker.embed(pixels, model_id="m:1"))
    b = marker.verify(marker.embed(pixels, model_id="m:2"))
    assert a.payload == marker.payload_for("m:1") and b.payload == marker.payload_for("m:2")
    assert a.payload != b.payload and len(a.payload or "") == 8
    wide = Watermarker(TEST_KEY, 64, model_id=MODEL)
    result = wide.verify(png_round_trip(wide.embed(pixels)))
    assert result.present and result.payload == wide.payload_for(MODEL) and len(result.payload or "") == 16


def test_embedding_is_invisible_and_keeps_layout(marker: Watermarker, clean: list[np.ndarray]) -> None:
    diffs = []
    for pixels in clean:
        marked = marker.embed(pixels)
        assert marked.shape == pixels.shape and marked.dtype == np.uint8
        diff = np.abs(marked.astype(int) - pixels.astype(int))
        assert diff.max() <= 3  # 2 grey levels, 3 where a value sits at 0 or 255
        if pixels.shape[2] == 4:
            assert np.array_equal(marked[..., 3], pixels[..., 3])  # alpha untouched
        diffs.append(diff.mean())
    assert float(np.mean(diffs)) < 1.5
    grey2d = marker.embed(clean[0][..., 0])  # HW grey arrays too
    assert grey2d.ndim == 2 and marker.verify(grey2d).present


def test_jpeg_destroys_the_small_image_watermark_and_verify_says_so(marker: Watermarker) -> None:
    rng = np.random.default_rng(5)
    base = resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), 64)
    marked = marker.embed(base)
    for quality in (95, 75):
        result = marker.verify(jpeg_round_trip(marked, quality))
        assert not result.present and result.payload is None and result.method == "keyed-qim"


def test_too_small_images_are_refused(marker: Watermarker) -> None:
    tiny = np.zeros((4, 4, 3), dtype=np.uint8)  # 48 colour values < 64 message bits
    with pytest.raises(WatermarkError):
        marker.embed(tiny)
    assert marker.verify(tiny).present is False
    with pytest.raises(WatermarkError):
        marker.embed(np.zeros((8, 8, 3), dtype=np.float32))


def test_key_and_payload_validation() -> None:
    with pytest.raises(ValueError):
        Watermarker(b"short")
    with pytest.raises(ValueError):
        Watermarker(TEST_KEY, payload_bits=20)
    assert "ganops-test" not in repr(Watermarker(TEST_KEY))


def test_large_images_also_carry_dwtdct(marker: Watermarker) -> None:
    pytest.importorskip("imwatermark", reason="invisible-watermark is not installed")
    picture = photo()
    if picture is None:
        pytest.skip(reason="needs matplotlib's sample photo (dwtDct is meant for natural images)")
    large = resize(picture, 256)
    assert large.shape[0] * large.shape[1] >= DWT_MIN_PIXELS
    marked = marker.embed(large)
    assert marker.verify(png_round_trip(marked)).method == "keyed-qim"  # the exact layer wins on PNG
    # JPEG without chroma subsampling wipes out the QIM layer; dwtDct still finds the model's message.
    jpeg = jpeg_round_trip(marked, 95, subsampling=0)
    result = marker.verify(jpeg, model_ids=["other:1"])
    assert result.present and result.method == "dwtDct" and result.payload == marker.payload_for(MODEL)
    assert not marker.verify(large).present and not marker.verify(jpeg_round_trip(large, 95, 0)).present


def test_large_images_without_imwatermark_still_get_the_qim_layer(
    marker: Watermarker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ganops.serving.safety import watermark

    monkeypatch.setattr(watermark, "_IMWATERMARK", [False])
    large = resize(np.random.default_rng(9).integers(0, 256, (8, 8, 3), dtype=np.uint8), 256)
    result = marker.verify(png_round_trip(marker.embed(large)))
    assert result.present and result.method == "keyed-qim"

"""The watermark's QIM layout in chunks (issue 13, finding 3): images of one chunk keep the layout they always had,
larger ones round-trip, and verification of any shape needs O(chunk) memory and leaves nothing behind."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc

import numpy as np
import pytest

from ganops.serving.safety import Watermarker
from ganops.serving.safety.watermark import LAYOUT_CHUNK, QIM_STEP, TARGET_CACHE_BYTES

KEY = b"ganops-test-watermark-key-0001"
MODEL = "digits-dcgan:7"


def old_target(marker: Watermarker, shape: tuple[int, int, int], model_id: str) -> np.ndarray:
    """The layout as it was before chunks, written out: one SHAKE-256 stream for the whole image, a global argsort.
    Images served before (8-256 px samples) must verify the same after."""
    n = shape[0] * shape[1] * shape[2]
    seed = marker._mac(b"layout", struct.pack("<III", *shape))
    stream = hashlib.shake_256(seed).digest(9 * n)
    order = np.argsort(np.frombuffer(stream[: 8 * n], dtype="<u8"), kind="stable")
    bit_of_value = np.empty(n, dtype=np.int64)
    bit_of_value[order] = np.arange(n) % marker.message_bits
    extra = np.frombuffer(stream[8 * n :], dtype=np.uint8)
    whitening, dither = (extra & 1).astype(np.int64), ((extra >> 1) % QIM_STEP).astype(np.int64)
    message = marker._message(model_id)
    return (dither + QIM_STEP // 2 * (message[bit_of_value] ^ whitening)) % QIM_STEP


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3), (64, 64, 3), (256, 256, 3), (295, 296, 3)])
def test_images_of_one_chunk_keep_the_layout_they_always_had(shape: tuple[int, int, int]) -> None:
    assert shape[0] * shape[1] * shape[2] <= LAYOUT_CHUNK
    marker = Watermarker(KEY, model_id=MODEL)
    assert np.array_equal(marker._target(shape, MODEL), old_target(marker, shape, MODEL))


@pytest.mark.parametrize("shape", [(300, 300, 3), (600, 599, 4), (1030, 1030, 1)])
def test_images_of_several_chunks_round_trip(shape: tuple[int, int, int]) -> None:
    marker = Watermarker(KEY, model_id=MODEL, use_dwt=False)
    rng = np.random.default_rng(shape[0])
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    marked = marker.embed(pixels)
    colour = min(shape[2], 3)
    assert shape[0] * shape[1] * colour > LAYOUT_CHUNK
    assert np.abs(marked.astype(int) - pixels.astype(int)).max() <= QIM_STEP // 2 + 1
    result = marker.verify(marked)
    assert result.present and result.payload == marker.payload_for(MODEL) and result.score == 1.0
    assert not marker.verify(pixels).present
    other = Watermarker(b"another-key-of-16-bytes-or-more", use_dwt=False)
    assert not other.verify(marked).present
    # Every message bit gets its share of the values, as with one global layout (dealt on across chunks).
    counts = np.zeros(marker.message_bits, dtype=np.int64)
    for chunk in marker._layouts((shape[0], shape[1], colour)):
        counts += np.bincount(chunk.bit_of_value, minlength=marker.message_bits)
    assert counts.max() - counts.min() <= 1


def test_verifying_a_large_upload_needs_chunk_sized_memory_and_keeps_nothing() -> None:
    marker = Watermarker(KEY, model_id=MODEL, use_dwt=False)
    pixels = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)  # 5.9 M values, 23 chunks
    tracemalloc.start()
    try:
        marker.verify(pixels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One chunk's layout (stream 9 B, argsort 8 B, three uint8 arrays per value) and its temporaries: ~8 MB.
    # The whole-image layout of before held 24 B per value (141 MB here) and kept it per shape.
    assert peak < 16 * 1024 * 1024, peak
    assert not marker._targets  # verification caches nothing
    for side in (501, 502, 503):
        marker.verify(np.zeros((side, side, 3), dtype=np.uint8))
    assert not marker._targets and marker._target_bytes == 0


def test_the_embedding_cache_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from ganops.serving.safety import watermark

    budget = 4 * 1024 * 1024
    monkeypatch.setattr(watermark, "TARGET_CACHE_BYTES", budget)
    marker = Watermarker(KEY, model_id=MODEL, use_dwt=False)
    shape = (512, 512, 3)  # 0.75 MiB of targets each (one byte per colour value)
    for model in range(12):
        marker._target(shape, f"m:{model}")
        assert marker._target_bytes <= budget
    assert len(marker._targets) == budget // (512 * 512 * 3)
    assert (shape, "m:11") in marker._targets and (shape, "m:0") not in marker._targets  # least recent went first
    large = (700, 700, 3)  # more than a quarter of the budget: computed, not kept
    assert marker._target(large, MODEL).shape == (700 * 700 * 3,)
    assert (large, MODEL) not in marker._targets
    assert TARGET_CACHE_BYTES == 64 * 1024 * 1024

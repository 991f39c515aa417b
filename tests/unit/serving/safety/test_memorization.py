"""Memorization index and filter: copies of training images are blocked, novel images pass; safetensors I/O."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ganops.serving.safety import (
    MemorizationFilter,
    MemorizationIndex,
    RequestContext,
    SafetyPipeline,
    Sample,
    make_samples,
    pixel_features,
)
from ganops.serving.safety.memorization import nearest_distances

CTX = RequestContext("req")


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    images: np.ndarray = load_digits().images.astype(np.float32) / 16.0 * 2.0 - 1.0
    return images[:, None]  # (1797, 1, 8, 8)


@pytest.fixture(scope="module")
def index(digits: np.ndarray) -> MemorizationIndex:
    return MemorizationIndex.build(digits[:1500])


def test_threshold_is_a_low_percentile_of_train_nn_distances(index: MemorizationIndex) -> None:
    meta = index.metadata
    assert meta["count"] == 1500 and meta["feature"] == "pixels-grey16-l2" and meta["feature_dim"] == 256
    assert index.threshold == pytest.approx(meta["factor"] * meta["train_nn_p1"])
    assert 0 < index.threshold < meta["train_nn_min"] < meta["train_nn_median"]


def test_training_copies_blocked_novel_images_pass(digits: np.ndarray, index: MemorizationIndex) -> None:
    flt = MemorizationFilter(index)
    copies = make_samples(digits[[0, 7, 1499]])
    assert [v.outcome for v in flt.check(copies, CTX)] == ["block"] * 3
    # Held-out real digits: the filter's false-positive rate on novel data, measured on 297 images.
    held_out = make_samples(digits[1500:])
    verdicts = flt.check(held_out, CTX)
    assert sum(v.outcome == "block" for v in verdicts) == 0
    assert min(v.score for v in verdicts if v.score is not None) > index.threshold


def test_slightly_perturbed_copies_are_still_blocked(digits: np.ndarray, index: MemorizationIndex) -> None:
    rng = np.random.default_rng(0)
    noisy = np.clip(digits[:50] + rng.normal(0, 0.03, digits[:50].shape), -1, 1).astype(np.float32)
    brighter = np.clip(digits[50:100] * 0.8 + 0.1, -1, 1)  # contrast/brightness change
    verdicts = MemorizationFilter(index).check(make_samples(np.concatenate([noisy, brighter])), CTX)
    assert all(v.outcome == "block" for v in verdicts)


def test_uint8_pixels_without_raw_are_compared_too(digits: np.ndarray, index: MemorizationIndex) -> None:
    pixels = make_samples(digits[:3])
    bare = [Sample(s.index, s.pixels) for s in pixels]  # as if only the encoded image were known
    assert [v.outcome for v in MemorizationFilter(index).check(bare, CTX)] == ["block"] * 3


def test_save_load_round_trip_is_safetensors_without_pickle(index: MemorizationIndex, tmp_path: Path) -> None:
    path = tmp_path / "memorization.safetensors"
    index.save(path)
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert set(header) == {"__metadata__", "features"}
    assert header["features"]["dtype"] == "F32" and header["features"]["shape"] == [1500, 256]
    assert json.loads(header["__metadata__"]["ganops.memorization"])["threshold"] == index.threshold
    from safetensors.numpy import load_file

    assert load_file(path)["features"].shape == (1500, 256)  # any safetensors reader can open it

    loaded = MemorizationIndex.load(path)
    assert loaded.threshold == index.threshold and loaded.metadata["count"] == 1500
    assert np.array_equal(loaded.features, index.features)


def test_load_refuses_foreign_files(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": np.zeros((2, 2), dtype=np.float32)}, path)
    with pytest.raises(ValueError, match="not a ganops memorization index"):
        MemorizationIndex.load(path)


def test_exact_duplicates_in_training_do_not_zero_the_threshold(digits: np.ndarray) -> None:
    train = np.concatenate([digits[:200], digits[:50]])  # 50 exact duplicates
    index = MemorizationIndex.build(train)
    assert index.metadata["train_nn_exact_duplicates"] == 100
    assert index.threshold > 0.05
    assert MemorizationFilter(index).check(make_samples(digits[:1]), CTX)[0].outcome == "block"


def test_points_index() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (500, 2)).astype(np.float32)
    index = MemorizationIndex.build(train)
    assert index.metadata["feature"] == "points"
    far = np.array([[5.0, 5.0], [-4.0, 4.5]])
    verdicts = MemorizationFilter(index).check(make_samples(np.concatenate([train[:3], far])), CTX)
    assert [v.outcome for v in verdicts] == ["block", "block", "block", "pass", "pass"]


def test_pluggable_feature_extractor_and_explicit_threshold(digits: np.ndarray) -> None:
    def mean_rows(batch: np.ndarray) -> np.ndarray:
        rows: np.ndarray = np.asarray(batch, dtype=np.float32).mean(axis=(1, 3))
        return rows

    mean_rows.feature_name = "mean-rows"  # type: ignore[attr-defined]
    index = MemorizationIndex.build(digits[:300], mean_rows, threshold=1e-3)
    assert index.metadata["feature"] == "mean-rows" and index.threshold == 1e-3
    flt = MemorizationFilter(index, mean_rows)
    assert [v.outcome for v in flt.check(make_samples(digits[[0, 400]]), CTX)] == ["block", "pass"]
    with pytest.raises(ValueError, match="built with features"):
        MemorizationFilter(index, pixel_features)


def test_a_mismatched_index_fails_closed_in_the_pipeline(digits: np.ndarray) -> None:
    index = MemorizationIndex.build(digits[:100])
    index.features = index.features[:, :10]  # e.g. an index built with another extractor
    decisions = SafetyPipeline([MemorizationFilter(index)]).run(make_samples(digits[500:502]), CTX)
    assert [d.allowed for d in decisions] == [False, False]
    assert decisions[0].reason == "filter memorization failed: ValueError"


def test_nearest_distances_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    q, r = rng.normal(size=(37, 5)), rng.normal(size=(101, 5))
    d, idx = nearest_distances(q, r, chunk=8)
    brute = np.linalg.norm(q[:, None] - r[None], axis=2)
    assert np.allclose(d, brute.min(axis=1), atol=1e-5) and np.array_equal(idx, brute.argmin(axis=1))
    d_self, idx_self = nearest_distances(r[:20], r, exclude_self=True, chunk=7)
    brute_self = np.linalg.norm(r[:20, None] - r[None], axis=2)
    brute_self[np.arange(20), np.arange(20)] = np.inf
    assert np.allclose(d_self, brute_self.min(axis=1), atol=1e-5)
    assert (idx_self != np.arange(20)).all()


def test_pixel_features_are_normalised_and_size_independent() -> None:
    rng = np.random.default_rng(0)
    small = rng.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)
    big = np.repeat(np.repeat(small, 4, axis=2), 4, axis=3)  # the same pictures at 32x32
    fs, fb = pixel_features(small), pixel_features(big)
    assert fs.shape == (4, 256) and np.allclose(np.linalg.norm(fs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(fs, fb, atol=1e-5)
    assert not pixel_features(np.zeros((1, 1, 8, 8))).any()  # constant → zero vector, no NaN

"""Improved precision and recall on constructed sets, and the k-NN radii against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from ganops.trainer.evaluate import InsufficientSamples, precision_recall
from ganops.trainer.evaluate.precision_recall import knn_radii


def test_radii_match_brute_force_and_exclude_self() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    expected = np.sort(d2, axis=1)[:, 2]
    np.testing.assert_allclose(knn_radii(x, 3, batch_size=7), expected, rtol=1e-4)


def test_generated_equal_to_real_gives_one_one() -> None:
    rng = np.random.default_rng(1)
    real = rng.standard_normal((300, 8))
    result = precision_recall(real, real.copy(), batch_size=64)
    assert result.precision == 1.0
    assert result.recall == 1.0


def test_tight_cluster_in_one_blob_high_precision_low_recall() -> None:
    rng = np.random.default_rng(2)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    real = np.concatenate([c + rng.standard_normal((200, 2)) for c in centers])
    fake = centers[0] + 0.2 * rng.standard_normal((400, 2))
    result = precision_recall(real, fake)
    assert result.precision > 0.95
    assert result.recall < 0.3


def test_disjoint_sets_give_zero() -> None:
    rng = np.random.default_rng(3)
    real = rng.standard_normal((200, 16))
    fake = rng.standard_normal((200, 16)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_insufficient_samples() -> None:
    with pytest.raises(InsufficientSamples, match=r"n=3 < k\+1=4"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))

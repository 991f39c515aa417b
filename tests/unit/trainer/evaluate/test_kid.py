"""KID: unbiased MMD² with the cubic polynomial kernel, checked against a naive double loop."""

from __future__ import annotations

import numpy as np
import pytest

from ganops.trainer.evaluate import InsufficientSamples, kernel_inception_distance
from ganops.trainer.evaluate.kid import mmd2_unbiased


def naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / d + 1.0) ** 3)

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return float(xx + yy - 2.0 * xy)


def test_mmd2_matches_naive_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((25, 6))
    y = rng.standard_normal((25, 6)) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(naive_mmd2(x, y), rel=1e-10)


def test_kid_with_full_subsets_equals_mmd2() -> None:
    # subset_size >= n: every subset is a permutation of the whole set, so every estimate is the same.
    rng = np.random.default_rng(1)
    real = rng.standard_normal((30, 5))
    fake = rng.standard_normal((30, 5)) * 1.5
    result = kernel_inception_distance(real, fake, num_subsets=3, subset_size=1000, seed=0, dtype=np.float64)
    assert result.mean == pytest.approx(naive_mmd2(fake, real), rel=1e-10)
    assert result.std == pytest.approx(0.0, abs=1e-12)


def test_float32_kernels_agree_with_float64() -> None:
    rng = np.random.default_rng(4)
    real = np.maximum(rng.standard_normal((400, 256)), 0.0)
    fake = np.maximum(rng.standard_normal((400, 256)) + 0.1, 0.0)
    a = kernel_inception_distance(real, fake, num_subsets=4, subset_size=200, seed=0)
    b = kernel_inception_distance(real, fake, num_subsets=4, subset_size=200, seed=0, dtype=np.float64)
    assert a.mean == pytest.approx(b.mean, abs=1e-6, rel=1e-4)
    assert a.mean > 0


def test_identical_distribution_near_zero_and_shift_larger() -> None:
    rng = np.random.default_rng(2)
    real = rng.standard_normal((600, 16))
    same = rng.standard_normal((600, 16))
    shifted = rng.standard_normal((600, 16)) + 0.5
    kid_same = kernel_inception_distance(real, same, num_subsets=10, subset_size=200, seed=0)
    kid_shift = kernel_inception_distance(real, shifted, num_subsets=10, subset_size=200, seed=0)
    assert abs(kid_same.mean) < 0.02
    assert kid_shift.mean > 10 * max(abs(kid_same.mean), kid_same.std)
    assert kid_same.std > 0


def test_deterministic_given_seed() -> None:
    rng = np.random.default_rng(3)
    real = rng.standard_normal((300, 8))
    fake = rng.standard_normal((250, 8))
    a = kernel_inception_distance(real, fake, num_subsets=5, subset_size=100, seed=7)
    b = kernel_inception_distance(real, fake, num_subsets=5, subset_size=100, seed=np.random.default_rng(7))
    c = kernel_inception_distance(real, fake, num_subsets=5, subset_size=100, seed=8)
    assert a == b
    assert a != c


def test_insufficient_samples() -> None:
    with pytest.raises(InsufficientSamples, match="insufficient samples"):
        kernel_inception_distance(np.zeros((1, 4)), np.zeros((10, 4)))

"""Fréchet distance: closed forms, an independent pytorch-fid-style reference, singular and small-n paths."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import scipy.linalg

from ganops.trainer.evaluate import (
    InsufficientSamples,
    feature_statistics,
    frechet_distance,
    frechet_distance_fast,
    frechet_distance_from_features,
)
from ganops.trainer.evaluate import frechet as frechet_module


def reference_fid(x: np.ndarray, y: np.ndarray) -> float:
    """Independent reference: statistics and pytorch-fid's formula written out here with scipy's sqrtm."""
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def correlated(rng: np.random.Generator, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    out: np.ndarray = np.maximum(rng.standard_normal((n, d)) @ mixing * scale + shift, 0.0)  # ReLU, like pool3
    return out


def test_identical_sets_give_zero() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16))
    mu, sigma = feature_statistics(x)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_fast(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_from_features(x, x, method="scipy") == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_from_features(x, x) == pytest.approx(0.0, abs=1e-6)


def test_shifted_gaussians_with_identity_covariance_is_squared_mean_distance() -> None:
    d = 8
    mu1 = np.zeros(d)
    mu2 = np.arange(d, dtype=np.float64) / 3.0
    eye = np.eye(d)
    expected = float(mu2 @ mu2)
    assert frechet_distance(mu1, eye, mu2, eye) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance_fast(mu1, eye, mu2, eye) == pytest.approx(expected, rel=1e-12)


def test_diagonal_covariances_closed_form() -> None:
    # FID(N(0, diag a), N(m, diag b)) = |m|² + Σ (√a - √b)²
    a = np.array([1.0, 4.0, 9.0])
    b = np.array([4.0, 1.0, 0.25])
    m = np.array([1.0, -2.0, 0.5])
    expected = float(m @ m + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    for fn in (frechet_distance, frechet_distance_fast):
        assert fn(np.zeros(3), np.diag(a), m, np.diag(b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("method", ["scipy", "fast"])
def test_matches_independent_scipy_reference(method: str) -> None:
    rng = np.random.default_rng(1)
    x = correlated(rng, 600, 64)
    y = correlated(rng, 700, 64, shift=0.1, scale=1.2)
    expected = reference_fid(x, y)
    assert expected > 0.1
    assert frechet_distance_from_features(x, y, method=method) == pytest.approx(expected, rel=1e-6)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fast_backends_match_reference(backend: str) -> None:
    rng = np.random.default_rng(5)
    x = correlated(rng, 300, 48)
    y = correlated(rng, 300, 48, shift=0.2)
    mu1, s1 = feature_statistics(x)
    mu2, s2 = feature_statistics(y)
    value = frechet_distance_fast(mu1, s1, mu2, s2, backend=backend)  # type: ignore[arg-type]
    assert value == pytest.approx(reference_fid(x, y), rel=1e-6)


def test_same_distribution_small_value_agrees_with_reference() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((800, 32))
    y = rng.standard_normal((800, 32))
    expected = reference_fid(x, y)
    assert frechet_distance_from_features(x, y, method="scipy") == pytest.approx(expected, rel=1e-6)
    assert frechet_distance_from_features(x, y, method="fast") == pytest.approx(expected, rel=1e-6)


def test_singular_covariances_are_finite_and_agree() -> None:
    # Rank-deficient statistics (n < d) bypassing the sample-size guard: both paths stay finite and agree.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 20))
    y = rng.standard_normal((10, 20)) + 0.5
    mu1, s1 = feature_statistics(x, allow_rank_deficient=True)
    mu2, s2 = feature_statistics(y, allow_rank_deficient=True)
    assert np.linalg.matrix_rank(s1) < 20
    exact = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(exact)
    for backend in ("numpy", "torch"):
        fast = frechet_distance_fast(mu1, s1, mu2, s2, backend=backend)
        assert fast == pytest.approx(exact, rel=1e-5)


def test_non_finite_square_root_retries_with_eps_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[np.ndarray] = []
    real_sqrtm = frechet_module._sqrtm

    def flaky_sqrtm(a: np.ndarray) -> Any:
        calls.append(a.copy())
        if len(calls) == 1:
            return np.full_like(a, np.nan)
        return real_sqrtm(a)

    monkeypatch.setattr(frechet_module, "_sqrtm", flaky_sqrtm)
    s1 = np.diag([1.0, 0.0])
    s2 = np.diag([0.0, 1.0])
    eps = 1e-3
    value = frechet_distance(np.zeros(2), s1, np.ones(2), s2, eps=eps)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s1 + eps * np.eye(2)) @ (s2 + eps * np.eye(2)))
    # Tr sqrt((s1+eps)(s2+eps)) = 2 sqrt((1+eps) eps)
    assert value == pytest.approx(2.0 + 2.0 - 2 * 2 * np.sqrt((1 + eps) * eps), rel=1e-9)


def test_large_imaginary_component_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frechet_module, "_sqrtm", lambda a: np.eye(a.shape[0]) * (1 + 0.1j))
    with pytest.raises(ValueError, match="Imaginary component"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_insufficient_samples() -> None:
    rng = np.random.default_rng(4)
    with pytest.raises(InsufficientSamples, match=r"^insufficient samples \(n=16 < d\+1=17\)$"):
        feature_statistics(rng.standard_normal((16, 16)))
    with pytest.raises(InsufficientSamples) as info:
        frechet_distance_from_features(rng.standard_normal((100, 8)), rng.standard_normal((5, 8)))
    assert info.value.n == 5
    assert isinstance(info.value, ValueError)
    mu, sigma = feature_statistics(rng.standard_normal((17, 16)))  # n = d + 1 is enough
    assert sigma.shape == (16, 16) and mu.shape == (16,)


def test_statistics_are_float64_rowvar_false() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))

"""Mode coverage on the 2D-ring and 2D-grid (VEEGAN/PacGAN protocol)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ganops.trainer.evaluate import grid25_modes, mode_coverage, ring8_modes


def test_standard_mode_sets() -> None:
    ring = ring8_modes()
    assert ring.centers.shape == (8, 2) and ring.sigma == 0.01
    np.testing.assert_allclose(np.linalg.norm(ring.centers, axis=1), 1.0)
    np.testing.assert_allclose(ring.centers[2], [0.0, 1.0], atol=1e-12)
    grid = grid25_modes()
    assert grid.centers.shape == (25, 2) and grid.sigma == 0.05
    assert sorted(set(grid.centers[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert len({tuple(c) for c in grid.centers.tolist()}) == 25


def test_perfect_sampler_on_grid() -> None:
    grid = grid25_modes()
    samples = grid.sample(20_000, seed=0)
    result = mode_coverage(samples, grid)
    assert result.modes_captured == 25 and result.num_modes == 25
    expected = 1.0 - math.exp(-4.5)  # P(chi²₂ < 9) ≈ 0.98889
    assert result.high_quality_fraction == pytest.approx(expected, abs=0.005)
    assert result.high_quality_percent == pytest.approx(100 * expected, abs=0.5)
    assert sum(result.per_mode_counts) == round(result.high_quality_fraction * 20_000)
    assert min(result.per_mode_counts) > 600


def test_perfect_sampler_on_ring() -> None:
    ring = ring8_modes()
    result = mode_coverage(ring.sample(4000, seed=1), ring.centers, ring.sigma)
    assert result.modes_captured == 8
    assert result.high_quality_fraction > 0.97


def test_collapsed_sampler_captures_one_mode() -> None:
    grid = grid25_modes()
    rng = np.random.default_rng(2)
    samples = grid.centers[7] + grid.sigma * rng.standard_normal((2000, 2))
    result = mode_coverage(samples, grid)
    assert result.modes_captured == 1
    assert result.per_mode_counts[7] == sum(result.per_mode_counts)


def test_samples_between_modes_are_low_quality() -> None:
    grid = grid25_modes()
    samples = np.array([[1.0, 1.0], [3.0, -3.0], [0.0, 0.0]])  # two far from every mode, one on a mode
    result = mode_coverage(samples, grid)
    assert result.modes_captured == 1
    assert result.high_quality_fraction == pytest.approx(1 / 3)
    assert result.to_dict()["per_mode_counts"][12] == 1


def test_min_count_and_validation() -> None:
    grid = grid25_modes()
    samples = np.array([[0.0, 0.0], [2.0, 2.0], [2.0, 2.0]])
    assert mode_coverage(samples, grid, min_count=2).modes_captured == 1
    with pytest.raises(ValueError, match="sigma"):
        mode_coverage(samples, grid.centers)

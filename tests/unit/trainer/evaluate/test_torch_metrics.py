"""The evaluator's metrics in torch (on the evaluation device) against the numpy reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganops.trainer import device as device_mod
from ganops.trainer.evaluate import torch_metrics
from ganops.trainer.evaluate.errors import InsufficientSamples
from ganops.trainer.evaluate.frechet import feature_statistics, frechet_distance
from ganops.trainer.evaluate.kid import kernel_inception_distance
from ganops.trainer.evaluate.precision_recall import precision_recall


def features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, d)) + shift).astype(np.float32)


def test_fid_kid_precision_recall_match_the_numpy_references() -> None:
    real, fake = features(400, 16, 0), features(300, 16, 1, shift=0.3)
    tr, tf = torch.from_numpy(real), torch.from_numpy(fake)
    mu_r, s_r = feature_statistics(real)
    mu_f, s_f = feature_statistics(fake)
    tmu_r, ts_r = torch_metrics.statistics(tr)
    tmu_f, ts_f = torch_metrics.statistics(tf)
    np.testing.assert_allclose(ts_r.numpy(), s_r, rtol=1e-10, atol=1e-12)
    assert torch_metrics.frechet_distance(tmu_r, ts_r, tmu_f, ts_f) == pytest.approx(
        frechet_distance(mu_r, s_r, mu_f, s_f), rel=1e-9)
    kid = torch_metrics.kid(tr, tf, num_subsets=20, subset_size=100)
    ref = kernel_inception_distance(real, fake, num_subsets=20, subset_size=100)
    assert kid.mean == pytest.approx(ref.mean, rel=1e-5) and kid.std == pytest.approx(ref.std, rel=1e-4)
    assert tuple(torch_metrics.precision_recall(tr, tf, k=3, batch_size=128)) == pytest.approx(
        tuple(precision_recall(real, fake, k=3, batch_size=128)), abs=1 / 300)


def test_insufficient_samples_as_the_references_say() -> None:
    few = torch.from_numpy(features(3, 8, 2))
    with pytest.raises(InsufficientSamples):
        torch_metrics.statistics(few)
    with pytest.raises(InsufficientSamples):
        torch_metrics.precision_recall(few, few[:2])
    with pytest.raises(InsufficientSamples):
        torch_metrics.kid(few[:1], few)


def test_metrics_run_with_tf32_off_and_leave_the_setting_as_it_was() -> None:
    before = device_mod.fp32_precision()
    try:
        device_mod.set_fp32_precision("tf32", "tf32")
        with torch_metrics.ieee_matmuls():
            assert device_mod.fp32_precision() == {"matmul": "ieee", "conv": "ieee"}
        assert device_mod.fp32_precision() == {"matmul": "tf32", "conv": "tf32"}
    finally:
        device_mod.set_fp32_precision(before["matmul"], before["conv"])

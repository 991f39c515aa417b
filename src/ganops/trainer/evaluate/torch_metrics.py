"""The evaluator's metrics in torch, on the evaluation device: the same formulas as the numpy reference
implementations beside them (`frechet`, `kid`, `precision_recall`), so a GPU computes 2048-d statistics, 10k × 10k
kernels and nearest-neighbour radii in a few seconds instead of single-threaded numpy on the host.

Numerics: statistics and the Fréchet trace in float64 (as `feature_statistics` / `frechet_distance_fast`); KID
kernels in float32 summed in float64 (as `kid`); precision/recall distances in float32 (as the reference). Every
matmul runs with TF32 off (`ieee_matmuls`), whatever the training precision: the numbers must not depend on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from ganops.trainer.device import fp32_precision, set_fp32_precision
from ganops.trainer.evaluate.errors import InsufficientSamples
from ganops.trainer.evaluate.kid import KIDResult
from ganops.trainer.evaluate.precision_recall import PrecisionRecall

__all__ = ["frechet_distance", "ieee_matmuls", "kid", "precision_recall", "statistics"]


@contextlib.contextmanager
def ieee_matmuls() -> Iterator[None]:
    """Full fp32 matmuls and convolutions on CUDA inside the block (TF32 off); a no-op elsewhere."""
    before = fp32_precision()
    set_fp32_precision("ieee", "ieee")
    try:
        yield
    finally:
        set_fp32_precision(before["matmul"], before["conv"])


def statistics(features: torch.Tensor, *, allow_rank_deficient: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64, ``ddof=1``) of (n, d) features; `InsufficientSamples` as `feature_statistics`."""
    n, d = features.shape
    if n < 2:
        raise InsufficientSamples(n, "2")
    if n < d + 1 and not allow_rank_deficient:
        raise InsufficientSamples(n, f"d+1={d + 1}")
    x = features.to(torch.float64)
    mu = x.mean(dim=0)
    centred = x - mu
    with ieee_matmuls():
        sigma = (centred.T @ centred) / (n - 1)
    return mu, sigma


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """``‖mu1 − mu2‖² + Tr(s1 + s2 − 2·sqrt(s1·s2))`` from a symmetric eigenproblem (as `frechet_distance_fast`)."""
    s1 = (sigma1 + sigma1.T) / 2
    s2 = (sigma2 + sigma2.T) / 2
    with ieee_matmuls():
        root, info = torch.linalg.cholesky_ex(s1)
        if int(info) != 0:  # semi-definite: symmetric square root from an eigendecomposition
            w, v = torch.linalg.eigh(s1)
            root = (v * w.clamp(min=0.0).sqrt()) @ v.T
        m = root.T @ s2 @ root
        eigenvalues = torch.linalg.eigvalsh((m + m.T) / 2)
    diff = mu1 - mu2
    total = diff.dot(diff) + torch.trace(s1) + torch.trace(s2) - 2 * eigenvalues.clamp(min=0.0).sqrt().sum()
    return float(total)


def kid(real: torch.Tensor, fake: torch.Tensor, *, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> KIDResult:
    """KID with the subsets of `kernel_inception_distance` (same seed, same draw order), from three kernel matrices
    on the features' device; the evaluator's `kid_precomputed` is this on NumPy arrays."""
    n_real, n_fake = int(real.shape[0]), int(fake.shape[0])
    n = min(n_real, n_fake)
    if n < 2:
        raise InsufficientSamples(n, "2")
    m = min(n, subset_size)
    device = real.device
    rng = np.random.default_rng(seed)
    w_real = torch.zeros(num_subsets, n_real, dtype=torch.float64)
    w_fake = torch.zeros(num_subsets, n_fake, dtype=torch.float64)
    for i in range(num_subsets):  # the draw order of kernel_inception_distance: real, then fake
        w_real[i, torch.from_numpy(rng.choice(n_real, m, replace=False))] = 1.0
        w_fake[i, torch.from_numpy(rng.choice(n_fake, m, replace=False))] = 1.0
    w_real, w_fake = w_real.to(device), w_fake.to(device)
    x, y = fake.to(torch.float32), real.to(torch.float32)
    d = x.shape[1]

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a @ b.T) / d + 1.0).pow_(3).double()

    def within(w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:  # off-diagonal sum of each subset's block
        return ((w @ k) * w).sum(1) - w @ torch.diagonal(k)

    with ieee_matmuls():
        k_xx = kernel(x, x)
        sum_xx = within(w_fake, k_xx)
        del k_xx
        k_yy = kernel(y, y)
        sum_yy = within(w_real, k_yy)
        del k_yy
        cross = ((w_fake @ kernel(x, y)) * w_real).sum(1)
    values = ((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * cross / (m * m)).cpu()
    return KIDResult(mean=float(values.mean()), std=float(values.std(unbiased=False)))


def _squared_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    a_sq = (a * a).sum(dim=1)
    return (a_sq[:, None] - 2.0 * (a @ b.T) + b_sq[None, :]).clamp_(min=0.0)


def _knn_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    n = features.shape[0]
    if n < k + 1:
        raise InsufficientSamples(n, f"k+1={k + 1}")
    sq = (features * features).sum(dim=1)
    radii = torch.empty(n, dtype=torch.float32, device=features.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        d2 = _squared_distances(features[start:stop], features, sq)
        rows = torch.arange(stop - start, device=features.device)
        d2[rows, rows + start] = float("inf")  # exclude self
        radii[start:stop] = d2.kthvalue(k, dim=1).values
    return radii


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, batch_size: int) -> float:
    m_sq = (manifold * manifold).sum(dim=1)
    inside = torch.zeros((), dtype=torch.int64, device=queries.device)
    for start in range(0, queries.shape[0], batch_size):
        d2 = _squared_distances(queries[start:start + batch_size], manifold, m_sq)
        inside += (d2 <= radii[None, :]).any(dim=1).sum()
    return float(int(inside) / queries.shape[0])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3, batch_size: int = 1024) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019) as `precision_recall.precision_recall`, in torch."""
    x_real, x_fake = real.to(torch.float32), fake.to(torch.float32)
    with ieee_matmuls():
        real_radii = _knn_radii(x_real, k, batch_size)
        fake_radii = _knn_radii(x_fake, k, batch_size)
        precision = _coverage(x_real, real_radii, x_fake, batch_size)
        recall = _coverage(x_fake, fake_radii, x_real, batch_size)
    return PrecisionRecall(precision=precision, recall=recall)

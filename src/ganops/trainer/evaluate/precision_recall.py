"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019).

Each set's manifold is the union of balls centred on its samples, with radius the distance to the sample's
k-th nearest neighbour in the same set (the sample itself excluded). Precision is the fraction of generated
samples inside the real manifold; recall the fraction of real samples inside the generated manifold.
Distances are computed in row batches (float32, as in the reference implementation), so 10k × 2048 feature
sets need tens of MB, never an n × n matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ganops.trainer.evaluate.errors import InsufficientSamples

__all__ = ["PrecisionRecall", "knn_radii", "manifold_coverage", "precision_recall"]

F32 = NDArray[np.float32]


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _squared_norms(x: F32) -> F32:
    out: F32 = np.einsum("ij,ij->i", x, x)
    return out


def _squared_distances(a: F32, a_sq: F32, b: F32, b_sq: F32) -> F32:
    d2: F32 = a_sq[:, None] - 2.0 * (a @ b.T) + b_sq[None, :]
    np.maximum(d2, 0.0, out=d2)
    return d2


def knn_radii(features: F32, k: int = 3, *, batch_size: int = 1024) -> F32:
    """Squared distance from each sample to its k-th nearest neighbour in ``features`` (itself excluded)."""
    n = features.shape[0]
    if n < k + 1:
        raise InsufficientSamples(n, f"k+1={k + 1}")
    sq = _squared_norms(features)
    radii = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        d2 = _squared_distances(features[start:stop], sq[start:stop], features, sq)
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf  # exclude self
        radii[start:stop] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return radii


def manifold_coverage(
    manifold: F32, radii: F32, queries: F32, *, batch_size: int = 1024
) -> float:
    """Fraction of ``queries`` within the k-NN ball (squared ``radii``) of at least one ``manifold`` sample."""
    m_sq = _squared_norms(manifold)
    q_sq = _squared_norms(queries)
    inside = 0
    for start in range(0, queries.shape[0], batch_size):
        stop = min(start + batch_size, queries.shape[0])
        d2 = _squared_distances(queries[start:stop], q_sq[start:stop], manifold, m_sq)
        inside += int(np.count_nonzero((d2 <= radii[None, :]).any(axis=1)))
    return float(inside / queries.shape[0])


def precision_recall(
    real: ArrayLike, fake: ArrayLike, *, k: int = 3, batch_size: int = 1024
) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` against ``real`` features, both of shape (n, d).

    Raises :class:`InsufficientSamples` when either set has fewer than ``k + 1`` samples.
    """
    x_real = np.ascontiguousarray(np.asarray(real, dtype=np.float32))
    x_fake = np.ascontiguousarray(np.asarray(fake, dtype=np.float32))
    if x_real.ndim != 2 or x_fake.ndim != 2 or x_real.shape[1] != x_fake.shape[1]:
        raise ValueError(f"features must have shapes (n, d) and (m, d), got {x_real.shape} and {x_fake.shape}")
    if k < 1:
        raise ValueError("k must be >= 1")
    real_radii = knn_radii(x_real, k, batch_size=batch_size)
    fake_radii = knn_radii(x_fake, k, batch_size=batch_size)
    precision = manifold_coverage(x_real, real_radii, x_fake, batch_size=batch_size)
    recall = manifold_coverage(x_fake, fake_radii, x_real, batch_size=batch_size)
    return PrecisionRecall(precision=precision, recall=recall)

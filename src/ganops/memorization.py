"""The memorization index: its features and its format, shared by the trainer (which builds it from the training
set, `ganops.trainer.memorization`) and serving (whose memorization filter blocks outputs that are nearly copies of
a training example, `ganops.serving.safety.memorization`). numpy and safetensors only.

:meth:`MemorizationIndex.build` turns a training set into a feature matrix and picks a distance threshold; the
index is stored as safetensors (``features`` + JSON metadata, no pickle). Serving blocks every sample whose nearest
training neighbour is closer than the threshold.

Features (pluggable, any ``FeatureFn``: a batch in, an ``(N, D)`` float matrix out):

* images: :func:`pixel_features` - grey, area-resized to 16x16, mean removed, L2-normalised. Model-free and
  cheap; insensitive to brightness/contrast shifts; distances are in [0, 2] (0 = same picture).
* 2-D points: :func:`point_features` - the coordinates themselves.

Threshold: ``factor`` x the ``percentile``-th percentile (default 1st) of train-to-train nearest-neighbour
distances (self excluded, exact duplicates ignored), measured on up to ``max_threshold_queries`` training rows.
"A sample closer to a training example than nearly any training example is to its nearest neighbour."
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "FeatureFn",
    "MemorizationIndex",
    "default_feature_fn",
    "feature_name",
    "nearest_distances",
    "pixel_features",
    "point_features",
]

FeatureFn = Callable[[np.ndarray], np.ndarray]

FORMAT = "ganops.memorization/v1"
_METADATA_KEY = "ganops.memorization"
_DUPLICATE_EPS = 1e-6


@functools.lru_cache(maxsize=64)
def _area_matrix(src: int, dst: int) -> np.ndarray:
    """``(dst, src)`` weights averaging the source cells each destination cell covers (exact area resize).
    Cached (the serving path calls it per request): the returned array is read-only."""
    weights = np.zeros((dst, src), dtype=np.float64)
    scale = src / dst
    for i in range(dst):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(np.floor(lo)), min(src, int(np.ceil(hi)))):
            overlap = min(hi, j + 1) - max(lo, j)
            if overlap > 0:
                weights[i, j] = overlap
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights


def pixel_features(images: np.ndarray, size: int = 16) -> np.ndarray:
    """NCHW floats in [-1, 1] → ``(N, size*size)`` float32: grey, area-resized, mean removed, L2-normalised.

    A constant image maps to the zero vector (distance 1 to every normalised vector).
    """
    batch = np.asarray(images, dtype=np.float64)
    if batch.ndim != 4:
        raise ValueError(f"expected NCHW images, got shape {batch.shape}")
    grey = batch[:, :3].mean(axis=1) if batch.shape[1] in (3, 4) else batch[:, 0]
    rows, cols = _area_matrix(grey.shape[1], size), _area_matrix(grey.shape[2], size)
    small = (rows @ grey @ cols.T).reshape(len(batch), -1)  # rows·grey·colsᵀ: the area resize, batched
    small -= small.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(small, axis=1, keepdims=True)
    out: np.ndarray = np.divide(small, norms, out=np.zeros_like(small), where=norms > 1e-8)
    return out.astype(np.float32)


def point_features(points: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points → themselves as float32."""
    array = np.asarray(points, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected (N, D) points, got shape {array.shape}")
    return array


def default_feature_fn(data: np.ndarray) -> np.ndarray:
    """:func:`pixel_features` for NCHW images, :func:`point_features` for ``(N, D)`` points."""
    return pixel_features(data) if np.asarray(data).ndim == 4 else point_features(data)


def feature_name(fn: FeatureFn) -> str:
    return str(getattr(fn, "feature_name", getattr(fn, "__name__", type(fn).__name__)))


pixel_features.feature_name = "pixels-grey16-l2"  # type: ignore[attr-defined]
point_features.feature_name = "points"  # type: ignore[attr-defined]
default_feature_fn.feature_name = "default"  # type: ignore[attr-defined]


def _concrete_feature_name(fn: FeatureFn, data: np.ndarray) -> str:
    if fn is default_feature_fn:
        return feature_name(pixel_features if data.ndim == 4 else point_features)
    return feature_name(fn)


def nearest_distances(
    queries: np.ndarray,
    reference: np.ndarray,
    *,
    exclude_self: bool = False,
    chunk: int = 1024,
    reference_sq: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest reference row, and that row's index.

    ``exclude_self``: queries are ``reference[:len(queries)]``; row i's own match is ignored.
    ``reference_sq``: the reference rows' squared norms (float64), when the caller keeps them.
    """
    q = np.asarray(queries, dtype=np.float32)
    r = np.asarray(reference, dtype=np.float32)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"feature shapes do not match: {q.shape} vs {r.shape}")
    best = np.full(len(q), np.inf, dtype=np.float64)
    where = np.full(len(q), -1, dtype=np.int64)
    if len(r) == 0:
        return best, where
    r_sq = reference_sq if reference_sq is not None else (r.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, len(q), chunk):
        block = q[start : start + chunk]
        b_sq = (block.astype(np.float64) ** 2).sum(axis=1)
        d2 = b_sq[:, None] + r_sq[None, :] - 2.0 * (block @ r.T).astype(np.float64)
        if exclude_self:
            rows = np.arange(len(block))
            d2[rows, start + rows] = np.inf
        idx = np.argmin(d2, axis=1)
        best[start : start + len(block)] = d2[np.arange(len(block)), idx]
        where[start : start + len(block)] = idx
    # float32 dot products leave ~1e-6 of noise: recompute the winners exactly.
    finite = where >= 0
    exact = np.linalg.norm(q[finite].astype(np.float64) - r[where[finite]].astype(np.float64), axis=1)
    best[finite] = exact
    return best, where


@dataclass
class MemorizationIndex:
    """Training-set features and the distance threshold below which an output counts as memorised."""

    features: np.ndarray
    threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)
    _features_sq: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        train: np.ndarray,
        feature_fn: FeatureFn | None = None,
        *,
        percentile: float = 1.0,
        factor: float = 0.5,
        max_threshold_queries: int = 5000,
        seed: int = 0,
        threshold: float | None = None,
    ) -> MemorizationIndex:
        """Index ``train`` (NCHW in [-1, 1], or ``(N, 2)`` points). ``threshold`` overrides the estimate."""
        fn = feature_fn or default_feature_fn
        data = np.asarray(train)
        return cls.from_features(fn(data), _concrete_feature_name(fn, data), percentile=percentile, factor=factor,
                                 max_threshold_queries=max_threshold_queries, seed=seed, threshold=threshold)

    @classmethod
    def from_features(
        cls,
        computed: np.ndarray,
        feature: str,
        *,
        percentile: float = 1.0,
        factor: float = 0.5,
        max_threshold_queries: int = 5000,
        seed: int = 0,
        threshold: float | None = None,
    ) -> MemorizationIndex:
        """Index training features already computed (in chunks, say) with the feature function named ``feature``
        (serving checks its filter computes the same)."""
        features = np.ascontiguousarray(computed, dtype=np.float32)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError("a memorization index needs at least two training examples")
        # Train-to-train nearest neighbours on a sample of rows, self excluded.
        order = np.random.default_rng(seed).permutation(len(features))[:max_threshold_queries]
        reordered = np.concatenate([features[order], np.delete(features, order, axis=0)])
        nn, _ = nearest_distances(reordered[: len(order)], reordered, exclude_self=True)
        positive = nn[nn > _DUPLICATE_EPS]
        stats: dict[str, Any] = {
            "train_nn_queries": len(order),
            "train_nn_exact_duplicates": int((nn <= _DUPLICATE_EPS).sum()),
        }
        if len(positive):
            base = float(np.percentile(positive, percentile))
            stats.update(
                train_nn_min=float(positive.min()),
                train_nn_p1=float(np.percentile(positive, 1)),
                train_nn_p5=float(np.percentile(positive, 5)),
                train_nn_median=float(np.median(positive)),
            )
        else:
            base = 0.0
        chosen = float(threshold) if threshold is not None else factor * base
        metadata = {
            "format": FORMAT,
            "feature": feature,
            "feature_dim": int(features.shape[1]),
            "count": len(features),
            "percentile": percentile,
            "factor": factor,
            "threshold": chosen,
            "threshold_source": "given" if threshold is not None else "percentile",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **stats,
        }
        return cls(features, chosen, metadata)

    # ---------------------------------------------------------------------------------------- persistence

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        meta = dict(self.metadata, threshold=self.threshold, format=FORMAT)
        return bytes(
            save(
                {"features": np.ascontiguousarray(self.features, dtype=np.float32)},
                metadata={_METADATA_KEY: json.dumps(meta, sort_keys=True)},
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> MemorizationIndex:
        from safetensors.numpy import load

        if len(data) < 8:
            raise ValueError("not a safetensors file")
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        raw_meta = (header.get("__metadata__") or {}).get(_METADATA_KEY)
        if raw_meta is None:
            raise ValueError("not a ganops memorization index (no metadata)")
        meta = json.loads(raw_meta)
        if meta.get("format") != FORMAT:
            raise ValueError(f"unsupported memorization index format {meta.get('format')!r}")
        tensors = load(data)
        return cls(np.asarray(tensors["features"], dtype=np.float32), float(meta["threshold"]), meta)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> MemorizationIndex:
        return cls.from_bytes(Path(path).read_bytes())

    def nearest(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._features_sq is None or len(self._features_sq) != len(self.features):
            self._features_sq = (np.asarray(self.features, dtype=np.float64) ** 2).sum(axis=1)
        return nearest_distances(features, self.features, reference_sq=self._features_sq)

"""Degenerate outputs: numerical garbage, blank pictures and copies of one another within a response.

Checks, in order, per sample (the first that fails blocks it):

1. non-finite: any NaN/Inf in the float data (``raw``, the generator's output before it was encoded to ``uint8``;
   for 2-D points the point itself). Encoding would silently turn NaN into a valid-looking colour.
2. constant: the image's standard deviation (colour channels, on a 0-1 scale) is below ``std_eps``.
3. blank: at least ``blank_fraction`` of the pixels are black (<= ``black_level``) or white (>= ``white_level``).
4. near-duplicate: the image's small features (:func:`~.memorization.pixel_features`, 16x16 grey, normalised)
   are within ``duplicate_distance`` of an earlier sample's in the same batch: the later one is blocked.

2-D points get check 1 only (exact repeats of a point are legitimate for toy distributions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganops.memorization import pixel_features

from .base import RequestContext, Sample, Verdict

__all__ = ["DegenerateFilter"]


def _non_finite(data: np.ndarray) -> int:
    """How many NaN/Inf values ``data`` holds (0 for integer data)."""
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        return int(data.size - np.count_nonzero(np.isfinite(data)))
    return 0


@dataclass
class DegenerateFilter:
    std_eps: float = 0.01
    blank_fraction: float = 0.995
    black_level: int = 8
    white_level: int = 247
    duplicate_distance: float = 0.05
    check_duplicates: bool = True
    name: str = "degenerate"

    def check(self, samples: list[Sample], context: RequestContext) -> list[Verdict]:
        return self.check_groups([samples], [context])[0]

    def check_groups(self, groups: list[list[Sample]], contexts: list[RequestContext]) -> list[list[Verdict]]:
        """Several requests' samples at once: checks 1-3 vectorised over all of them, near-duplicates within each
        request (features computed once for the whole batch)."""
        flat = [s for group in groups for s in group]
        verdicts = self._singles(flat)
        if self.check_duplicates:
            features = self._features(flat, verdicts)
            start = 0
            for group in groups:
                part = verdicts[start : start + len(group)]
                self._duplicates(group, part, features[start : start + len(group)])
                verdicts[start : start + len(group)] = part
                start += len(group)
        out: list[list[Verdict]] = []
        start = 0
        for group in groups:
            part = verdicts[start : start + len(group)]
            out.append([v if v is not None else Verdict(self.name, "pass") for v in part])
            start += len(group)
        return out

    def _singles(self, samples: list[Sample]) -> list[Verdict | None]:
        """Checks 1-3 for every sample; the images of each shape go through one vectorised pass."""
        verdicts: list[Verdict | None] = [None] * len(samples)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for pos, sample in enumerate(samples):
            if sample.is_image:
                by_shape.setdefault(sample.pixels.shape, []).append(pos)
            else:
                verdicts[pos] = self._judge(_non_finite(sample.float_data()), None, None, None)
        for positions in by_shape.values():
            for pos, verdict in zip(positions, self._images([samples[p] for p in positions]), strict=True):
                verdicts[pos] = verdict
        return verdicts

    def _images(self, samples: list[Sample]) -> list[Verdict | None]:
        """Images of one shape: non-finite counts from the float data, then std and black/white fractions computed
        exactly from integer sums of the ``uint8`` colour values."""
        n = len(samples)
        bad = [_non_finite(s.float_data()) for s in samples]
        pixels = np.stack([s.pixels for s in samples])
        colour = pixels[..., :3] if pixels.shape[3] == 4 else pixels
        channels = colour.shape[3]
        flat = colour.reshape(n, -1)
        count = flat.shape[1]
        wide = flat.astype(np.int32)
        s1 = wide.sum(axis=1, dtype=np.int64)
        s2 = np.einsum("ij,ij->i", wide, wide, dtype=np.int64)
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0)) / 255.0
        # A pixel is black/white when the mean of its channels is: compare the channel sum, exactly.
        sums = colour.sum(axis=3, dtype=np.int32).reshape(n, -1)
        black = (sums <= self.black_level * channels).mean(axis=1)
        white = (sums >= self.white_level * channels).mean(axis=1)
        return [self._judge(bad[i], float(std[i]), float(black[i]), float(white[i])) for i in range(n)]

    def _judge(self, bad: int, std: float | None, black: float | None, white: float | None) -> Verdict | None:
        if bad:
            return Verdict(self.name, "block", f"degenerate: {bad} non-finite value(s) (NaN/Inf)", float(bad))
        if std is None or black is None or white is None:
            return None
        if std < self.std_eps:
            return Verdict(self.name, "block", f"degenerate: constant image (std {std:.4f} < {self.std_eps})", std)
        if black >= self.blank_fraction:
            return Verdict(self.name, "block", f"degenerate: blank image ({black:.1%} black)", black)
        if white >= self.blank_fraction:
            return Verdict(self.name, "block", f"degenerate: blank image ({white:.1%} white)", white)
        return None

    @staticmethod
    def _features(samples: list[Sample], verdicts: list[Verdict | None]) -> list[np.ndarray | None]:
        """Near-duplicate features of every still-passing image, one batched :func:`pixel_features` per shape."""
        features: list[np.ndarray | None] = [None] * len(samples)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for pos, s in enumerate(samples):
            if s.is_image and verdicts[pos] is None:
                by_shape.setdefault(s.pixels.shape, []).append(pos)
        for positions in by_shape.values():
            computed = pixel_features(np.stack([samples[p].chw_float() for p in positions])).astype(np.float64)
            for p, row in zip(positions, computed, strict=True):
                features[p] = row
        return features

    def _duplicates(
        self, samples: list[Sample], verdicts: list[Verdict | None], all_features: list[np.ndarray | None]
    ) -> None:
        """Blocks (in ``verdicts``, in place) each image that is within ``duplicate_distance`` of an earlier one."""
        candidates = [pos for pos, s in enumerate(samples) if s.is_image and verdicts[pos] is None]
        if len(candidates) < 2:
            return
        shapes = {samples[pos].pixels.shape for pos in candidates}
        if len(shapes) != 1:
            return
        rows = [all_features[pos] for pos in candidates]
        features = np.stack([row for row in rows if row is not None])
        sq = (features**2).sum(axis=1)
        distances = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * features @ features.T, 0.0))
        for j in range(1, len(candidates)):
            earlier = distances[j, :j]
            i = int(np.argmin(earlier))
            if earlier[i] < self.duplicate_distance:
                first = samples[candidates[i]].index
                verdicts[candidates[j]] = Verdict(
                    self.name,
                    "block",
                    f"degenerate: near-duplicate of sample {first} in this response",
                    float(earlier[i]),
                )

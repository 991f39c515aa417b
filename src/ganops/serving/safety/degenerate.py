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

from .base import RequestContext, Sample, Verdict
from .memorization import pixel_features

__all__ = ["DegenerateFilter"]


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
        verdicts: list[Verdict | None] = [self._single(s) for s in samples]
        if self.check_duplicates:
            self._duplicates(samples, verdicts)
        return [v if v is not None else Verdict(self.name, "pass") for v in verdicts]

    def _single(self, sample: Sample) -> Verdict | None:
        data = sample.float_data()
        if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
            bad = int(data.size - np.isfinite(data).sum())
            if bad:
                return Verdict(self.name, "block", f"degenerate: {bad} non-finite value(s) (NaN/Inf)", float(bad))
        if not sample.is_image:
            return None
        colour = sample.pixels[..., :3] if sample.pixels.shape[2] == 4 else sample.pixels
        std = float(colour.std() / 255.0)
        if std < self.std_eps:
            return Verdict(self.name, "block", f"degenerate: constant image (std {std:.4f} < {self.std_eps})", std)
        luminance = colour.mean(axis=2)  # a pixel is black/white when all its channels are
        black = float((luminance <= self.black_level).mean())
        if black >= self.blank_fraction:
            return Verdict(self.name, "block", f"degenerate: blank image ({black:.1%} black)", black)
        white = float((luminance >= self.white_level).mean())
        if white >= self.blank_fraction:
            return Verdict(self.name, "block", f"degenerate: blank image ({white:.1%} white)", white)
        return None

    def _duplicates(self, samples: list[Sample], verdicts: list[Verdict | None]) -> None:
        candidates = [pos for pos, s in enumerate(samples) if s.is_image and verdicts[pos] is None]
        if len(candidates) < 2:
            return
        shapes = {samples[pos].pixels.shape for pos in candidates}
        if len(shapes) != 1:
            return
        features = pixel_features(np.stack([samples[pos].chw_float() for pos in candidates])).astype(np.float64)
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

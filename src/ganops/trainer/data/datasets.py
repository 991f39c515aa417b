"""The trainer's datasets, held as one tensor in memory, and the batch type every part of the trainer passes around.

- ``builtin:ring8`` / ``builtin:grid25``: infinite 2-D Gaussian mixtures with the PacGAN constants. Every batch is a
  fresh draw (uniform mode, Gaussian noise); ``mode_centers`` and ``sigma`` are exposed for evaluation.
- ``builtin:digits``: scikit-learn's bundled 8x8 digits (1797 images, labels 0..9), resized to ``model.imageSize``.
- Image folders and archives (``file://…``, ``s3://…``) become a `TensorDataset` through `ganops.trainer.data.ingest`.

Image datasets are one ``(N, C, H, W)`` float32 tensor in [-1, 1] (points: ``(N, 2)``) with optional ``(N,)`` int64
labels: indexing it per batch is much faster than a DataLoader for datasets that fit in memory.

Bad input is a `DataError` raised before training, naming ``spec.dataset.uri`` and the fix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ganops.contracts import DATASET_DIGITS, DATASET_GRID25, DATASET_RING8

__all__ = [
    "Batch",
    "DataError",
    "Dataset",
    "MixtureDataset",
    "TensorDataset",
    "digits",
    "grid25",
    "pixels_to_float",
    "ring8",
]


class DataError(ValueError):
    """The dataset cannot be used: the message names ``spec.dataset.uri`` and what to fix."""


def _error(uri: str, problem: str) -> DataError:
    return DataError(f"spec.dataset.uri {uri!r}: {problem}")


class Batch(NamedTuple):
    """One batch: ``x`` (B, C, H, W) or (B, 2) float32; ``y`` (B,) int64 labels or None. Unpacks as a tuple."""

    x: torch.Tensor
    y: torch.Tensor | None



class Dataset(ABC):
    """Training data held in memory. ``num_samples`` is None for the infinite 2-D mixtures."""

    uri: str

    @property
    @abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) for images, (2,) for points."""

    @property
    @abstractmethod
    def num_samples(self) -> int | None:
        """Number of samples, or None when the dataset is an infinite distribution."""

    @property
    @abstractmethod
    def num_classes(self) -> int | None:
        """Number of label classes, or None when the dataset has no labels."""

    @property
    def is_points(self) -> bool:
        return self.sample_shape == (2,)

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` real samples for evaluation (without replacement when the dataset has that many)."""


def pixels_to_float(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit images → float32 in [-1, 1], on their device: ``p / 127.5 - 1`` (the one formula, so a batch converted
    on a GPU is bitwise the batch converted on the host)."""
    return pixels.to(torch.float32).div_(127.5).sub_(1.0)


class TensorDataset(Dataset):
    """A finite dataset: ``data`` (N, C, H, W) float32 in [-1, 1] or (N, 2); ``labels`` (N,) int64 or None.

    Images decoded from 8-bit files are held as ``pixels`` (N, C, H, W) uint8 instead: ``data`` is then
    ``pixels_to_float(pixels)``, materialised only if something asks for all of it (`sample` and `rows` convert
    just the rows they return), so a rank holds a quarter of the bytes and the stream copies the uint8 tensor to
    the GPU once.
    """

    def __init__(self, data: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 classes: tuple[str, ...] | None = None, uri: str = "", *,
                 pixels: torch.Tensor | None = None) -> None:
        if (data is None) == (pixels is None):
            raise ValueError("give data (float32) or pixels (uint8), exactly one")
        if pixels is not None:
            if pixels.dim() != 4 or pixels.shape[0] == 0 or pixels.dtype != torch.uint8:
                raise ValueError(f"pixels must be (N, C, H, W) uint8 with N > 0, got {tuple(pixels.shape)} "
                                 f"{pixels.dtype}")
            shape = tuple(pixels.shape)
        else:
            assert data is not None
            if data.dim() not in (2, 4) or data.shape[0] == 0:
                raise ValueError(f"data must be (N, C, H, W) or (N, 2) with N > 0, got {tuple(data.shape)}")
            if data.dtype != torch.float32:
                raise ValueError(f"data must be float32, got {data.dtype}")
            shape = tuple(data.shape)
        self._data = data
        self.pixels = pixels
        self._shape = shape
        self.labels = labels
        self.classes = classes
        self.uri = uri
        if labels is not None:
            if labels.shape != (shape[0],) or labels.dtype != torch.int64:
                raise ValueError(f"labels must be ({shape[0]},) int64, got {tuple(labels.shape)} {labels.dtype}")
            if self.classes is None:
                self.classes = tuple(str(i) for i in range(int(labels.max()) + 1))

    @property
    def data(self) -> torch.Tensor:
        """All samples as float32 (converted from ``pixels`` on first use, then kept)."""
        if self._data is None:
            assert self.pixels is not None
            self._data = pixels_to_float(self.pixels)
        return self._data

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The float32 samples at ``idx`` (without materialising ``data``)."""
        if self._data is None and self.pixels is not None:
            return pixels_to_float(self.pixels[idx])
        return self.data[idx]

    def __len__(self) -> int:
        return int(self._shape[0])

    def __repr__(self) -> str:
        kind = "pixels uint8" if self.pixels is not None else "float32"
        return f"TensorDataset({self.uri!r}, {len(self)} samples of {self.sample_shape}, {kind})"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self._shape[1:])

    @property
    def num_samples(self) -> int:
        return len(self)

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None or self.classes is None else len(self.classes)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        if n <= len(self):
            idx = torch.randperm(len(self), generator=generator)[:n]
        else:
            idx = torch.randint(len(self), (n,), generator=generator)
        return Batch(self.rows(idx), None if self.labels is None else self.labels[idx])


@dataclass(eq=False)
class MixtureDataset(Dataset):
    """An infinite mixture of isotropic Gaussians with equal weights: ``mode_centers`` (K, 2), std ``sigma``."""

    mode_centers: torch.Tensor
    sigma: float
    uri: str = ""

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (2,)

    @property
    def num_samples(self) -> None:
        return None

    @property
    def num_classes(self) -> None:
        return None

    @property
    def num_modes(self) -> int:
        return int(self.mode_centers.shape[0])

    def sample_with_modes(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fresh points and the index of the mode each was drawn from."""
        device = generator.device  # drawn where the generator lives (the training device for the stream)
        modes = torch.randint(self.num_modes, (n,), generator=generator, device=device)
        noise = torch.randn(n, 2, generator=generator, device=device)
        return self.mode_centers.to(device)[modes] + self.sigma * noise, modes

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        return Batch(self.sample_with_modes(n, generator)[0], None)


def ring8(uri: str = DATASET_RING8) -> MixtureDataset:
    """8 modes at (cos 2πi/8, sin 2πi/8), σ = 0.01 (PacGAN)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * torch.pi / 8)
    centers = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1).to(torch.float32)
    return MixtureDataset(centers, 0.01, uri)


def grid25(uri: str = DATASET_GRID25) -> MixtureDataset:
    """25 modes at {−4, −2, 0, 2, 4}², σ = 0.05 (PacGAN)."""
    axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    centers = torch.cartesian_prod(axis, axis).to(torch.float32)
    return MixtureDataset(centers, 0.05, uri)


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey (N, 1, H, W) in [-1, 1] → 1 (grey), 2 (grey + opaque alpha), 3 (RGB) or 4 (RGBA) channels."""
    if channels == 1:
        return x
    opaque = torch.ones_like(x)
    parts = {2: [x, opaque], 3: [x, x, x], 4: [x, x, x, opaque]}[channels]
    return torch.cat(parts, dim=1)


def digits(image_size: int = 8, channels: int = 1, uri: str = DATASET_DIGITS) -> TensorDataset:
    """scikit-learn's bundled digits (1797 8x8 greys, values 0..16) in [-1, 1], bilinearly resized with
    antialiasing to ``image_size``; labels 0..9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1) / 8.0 - 1.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(-1.0, 1.0)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return TensorDataset(_convert_channels(x, channels).contiguous(), y, tuple(str(i) for i in range(10)), uri)

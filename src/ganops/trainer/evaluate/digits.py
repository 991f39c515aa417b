"""A small CNN on scikit-learn's bundled 8×8 digits, used as the feature extractor for ``builtin:digits``.

Images of any size from 8×8 to 32×32 (gray, or RGB averaged to gray) in [-1, 1] are resized to 16×16; the
features are the 128-d penultimate layer (after ReLU, like Inception's pool3), scaled at training time so that
mean ||f||²/d is 1 on the training digits (the magnitude the KID kernel ``(x·y/d + 1)^3`` is meant for).
The weights are trained by ``scripts/train_digits_features.py`` on a fixed, stratified split of
``sklearn.datasets.load_digits`` and shipped beside this module (``weights/digits_features.safetensors`` with a
JSON sidecar of its accuracy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

__all__ = ["SPLIT_RANDOM_STATE", "SPLIT_TEST_SIZE", "DigitsNet", "digits_split", "preprocess_digits"]

SPLIT_TEST_SIZE = 0.25
SPLIT_RANDOM_STATE = 0


class DigitsNet(nn.Module):
    INPUT_SIZE = 16
    FEATURE_DIM = 128
    NUM_CLASSES = 10

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, self.FEATURE_DIM)
        self.fc2 = nn.Linear(self.FEATURE_DIM, self.NUM_CLASSES)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 16, 16) in [-1, 1] → (N, 128) penultimate activations."""
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        out: torch.Tensor = F.relu(self.fc1(torch.flatten(x, 1)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc2(self.dropout(self.features(x)))
        return logits


def preprocess_digits(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1], C in {1, 3} → (N, 1, 16, 16) float32 (bilinear, antialiased when shrinking)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = images.to(torch.float32)
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    size = DigitsNet.INPUT_SIZE
    if x.shape[-2:] != (size, size):
        shrink = x.shape[-2] > size or x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return x


def digits_split() -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]:
    """The fixed stratified split of ``load_digits``: (x_train, y_train, x_test, y_test).

    Images are (N, 1, 8, 8) float32 in [-1, 1] (pixel values 0..16 mapped linearly).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data: Any = load_digits()
    images = (np.asarray(data.images, dtype=np.float32) / 8.0 - 1.0)[:, None, :, :]
    labels = np.asarray(data.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=SPLIT_TEST_SIZE, random_state=SPLIT_RANDOM_STATE, stratify=labels
    )
    return x_train, y_train, x_test, y_test

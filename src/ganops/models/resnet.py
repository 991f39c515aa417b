"""SNGAN-style ResNet pair (Miyato et al. 2018, Gulrajani et al. 2017), a slimmer variant for 32..128 px.

G: linear z → 4×4×c₀, one up-block (BN-ReLU-up-conv3-BN-ReLU-conv3, 1×1 conv shortcut) per doubling of the
side, BN-ReLU-conv3-Tanh. Channels start at ``width · 2^min(k-1, 3)`` (k = doublings) and halve down to
``width``. D: an "optimized" first block (conv3-ReLU-conv3-avgpool, avgpool-conv1 shortcut), down-blocks
doubling channels (capped at 8·width) down to 4×4, one more block at 4×4, ReLU, global sum pooling, linear,
plus the projection term when conditional. D has no normalisation layer (spectral norm is its usual partner).
Weights: Xavier-uniform, gain √2 on residual convs, 1 elsewhere (as in the SNGAN code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganops.models.layers import LatentInput, MinibatchStd, ProjectionHead, apply_spectral_norm

IMAGE_SIZES = (32, 64, 128)
MAX_MULT = 8


def _doublings(image_size: int) -> int:
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"resnet supports image_size {IMAGE_SIZES}, got {image_size}")
    return int(math.log2(image_size)) - 2


def _conv(cin: int, cout: int, kernel: int, gain: float) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, 1, kernel // 2)
    nn.init.xavier_uniform_(conv.weight, gain)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return conv


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv(cin, cout, 3, math.sqrt(2))
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3, math.sqrt(2))
        self.shortcut = _conv(cin, cout, 1, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        out: torch.Tensor = h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return out


class ResNetGenerator(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        image_size: int = 32,
        channels: int = 3,
        width: int = 64,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        k = _doublings(image_size)
        chans = [width * min(2 ** max(0, k - 1 - s), MAX_MULT) for s in range(k + 1)]
        self.input = LatentInput(latent_dim, num_classes)
        self.c0 = chans[0]
        self.linear = nn.Linear(self.input.out_features, 16 * chans[0])
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.blocks = nn.Sequential(*[GBlock(chans[s], chans[s + 1]) for s in range(k)])
        self.bn = nn.BatchNorm2d(chans[-1])
        self.out = _conv(chans[-1], channels, 3, 1.0)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.linear(self.input(z, y)).reshape(z.shape[0], self.c0, 4, 4)
        h = self.blocks(h)
        return torch.tanh(self.out(F.relu(self.bn(h))))


class DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, *, down: bool, first: bool = False) -> None:
        super().__init__()
        self.down = down
        self.first = first
        self.conv1 = _conv(cin, cout, 3, math.sqrt(2))
        self.conv2 = _conv(cout, cout, 3, math.sqrt(2))
        self.shortcut = _conv(cin, cout, 1, 1.0) if (cin != cout or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)  # the first block sees the image: no pre-activation
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.shortcut is not None:
            if self.first:  # optimized block: pool, then 1×1 conv
                s = self.shortcut(F.avg_pool2d(s, 2) if self.down else s)
            else:
                s = self.shortcut(s)
                s = F.avg_pool2d(s, 2) if self.down else s
        out: torch.Tensor = h + s
        return out


class ResNetDiscriminator(nn.Module):
    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        width: int = 64,
        num_classes: int | None = None,
        *,
        spectral_norm: bool = False,
        minibatch_std: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        k = _doublings(image_size)
        blocks: list[nn.Module] = [DBlock(channels, width, down=True, first=True)]
        ch = width
        for _ in range(k - 1):
            nxt = min(ch * 2, width * MAX_MULT)
            blocks.append(DBlock(ch, nxt, down=True))
            ch = nxt
        self.blocks = nn.Sequential(*blocks)  # (N, ch, 4, 4)
        self.mbstd = MinibatchStd() if minibatch_std else None
        self.last = DBlock(ch + (1 if minibatch_std else 0), ch, down=False)
        self.linear = nn.Linear(ch, 1)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.projection = ProjectionHead(ch, num_classes)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h: torch.Tensor = self.blocks(x)
        if self.mbstd is not None:
            h = self.mbstd(h)
        phi = F.relu(self.last(h)).sum(dim=(2, 3))
        out: torch.Tensor = self.linear(phi).reshape(phi.shape[0])
        if self.num_classes is not None:
            out = out + self.projection(phi, y)
        return out

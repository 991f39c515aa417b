"""DCGAN (Radford et al. 2016) as pytorch/examples/dcgan writes it, generalised to 8..128 px.

At 64 px with the defaults (unconditional, no spectral norm, no minibatch-stddev, batch norm in D) the layers
are exactly pytorch/examples' ``Generator``/``Discriminator``: transposed 4×4 convs with stride 2 doubling the
side from 4×4, BatchNorm + ReLU, Tanh output; D mirrors it with LeakyReLU(0.2), no BatchNorm on the first
layer, a final 4×4 valid conv to one logit (no Sigmoid: losses take logits). ``G.main`` holds the same layers
at the same indices as the example's ``main``. Each halving/doubling of the side adds or removes one block;
`width` is pytorch/examples' ``ngf``/``ndf``. Weights are initialised N(0, 0.02), BatchNorm scales N(1, 0.02).

Options: spectral norm on every D layer (BatchNorm is then dropped from D, as in SNGAN's standard CNN),
minibatch-stddev before D's final conv, label embedding concatenated to z in G, projection head in D.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ganops.models.layers import LatentInput, MinibatchStd, ProjectionHead, apply_spectral_norm

DNorm = Literal["batch", "layer", "none"]
IMAGE_SIZES = (8, 16, 32, 64, 128)


def num_blocks(image_size: int) -> int:
    """Stride-2 layers between 4×4 and `image_size` (64 px → 4, as in pytorch/examples)."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
    return int(math.log2(image_size)) - 2


def dcgan_init(module: nn.Module) -> None:
    """pytorch/examples/dcgan's ``weights_init``: conv weights N(0, 0.02); norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        image_size: int = 64,
        channels: int = 3,
        width: int = 64,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        k = num_blocks(image_size)
        self.input = LatentInput(latent_dim, num_classes)
        ch = width * 2 ** (k - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(self.input.out_features, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2)]
            layers += [nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input(z, y)
        out: torch.Tensor = self.main(h.reshape(h.shape[0], h.shape[1], 1, 1))
        return out


def _norm(kind: DNorm, ch: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm2d(ch)]
    if kind == "layer":  # WGAN-GP's drop-in replacement: normalises over (C, H, W) per sample
        return [nn.GroupNorm(1, ch)]
    return []


class DCGANDiscriminator(nn.Module):
    def __init__(
        self,
        image_size: int = 64,
        channels: int = 3,
        width: int = 64,
        num_classes: int | None = None,
        *,
        spectral_norm: bool = False,
        minibatch_std: bool = False,
        norm: DNorm | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        k = num_blocks(image_size)
        self.norm: DNorm = norm if norm is not None else ("none" if spectral_norm else "batch")
        bias = self.norm != "batch"  # pytorch/examples: bias-free convs throughout
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=bias), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(k - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=bias), *_norm(self.norm, ch * 2)]
            layers += [nn.LeakyReLU(0.2)]
            ch *= 2
        self.main = nn.Sequential(*layers)  # (N, ch, 4, 4)
        self.mbstd = MinibatchStd() if minibatch_std else None
        feat = ch + (1 if minibatch_std else 0)
        self.head = nn.Conv2d(feat, 1, 4, 1, 0, bias=bias)
        self.projection = ProjectionHead(feat, num_classes, init_std=0.02)
        dcgan_init(self)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h: torch.Tensor = self.main(x)
        if self.mbstd is not None:
            h = self.mbstd(h)
        out: torch.Tensor = self.head(h).reshape(h.shape[0])
        if self.num_classes is not None:
            out = out + self.projection(h.sum(dim=(2, 3)), y)
        return out

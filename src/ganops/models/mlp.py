"""MLP pair for 2-D point data (ring8, grid25): the usual toy-GAN setup (Metz et al. 2017, PacGAN).

G: z → [Linear(width) → ReLU] × depth → Linear(2), no output activation (the data is not bounded to [-1, 1]).
D: x → [Linear(width) → LeakyReLU(0.2)] × depth → Linear(1) (+ the projection term when conditional).
PyTorch's default Linear initialisation. Minibatch-stddev adds one feature before D's last layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ganops.models.layers import LatentInput, MinibatchStd, ProjectionHead, apply_spectral_norm

DATA_DIM = 2


class MLPGenerator(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        width: int = 128,
        depth: int = 3,
        num_classes: int | None = None,
        data_dim: int = DATA_DIM,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.data_dim = data_dim
        self.input = LatentInput(latent_dim, num_classes)
        layers: list[nn.Module] = []
        features = self.input.out_features
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        layers.append(nn.Linear(features, data_dim))
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out: torch.Tensor = self.main(self.input(z, y))
        return out


class MLPDiscriminator(nn.Module):
    def __init__(
        self,
        width: int = 128,
        depth: int = 3,
        num_classes: int | None = None,
        *,
        spectral_norm: bool = False,
        minibatch_std: bool = False,
        data_dim: int = DATA_DIM,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.data_dim = data_dim
        layers: list[nn.Module] = []
        features = data_dim
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.LeakyReLU(0.2)]
            features = width
        self.main = nn.Sequential(*layers)
        self.mbstd = MinibatchStd() if minibatch_std else None
        features += 1 if minibatch_std else 0
        self.head = nn.Linear(features, 1)
        self.projection = ProjectionHead(features, num_classes)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h: torch.Tensor = self.main(x.reshape(x.shape[0], -1))
        if self.mbstd is not None:
            h = self.mbstd(h)
        out: torch.Tensor = self.head(h).reshape(h.shape[0])
        if self.num_classes is not None:
            out = out + self.projection(h, y)
        return out

"""Pieces shared by every architecture: G's conditioning input, D's projection head, minibatch-stddev.

Every generator takes ``(z, y=None)`` and exposes ``latent_dim`` and ``num_classes``; every discriminator
takes ``(x, y=None)`` and returns logits of shape ``(N,)``. ``y`` (int64 class indices, shape ``(N,)``) is
required when the model is conditional (``num_classes`` set) and ignored otherwise.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

#: Width of the label embedding concatenated to z in conditional generators (capped by latent_dim).
MAX_LABEL_EMBED_DIM = 128


class FP32SpectralNorm(_SpectralNorm):
    """torch's spectral-norm parametrization (``torch.nn.utils.parametrizations.spectral_norm``: same buffers, same
    state-dict keys, same numbers in fp32) with σ always computed in fp32, autocast off.

    Under CUDA autocast the power iteration's ``mv`` and σ's ``vdot(u, W v)`` would run in bf16/fp16 (CPU autocast
    does not cover them, so CPU runs never showed it): σ then carries a relative error of ~2⁻⁸ (bf16) and the
    in-place ``u``/``v`` updates accumulate it step after step. The weight is divided by an fp32 σ; the layer's own
    conv or matmul still runs in the autocast dtype.
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        off = (torch.autocast(weight.device.type, enabled=False) if torch.amp.is_autocast_available(weight.device.type)
               else contextlib.nullcontext())
        with off:
            out: torch.Tensor = super().forward(weight.float())
        return out


def apply_spectral_norm(root: nn.Module) -> None:
    """Spectral normalisation (`FP32SpectralNorm`, one power iteration per forward in training mode) on the weight
    of every conv, linear and embedding layer under `root`, in place.

    Call it after initialising the weights: the power iteration's vectors start from the weights as they are.
    """
    for m in list(root.modules()):
        if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding):
            weight: torch.Tensor = m.weight
            # dim 0 (the output features) for these layers, as torch's spectral_norm chooses; eps as its default
            parametrize.register_parametrization(m, "weight", FP32SpectralNorm(weight, 1, 0, 1e-12))


def check_labels(y: torch.Tensor | None, num_classes: int | None, n: int) -> torch.Tensor | None:
    """The labels to condition on: None for unconditional models, a validated (N,) int tensor otherwise."""
    if num_classes is None:
        return None
    if y is None:
        raise ValueError(f"this model is conditional ({num_classes} classes): pass labels y of shape ({n},)")
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    return y.long()


class LatentInput(nn.Module):
    """G's input: z flattened to (N, latent_dim), with a label embedding concatenated when conditional."""

    def __init__(self, latent_dim: int, num_classes: int | None) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.embed_dim = min(latent_dim, MAX_LABEL_EMBED_DIM) if num_classes else 0
        self.embed = nn.Embedding(num_classes, self.embed_dim) if num_classes else None

    @property
    def out_features(self) -> int:
        return self.latent_dim + self.embed_dim

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        n = z.shape[0]
        z = z.reshape(n, -1)  # accepts (N, latent_dim) and pytorch/examples' (N, latent_dim, 1, 1)
        if z.shape[1] != self.latent_dim:
            raise ValueError(f"latent must have {self.latent_dim} features, got {z.shape[1]}")
        labels = check_labels(y, self.num_classes, n)
        if labels is None or self.embed is None:
            return z
        emb = self.embed(labels)
        return torch.cat([z, emb.to(z.dtype)], dim=1)


class ProjectionHead(nn.Module):
    """The projection term ``Σ embed(y) · φ`` of Miyato & Koyama (2018); each D adds its own ``linear(φ)``.

    DCGAN keeps its final 4×4 conv as the linear term and projects the spatially summed features.
    """

    def __init__(self, features: int, num_classes: int | None, *, init_std: float | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, features) if num_classes else None
        if self.embed is not None:
            if init_std is None:
                nn.init.xavier_uniform_(self.embed.weight)
            else:
                nn.init.normal_(self.embed.weight, 0.0, init_std)

    def forward(self, phi: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The projection term, shape (N,): zero for unconditional models."""
        labels = check_labels(y, self.num_classes, phi.shape[0])
        if labels is None or self.embed is None:
            return phi.new_zeros(phi.shape[0])
        out: torch.Tensor = (self.embed(labels).to(phi.dtype) * phi).sum(dim=1)
        return out


def _largest_divisor_at_most(n: int, limit: int) -> int:
    for g in range(min(limit, n), 0, -1):
        if n % g == 0:
            return g
    return 1


class MinibatchStd(nn.Module):
    """StyleGAN's minibatch standard deviation: one extra feature, the mean stddev over groups of samples.

    Group size is min(group_size, N) (the largest divisor of N not above it, so any batch size works). Works
    on (N, C, H, W) maps (adds a constant channel) and (N, F) vectors (adds a feature). Computed in fp32.
    """

    def __init__(self, group_size: int = 4, eps: float = 1e-8) -> None:
        super().__init__()
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        g = _largest_divisor_at_most(n, self.group_size)
        y = x.float().reshape(g, n // g, *x.shape[1:])  # sample i = j*M + m is in group m
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + self.eps).sqrt()
        y = y.reshape(n // g, -1).mean(dim=1)  # (M,)
        y = y.to(x.dtype).repeat(g)  # (N,): sample j*M + m gets group m's value
        feat = y.reshape(n, 1, 1, 1).expand(n, 1, *x.shape[2:]) if x.dim() == 4 else y.reshape(n, 1)
        return torch.cat([x, feat], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"

"""Generator/discriminator pairs built from `ModelSpec`.

Interface of every pair: ``G(z, y=None) -> samples`` with attributes ``latent_dim`` and ``num_classes``;
``D(x, y=None) -> logits`` of shape ``(N,)``. ``y`` holds class indices, shape ``(N,)``, required when
``num_classes`` is set. Image generators output ``(N, channels, size, size)`` in [-1, 1]; the MLP outputs
``(N, 2)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ganops.api.spec import LossSpec, ModelSpec
from ganops.models.dcgan import DCGANDiscriminator, DCGANGenerator, DNorm
from ganops.models.layers import MinibatchStd
from ganops.models.mlp import MLPDiscriminator, MLPGenerator
from ganops.models.resnet import ResNetDiscriminator, ResNetGenerator

__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "MinibatchStd",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "build_models",
    "sample_latent",
]


def build_models(model: ModelSpec, loss: LossSpec | None = None) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `model`. Weights are drawn from torch's global RNG: seed it first for reproducible weights.

    `loss` is optional and only affects the DCGAN critic: with ``wgan-gp`` (and no spectral norm) its
    BatchNorm layers become layer norm, as the WGAN-GP paper recommends (a per-sample gradient penalty is
    ill-defined through batch statistics). G never depends on `loss`: exporting G needs only `model`.
    """
    nc = model.num_classes
    if model.architecture == "dcgan":
        wgan = loss is not None and loss.type == "wgan-gp"
        norm: DNorm | None = "layer" if (wgan and not model.spectral_norm) else None
        g: nn.Module = DCGANGenerator(model.latent_dim, model.image_size, model.channels, model.width, nc)
        d: nn.Module = DCGANDiscriminator(
            model.image_size,
            model.channels,
            model.width,
            nc,
            spectral_norm=model.spectral_norm,
            minibatch_std=model.minibatch_std,
            norm=norm,
        )
    elif model.architecture == "resnet":
        g = ResNetGenerator(model.latent_dim, model.image_size, model.channels, model.width, nc)
        d = ResNetDiscriminator(
            model.image_size,
            model.channels,
            model.width,
            nc,
            spectral_norm=model.spectral_norm,
            minibatch_std=model.minibatch_std,
        )
    elif model.architecture == "mlp":
        g = MLPGenerator(model.latent_dim, model.width, model.depth, nc)
        d = MLPDiscriminator(
            model.width,
            model.depth,
            nc,
            spectral_norm=model.spectral_norm,
            minibatch_std=model.minibatch_std,
        )
    else:  # pragma: no cover - the spec's Literal forbids it
        raise ValueError(f"unknown architecture {model.architecture!r}")
    return g, d


def sample_latent(
    n: int,
    latent_dim: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard-normal latents ``(n, latent_dim)``, drawn on `generator`'s device (CPU by default) and moved
    to `device`: the same seed gives the same latents whatever device the model is on."""
    source = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(n, latent_dim, generator=generator, device=source)
    return z.to(device) if device is not None else z

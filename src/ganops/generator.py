"""A trained generator as trainer, promotion and serving all use it: built from a checkpoint, fed the same latents.

- `load_generator`: the generator of a checkpoint (EMA weights by default), read from JSON and safetensors only
  (never unpickled) after its sha256 is checked against the manifest.
- `latents`: the latent draw for a seed, with optional truncation; the only place it is defined, so a sample of
  seed ``s`` is the same whether the trainer's evaluation grid, promotion's grid or a served request drew it.
- `generate`: samples for a seed, class labels cycling ``0, 1, …`` for a conditional generator;
  `checkpoint_samples` does both for a checkpoint and returns numpy (callers need no torch).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ganops import checkpoints, storage
from ganops.api.spec import ModelSpec
from ganops.models import build_models

__all__ = ["build_generator", "checkpoint_samples", "generate", "latents", "load_generator"]


def latents(n: int, latent_dim: int, seed: int, truncation: float | None = None,
            device: torch.device | str | None = None) -> torch.Tensor:
    """``(n, latent_dim)`` standard-normal latents from ``seed``, drawn on the CPU (the same on any device).

    Truncation trick with threshold ``t``: every entry with ``|z| > t`` is redrawn from the standard normal
    conditioned on ``|z| <= t``, by inverse CDF from a second, equally seeded draw of uniforms, which is the same
    distribution as resampling until it falls inside and takes one pass. Entries inside ``[-t, t]`` are kept, so
    a large ``t`` changes nothing, and the result depends only on (seed, n, t).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n, latent_dim, generator=gen)
    if truncation is not None:
        t = float(truncation)
        outside = z.abs() > t
        if bool(outside.any()):
            u = torch.rand(n, latent_dim, generator=gen, dtype=torch.float64)
            lo = torch.special.ndtr(torch.tensor(-t, dtype=torch.float64))
            redrawn = torch.special.ndtri(lo + u * (1.0 - 2.0 * lo)).clamp(-t, t).to(z.dtype)
            z = torch.where(outside, redrawn, z)
    return z.to(device) if device is not None else z


def generate(g: nn.Module, n: int, seed: int, latent_dim: int, num_classes: int | None,
             device: torch.device, labels: torch.Tensor | None = None,
             truncation: float | None = None) -> torch.Tensor:
    """Samples from fixed latents (float32, CPU): the same (weights, seed) always gives the same output."""
    z = latents(n, latent_dim, seed, truncation, device)
    y = None
    if num_classes:
        y = labels if labels is not None else torch.arange(n) % num_classes
        y = y.to(device)
    was_training = g.training
    g.eval()
    try:
        out: torch.Tensor = g(z, y)
    finally:
        g.train(was_training)
    return out.float().cpu()


def build_generator(model: ModelSpec) -> nn.Module:
    generator, _ = build_models(model)
    return generator


def load_generator(uri: str, *, ema: bool = True, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The generator of the checkpoint at ``uri`` (a step folder or a job's root) in eval mode, with its manifest
    (plus ``uri``: the step folder). Raises CheckpointError for a missing manifest or a checksum mismatch."""
    step_uri = checkpoints.resolve(uri)
    manifest = checkpoints.require_manifest(step_uri)
    generator = build_generator(ModelSpec.model_validate(manifest["model"]))
    name = checkpoints.weights_file("generator_ema" if ema else "generator")
    with tempfile.TemporaryDirectory(prefix="ganops-gen-") as tmp:
        local = Path(tmp) / name
        storage.open_store(step_uri).get_file(storage.join(step_uri, name), local)
        if manifest["files"].get(name) != checkpoints.sha256_file(local):
            raise checkpoints.CheckpointError(f"checksum mismatch for {step_uri}/{name}: refusing to load it")
        state = load_file(str(local), device=device)
    generator.load_state_dict(state)
    generator.to(torch.device(device)).eval()
    return generator, {**manifest, "uri": step_uri}


def checkpoint_samples(uri: str, n: int, seed: int, *, ema: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """``n`` samples of the checkpoint at ``uri`` for ``seed`` (float32, C-contiguous: NCHW in [-1, 1] or ``(n, 2)``
    points), with the checkpoint's manifest. Raises what `load_generator` raises."""
    generator, manifest = load_generator(uri, ema=ema)
    model = ModelSpec.model_validate(manifest["model"])
    with torch.inference_mode():
        out = generate(generator, n, seed, model.latent_dim, model.num_classes, torch.device("cpu"))
    return np.ascontiguousarray(out.numpy(), dtype=np.float32), manifest

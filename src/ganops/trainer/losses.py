"""Adversarial losses and gradient penalties, configured by `LossSpec` (a small stylegan2-ada-like interface).

=================  ==========================================================  ====================
type               discriminator                                               generator
=================  ==========================================================  ====================
non-saturating     BCE(D(x), 1 − s) + BCE(D(G(z)), 0)   (s: labelSmoothing)     BCE(D(G(z)), 1)
wgan-gp            −E[D(x)] + E[D(G(z))] + λ·GP                                 −E[D(G(z))]
hinge              E[relu(1 − D(x))] + E[relu(1 + D(G(z)))]                    −E[D(G(z))]
lsgan              E[(D(x) − (1 − s))²] + E[D(G(z))²]                          E[(D(G(z)) − 1)²]
=================  ==========================================================  ====================

Any type may add R1 (``γ/2 · E‖∇ₓD(x)‖²`` on real data, Mescheder et al. 2018) with ``r1 > 0``. Label
smoothing is one-sided and only meaningful for the target-based losses (non-saturating, lsgan); the margin
losses ignore it.

Mixed precision: logits may arrive in bf16/fp16 (from a forward under autocast). Every loss and penalty is
computed in fp32 with autocast disabled; the penalties' inner gradients (``autograd.grad(create_graph=True)``)
are taken with respect to fp32 inputs, seeded with ``sum()`` of the logits (one per sample, so fp16 does not
underflow), and reduced in fp32. The discriminator forwards inside the penalties run in whatever autocast
context the caller is in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ganops.api.spec import LossSpec

Discriminator = Callable[..., torch.Tensor]
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float().reshape(t.shape[0], -1).mean(dim=1) if t.dim() > 1 else t.float()


def _no_autocast(t: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    if t.device.type in _AUTOCAST_DEVICES:
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


def _call(d: Discriminator, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return d(x) if y is None else d(x, y)


def eager(d: Discriminator) -> Discriminator:
    """The module under a ``torch.compile`` wrapper: compiled graphs do not support double backward."""
    inner: Discriminator = getattr(d, "_orig_mod", d)
    return inner


def gradient_penalty(
    d: Discriminator,
    real: torch.Tensor,
    fake: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    alpha: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP's penalty ``E[(‖∇D(x̂)‖₂ − 1)²]`` at ``x̂ = α·real + (1 − α)·fake``, α ~ U[0, 1] per sample.

    Unweighted (multiply by λ yourself). `alpha` (shape ``(N,)``) fixes the interpolation; otherwise it is
    drawn from `generator` (or the global RNG). `y` is passed to `d` for conditional critics (real labels).
    """
    n = real.shape[0]
    real32 = real.detach().float()
    fake32 = fake.detach().float()
    if alpha is None:
        source = generator.device if generator is not None else real.device
        alpha = torch.rand(n, generator=generator, device=source)
    # drawn on the trainer's device already: no copy (a cross-device .to would synchronise every step)
    alpha = alpha.to(dtype=torch.float32) if alpha.device == real.device else alpha.to(real.device, torch.float32)
    a = alpha.reshape(n, *([1] * (real.dim() - 1)))
    x_hat = (a * real32 + (1.0 - a) * fake32).requires_grad_(True)
    out = _call(d, x_hat, y)
    with _no_autocast(x_hat):
        (grad,) = torch.autograd.grad(out.float().sum(), x_hat, create_graph=True)
        norm = torch.linalg.vector_norm(grad.float().reshape(n, -1), 2, dim=1)
        penalty: torch.Tensor = (norm - 1.0).square().mean()
        return penalty


def r1_penalty(d_real_logits: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """``γ/2 · E‖∇ₓD(x)‖²`` on real data; `real` must require grad and `d_real_logits` be ``D(real)``."""
    if not real.requires_grad:
        raise ValueError("r1_penalty needs real.requires_grad_(True) set before computing D(real)")
    with _no_autocast(real):
        (grad,) = torch.autograd.grad(d_real_logits.float().sum(), real, create_graph=True)
        penalty: torch.Tensor = grad.float().reshape(real.shape[0], -1).square().sum(dim=1).mean()
        return 0.5 * gamma * penalty


class GanLoss:
    """The adversarial loss of one `LossSpec`: ``d_loss``/``g_loss`` on logits, plus the penalties."""

    def __init__(self, spec: LossSpec | None = None) -> None:
        self.spec = spec if spec is not None else LossSpec()
        self.type = self.spec.type
        self.label_smoothing = self.spec.label_smoothing
        self.gp_weight = self.spec.gradient_penalty if self.type == "wgan-gp" else 0.0
        self.r1_gamma = self.spec.r1

    @property
    def real_target(self) -> float:
        return 1.0 - self.label_smoothing

    def d_loss(self, d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor) -> torch.Tensor:
        """The discriminator's adversarial loss (no penalties), a fp32 scalar."""
        with _no_autocast(d_real_logits):
            real, fake = _fp32(d_real_logits), _fp32(d_fake_logits)
            if self.type == "non-saturating":
                real_term = F.binary_cross_entropy_with_logits(real, torch.full_like(real, self.real_target))
                return real_term + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
            if self.type == "wgan-gp":
                return fake.mean() - real.mean()
            if self.type == "hinge":
                return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
            if self.type == "lsgan":
                return F.mse_loss(real, torch.full_like(real, self.real_target)) + fake.square().mean()
        raise ValueError(f"unknown loss type {self.type!r}")

    def g_loss(self, d_fake_logits: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial loss, a fp32 scalar."""
        with _no_autocast(d_fake_logits):
            fake = _fp32(d_fake_logits)
            if self.type == "non-saturating":
                return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
            if self.type in ("wgan-gp", "hinge"):
                return -fake.mean()
            if self.type == "lsgan":
                return (fake - 1.0).square().mean()
        raise ValueError(f"unknown loss type {self.type!r}")

    def gradient_penalty(
        self,
        d: Discriminator,
        real: torch.Tensor,
        fake: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        alpha: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Unweighted WGAN-GP penalty (see `gradient_penalty`); the step loss multiplies it by λ."""
        return gradient_penalty(eager(d), real, fake, y, alpha=alpha, generator=generator)

    def r1_penalty(self, d_real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``γ/2 · E‖∇ₓD(x)‖²`` with γ = ``spec.r1`` (weighted, unlike `gradient_penalty`)."""
        return r1_penalty(d_real_logits, real, self.r1_gamma)


def _as_loss(spec: LossSpec | GanLoss) -> GanLoss:
    return spec if isinstance(spec, GanLoss) else GanLoss(spec)


def discriminator_step_loss(
    spec: LossSpec | GanLoss,
    d: Discriminator,
    real: torch.Tensor,
    fake: torch.Tensor,
    d_real_logits: torch.Tensor,
    d_fake_logits: torch.Tensor,
    y_real: torch.Tensor | None = None,
    y_fake: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    r1_scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The discriminator's full loss for one step: adversarial loss + λ·GP (wgan-gp) + R1 (when ``r1 > 0``).

    `fake` should be detached. `d` is only called for the penalties (its eager module if compiled). R1 needs
    ``D(real)`` computed from a `real` that requires grad - the trainer sets ``real.requires_grad_(True)`` before
    its forward under autocast, so one D forward serves the adversarial loss and R1; when `real` does not require
    grad, D is run once more on a grad-requiring copy, in the caller's autocast context. ``r1_scale`` multiplies R1
    into the loss: 0 skips it (a lazy-R1 step without the penalty), ``k`` is StyleGAN2's lazy regularisation every
    k steps. Returns the loss and detached fp32 scalars for logging: ``d_adv``, ``d_real_logit``, ``d_fake_logit``
    and, when active, ``gp`` (unweighted) and ``r1`` (γ-weighted, before ``r1_scale``).
    """
    loss = _as_loss(spec)
    r1_on = loss.r1_gamma > 0 and r1_scale > 0
    if r1_on and not real.requires_grad:
        real = real.detach().requires_grad_(True)
        d_real_logits = _call(eager(d), real, y_real)
    adv = loss.d_loss(d_real_logits, d_fake_logits)
    total = adv
    parts = {
        "d_adv": adv,
        "d_real_logit": d_real_logits.detach().float().mean(),
        "d_fake_logit": d_fake_logits.detach().float().mean(),
    }
    if loss.gp_weight > 0:
        gp = loss.gradient_penalty(d, real, fake, y_real, generator=generator)
        total = total + loss.gp_weight * gp
        parts["gp"] = gp
    if r1_on:
        r1 = loss.r1_penalty(d_real_logits, real)
        total = total + (r1 if r1_scale == 1.0 else r1_scale * r1)
        parts["r1"] = r1
    return total, {k: v.detach() for k, v in parts.items()}


def generator_step_loss(
    spec: LossSpec | GanLoss, d_fake_logits: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator's loss for one step and ``{"g_adv": …}`` for logging."""
    g = _as_loss(spec).g_loss(d_fake_logits)
    return g, {"g_adv": g.detach()}

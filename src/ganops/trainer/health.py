"""Training health: small detectors fed at log moments, and the divergence guard behind `Trainer.rollback`.

Nothing here runs an extra forward pass except `DiversityProbe` (one generator forward of a fixed latent batch per
log step, ~128 images or 512 points). The detectors are pure: they take numbers and return an event or None.

- **Diversity** (`DiversityProbe`): mean pairwise distance of the *live* generator's samples from fixed latents,
  divided by the same for a fixed real batch, both in cheap features (2-D points as they are; images average-pooled
  to at most 8×8 and flattened). About 1 for a healthy generator, near 0 for a collapsed one. The live generator,
  not the EMA copy: the EMA lags by ~1/(1 − decay) steps and would report a collapse thousands of steps late.
- `CollapseDetector`: ``ModeCollapseSuspected`` when the ratio stays below ``threshold`` *and* below
  ``relative`` × the best ratio seen so far for ``patience`` consecutive probes. The relative condition keeps it
  quiet early in training, when a freshly initialised generator is a small blob that has not spread out yet; a
  collapse is a *loss* of diversity. Once per episode: re-armed when the ratio recovers above the threshold.
- `DiscriminatorOverpoweringDetector`: ``DiscriminatorOverpowering`` when D's accuracy (real logits above and
  fake logits below the loss's decision threshold, see `decision_threshold`) is ≥ ``threshold`` for ``window``
  consecutive log points; re-armed when accuracy falls below ``rearm_below``. WGAN-GP has no accuracy (the
  critic is meant to be optimal): the detector stays silent there.
- `DivergenceGuard`: losses non-finite or above ``max_loss`` at a log step (the values are already on the host
  there: no extra GPU sync) → the trainer restores the latest checkpoint, halves both learning rates
  (``DivergenceRollback``), up to ``max_rollbacks`` times; one more divergence is ``Diverged`` and raises
  `TrainingDiverged`. Weights are also checked for NaN/inf before every checkpoint so a poisoned state is never
  saved.

Events are dicts ``{"type", "step", "message", "time"}`` (`health_event`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ganops.models import sample_latent

__all__ = [
    "COLLAPSE",
    "DIVERGED",
    "D_OVERPOWERING",
    "ROLLBACK",
    "CollapseDetector",
    "DiscriminatorOverpoweringDetector",
    "DivergenceGuard",
    "DiversityProbe",
    "HealthRecord",
    "TrainingDiverged",
    "decision_threshold",
    "discriminator_accuracy",
    "health_event",
]

COLLAPSE = "ModeCollapseSuspected"
D_OVERPOWERING = "DiscriminatorOverpowering"
ROLLBACK = "DivergenceRollback"
DIVERGED = "Diverged"
PROBE_SEED = 0xD1FE


class TrainingDiverged(RuntimeError):
    """Losses kept diverging after the allowed rollbacks (or with no checkpoint to roll back to)."""


def health_event(kind: str, step: int, message: str) -> dict[str, Any]:
    return {"type": kind, "step": step, "message": message,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# --------------------------------------------------------------------------- diversity


def cheap_features(x: torch.Tensor, max_side: int = 8) -> torch.Tensor:
    """Points as they are; images average-pooled to at most ``max_side``² and flattened. float32, (N, d)."""
    x = x.detach().float()
    if x.dim() == 4 and (x.shape[-1] > max_side or x.shape[-2] > max_side):
        x = F.adaptive_avg_pool2d(x, (min(x.shape[-2], max_side), min(x.shape[-1], max_side)))
    return x.reshape(x.shape[0], -1)


def mean_pairwise_distance(features: torch.Tensor) -> float:
    return float(torch.pdist(features).mean()) if features.shape[0] > 1 else 0.0


class DiversityProbe:
    """Diversity ratio of a generator against real data, from fixed latents (see the module docstring)."""

    def __init__(self, real: torch.Tensor, latent_dim: int, num_classes: int | None = None, *,
                 num_samples: int | None = None, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        self.num_samples = num_samples or real.shape[0]
        gen = torch.Generator(device="cpu").manual_seed(PROBE_SEED)
        self.z = sample_latent(self.num_samples, latent_dim, gen, self.device)
        self.y = None if not num_classes else (torch.arange(self.num_samples) % num_classes).to(self.device)
        self.real_spread = mean_pairwise_distance(cheap_features(real))

    @torch.inference_mode()
    def __call__(self, g: nn.Module) -> float:
        was_training = g.training
        g.eval()  # BatchNorm on running statistics: probing must not change the generator
        try:
            out: torch.Tensor = g(self.z, self.y)
        finally:
            g.train(was_training)
        spread = mean_pairwise_distance(cheap_features(out))
        if not math.isfinite(spread):
            return float("nan")
        return spread / self.real_spread if self.real_spread > 0 else float("nan")


# --------------------------------------------------------------------------- detectors


@dataclass
class CollapseDetector:
    threshold: float = 0.2
    relative: float = 0.5
    patience: int = 3
    below: int = 0
    best: float = 0.0
    fired: bool = False

    def observe(self, step: int, ratio: float) -> dict[str, Any] | None:
        if not math.isfinite(ratio):
            return None  # non-finite output is the divergence guard's business
        self.best = max(self.best, ratio)
        if ratio < self.threshold and ratio < self.relative * self.best:
            self.below += 1
        else:
            self.below = 0
            if ratio >= self.threshold:
                self.fired = False
        if self.below >= self.patience and not self.fired:
            self.fired = True
            return health_event(
                COLLAPSE, step,
                f"generator diversity is {ratio:.3f}× the real data's (best so far {self.best:.3f}×) for "
                f"{self.below} consecutive probes: samples from different latents are nearly identical",
            )
        return None

    @property
    def suspected(self) -> bool:
        return self.below >= self.patience


def decision_threshold(loss_type: str, label_smoothing: float = 0.0) -> float | None:
    """The logit separating "real" from "fake" for D's accuracy; None when the loss has no such notion."""
    if loss_type in ("non-saturating", "hinge"):
        return 0.0
    if loss_type == "lsgan":
        return (1.0 - label_smoothing) / 2.0  # midway between the targets
    return None  # wgan-gp: critic values are unbounded scores, not decisions


def discriminator_accuracy(d_real: torch.Tensor, d_fake: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fraction of correct decisions over real and fake logits (a 0-d tensor: no host sync here)."""
    real = (d_real.detach().float().reshape(-1) > threshold).float()
    fake = (d_fake.detach().float().reshape(-1) < threshold).float()
    return torch.cat([real, fake]).mean()


@dataclass
class DiscriminatorOverpoweringDetector:
    threshold: float = 0.99
    window: int = 5
    rearm_below: float = 0.9
    pinned: int = 0
    fired: bool = False

    def observe(self, step: int, accuracy: float | None) -> dict[str, Any] | None:
        if accuracy is None or not math.isfinite(accuracy):
            return None
        if accuracy >= self.threshold:
            self.pinned += 1
        else:
            self.pinned = 0
            if accuracy < self.rearm_below:
                self.fired = False
        if self.pinned >= self.window and not self.fired:
            self.fired = True
            return health_event(
                D_OVERPOWERING, step,
                f"discriminator accuracy ≥ {self.threshold:.2f} for {self.pinned} consecutive log points "
                f"(now {accuracy:.3f}): the generator gets vanishing gradients; consider a lower "
                "lrDiscriminator, label smoothing, R1 or spectral norm",
            )
        return None

    @property
    def overpowering(self) -> bool:
        return self.pinned >= self.window


@dataclass
class DivergenceGuard:
    max_loss: float = 1e4
    max_rollbacks: int = 3
    keys: tuple[str, ...] = ("loss_d", "loss_g")

    def check(self, values: Mapping[str, float]) -> str | None:
        """Why these logged values mean divergence, or None."""
        for key in self.keys:
            if key not in values:
                continue
            v = values[key]
            if not math.isfinite(v):
                return f"{key} is {v}"
            if abs(v) > self.max_loss:
                return f"|{key}| = {abs(v):.4g} > {self.max_loss:g}"
        return None


# --------------------------------------------------------------------------- what survives rollback and resume


@dataclass
class HealthRecord:
    """Rollbacks, the learning-rate scale they left and recent events: kept in the train state (``extra_state``)
    so a resumed attempt keeps counting, and across `Trainer.rollback` (which restores an older train state)."""

    rollbacks: int = 0
    lr_scale: float = 1.0
    events: list[dict[str, Any]] = field(default_factory=list)
    keep_events: int = 10

    def add(self, ev: dict[str, Any]) -> None:
        self.events = [*self.events, ev][-self.keep_events:]

    def to_state(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks, "lrScale": self.lr_scale, "events": list(self.events)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> HealthRecord:
        state = state or {}
        return cls(rollbacks=int(state.get("rollbacks", 0)), lr_scale=float(state.get("lrScale", 1.0)),
                   events=list(state.get("events", [])))

    def checkpoint_info(self) -> dict[str, Any]:
        return {"events": list(self.events), "rollbacks": self.rollbacks}

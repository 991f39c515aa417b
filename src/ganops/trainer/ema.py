"""Exponential moving average of the generator's weights (stylegan2-ada's ``G_ema``).

After each generator step ``t``: ``θ_ema ← decay · θ_ema + (1 − decay) · θ`` for floating-point parameters;
while ``t < start_step`` (or when the EMA is disabled) the weights are copied instead. Buffers (BatchNorm
running statistics, counters) are always copied: they are statistics of the current generator, not weights to
average. The EMA model is a frozen deep copy in eval mode; sample from it, never train it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ganops.api.spec import EmaSpec


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under a ``torch.compile`` or DDP wrapper, so parameter names match the EMA copy."""
    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, nn.parallel.DistributedDataParallel):
        inner = inner.module
    return inner if isinstance(inner, nn.Module) else model


class EMA:
    def __init__(self, model: nn.Module, spec: EmaSpec | None = None) -> None:
        self.spec = spec if spec is not None else EmaSpec()
        self.ema_model: nn.Module = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)
        self.last_step: int | None = None

    def decay_at(self, step: int) -> float:
        """The decay used by ``update(…, step)``: 0 (a copy) before ``start_step`` or when disabled."""
        if not self.spec.enabled or step < self.spec.start_step:
            return 0.0
        return self.spec.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold `model`'s current weights in; `step` is the number of generator steps taken so far."""
        decay = self.decay_at(step)
        src = _unwrap(model)
        ema_params = dict(self.ema_model.named_parameters())
        src_params = dict(src.named_parameters())
        if ema_params.keys() != src_params.keys():
            raise ValueError("EMA model and generator have different parameters: was the model rebuilt?")
        lerp_ema: list[torch.Tensor] = []
        lerp_src: list[torch.Tensor] = []
        for name, ema_p in ema_params.items():
            p = src_params[name].detach()
            if decay == 0.0 or not ema_p.is_floating_point():
                ema_p.copy_(p)
            else:
                lerp_ema.append(ema_p)
                lerp_src.append(p.to(ema_p.dtype))
        if lerp_ema:
            torch._foreach_lerp_(lerp_ema, lerp_src, 1.0 - decay)
        src_buffers = dict(src.named_buffers())
        for name, ema_b in self.ema_model.named_buffers():
            ema_b.copy_(src_buffers[name])
        self.last_step = step

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights (tensors only: safetensors-ready; same keys as the generator's state dict)."""
        return self.ema_model.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.ema_model.load_state_dict(state)

    def state_dict_meta(self) -> dict[str, Any]:
        """Small JSON-able facts for the train state; the weights go through ``state_dict()``."""
        return {"decay": self.spec.decay, "startStep": self.spec.start_step, "lastStep": self.last_step}

    def load_state_dict_meta(self, meta: Mapping[str, Any]) -> None:
        last = meta.get("lastStep")
        self.last_step = int(last) if last is not None else None

"""A bare GAN loop that does the trainer's work - same networks, same data on the same device, R1 on the same D
forward, autocast, Adam (fused on CUDA), D frozen in G's step, EMA - and nothing else: no stream, no checkpoints,
no logging, no health. It is the baseline the trainer's images/s are compared with (benchmarks.train_throughput,
benchmarks.gpu_check): what is left between the two is the trainer's own overhead.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from ganops.api.spec import GanTrainingJobSpec
from ganops.models import build_models


class BareLoop:
    def __init__(self, spec: GanTrainingJobSpec, images: torch.Tensor, device: torch.device, *, seed: int = 0) -> None:
        self.spec = spec
        self.device = device
        self.images = images.to(device)
        torch.manual_seed(seed)
        self.g, self.d = build_models(spec.model, spec.loss)
        self.g.to(device)
        self.d.to(device)
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            for net in (self.g, self.d):
                net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.ema = [p.detach().clone() for p in self.g.parameters()]
        fused: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
        opt = spec.optimizer
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=opt.lr_generator, betas=opt.betas, **fused)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=opt.lr_discriminator, betas=opt.betas, **fused)
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.training.precision]
        scaling = spec.training.precision == "fp16"
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=scaling)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=scaling)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.gamma = spec.loss.r1
        self.batch = spec.training.batch_size
        self.latent = spec.model.latent_dim
        self.decay = spec.model.ema.decay

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self) -> None:
        idx = torch.randint(0, self.images.shape[0], (self.batch,), generator=self.gen, device=self.device)
        real = self.images[idx]
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        r1 = self.gamma > 0
        if r1:
            real.requires_grad_(True)
        z = torch.randn(self.batch, self.latent, generator=self.gen, device=self.device)
        with self._autocast():
            fake = self.g(z)
            d_real = self.d(real)
            d_fake = self.d(fake.detach())
        loss_d = F.softplus(-d_real.float()).mean() + F.softplus(d_fake.float()).mean()
        if r1:
            (grad,) = torch.autograd.grad(d_real.float().sum(), real, create_graph=True)
            loss_d = loss_d + 0.5 * self.gamma * grad.float().square().sum(dim=[1, 2, 3]).mean()
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()  # type: ignore[no-untyped-call]
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        self.d.requires_grad_(False)
        with self._autocast():
            d_fake_g = self.d(fake)
        loss_g = F.softplus(-d_fake_g.float()).mean()
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss_g).backward()  # type: ignore[no-untyped-call]
        self.d.requires_grad_(True)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.g.parameters()], 1.0 - self.decay)

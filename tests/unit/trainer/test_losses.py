"""Losses and penalties: hand-computed values, the step helpers, short training runs and mixed precision."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from ganops.api.spec import LossSpec, ModelSpec
from ganops.models import build_models, sample_latent
from ganops.trainer.losses import (
    GanLoss,
    discriminator_step_loss,
    eager,
    generator_step_loss,
    gradient_penalty,
    r1_penalty,
)

torch.set_num_threads(1)

LOSSES = ["non-saturating", "wgan-gp", "hinge", "lsgan"]


class LinearD(nn.Module):
    """D(x) = w·x + b on flattened x: ∇ₓD = w everywhere."""

    def __init__(self, w: torch.Tensor, b: float = 0.3) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b


class SmallD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out: torch.Tensor = self.net(x.flatten(1)).squeeze(1)
        return out


def loss(type_: str, **kw: Any) -> GanLoss:
    return GanLoss(LossSpec(type=type_, **kw))


# ---------------------------------------------------------------- base losses on hand-set logits

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 1.0])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_non_saturating_values() -> None:
    fn = loss("non-saturating")
    expected_d = sum(softplus(-r) for r in REAL.tolist()) / 3 + sum(softplus(f) for f in FAKE.tolist()) / 3
    assert fn.d_loss(REAL, FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert fn.g_loss(FAKE).item() == pytest.approx(sum(softplus(-f) for f in FAKE.tolist()) / 3, rel=1e-6)


def test_label_smoothing_changes_the_real_target_only() -> None:
    plain, smooth = loss("non-saturating"), loss("non-saturating", label_smoothing=0.1)
    assert smooth.real_target == pytest.approx(0.9)
    t = 0.9
    real_term = sum(t * softplus(-r) + (1 - t) * softplus(r) for r in REAL.tolist()) / 3
    fake_term = sum(softplus(f) for f in FAKE.tolist()) / 3
    assert smooth.d_loss(REAL, FAKE).item() == pytest.approx(real_term + fake_term, rel=1e-6)
    assert smooth.d_loss(REAL, FAKE).item() != pytest.approx(plain.d_loss(REAL, FAKE).item())
    # One-sided: the fake term and the generator's target are untouched.
    zeros = torch.zeros(3)
    fake_term_smooth = smooth.d_loss(REAL, FAKE) - smooth.d_loss(REAL, zeros)
    fake_term_plain = plain.d_loss(REAL, FAKE) - plain.d_loss(REAL, zeros)
    torch.testing.assert_close(fake_term_smooth, fake_term_plain)
    torch.testing.assert_close(smooth.g_loss(FAKE), plain.g_loss(FAKE))
    # lsgan regresses real logits to 1 - s too.
    ls = loss("lsgan", label_smoothing=0.2)
    expected = ((REAL - 0.8) ** 2).mean() + (FAKE**2).mean()
    assert ls.d_loss(REAL, FAKE).item() == pytest.approx(expected.item(), rel=1e-6)


def test_hinge_values() -> None:
    fn = loss("hinge")
    # relu(1 - [2, .5, -1]) = [0, .5, 2]; relu(1 + [-2, 0, 1]) = [0, 1, 2]
    assert fn.d_loss(REAL, FAKE).item() == pytest.approx(2.5 / 3 + 3.0 / 3)
    assert fn.g_loss(FAKE).item() == pytest.approx(0.0 - (-2.0 + 0.0 + 1.0) / 3)


def test_lsgan_values() -> None:
    fn = loss("lsgan")
    # (D(x) - 1)²: [1, .25, 4]; D(G(z))²: [4, 0, 1]
    assert fn.d_loss(REAL, FAKE).item() == pytest.approx(5.25 / 3 + 5.0 / 3)
    # (D(G(z)) - 1)²: [9, 1, 0]
    assert fn.g_loss(FAKE).item() == pytest.approx(10.0 / 3)


def test_wgan_values() -> None:
    fn = loss("wgan-gp")
    assert fn.d_loss(REAL, FAKE).item() == pytest.approx(-(1.5 / 3) + (-1.0 / 3))
    assert fn.g_loss(FAKE).item() == pytest.approx(1.0 / 3)


def test_logits_of_shape_n_by_1_are_accepted() -> None:
    fn = loss("hinge")
    torch.testing.assert_close(fn.d_loss(REAL[:, None], FAKE[:, None]), fn.d_loss(REAL, FAKE))


# ---------------------------------------------------------------- gradient penalty


def test_gradient_penalty_on_linear_d_is_exact() -> None:
    w = torch.tensor([1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # ‖w‖ = 3
    d = LinearD(w)
    real, fake = torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)
    gp = gradient_penalty(d, real, fake)
    assert gp.item() == pytest.approx((3.0 - 1.0) ** 2, rel=1e-6)
    # create_graph: the penalty differentiates w.r.t. D's weights, d/dw (‖w‖ − 1)² = 2(‖w‖ − 1)·w/‖w‖.
    gp.backward()
    assert d.w.grad is not None
    torch.testing.assert_close(d.w.grad, 2 * (3.0 - 1.0) * w / 3.0)


def test_gradient_penalty_matches_manual_autograd_with_fixed_alpha() -> None:
    torch.manual_seed(0)
    d = SmallD()
    real, fake = torch.randn(4, 6), torch.randn(4, 6)
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0])
    expected = []
    for i in range(4):  # one sample at a time, by hand
        x = (alpha[i] * real[i] + (1 - alpha[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        (g,) = torch.autograd.grad(d(x).sum(), x)
        expected.append((g.norm() - 1) ** 2)
    gp = gradient_penalty(d, real, fake, alpha=alpha)
    torch.testing.assert_close(gp, torch.stack(expected).mean())


def test_gradient_penalty_alpha_from_generator_is_reproducible() -> None:
    torch.manual_seed(0)
    d = SmallD()
    real, fake = torch.randn(4, 6), torch.randn(4, 6)
    a = gradient_penalty(d, real, fake, generator=torch.Generator().manual_seed(7))
    b = gradient_penalty(d, real, fake, generator=torch.Generator().manual_seed(7))
    c = gradient_penalty(d, real, fake, alpha=torch.rand(4, generator=torch.Generator().manual_seed(7)))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert a.item() != pytest.approx(gradient_penalty(d, real, fake, alpha=torch.full((4,), 0.5)).item())


def test_gradient_penalty_does_not_touch_inputs_graph() -> None:
    d = SmallD()
    real = torch.randn(3, 6)
    fake = torch.randn(3, 6, requires_grad=True)  # e.g. a generator output someone forgot to detach
    gradient_penalty(d, real, fake).backward()
    assert fake.grad is None


# ---------------------------------------------------------------- R1


def test_r1_on_linear_d() -> None:
    w = torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0, 0.0])  # ‖w‖² = 25
    d = LinearD(w)
    real = torch.randn(5, 6, requires_grad=True)
    gamma = 0.2
    r1 = r1_penalty(d(real), real, gamma)
    assert r1.item() == pytest.approx(gamma / 2 * 25.0, rel=1e-6)
    r1.backward()
    assert d.w.grad is not None
    torch.testing.assert_close(d.w.grad, gamma * w)  # d/dw γ/2‖w‖² = γw
    assert loss("hinge", r1=gamma).r1_penalty(d(real), real).item() == pytest.approx(2.5, rel=1e-6)


def test_r1_requires_grad_on_real() -> None:
    d = LinearD(torch.ones(6))
    real = torch.randn(2, 6)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(d(real), real, 1.0)


# ---------------------------------------------------------------- step helpers


def test_discriminator_step_loss_combines_parts() -> None:
    w = torch.tensor([1.0, 2.0, 2.0, 0.0, 0.0, 0.0])
    d = LinearD(w)
    real, fake = torch.randn(4, 6), torch.randn(4, 6)
    total, parts = discriminator_step_loss(
        LossSpec(type="wgan-gp", gradient_penalty=10.0), d, real, fake, d(real), d(fake)
    )
    assert set(parts) == {"d_adv", "d_real_logit", "d_fake_logit", "gp"}
    assert parts["gp"].item() == pytest.approx(4.0, rel=1e-6)
    assert total.item() == pytest.approx(parts["d_adv"].item() + 10.0 * 4.0, rel=1e-6)
    assert all(not v.requires_grad and v.dtype == torch.float32 for v in parts.values())

    # R1 with a `real` that does not require grad: D runs again on a grad-requiring copy.
    total, parts = discriminator_step_loss(LossSpec(type="hinge", r1=2.0), d, real, fake, d(real), d(fake))
    assert set(parts) == {"d_adv", "d_real_logit", "d_fake_logit", "r1"}
    assert parts["r1"].item() == pytest.approx(9.0, rel=1e-6)  # γ/2·‖w‖²
    assert total.item() == pytest.approx(parts["d_adv"].item() + 9.0, rel=1e-6)
    # GP weight only applies to wgan-gp.
    hinge = LossSpec(type="hinge", gradient_penalty=10.0)
    _, parts = discriminator_step_loss(hinge, d, real, fake, d(real), d(fake))
    assert "gp" not in parts


def test_generator_step_loss() -> None:
    g, parts = generator_step_loss(LossSpec(type="hinge"), FAKE)
    assert g.item() == pytest.approx(1.0 / 3)
    assert set(parts) == {"g_adv"}


def test_eager_unwraps_compiled_modules() -> None:
    d = SmallD()

    class Wrapped:  # what torch.compile returns exposes the original module as `_orig_mod`
        _orig_mod = d

    assert eager(Wrapped()) is d  # type: ignore[arg-type]
    assert eager(d) is d


# ---------------------------------------------------------------- every loss × model trains


MODELS = {
    "dcgan": ModelSpec(architecture="dcgan", image_size=16, channels=1, latent_dim=8, width=8),
    "dcgan-cond-sn-mbstd": ModelSpec(
        architecture="dcgan",
        image_size=8,
        channels=3,
        latent_dim=8,
        width=8,
        num_classes=3,
        spectral_norm=True,
        minibatch_std=True,
    ),
    "resnet": ModelSpec(
        architecture="resnet", image_size=32, channels=1, latent_dim=8, width=4, spectral_norm=True
    ),
    "mlp": ModelSpec(architecture="mlp", image_size=2, latent_dim=2, width=16, depth=3),
}


def _real_batch(model: ModelSpec, n: int, gen: torch.Generator) -> torch.Tensor:
    if model.architecture == "mlp":
        return torch.randn(n, 2, generator=gen) * 2
    return torch.rand(n, model.channels, model.image_size, model.image_size, generator=gen) * 2 - 1


@pytest.mark.parametrize("model_id", list(MODELS))
@pytest.mark.parametrize("loss_type", LOSSES)
def test_every_loss_and_model_trains(loss_type: str, model_id: str) -> None:
    torch.manual_seed(0)
    model = MODELS[model_id]
    spec = LossSpec(
        type=loss_type,
        r1=0.5 if loss_type in ("hinge", "lsgan") else 0.0,
        label_smoothing=0.1 if loss_type == "non-saturating" else 0.0,
    )
    g, d = build_models(model, spec)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.999))
    g0 = [p.detach().clone() for p in g.parameters()]
    d0 = [p.detach().clone() for p in d.parameters()]
    gen = torch.Generator().manual_seed(1)
    n = 8
    y = torch.arange(n) % model.num_classes if model.num_classes else None
    for _ in range(3):
        real = _real_batch(model, n, gen)
        fake = g(sample_latent(n, model.latent_dim, gen), y)
        d_real, d_fake = d(real, y), d(fake.detach(), y)
        loss_d, parts_d = discriminator_step_loss(spec, d, real, fake.detach(), d_real, d_fake, y, y)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g, parts_g = generator_step_loss(spec, d(fake, y))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        assert torch.isfinite(loss_d) and torch.isfinite(loss_g)
        assert all(torch.isfinite(v) for v in {**parts_d, **parts_g}.values())
        assert ("gp" in parts_d) == (loss_type == "wgan-gp")
        assert ("r1" in parts_d) == (spec.r1 > 0)
    assert all(not torch.equal(a, b) for a, b in zip(g0, g.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d0, d.parameters(), strict=True))
    for p in d.parameters():  # every D parameter gets a gradient (none is dead)
        assert p.grad is not None and torch.isfinite(p.grad).all()


# ---------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("loss_type", ["wgan-gp", "hinge"])
def test_bf16_autocast_discriminator_step(loss_type: str) -> None:
    torch.manual_seed(0)
    model = ModelSpec(architecture="dcgan", image_size=16, latent_dim=8, width=8, minibatch_std=True)
    spec = LossSpec(type=loss_type, r1=1.0)
    g, d = build_models(model, spec)
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = g(sample_latent(8, 8))
        real_rg = real.requires_grad_(True)
        d_real, d_fake = d(real_rg), d(fake.detach())
        assert d_real.dtype == torch.bfloat16
        total, parts = discriminator_step_loss(spec, d, real_rg, fake.detach(), d_real, d_fake)
        gp = GanLoss(spec).gradient_penalty(d, real, fake)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert gp.dtype == torch.float32 and torch.isfinite(gp)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in parts.values())
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.parameters())
    # The bf16 penalty agrees with the fp32 one on the same network and interpolation, to bf16 precision.
    alpha = torch.rand(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp16 = gradient_penalty(d, real.detach(), fake.detach().float(), alpha=alpha)
    gp32 = gradient_penalty(d, real.detach(), fake.detach().float(), alpha=alpha)
    assert gp16.item() == pytest.approx(gp32.item(), rel=0.1, abs=1e-3)


def test_losses_under_autocast_are_fp32() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for t in LOSSES:
            fn = loss(t, label_smoothing=0.1)
            d_loss = fn.d_loss(REAL.bfloat16(), FAKE.bfloat16())
            assert d_loss.dtype == torch.float32
            assert fn.g_loss(FAKE.bfloat16()).dtype == torch.float32

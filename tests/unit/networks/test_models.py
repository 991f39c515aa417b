"""Networks: shapes for every architecture/size/option, the pytorch/examples DCGAN layout, conditioning,
minibatch-stddev, spectral norm, latent sampling and the generator EMA."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ganops.api.spec import EmaSpec, LossSpec, ModelSpec
from ganops.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MinibatchStd,
    MLPDiscriminator,
    MLPGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
    build_models,
    sample_latent,
)
from ganops.trainer.ema import EMA

torch.set_num_threads(1)

N = 4
LATENT = 8
OPTIONS = list(itertools.product([None, 3], [False, True], [False, True]))  # classes, spectral norm, mbstd
OPTION_IDS = [
    f"{'cond' if c else 'uncond'}-{'sn' if s else 'nosn'}-{'mbstd' if m else 'nostd'}" for c, s, m in OPTIONS
]


def spec(**kw: Any) -> ModelSpec:
    base: dict[str, Any] = {"latent_dim": LATENT, "width": 8, "channels": 3}
    return ModelSpec(**{**base, **kw})


def labels(num_classes: int | None, n: int = N) -> torch.Tensor | None:
    return None if num_classes is None else torch.arange(n) % num_classes


def check_pair(g: nn.Module, d: nn.Module, num_classes: int | None, out_shape: tuple[int, ...]) -> None:
    assert g.latent_dim == LATENT
    assert g.num_classes == num_classes
    z = sample_latent(N, LATENT, torch.Generator().manual_seed(0), "cpu")
    y = labels(num_classes)
    x = g(z, y)
    assert x.shape == (N, *out_shape)
    assert torch.isfinite(x).all()
    logits = d(x, y)
    assert logits.shape == (N,)
    assert torch.isfinite(logits).all()
    logits.sum().backward()  # the whole graph is differentiable back to G
    assert all(p.grad is not None for p in g.parameters() if p.requires_grad)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(("num_classes", "sn", "mbstd"), OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("size", [8, 16, 32, 64, 128])
def test_dcgan_shapes(size: int, num_classes: int | None, sn: bool, mbstd: bool) -> None:
    options = {"num_classes": num_classes, "spectral_norm": sn, "minibatch_std": mbstd}
    g, d = build_models(spec(architecture="dcgan", image_size=size, **options))
    assert isinstance(g, DCGANGenerator) and isinstance(d, DCGANDiscriminator)
    check_pair(g, d, num_classes, (3, size, size))
    x = g(sample_latent(N, LATENT), labels(num_classes))
    assert x.min() >= -1.0 and x.max() <= 1.0  # tanh


@pytest.mark.parametrize(("num_classes", "sn", "mbstd"), OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("size", [32, 64])
def test_resnet_shapes(size: int, num_classes: int | None, sn: bool, mbstd: bool) -> None:
    options = {"num_classes": num_classes, "spectral_norm": sn, "minibatch_std": mbstd}
    g, d = build_models(spec(architecture="resnet", image_size=size, **options))
    assert isinstance(g, ResNetGenerator) and isinstance(d, ResNetDiscriminator)
    check_pair(g, d, num_classes, (3, size, size))


def test_resnet_128_builds() -> None:
    g, d = build_models(spec(architecture="resnet", image_size=128, width=4, channels=1))
    with torch.no_grad():
        x = g(sample_latent(2, LATENT))
        assert x.shape == (2, 1, 128, 128)
        assert d(x).shape == (2,)


@pytest.mark.parametrize(("num_classes", "sn", "mbstd"), OPTIONS, ids=OPTION_IDS)
def test_mlp_shapes(num_classes: int | None, sn: bool, mbstd: bool) -> None:
    # The spec forbids numClasses for the 2-D datasets, but the classes support it like the others.
    g = MLPGenerator(LATENT, width=16, depth=3, num_classes=num_classes)
    d = MLPDiscriminator(width=16, depth=3, num_classes=num_classes, spectral_norm=sn, minibatch_std=mbstd)
    check_pair(g, d, num_classes, (2,))


def test_mlp_from_spec_has_depth_and_width() -> None:
    g, d = build_models(ModelSpec(architecture="mlp", image_size=2, latent_dim=2, width=32, depth=4))
    assert isinstance(g, MLPGenerator) and isinstance(d, MLPDiscriminator)
    g_linears = [m for m in g.modules() if isinstance(m, nn.Linear)]
    d_linears = [m for m in d.modules() if isinstance(m, nn.Linear)]
    assert len(g_linears) == 5 and len(d_linears) == 5  # depth hidden layers + output
    assert [m.out_features for m in g_linears] == [32, 32, 32, 32, 2]
    assert d_linears[0].in_features == 2 and d_linears[-1].out_features == 1


def test_rejects_unsupported_sizes() -> None:
    with pytest.raises(ValueError, match="image_size"):
        DCGANGenerator(LATENT, image_size=48)
    with pytest.raises(ValueError, match="image_size"):
        ResNetGenerator(LATENT, image_size=16)


# ---------------------------------------------------------------- DCGAN = pytorch/examples


class ExamplesGenerator(nn.Module):
    """pytorch/examples/dcgan/main.py's Generator, verbatim apart from names."""

    def __init__(self, nz: int, ngf: int, nc: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.main(z)
        return out


class ExamplesDiscriminator(nn.Module):
    """pytorch/examples/dcgan/main.py's Discriminator."""

    def __init__(self, ndf: int, nc: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.main(x)
        return out.view(-1, 1).squeeze(1)


def test_dcgan_64_is_pytorch_examples_architecture() -> None:
    g = DCGANGenerator(LATENT, image_size=64, channels=3, width=4)
    d = DCGANDiscriminator(image_size=64, channels=3, width=4)
    ref_g, ref_d = ExamplesGenerator(LATENT, 4, 3), ExamplesDiscriminator(4, 3)
    # Same tensors under the same names (D's final conv is `head` here, `main.11` there).
    ref_g.load_state_dict(g.state_dict(), strict=True)
    d_state = {k.replace("head.", "main.11.", 1): v for k, v in d.state_dict().items()}
    ref_d.load_state_dict(d_state, strict=True)
    z = sample_latent(N, LATENT, torch.Generator().manual_seed(1))
    torch.testing.assert_close(g(z), ref_g(z.view(N, LATENT, 1, 1)))
    x = torch.rand(N, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(torch.sigmoid(d(x)), ref_d(x))
    # Same layer types in the same order.
    assert [type(m) for m in g.main] == [type(m) for m in ref_g.main]
    assert [type(m) for m in [*d.main, d.head]] == [type(m) for m in ref_d.main][:-1]


def test_dcgan_32_halves_the_blocks() -> None:
    g = DCGANGenerator(LATENT, image_size=32, width=4)
    convs = [m for m in g.main if isinstance(m, nn.ConvTranspose2d)]
    shapes = [(m.in_channels, m.out_channels, m.stride[0]) for m in convs]
    assert shapes == [(8, 16, 1), (16, 8, 2), (8, 4, 2), (4, 3, 2)]


def test_dcgan_init_is_normal_002() -> None:
    torch.manual_seed(0)
    g, d = build_models(spec(architecture="dcgan", image_size=64, width=32))
    for module in (g, d):
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.weight.numel() > 1000:
                assert abs(m.weight.std().item() - 0.02) < 0.002
                assert abs(m.weight.mean().item()) < 0.002
            if isinstance(m, nn.BatchNorm2d):
                assert abs(m.weight.mean().item() - 1.0) < 0.02


def test_dcgan_critic_uses_layer_norm_for_wgan_gp() -> None:
    _, d = build_models(spec(architecture="dcgan", image_size=16), LossSpec(type="wgan-gp"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in d.modules())
    _, d = build_models(spec(architecture="dcgan", image_size=16), LossSpec(type="hinge"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    _, d = build_models(spec(architecture="dcgan", image_size=16, spectral_norm=True))
    assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in d.modules())


# ---------------------------------------------------------------- conditioning


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_conditional_models_use_and_require_labels(arch: str) -> None:
    torch.manual_seed(0)
    g, d = build_models(spec(architecture=arch, image_size=32, num_classes=5))
    g.eval()
    d.eval()
    z = sample_latent(N, LATENT).repeat(2, 1)
    y = torch.tensor([0, 1, 2, 3, 4, 4, 4, 4])
    with torch.no_grad():
        x = g(z, y)
        assert not torch.allclose(x[:4], x[4:])  # same z, different label → different image
        logits = d(x[:1].repeat(2, 1, 1, 1), torch.tensor([0, 3]))
        assert logits[0] != logits[1]  # the projection term depends on the label
    with pytest.raises(ValueError, match="conditional"):
        g(z)
    with pytest.raises(ValueError, match="conditional"):
        d(x)


def test_unconditional_models_ignore_labels() -> None:
    g, _ = build_models(spec(architecture="dcgan", image_size=8))
    g.eval()
    z = sample_latent(N, LATENT)
    with torch.no_grad():
        torch.testing.assert_close(g(z, torch.zeros(N, dtype=torch.long)), g(z))


def test_projection_discriminator_formula() -> None:
    d = MLPDiscriminator(width=6, depth=2, num_classes=3)
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 1, 0])
    h = d.main(x)
    assert d.projection.embed is not None
    expected = d.head(h).squeeze(1) + (d.projection.embed(y) * h).sum(1)
    torch.testing.assert_close(d(x, y), expected)


# ---------------------------------------------------------------- minibatch stddev, spectral norm


def test_minibatch_std_matches_hand_computation() -> None:
    x = torch.randn(8, 3, 2, 2)
    out = MinibatchStd(group_size=4)(x)
    assert out.shape == (8, 4, 2, 2)
    torch.testing.assert_close(out[:, :3], x)
    groups = x.reshape(4, 2, 3, 2, 2)  # group m holds samples m, m+2, m+4, m+6
    for m in range(2):
        std = (groups[:, m].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        for j in range(4):
            assert torch.allclose(out[j * 2 + m, 3], std.expand(2, 2))


@pytest.mark.parametrize(("n", "group"), [(6, 3), (5, 1), (2, 2), (1, 1)])
def test_minibatch_std_handles_any_batch(n: int, group: int) -> None:
    out = MinibatchStd(4)(torch.randn(n, 5))
    assert out.shape == (n, 6)
    assert torch.isfinite(out).all()
    if group == 1:  # one sample per group: zero variance
        assert torch.allclose(out[:, 5], torch.full((n,), 1e-4))


def test_minibatch_std_sees_mode_collapse() -> None:
    mbstd = MinibatchStd(4)
    collapsed = torch.ones(8, 4)
    varied = torch.randn(8, 4)
    assert mbstd(collapsed)[:, -1].max() < mbstd(varied)[:, -1].min()


def test_spectral_norm_bounds_every_d_layer() -> None:
    torch.manual_seed(0)
    _, d = build_models(spec(architecture="dcgan", image_size=16, spectral_norm=True, num_classes=3))
    sn_layers = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert len(sn_layers) == 4  # two stride-2 convs, the head, the projection embedding
    x = torch.randn(N, 3, 16, 16)
    for _ in range(30):  # one power iteration per training forward
        d(x, labels(3))
    for m in sn_layers:
        weight = m.weight.reshape(m.weight.shape[0], -1)
        assert torch.linalg.matrix_norm(weight, ord=2).item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("architecture,size", [("resnet", 32), ("dcgan", 16), ("mlp", 8)])
def test_model_state_dicts_are_safetensors_ready(tmp_path: Path, architecture: str, size: int) -> None:
    """save → load → the same keys, dtypes, shapes and bits, and a differently initialised copy that loads the
    file computes exactly what the original computes (spectral norm's vectors and BatchNorm's statistics too)."""
    model_spec = spec(architecture=architecture, image_size=size, spectral_norm=True, num_classes=3,
                      minibatch_std=True)
    torch.manual_seed(0)
    g, d = build_models(model_spec)
    z = sample_latent(N, LATENT, torch.Generator().manual_seed(1), "cpu")
    d(g(z, labels(3)), labels(3))  # a training-mode forward moves the power-iteration vectors and BN statistics
    torch.manual_seed(1)
    g2, d2 = build_models(model_spec)  # other initial weights: the load must overwrite every one of them
    for name, module, copy in (("g", g, g2), ("d", d, d2)):
        state = {k: v.contiguous().clone() for k, v in module.state_dict().items()}
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path))
        loaded = load_file(str(path))
        assert set(loaded) == set(state) == set(copy.state_dict())
        for key, tensor in state.items():
            assert loaded[key].dtype == tensor.dtype and loaded[key].shape == tensor.shape, key
            assert torch.equal(loaded[key], tensor), key
        assert any(not torch.equal(copy.state_dict()[k], state[k]) for k in state)  # a real overwrite below
        result = copy.load_state_dict(loaded, strict=True)
        assert (result.missing_keys, result.unexpected_keys) == ([], [])
        for key, tensor in copy.state_dict().items():
            assert torch.equal(tensor, state[key]), key
        module.eval()
        copy.eval()
        with torch.no_grad():
            x = z if name == "g" else g(z, labels(3))
            assert torch.equal(copy(x, labels(3)), module(x, labels(3))), f"{name}: the loaded copy computes otherwise"


# ---------------------------------------------------------------- latents


def test_sample_latent_is_seeded_and_shaped() -> None:
    a = sample_latent(5, 7, torch.Generator().manual_seed(3), torch.device("cpu"))
    b = sample_latent(5, 7, torch.Generator().manual_seed(3), "cpu")
    assert a.shape == (5, 7)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, sample_latent(5, 7, torch.Generator().manual_seed(4)))


def test_generator_accepts_examples_style_latents() -> None:
    g = DCGANGenerator(LATENT, image_size=8, width=4).eval()
    z = sample_latent(N, LATENT)
    with torch.no_grad():
        torch.testing.assert_close(g(z), g(z.view(N, LATENT, 1, 1)))


# ---------------------------------------------------------------- EMA


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn(self.lin(x))
        return out


def _set(model: Tiny, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_ema_decay_math() -> None:
    model = Tiny()
    _set(model, 1.0)
    ema = EMA(model, EmaSpec(decay=0.9, start_step=0))
    _set(model, 2.0)
    ema.update(model, step=1)
    for p in ema.ema_model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.9 * 1.0 + 0.1 * 2.0))
    _set(model, 0.0)
    ema.update(model, step=2)
    for p in ema.ema_model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.9 * 1.1))
    assert ema.decay_at(2) == 0.9


def test_ema_copies_before_start_step_and_when_disabled() -> None:
    model = Tiny()
    ema = EMA(model, EmaSpec(decay=0.5, start_step=3))
    _set(model, 4.0)
    ema.update(model, step=2)
    for p in ema.ema_model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 4.0))  # plain copy
    _set(model, 0.0)
    ema.update(model, step=3)
    for p in ema.ema_model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 2.0))  # averaging from start_step on
    off = EMA(model, EmaSpec(enabled=False, decay=0.99))
    _set(model, 7.0)
    off.update(model, step=100)
    for p in off.ema_model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 7.0))


def test_ema_copies_buffers_and_is_frozen() -> None:
    model = Tiny()
    ema = EMA(model, EmaSpec(decay=0.99))
    model.train()
    model(torch.randn(16, 2) * 3 + 5)  # moves BatchNorm's running statistics
    ema.update(model, step=1)
    torch.testing.assert_close(ema.ema_model.bn.running_mean, model.bn.running_mean)
    torch.testing.assert_close(ema.ema_model.bn.num_batches_tracked, model.bn.num_batches_tracked)
    assert not ema.ema_model.training
    assert not any(p.requires_grad for p in ema.ema_model.parameters())
    pairs = zip(ema.ema_model.parameters(), model.parameters(), strict=True)
    assert all(p.data_ptr() != q.data_ptr() for p, q in pairs)


def test_ema_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    g, _ = build_models(spec(architecture="dcgan", image_size=8))
    ema = EMA(g, EmaSpec(decay=0.9))
    with torch.no_grad():
        for p in g.parameters():
            p.add_(1.0)
    ema.update(g, step=1)
    state = ema.state_dict()
    assert state.keys() == g.state_dict().keys()  # loads into a fresh generator, as export does
    fresh = EMA(build_models(spec(architecture="dcgan", image_size=8))[0], EmaSpec(decay=0.9))
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, state[k])
    fresh.load_state_dict_meta(ema.state_dict_meta())
    assert fresh.last_step == 1
    g2, _ = build_models(spec(architecture="dcgan", image_size=8))
    g2.load_state_dict(state)

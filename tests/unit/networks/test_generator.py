"""The generator module every part shares: the latent draw, `generate`, and loading a checkpoint's generator."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ganops.api.spec import ModelSpec
from ganops.checkpoints import CheckpointError
from ganops.generator import build_generator, generate, latents, load_generator
from ganops.trainer.checkpoint import CheckpointManager

# --------------------------------------------------------------------------------------------------- latents


def test_truncation_redraws_only_entries_outside_the_threshold() -> None:
    plain = latents(64, 32, seed=3, truncation=None)
    assert torch.equal(plain, latents(64, 32, seed=3, truncation=None))
    for t in (0.05, 0.5, 1.0, 2.0):
        z = latents(64, 32, seed=3, truncation=t)
        assert torch.equal(z, latents(64, 32, seed=3, truncation=t))
        assert float(z.abs().max()) <= t
        inside = plain.abs() <= t
        assert torch.equal(z[inside], plain[inside])
    assert torch.equal(latents(64, 32, seed=3, truncation=50.0), plain)
    # torch.randn on a CPU generator seeded with the seed: what every part (trainer, promotion, serving) draws.
    expected = torch.randn(4, 8, generator=torch.Generator().manual_seed(11))
    assert torch.equal(latents(4, 8, seed=11, truncation=None), expected)


def test_truncated_draws_follow_the_truncated_normal() -> None:
    t = 1.0
    z = latents(2000, 64, seed=0, truncation=t).numpy().ravel()
    phi = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(t / math.sqrt(2))
    expected_var = 1 - 2 * t * phi / mass  # variance of N(0, 1) truncated to [-t, t]
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.var()) - expected_var) < 0.01


def test_latents_are_the_same_on_any_device_and_generate_is_deterministic() -> None:
    spec = ModelSpec.model_validate({"architecture": "mlp", "latentDim": 8, "width": 16, "depth": 2})
    torch.manual_seed(0)
    g = build_generator(spec)
    assert torch.equal(latents(5, 8, seed=2, device="cpu"), latents(5, 8, seed=2))
    a = generate(g, 6, 2, 8, None, torch.device("cpu"))
    assert a.shape == (6, 2)
    assert torch.equal(a, generate(g, 6, 2, 8, None, torch.device("cpu")))
    assert not torch.equal(a, generate(g, 6, 3, 8, None, torch.device("cpu")))
    with torch.no_grad():
        assert torch.equal(a, g.eval()(latents(6, 8, seed=2), None).float())


def test_conditional_generate_cycles_labels() -> None:
    spec = ModelSpec.model_validate({"architecture": "mlp", "latentDim": 4, "width": 16, "depth": 2,
                                     "numClasses": 3})
    torch.manual_seed(0)
    g = build_generator(spec)
    cycled = generate(g, 6, 0, 4, 3, torch.device("cpu"))
    explicit = generate(g, 6, 0, 4, 3, torch.device("cpu"), labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    other = generate(g, 6, 0, 4, 3, torch.device("cpu"), labels=torch.zeros(6, dtype=torch.long))
    assert torch.equal(cycled, explicit)
    assert not torch.equal(cycled, other)


def _saved(tmp_path: Path) -> tuple[str, torch.nn.Module]:
    spec = ModelSpec.model_validate({"architecture": "mlp", "latentDim": 4, "width": 16, "depth": 2})
    torch.manual_seed(1)
    g = build_generator(spec)
    torch.manual_seed(2)
    ema = build_generator(spec)
    root = f"file://{tmp_path}/ckpt"
    weights = {"generator": g.state_dict(), "generator_ema": ema.state_dict(), "discriminator": {}}
    CheckpointManager(root).save(7, weights, {"step": 7},
                                 info={"model": spec.model_dump(mode="json", by_alias=True, exclude_none=True)})
    return root, ema


def test_load_generator_reads_the_ema_weights_of_the_latest_checkpoint(tmp_path: Path) -> None:
    root, ema = _saved(tmp_path)
    loaded, manifest = load_generator(root)
    assert manifest["step"] == 7 and manifest["uri"].endswith("step-000000007")
    assert not loaded.training
    for name, tensor in ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    raw, _ = load_generator(manifest["uri"], ema=False)
    assert not all(torch.equal(raw.state_dict()[k], v) for k, v in ema.state_dict().items())


def test_load_generator_refuses_a_checksum_mismatch_and_a_folder_without_manifest(tmp_path: Path) -> None:
    root, _ = _saved(tmp_path)
    weights = tmp_path / "ckpt" / "step-000000007" / "generator_ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_generator(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a ganops checkpoint"):
        load_generator(f"file://{tmp_path}/empty")

"""Spectral norm's σ is computed in fp32 with autocast off, whatever the training precision.

Under CUDA autocast the power iteration's ``mv`` and σ's ``vdot`` ran in bf16/fp16; CPU autocast does not cover
those ops, so a CPU run cannot see the dtype change - it can see whether autocast was on around them.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.utils.parametrizations import spectral_norm

from ganops.models.dcgan import DCGANDiscriminator
from ganops.models.layers import FP32SpectralNorm


def test_sigma_is_computed_with_autocast_off(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    d = DCGANDiscriminator(8, 1, 8, spectral_norm=True)
    seen: list[tuple[str, bool, torch.dtype]] = []
    for name in ("mv", "vdot"):
        original = getattr(torch, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            seen.append((_name, torch.is_autocast_enabled("cpu"), args[0].dtype))
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(torch.randn(4, 1, 8, 8))
    assert out.dtype == torch.bfloat16  # the layers themselves still run in bf16
    assert {name for name, _, _ in seen} == {"mv", "vdot"}
    assert all(not on and dtype == torch.float32 for _, on, dtype in seen), seen


def test_same_state_and_numbers_as_torchs_spectral_norm_in_fp32() -> None:
    torch.manual_seed(0)
    ours = torch.nn.Conv2d(3, 4, 3)
    theirs = torch.nn.Conv2d(3, 4, 3)
    theirs.load_state_dict(ours.state_dict())
    torch.manual_seed(1)
    spectral_norm(theirs)
    torch.manual_seed(1)
    torch.nn.utils.parametrize.register_parametrization(ours, "weight", FP32SpectralNorm(ours.weight, 1, 0, 1e-12))
    assert ours.state_dict().keys() == theirs.state_dict().keys()  # checkpoints stay loadable
    x = torch.randn(2, 3, 6, 6)
    for _ in range(3):  # power iterations in training mode move u and v identically
        assert torch.equal(ours(x), theirs(x))

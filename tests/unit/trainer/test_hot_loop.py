"""The training step as a GPU would run it, checked on the CPU:

- no tensor is sent to a device inside a step (on a GPU each such `.to(device)` is a host→device copy, and a
  blocking one synchronises the host with the GPU every step): data, latents, labels and penalty weights are
  already where the networks are; and outside log steps the host reads no value back (`.item()`, `bool(t)`, …):
  the CPU stand-in for gpu-check's "≤ 1 host↔device synchronisation per step";
- 8-bit image datasets live on the device as uint8 and are converted and augmented there, bitwise as on the host;
- R1 under bf16 autocast reuses the adversarial forward of D on the real batch (it used to run D once more, in fp32);
  lazy R1 (StyleGAN2) every ``r1Interval`` discriminator steps, weighted by the interval;
- D is frozen during G's step (its weight gradients were computed and thrown away);
- the matmul precision is set explicitly and recorded in the checkpoint and the evaluation reference digest;
- ``compile`` is refused at start where it cannot run.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from ganops.api.loader import job_from_object
from ganops.checkpoints import MANIFEST
from ganops.trainer import device as device_mod
from ganops.trainer import evaluator as evaluator_mod
from ganops.trainer.data import TensorDataset, load_dataset_uri, make_stream
from ganops.trainer.loop import CompileUnavailable, RunContext, Trainer
from ganops.trainer.losses import discriminator_step_loss
from ganops.trainer.run import TrainerCannotStart, build_trainer
from tests.support.jobs import as_job, digits_job


def make_trainer(obj: dict[str, Any], tmp_path: Path) -> Trainer:
    job = as_job(obj)
    ctx = RunContext(namespace="ns", job_name=job.metadata.name, checkpoint_uri=f"file://{tmp_path}/ckpt",
                     work_dir=tmp_path / "work", progress=False)
    return Trainer(job, ctx)


@pytest.fixture(autouse=True)
def _restore_fp32_precision() -> Iterator[None]:
    before = device_mod.fp32_precision()
    yield
    device_mod.set_fp32_precision(before["matmul"], before["conv"])


# What makes the host wait for a GPU: a value read back (`.item()`, `bool(t)` in an `if`, …) or an op whose output
# size depends on the data (`nonzero`). On the CPU they cost nothing, so they are caught by name.
HOST_READS = frozenset({"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero",
                        "masked_select", "unique"})


class DeviceTransfers(TorchFunctionMode):
    """Records every Tensor.to / .cuda / .cpu call that names a device (or another tensor to follow), and every
    read of a tensor's value by the host (`HOST_READS`): on a GPU each is a host↔device synchronisation."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            # Adam's for-each path on the CPU reads its step counter, a host tensor on a GPU too (fused Adam, the
            # trainer's choice on CUDA, keeps it on the device and reads nothing): not a synchronisation there.
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not caller.startswith("torch.optim."):
                self.calls.append(name)
        elif name in ("to", "cuda", "cpu", "pin_memory"):
            targets = [*args[1:], *kwargs.values()]
            if name != "to" or any(isinstance(t, torch.device | str | int | torch.Tensor) and not isinstance(t, bool)
                                   for t in targets) or "device" in kwargs:
                self.calls.append(f"{name}{tuple(str(t) for t in targets)}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("spec", [
    pytest.param({"loss": {"type": "hinge", "r1": 1.0}, "model": {"numClasses": 10},
                  "dataset": {"augmentations": ["hflip", "translate"]}}, id="r1-conditional-augmented"),
    pytest.param({"loss": {"type": "wgan-gp"}, "optimizer": {"criticSteps": 2}}, id="wgan-gp"),
])
def test_a_step_sends_nothing_to_a_device_and_reads_nothing_back(spec: dict[str, Any], tmp_path: Path) -> None:
    trainer = make_trainer(digits_job(**spec), tmp_path)
    assert trainer.stream.device == trainer.device == trainer.step_gen.device
    trainer.train_step()  # warm-up (lazy initialisation of optimizer state)
    with DeviceTransfers() as transfers:
        trainer.train_step()
        trainer.train_step()
    assert transfers.calls == []


def test_eight_bit_datasets_live_on_the_device_as_uint8_and_batch_bitwise(tmp_path: Path) -> None:
    pixels = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(40) % 4
    dataset = TensorDataset(None, labels, None, "file://x", pixels=pixels)
    assert dataset._data is None  # nothing materialised as float32 yet
    on_device = make_stream(dataset, 16, 7, augmentations=["hflip", "translate"], device="cpu")
    assert on_device._pixels is not None and on_device._pixels.dtype == torch.uint8 and on_device._data is None
    host = make_stream(TensorDataset(dataset.data.clone(), labels, None, "file://x"), 16, 7,
                       augmentations=["hflip", "translate"])
    for _ in range(5):  # across an epoch boundary
        (a, ya), (b, yb) = on_device.next_batch(), host.next_batch()
        assert a.dtype == torch.float32 and torch.equal(a, b) and torch.equal(ya, yb)  # type: ignore[arg-type]
    # Image folders are decoded to uint8 and kept that way.
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 40, 10, 200)).save(buf, format="PNG")
        (folder / f"{i}.png").write_bytes(buf.getvalue())
    loaded = load_dataset_uri(f"file://{folder}", image_size=8, channels=3, cache_dir=tmp_path / "cache")
    assert isinstance(loaded, TensorDataset) and loaded.pixels is not None and loaded.pixels.dtype == torch.uint8
    assert torch.equal(loaded.rows(torch.tensor([2])), loaded.data[2:3])


def test_r1_under_bf16_runs_one_discriminator_forward_per_discriminator_step(tmp_path: Path) -> None:
    trainer = make_trainer(digits_job(loss={"type": "non-saturating", "r1": 1.0},
                                      training={"precision": "bf16"}), tmp_path)
    forwards: list[tuple[bool, bool]] = []  # (input requires grad, autocast on)

    def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        forwards.append((inputs[0].requires_grad, torch.is_autocast_enabled("cpu")))

    trainer.d.register_forward_pre_hook(hook)
    trainer.train_step()
    # D step: real (requires grad, for R1) and fake; G step: fake. R1 added no forward, and every one ran in bf16.
    assert len(forwards) == 3, forwards
    assert forwards[0] == (True, True) and all(on for _, on in forwards)


def test_lazy_r1_every_interval_weighted_by_it(tmp_path: Path) -> None:
    trainer = make_trainer(digits_job(loss={"r1": 1.0, "r1Interval": 2}), tmp_path)
    seen = []
    for _ in range(4):
        trainer.last_values.clear()
        trainer.train_step(measure=True)
        seen.append("r1" in trainer.last_values)
    assert seen == [True, False, True, False]
    # the penalty's weight on its steps is the interval (StyleGAN2's lazy regularisation)
    d = trainer.d
    real = torch.randn(4, 1, 8, 8).requires_grad_(True)
    fake = torch.randn(4, 1, 8, 8)
    d_real, d_fake = d(real), d(fake)
    spec = trainer.spec.loss
    plain, _ = discriminator_step_loss(spec, d, real, fake, d_real, d_fake, r1_scale=0.0)
    lazy, parts = discriminator_step_loss(spec, d, real, fake, d_real, d_fake, r1_scale=2.0)
    assert "r1" in parts and torch.allclose(lazy - plain, 2.0 * parts["r1"], rtol=1e-3, atol=1e-6)


def test_the_discriminator_is_frozen_in_the_generators_step(tmp_path: Path) -> None:
    trainer = make_trainer(digits_job(), tmp_path)
    accumulated: list[str] = []
    d_params = list(trainer.d.parameters())
    for p in d_params:
        p.register_post_accumulate_grad_hook(lambda _p: accumulated.append("d"))
    trainer.train_step()
    assert len(accumulated) == len(d_params)  # once each: the D step only
    assert all(p.requires_grad for p in d_params)


def test_matmul_precision_is_explicit_and_recorded(tmp_path: Path) -> None:
    trainer = make_trainer(digits_job(training={"matmulPrecision": "ieee", "steps": 2},
                                      checkpoint={"everySteps": 2}), tmp_path)
    assert device_mod.fp32_precision() == {"matmul": "ieee", "conv": "ieee"}
    trainer.fit()
    manifest_path = tmp_path / "ckpt" / "ns" / "digits" / "step-000000002" / MANIFEST
    import json

    manifest = json.loads(manifest_path.read_text())
    assert manifest["precision"] == {"autocast": "fp32", "device": "cpu", "matmul": "ieee", "conv": "ieee"}
    default = make_trainer(digits_job(), tmp_path / "b")
    assert default.spec.training.matmul_precision == "tf32"
    assert device_mod.fp32_precision() == {"matmul": "tf32", "conv": "tf32"}
    # The evaluation reference is keyed by the precision its features were extracted with.
    assert trainer.evaluator is not None
    digest = trainer.evaluator.reference_digest()
    original = evaluator_mod.EVALUATION_MATMUL_PRECISION
    try:
        evaluator_mod.EVALUATION_MATMUL_PRECISION = "tf32"
        assert trainer.evaluator.reference_digest() != digest
    finally:
        evaluator_mod.EVALUATION_MATMUL_PRECISION = original


def test_compile_is_refused_at_start_where_it_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(device_mod.shutil, "which", lambda _name: None)  # no compiler on PATH
    job = digits_job(training={"compile": True})
    with pytest.raises(CompileUnavailable, match="lacks a C compiler"):
        make_trainer(job, tmp_path)
    ctx = RunContext(namespace="ns", job_name="digits", checkpoint_uri=f"file://{tmp_path}/ckpt",
                     work_dir=tmp_path / "work", progress=False)
    with pytest.raises(TrainerCannotStart, match="compile"):  # `ganops train` exits 3 before any GPU time
        build_trainer(job_from_object(job), ctx)


def test_channels_last_and_fused_adam_where_they_pay() -> None:
    conv = as_job(digits_job()).spec
    mlp = job_from_object({"apiVersion": "ganops.io/v1alpha1", "kind": "GanTrainingJob", "metadata": {"name": "g"},
                           "spec": {"model": {"architecture": "mlp", "imageSize": 2},
                                    "dataset": {"uri": "builtin:grid25"}}}).spec
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert device_mod.use_channels_last(conv, cuda) and not device_mod.use_channels_last(mlp, cuda)
    assert not device_mod.use_channels_last(conv, cpu)  # the CPU reference runs keep their bits
    assert device_mod.use_fused_optimizer(cuda) and not device_mod.use_fused_optimizer(cpu)

"""The training loop: every loss × model trains, resume is bitwise exact, checkpoints carry everything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ganops.trainer.checkpoint import CheckpointManager
from ganops.trainer.loop import RunContext, Trainer
from tests.support.jobs import as_job, digits_job, grid_job


def make_trainer(obj: dict[str, Any], tmp_path: Path) -> Trainer:
    job = as_job(obj)
    ctx = RunContext(
        namespace="ns",
        job_name=job.metadata.name,
        checkpoint_uri=f"file://{tmp_path}/ckpt",
        work_dir=tmp_path / "work",
        progress=False,
    )
    return Trainer(job, ctx)


LOSSES = ["non-saturating", "wgan-gp", "hinge", "lsgan"]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(
    "job",
    [
        pytest.param(lambda **s: grid_job(**s), id="mlp"),
        pytest.param(lambda **s: digits_job(**s), id="dcgan"),
        pytest.param(
            lambda **s: digits_job(model={"numClasses": 10, "spectralNorm": True, "minibatchStd": True}, **s),
            id="dcgan-conditional-sn-mbstd",
        ),
        pytest.param(
            lambda **s: digits_job(model={"architecture": "resnet", "imageSize": 32, "width": 8}, **s), id="resnet"
        ),
    ],
)
def test_every_loss_and_model_trains(job: Any, loss: str, tmp_path: Path) -> None:
    obj = job(
        loss={
            "type": loss,
            "r1": 0.1 if loss == "hinge" else 0.0,
            "labelSmoothing": 0.1 if loss == "non-saturating" else 0.0,
        },
        training={"steps": 3, "logEverySteps": 1},
        optimizer={"criticSteps": 2 if loss == "wgan-gp" else 1},
    )
    trainer = make_trainer(obj, tmp_path)
    before = [p.detach().clone() for p in trainer.g.parameters()]
    result = trainer.fit()
    assert result.status == "completed" and result.step == 3
    values = trainer.extra_state["last_values"]
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values()), values
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.g.parameters(), strict=True))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_on_cpu(precision: str, tmp_path: Path) -> None:
    trainer = make_trainer(digits_job(training={"steps": 2, "precision": precision, "logEverySteps": 1}), tmp_path)
    assert trainer.fit().step == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in trainer.extra_state["last_values"].values())


def _final_weights(tmp_path: Path, obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    trainer = make_trainer(obj, tmp_path)
    trainer.fit()
    return {
        **{f"g.{k}": v for k, v in trainer.g.state_dict().items()},
        **{f"ema.{k}": v for k, v in trainer.ema.ema_model.state_dict().items()},
        **{f"d.{k}": v for k, v in trainer.d.state_dict().items()},
    }


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda steps: grid_job(training={"steps": steps, "deterministic": True}), id="mlp"),
        pytest.param(
            lambda steps: digits_job(
                model={"numClasses": 10},
                dataset={"augmentations": ["hflip", "translate"]},
                training={"steps": steps, "deterministic": True},
            ),
            id="dcgan-conditional-augmented",
        ),
        pytest.param(
            lambda steps: digits_job(
                loss={"type": "wgan-gp"}, optimizer={"criticSteps": 2}, training={"steps": steps, "deterministic": True}
            ),
            id="wgan-gp",
        ),
    ],
)
def test_resume_is_bitwise_identical(make: Any, tmp_path: Path) -> None:
    """N steps, stop, resume to 2N == 2N straight: weights, EMA and discriminator, bit for bit."""
    n = 6
    straight = _final_weights(tmp_path / "a", make(2 * n))
    _final_weights(tmp_path / "b", make(n))  # first attempt ends at N with a checkpoint
    resumed = _final_weights(tmp_path / "b", make(2 * n))  # same checkpoint root: resumes from N
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_resume_continues_from_latest(tmp_path: Path) -> None:
    make_trainer(grid_job(training={"steps": 10}), tmp_path).fit()
    trainer = make_trainer(grid_job(training={"steps": 15}), tmp_path)
    assert trainer.resume() and trainer.step == 10


def test_checkpoint_manifest_describes_the_generator(tmp_path: Path) -> None:
    make_trainer(digits_job(), tmp_path).fit()
    manager = CheckpointManager(f"file://{tmp_path}/ckpt/ns/digits")
    ckpt = manager.load_latest()
    assert ckpt is not None and ckpt.step == 10
    assert ckpt.manifest["model"]["architecture"] == "dcgan"
    assert ckpt.manifest["job"] == {"namespace": "ns", "name": "digits"}
    assert manager.steps() == [5, 10]


def test_stop_request_checkpoints_and_returns(tmp_path: Path) -> None:
    trainer = make_trainer(grid_job(training={"steps": 1000}), tmp_path)

    def stop_at_5(t: Trainer, moment: str) -> None:
        if moment == "log" and t.step >= 5:
            t.stop.requested = True

    trainer.hooks.append(stop_at_5)
    result = trainer.fit()
    assert result.status == "stopped" and result.step == 5
    assert result.last_checkpoint is not None and result.last_checkpoint["step"] == 5

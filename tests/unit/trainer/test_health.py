"""Training health: collapse and discriminator detectors, divergence rollback, with the real Trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ganops.trainer.checkpoint import CheckpointManager
from ganops.trainer.health import (
    COLLAPSE,
    D_OVERPOWERING,
    DIVERGED,
    ROLLBACK,
    CollapseDetector,
    DiscriminatorOverpoweringDetector,
    DivergenceGuard,
    HealthRecord,
    decision_threshold,
    discriminator_accuracy,
)
from ganops.trainer.loop import RunContext, Trainer, TrainingDiverged
from tests.support.jobs import as_job, grid_job

NO_EVAL: dict[str, Any] = {"metrics": []}


def make_trainer(obj: dict[str, Any], tmp_path: Path) -> Trainer:
    job = as_job(obj)
    ctx = RunContext(namespace="ns", job_name=job.metadata.name, checkpoint_uri=f"file://{tmp_path}/ckpt",
                     work_dir=tmp_path / "work", progress=False)
    return Trainer(job, ctx)


def events_of(trainer: Trainer) -> list[str]:
    return [e["type"] for e in trainer.health_events]


# ----------------------------------------------------------------- pure detectors


def test_collapse_detector_needs_a_drop_and_patience() -> None:
    det = CollapseDetector(threshold=0.2, relative=0.5, patience=3)
    # a fresh generator is a small blob that spreads out: low but rising, never a collapse
    assert all(det.observe(s, r) is None for s, r in enumerate([0.02, 0.03, 0.05, 0.08, 0.12, 0.18]))
    assert det.observe(10, 0.01) is None and det.observe(11, 0.0) is None
    assert not det.suspected
    ev = det.observe(12, 0.0)
    assert ev is not None and ev["type"] == COLLAPSE and ev["step"] == 12 and det.suspected
    assert det.observe(13, 0.0) is None  # once per episode
    assert det.observe(14, 0.5) is None and not det.suspected  # recovered: re-armed
    assert [det.observe(s, 0.01) for s in (15, 16, 17)][-1] is not None


def test_discriminator_overpowering_fires_once_per_episode() -> None:
    det = DiscriminatorOverpoweringDetector(threshold=0.99, window=3, rearm_below=0.9)
    assert det.observe(1, None) is None
    assert [det.observe(s, 1.0) for s in (1, 2)] == [None, None]
    ev = det.observe(3, 0.995)
    assert ev is not None and ev["type"] == D_OVERPOWERING and det.overpowering
    assert det.observe(4, 1.0) is None
    assert det.observe(5, 0.95) is None and not det.overpowering  # not pinned, not yet recovered
    assert [det.observe(s, 1.0) for s in (6, 7, 8)] == [None, None, None]
    assert det.observe(9, 0.6) is None  # recovered: re-armed
    assert [det.observe(s, 1.0) for s in (10, 11, 12)][-1] is not None


def test_discriminator_accuracy_and_decision_thresholds() -> None:
    real, fake = torch.tensor([2.0, 1.0, -1.0, 3.0]), torch.tensor([-2.0, -1.0, 0.5, -3.0])
    assert float(discriminator_accuracy(real, fake, 0.0)) == pytest.approx(0.75)
    assert decision_threshold("non-saturating") == 0.0 and decision_threshold("hinge") == 0.0
    assert decision_threshold("lsgan", 0.1) == pytest.approx(0.45)
    assert decision_threshold("wgan-gp") is None


def test_divergence_guard() -> None:
    guard = DivergenceGuard(max_loss=1e4)
    assert guard.check({"loss_d": 1.3, "loss_g": 0.7, "grad_norm_d": float("inf")}) is None  # fp16 overflow
    assert guard.check({"loss_d": float("nan"), "loss_g": 0.7}) == "loss_d is nan"
    assert "loss_g" in (guard.check({"loss_d": 1.0, "loss_g": -2e5}) or "")


def test_health_record_round_trips_through_the_train_state() -> None:
    record = HealthRecord(rollbacks=2, lr_scale=0.25, keep_events=2)
    for i in range(3):
        record.add({"type": ROLLBACK, "step": i, "message": "", "time": ""})
    again = HealthRecord.from_state(record.to_state())
    assert (again.rollbacks, again.lr_scale, [e["step"] for e in again.events]) == (2, 0.25, [1, 2])
    assert record.checkpoint_info()["rollbacks"] == 2


# ----------------------------------------------------------------- collapse with the real trainer


def test_healthy_grid_run_raises_no_health_event(tmp_path: Path) -> None:
    trainer = make_trainer(
        grid_job(training={"steps": 400, "logEverySteps": 25}, checkpoint={"everySteps": 1000}, evaluation=NO_EVAL),
        tmp_path,
    )
    trainer.fit()
    assert trainer.health_events == []
    state = trainer.health_state
    assert state["diversity"] is not None and state["diversity"] > 0
    assert 0.0 <= state["d_accuracy"] <= 1.0
    assert (state["collapse_suspected"], state["d_overpowering"], state["rollbacks"]) == (False, False, 0)


def test_induced_collapse_is_detected_within_500_steps(tmp_path: Path) -> None:
    collapse_at = 100
    trainer = make_trainer(
        grid_job(training={"steps": collapse_at + 1000, "logEverySteps": 25}, checkpoint={"everySteps": 10_000},
                 evaluation=NO_EVAL),
        tmp_path,
    )
    last = trainer.g.main[-1]
    assert isinstance(last, torch.nn.Linear)

    def collapse(t: Trainer, moment: str) -> None:
        if moment == "log" and t.step == collapse_at:  # from here on G outputs its bias: one point
            with torch.no_grad():
                last.weight.zero_()
            last.weight.requires_grad_(False)
        if moment == "health":
            t.stop.requested = True  # detected: no need to train on

    trainer.hooks.append(collapse)
    trainer.fit()
    assert events_of(trainer) == [COLLAPSE]
    event = trainer.health_events[0]
    assert collapse_at < event["step"] <= collapse_at + 500
    assert "diversity" in event["message"] and event["time"].endswith("Z")
    assert trainer.health_state["collapse_suspected"] is True
    assert trainer.health_state["diversity"] == pytest.approx(0.0, abs=1e-6)
    latest = CheckpointManager(f"file://{tmp_path}/ckpt/ns/grid").latest_record()
    assert latest is not None and latest["health"]["events"][0]["type"] == COLLAPSE


# ----------------------------------------------------------------- divergence and rollback


def poison(t: Trainer) -> None:
    with torch.no_grad():
        next(t.g.parameters()).fill_(float("nan"))


def test_nan_rolls_back_to_the_last_checkpoint_with_halved_learning_rates(tmp_path: Path) -> None:
    obj = grid_job(training={"steps": 60, "logEverySteps": 10}, checkpoint={"everySteps": 20}, evaluation=NO_EVAL)
    trainer = make_trainer(obj, tmp_path)
    poisoned: list[int] = []

    def inject(t: Trainer, moment: str) -> None:
        if moment == "log" and t.step == 30 and not poisoned:
            poisoned.append(t.step)
            poison(t)

    trainer.hooks.append(inject)
    result = trainer.fit()
    assert result.status == "completed" and result.step == 60
    assert events_of(trainer) == [ROLLBACK]
    event = trainer.health_events[0]
    assert event["step"] == 40 and "step 20" in event["message"] and "loss_" in event["message"]
    lr = trainer.spec.optimizer
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(0.5 * lr.lr_generator)
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(0.5 * lr.lr_discriminator)
    assert trainer.health_state["rollbacks"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.g.parameters())
    root = tmp_path / "ckpt/ns/grid"
    latest = json.loads((root / "latest.json").read_text())
    assert latest["step"] == 60 and latest["health"]["rollbacks"] == 1
    # the halved rate and the count survive a resume
    again = make_trainer(grid_job(training={"steps": 70, "logEverySteps": 10}, checkpoint={"everySteps": 20},
                                  evaluation=NO_EVAL), tmp_path)
    assert again.resume()
    assert again.health.rollbacks == 1 and again.health.lr_scale == 0.5
    assert again.opt_g.param_groups[0]["lr"] == pytest.approx(0.5 * lr.lr_generator)


def test_non_finite_weights_are_never_checkpointed(tmp_path: Path) -> None:
    # NaN enters after the log at step 35 and the next log is at 42: the checkpoint at 40 must catch it
    obj = grid_job(training={"steps": 60, "logEverySteps": 7}, checkpoint={"everySteps": 20}, evaluation=NO_EVAL)
    trainer = make_trainer(obj, tmp_path)
    done: list[int] = []
    trainer.hooks.append(lambda t, m: (done.append(1), poison(t)) if m == "log" and t.step == 35 and not done
                         else None)
    assert trainer.fit().step == 60
    assert events_of(trainer) == [ROLLBACK] and "non-finite weights" in trainer.health_events[0]["message"]
    manager = CheckpointManager(f"file://{tmp_path}/ckpt/ns/grid")
    for step in manager.steps():
        ckpt = manager.load_step(step, weights_only=True)
        assert all(torch.isfinite(v).all() for v in ckpt.weights["generator"].values()), step


def test_divergence_after_the_rollback_limit_raises(tmp_path: Path) -> None:
    obj = grid_job(training={"steps": 400, "logEverySteps": 10}, checkpoint={"everySteps": 20}, evaluation=NO_EVAL)
    trainer = make_trainer(obj, tmp_path)
    trainer.hooks.append(lambda t, m: poison(t) if m == "log" and t.step > 20 else None)
    with pytest.raises(TrainingDiverged, match="after 3 rollbacks"):
        trainer.fit()
    assert events_of(trainer) == [ROLLBACK, ROLLBACK, ROLLBACK, DIVERGED]
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(trainer.spec.optimizer.lr_generator / 8)


def test_divergence_before_any_checkpoint_raises(tmp_path: Path) -> None:
    obj = grid_job(training={"steps": 100, "logEverySteps": 5}, checkpoint={"everySteps": 50}, evaluation=NO_EVAL)
    trainer = make_trainer(obj, tmp_path)
    trainer.hooks.append(lambda t, m: poison(t) if m == "log" and t.step == 5 else None)
    with pytest.raises(TrainingDiverged, match="no checkpoint to roll back to"):
        trainer.fit()
    assert events_of(trainer) == [DIVERGED]


def test_health_moment_fires_after_each_event(tmp_path: Path) -> None:
    obj = grid_job(training={"steps": 40, "logEverySteps": 10}, checkpoint={"everySteps": 20}, evaluation=NO_EVAL)
    trainer = make_trainer(obj, tmp_path)
    seen: list[tuple[str, int]] = []

    def hook(t: Trainer, moment: str) -> None:
        if moment == "log" and t.step == 30 and not seen:
            poison(t)
        if moment == "health":
            seen.append((t.health_events[-1]["type"], t.health_state["rollbacks"]))

    trainer.hooks.append(hook)
    trainer.fit()
    assert seen == [(ROLLBACK, 1)]

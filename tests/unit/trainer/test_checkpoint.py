"""Checkpoint layout, verification, fallback and retention on a file:// store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from ganops import storage
from ganops.checkpoints import LATEST, MANIFEST, CheckpointError, step_dir_name
from ganops.trainer.checkpoint import CheckpointManager


def weights(step: int) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(step)
    w = torch.randn(8, 4, generator=gen)
    # `tied` shares storage with `w`: safetensors refuses that unless the manager copies it.
    return {
        "generator": {"w": w, "tied": w},
        "generator_ema": {"w": w * 0.5},
        "discriminator": {"v": torch.randn(3, generator=gen)},
    }


def state(step: int) -> dict[str, object]:
    return {"step": step, "rng": torch.get_rng_state(), "nested": {"lr": 0.1, "list": [1, 2]}}


def test_layout_matches_the_design(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/ckpt/ns/job"
    manager = CheckpointManager(root)
    record = manager.save(500, weights(500), state(500), info={"specHash": "abc"})
    step_dir = tmp_path / "ckpt/ns/job" / "step-000000500"
    assert sorted(p.name for p in step_dir.iterdir()) == [
        "discriminator.safetensors",
        "generator.safetensors",
        "generator_ema.safetensors",
        "manifest.json",
        "train_state.pt",
    ]
    manifest = json.loads((step_dir / MANIFEST).read_text())
    assert manifest["step"] == 500 and manifest["specHash"] == "abc"
    assert set(manifest["files"]) == {
        "generator.safetensors",
        "generator_ema.safetensors",
        "discriminator.safetensors",
        "train_state.pt",
    }
    latest = json.loads((tmp_path / "ckpt/ns/job" / LATEST).read_text())
    assert latest["step"] == 500 and latest["uri"] == record["uri"]


def test_round_trip_restores_every_tensor(tmp_path: Path) -> None:
    manager = CheckpointManager(f"file://{tmp_path}")
    manager.save(10, weights(10), state(10))
    loaded = manager.load_latest()
    assert loaded is not None and loaded.step == 10
    assert torch.equal(loaded.weights["generator"]["w"], weights(10)["generator"]["w"])
    assert torch.equal(loaded.weights["generator"]["tied"], weights(10)["generator"]["w"])
    assert loaded.train_state["nested"] == {"lr": 0.1, "list": [1, 2]}


def test_checksum_mismatch_falls_back_to_previous(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager = CheckpointManager(f"file://{tmp_path}", keep_last=5)
    manager.save(1, weights(1), state(1))
    manager.save(2, weights(2), state(2))
    corrupt = tmp_path / step_dir_name(2) / "generator.safetensors"
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        loaded = manager.load_latest()
    assert loaded is not None and loaded.step == 1
    assert "checksum mismatch for generator.safetensors" in caplog.text


def test_missing_latest_json_scans_step_folders(tmp_path: Path) -> None:
    manager = CheckpointManager(f"file://{tmp_path}", keep_last=5)
    manager.save(1, weights(1), state(1))
    manager.save(2, weights(2), state(2))
    (tmp_path / LATEST).unlink()
    loaded = manager.load_latest()
    assert loaded is not None and loaded.step == 2


def test_partial_newer_folder_is_ignored(tmp_path: Path) -> None:
    """A crash mid-upload leaves a step folder without a manifest, newer than latest.json: it is skipped."""
    manager = CheckpointManager(f"file://{tmp_path}", keep_last=5)
    manager.save(1, weights(1), state(1))
    partial = tmp_path / step_dir_name(2)
    partial.mkdir()
    (partial / "generator.safetensors").write_bytes(b"half a file")
    loaded = manager.load_latest()
    assert loaded is not None and loaded.step == 1


def test_no_checkpoint_returns_none(tmp_path: Path) -> None:
    assert CheckpointManager(f"file://{tmp_path}").load_latest() is None


def test_retention_keeps_last_and_best(tmp_path: Path) -> None:
    manager = CheckpointManager(f"file://{tmp_path}", keep_last=2, keep_best=1)
    metrics = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 6.0}
    for step, metric in metrics.items():
        manager.save(step, weights(step), state(step), metric=metric)
    assert manager.steps() == [2, 4, 5]  # best (step 2) + the last two
    assert manager.best_step() == 2


def test_failed_upload_keeps_previous_valid(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    manager = CheckpointManager(f"file://{root}")
    manager.save(1, weights(1), state(1))
    blocker = root / step_dir_name(2)
    blocker.write_text("a file where the step folder should go")  # the upload of step 2 cannot succeed
    with pytest.raises(CheckpointError, match="previous checkpoint stays valid"):
        manager.save(2, weights(2), state(2))
    latest = json.loads((root / LATEST).read_text())
    assert latest["step"] == 1
    loaded = manager.load_latest()
    assert loaded is not None and loaded.step == 1


def test_train_state_is_loaded_without_unpickling_arbitrary_objects(tmp_path: Path) -> None:
    manager = CheckpointManager(f"file://{tmp_path}")
    manager.save(1, weights(1), {"step": 1, "evil": _Evil()})
    with pytest.raises(CheckpointError, match="cannot parse"):
        manager.load_step(1)
    assert storage.open_store(f"file://{tmp_path}").exists(f"file://{tmp_path}/{LATEST}")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))

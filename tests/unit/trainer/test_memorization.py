"""The trainer writes the training set's memorization index once per dataset and names it in every manifest."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ganops import logs, storage
from ganops.checkpoints import MEMORIZATION_KEY
from ganops.memorization import MemorizationIndex, pixel_features
from ganops.trainer.checkpoint import CheckpointManager
from ganops.trainer.data import digits, grid25
from ganops.trainer.loop import RunContext, Trainer
from ganops.trainer.memorization import (
    index_key,
    index_uri,
    training_examples,
    training_features,
)
from tests.support.jobs import as_job, digits_job, grid_job

TINY = {"training": {"steps": 4, "logEverySteps": 2}, "checkpoint": {"everySteps": 2},
        "evaluation": {"metrics": []}}


def _fit(obj: dict[str, Any], root: str, tmp_path: Path) -> Trainer:
    job = as_job(obj)
    ctx = RunContext("ns", job.metadata.name, root, tmp_path / "work" / job.metadata.name, progress=False)
    trainer = Trainer(job, ctx)
    assert trainer.fit().status == "completed"
    return trainer


def _manifests(trainer: Trainer) -> list[dict[str, Any]]:
    manager = CheckpointManager(trainer.ctx.checkpoint_root)
    return [json.loads(manager.store.get_bytes(storage.join(manager.root, f"step-{s:09d}", "manifest.json")))
            for s in manager.steps()]


def test_index_is_built_once_per_dataset_and_named_in_every_manifest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = (tmp_path / "ckpt").as_uri()
    data = digits()
    expected = index_uri(root, index_key(data))
    assert expected == f"{root}/_reference/{index_key(data)}.memorization.safetensors"

    with caplog.at_level(logging.INFO, logger="ganops"):
        first = _fit(digits_job("first", **TINY), root, tmp_path)
    manifests = _manifests(first)
    assert [m["step"] for m in manifests] == [2, 4]
    assert {m[MEMORIZATION_KEY] for m in manifests} == {expected}
    path = tmp_path / "ckpt" / "_reference" / f"{index_key(data)}.memorization.safetensors"
    written, mtime = path.read_bytes(), path.stat().st_mtime_ns
    events = [logs.event_name(r) for r in caplog.records]
    assert events.count("memorization_index_built") == 1 and "memorization_index_reused" not in events

    index = MemorizationIndex.from_bytes(written)
    images = data.data.numpy()
    assert index.features.shape == (len(images), 256) and index.metadata["dataset"] == "builtin:digits"
    # the features serving's filter computes, under the name it checks
    assert index.metadata["feature"] == "pixels-grey16-l2"
    assert np.allclose(index.features, pixel_features(images), atol=1e-6)
    assert index.threshold > 0
    distances, nearest = index.nearest(index.features[[0, 500]])
    assert np.allclose(distances, 0.0, atol=1e-5) and list(nearest) == [0, 500]

    # another job on the same data (and a resumed attempt) reuses the object instead of writing it again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ganops"):
        second = _fit(digits_job("second", **TINY), root, tmp_path)
    assert {m[MEMORIZATION_KEY] for m in _manifests(second)} == {expected}
    assert path.stat().st_mtime_ns == mtime and path.read_bytes() == written
    events = [logs.event_name(r) for r in caplog.records]
    assert "memorization_index_reused" in events and "memorization_index_built" not in events
    assert sorted(p.name for p in path.parent.glob("*.memorization.safetensors")) == [path.name]


def test_the_2d_mixtures_have_no_index_and_no_manifest_entry(tmp_path: Path) -> None:
    trainer = _fit(grid_job("grid", **TINY), (tmp_path / "ckpt").as_uri(), tmp_path)
    assert trainer.memorization_index() is None
    assert all(MEMORIZATION_KEY not in m for m in _manifests(trainer))
    assert training_examples(grid25()) is None
    assert not (tmp_path / "ckpt" / "_reference").exists()


def test_a_failing_index_never_fails_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "_reference").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="ganops"):
        trainer = _fit(digits_job("unlucky", **TINY), (tmp_path / "ckpt").as_uri(), tmp_path)
    assert trainer.step == 4
    assert all(MEMORIZATION_KEY not in m for m in _manifests(trainer))
    assert "memorization index not built" in caplog.text


def test_large_sets_are_capped_to_a_seeded_subset() -> None:
    data = digits()
    capped = training_examples(data, max_examples=100)
    assert capped is not None and capped.shape == (100, 1, 8, 8) and capped.dtype == np.float32
    again = training_examples(data, max_examples=100)
    assert again is not None and np.array_equal(capped, again)
    full = data.data.numpy().reshape(len(data), -1)
    rows = {row.tobytes() for row in full}
    assert all(row.tobytes() in rows for row in capped.reshape(100, -1))
    assert index_key(data, 100) != index_key(data)
    whole = training_examples(data)
    assert whole is not None and np.array_equal(whole, data.data.numpy())
    # features computed a chunk at a time are the features of the whole (capped) set
    chunked = training_features(data, 100, chunk=7)
    assert chunked is not None and chunked[1] == "pixels-grey16-l2"
    assert np.allclose(chunked[0], pixel_features(capped), atol=1e-6)

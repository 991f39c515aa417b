"""Checkpoints against a real S3 endpoint (moto's server on 127.0.0.1): kills and outages mid-upload."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import torch

from ganops.trainer.checkpoint import CheckpointError, CheckpointManager
from tests.support.moto_server import MotoS3Server


def _weights(step: int) -> dict[str, dict[str, torch.Tensor]]:
    w = torch.full((256, 256), float(step))
    return {"generator": {"w": w}, "generator_ema": {"w": w}, "discriminator": {"w": w}}


def test_sigkill_during_upload_leaves_latest_valid(moto_s3: MotoS3Server) -> None:
    root = f"s3://{moto_s3.create_bucket()}/ckpt/ns/job"
    rng = random.Random(7)
    next_step = 1
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.checkpoint_writer", root, str(next_step)],
            env={**os.environ},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one checkpoint is complete
        time.sleep(rng.uniform(0.0, 0.6))  # then kill it at a random point of a later upload
        proc.kill()
        proc.wait()
        kills += 1
        manager = CheckpointManager(root)
        loaded = manager.load_latest()
        assert loaded is not None, "latest.json must point at a complete checkpoint"
        record = manager.latest_record()
        assert record is not None and record["step"] == loaded.step, "latest.json itself must verify"
        assert torch.equal(
            loaded.weights["generator"]["w"],
            torch.randn(1024, 1024, generator=torch.Generator().manual_seed(loaded.step)),
        )
        next_step = loaded.step + 1
    assert kills == 4


def test_store_outage_mid_save_keeps_previous_checkpoint(moto_s3: MotoS3Server) -> None:
    root = f"s3://{moto_s3.create_bucket()}/ckpt"
    manager = CheckpointManager(root)
    manager.save(1, _weights(1), {"step": 1})
    from ganops import storage

    # An unreachable endpoint for the next save (retries bounded so the test stays quick).
    broken = CheckpointManager(root)
    broken.store = storage.S3Store(
        endpoint_url="http://127.0.0.1:9",
        max_attempts=1,
        retry=storage.RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.01),
    )
    try:
        broken.save(2, _weights(2), {"step": 2})
        raise AssertionError("save must fail when the store is unreachable")
    except CheckpointError as exc:
        assert "previous checkpoint stays valid" in str(exc)
    loaded = manager.load_latest()
    assert loaded is not None and loaded.step == 1

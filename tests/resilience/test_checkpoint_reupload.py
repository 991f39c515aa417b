"""Found by the SIGKILL run: an attempt killed after writing step N's manifest but before latest.json left a
complete-looking step-N folder; the resumed attempt reached step N again and was killed while re-uploading it,
leaving new weights beside the old manifest - a checkpoint whose manifest lies. Reproduced here without luck:
the re-upload is cut by the fault proxy (S3 on moto) after the generator files."""

from __future__ import annotations

import json

import pytest
import torch

from ganops import storage
from ganops.trainer.checkpoint import CheckpointError, CheckpointManager
from tests.resilience.checkpoint_audit import audit_checkpoints
from tests.resilience.faults import FaultPlan, FaultProxy
from tests.support.moto_server import MotoS3Server


def _weights(value: float) -> dict[str, dict[str, torch.Tensor]]:
    w = torch.full((64, 64), value)
    return {"generator": {"w": w}, "generator_ema": {"w": w + 1}, "discriminator": {"w": w - 1}}


def test_a_cut_reupload_of_a_step_never_sits_beside_the_old_manifest(moto_s3: MotoS3Server) -> None:
    root = f"s3://{moto_s3.create_bucket('reupload')}/ckpt/ns/job"
    manager = CheckpointManager(root, keep_last=5, keep_best=0)
    manager.save(1, _weights(1.0), {"step": 1})
    before = manager.store.get_bytes(storage.join(root, "latest.json"))
    manager.save(2, _weights(2.0), {"step": 2})  # attempt A: step 2 complete ...
    manager.store.put_bytes(storage.join(root, "latest.json"), before)  # ... but killed before latest.json moved

    with FaultProxy(moto_s3.endpoint_url) as proxy:
        proxy.set_faults(FaultPlan(rate=1.0, methods=("PUT",), path_contains="discriminator.safetensors",
                                   kinds=("503",)))
        resumed = CheckpointManager(root, keep_last=5, keep_best=0)  # attempt B reaches step 2 with other weights
        resumed.store = storage.S3Store(endpoint_url=proxy.url, max_attempts=1,
                                        retry=storage.RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.01))
        with pytest.raises(CheckpointError, match="previous checkpoint stays valid"):
            resumed.save(2, _weights(3.0), {"step": 2})
        assert proxy.counts["fault:503"] == 1

    audit = audit_checkpoints(root)
    assert audit.corrupt == [], audit  # before the fix: "step 2: checksum mismatch for generator.safetensors"
    assert audit.latest_step == 1 and audit.partial == [2]
    assert json.loads(before)["step"] == 1
    loaded = manager.load_latest()
    assert loaded is not None and loaded.step == 1

"""The independent checkpoint reader the fault tests end with: it accepts what the real trainer code writes and
finds each kind of damage by itself (file:// here, s3:// on moto's server)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import boto3
import pytest
import torch

from ganops.trainer.checkpoint import CheckpointManager
from tests.resilience.checkpoint_audit import audit_checkpoints, read_latest
from tests.support.moto_server import MotoS3Server


def _save(root: str, steps: tuple[int, ...] = (1, 2)) -> None:
    manager = CheckpointManager(root, keep_last=10, keep_best=0)
    for step in steps:
        w = torch.full((8, 8), float(step))
        manager.save(step, {"generator": {"w": w}, "generator_ema": {"w": w + 1}, "discriminator": {"w": w - 1}},
                     {"step": step})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _save(f"file://{tmp_path}/ckpt")
    return tmp_path / "ckpt"


def _audit(root: Path) -> tuple[int | None, list[int], list[str], list[int]]:
    audit = audit_checkpoints(f"file://{root}")
    return audit.latest_step, audit.verified, audit.corrupt, audit.partial


def _rewrite_manifest(root: Path, at: int, **changes: object) -> None:
    path = root / f"step-{at:09d}" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_what_the_trainer_writes_verifies(root: Path) -> None:
    assert _audit(root) == (2, [1, 2], [], [])
    latest = read_latest(f"file://{root}")
    assert latest is not None and latest["step"] == 2


def test_a_flipped_byte_is_found_by_its_sha256(root: Path) -> None:
    path = root / "step-000000002" / "generator.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, one bit of one weight
    path.write_bytes(bytes(data))
    assert _audit(root) == (2, [1], ["step 2: sha256 of generator.safetensors differs from the manifest",
                                     "latest.json points at step 2, which does not verify"], [])


def test_a_missing_or_truncated_file_is_found(root: Path) -> None:
    (root / "step-000000001" / "train_state.pt").unlink()
    path = root / "step-000000002" / "discriminator.safetensors"
    path.write_bytes(path.read_bytes()[:-4])
    assert _audit(root)[2] == [
        "step 1: train_state.pt missing",
        f"step 2: discriminator.safetensors is {path.stat().st_size} bytes, the manifest says "
        f"{path.stat().st_size + 4}",
        "latest.json points at step 2, which does not verify"]


def test_a_file_whose_manifest_was_rewritten_to_match_still_has_to_parse(root: Path) -> None:
    path = root / "step-000000001" / "generator_ema.safetensors"
    path.write_bytes(b"\xff" * 64)  # header length far beyond the file
    manifest = json.loads((root / "step-000000001" / "manifest.json").read_text())
    _rewrite_manifest(root, 1, files={**manifest["files"], path.name: hashlib.sha256(path.read_bytes()).hexdigest()},
                      sizes={**manifest["sizes"], path.name: 64})
    assert _audit(root)[1:3] == ([2], ["step 1: generator_ema.safetensors: header longer than the file"])


def test_an_upload_cut_before_its_manifest_is_partial_and_never_latest(root: Path) -> None:
    (root / "step-000000002" / "manifest.json").unlink()
    assert _audit(root) == (2, [1], ["latest.json points at step 2, which does not verify"], [2])
    latest = root / "latest.json"
    record = json.loads(latest.read_text())
    record_1 = {**record, "step": 1, "uri": record["uri"].replace("step-000000002", "step-000000001"),
                "manifestSha256": hashlib.sha256((root / "step-000000001" / "manifest.json").read_bytes()).hexdigest()}
    latest.write_text(json.dumps(record_1))
    assert _audit(root) == (1, [1], [], [2])


def test_latest_must_name_the_step_by_its_folder_and_its_manifest(root: Path) -> None:
    latest = root / "latest.json"
    record = json.loads(latest.read_text())
    wrong = record["uri"].replace("step-000000002", "step-000000001")
    latest.write_text(json.dumps({**record, "uri": wrong}))
    assert _audit(root)[2] == [f"latest.json names {wrong} for step 2"]
    latest.write_text(json.dumps(record))
    _rewrite_manifest(root, 2)  # same content, other bytes: latest.json vouches for the manifest it saw
    assert _audit(root)[2] == ["latest.json's manifestSha256 is not that of step 2's manifest"]


def test_a_manifest_that_lies_about_its_step_or_files_is_corrupt(root: Path) -> None:
    _rewrite_manifest(root, 1, step=7)
    (root / "step-000000002" / "extra.bin").write_bytes(b"x")
    assert _audit(root)[2] == ["step 1: manifest says step 7",
                               "step 2: files the manifest does not vouch for: ['extra.bin']",
                               "latest.json points at step 2, which does not verify"]


def test_a_writers_temporary_file_is_not_an_object(root: Path) -> None:
    (root / "step-000000002" / ".generator.safetensors.ganops-tmp-abc").write_bytes(b"half")
    assert _audit(root) == (2, [1, 2], [], [])


def test_on_s3_too(moto_s3: MotoS3Server) -> None:
    bucket = moto_s3.create_bucket("audit")
    root = f"s3://{bucket}/ckpt/ns/job"
    _save(root, steps=(3,))
    assert audit_checkpoints(root).verified == [3]
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url)
    key = "ckpt/ns/job/step-000000003/generator.safetensors"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-1] ^= 1
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    audit = audit_checkpoints(root)
    assert (audit.latest_step, audit.verified, audit.corrupt) == (3, [], [
        "step 3: sha256 of generator.safetensors differs from the manifest",
        "latest.json points at step 3, which does not verify"])
    assert audit_checkpoints(f"s3://{bucket}/nothing/here") == type(audit)(latest_step=None)

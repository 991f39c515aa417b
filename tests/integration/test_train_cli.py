"""`ganops` as a pod runs it: real processes, real signals, torchrun with gloo, S3 on moto."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ganops.trainer.checkpoint import CheckpointManager
from tests.support.jobs import digits_job, grid_job, write_job
from tests.support.moto_server import MotoS3Server

BIN = Path(sys.executable).parent


def ganops(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ganops"), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_validate_exit_code_and_one_line_per_problem(tmp_path: Path) -> None:
    bad = grid_job(optimizer={"lrGenerator": -1}, training={"precision": "fp8"})
    result = ganops("validate", str(write_job(bad, tmp_path / "bad.yaml")))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: {tmp_path / 'bad.yaml'}: spec.optimizer.lrGenerator must be > 0.0 (got -1)",
        f"error: {tmp_path / 'bad.yaml'}: spec.training.precision must be one of 'fp32', 'bf16' or 'fp16' (got 'fp8')",
    ]
    assert "Traceback" not in result.stderr
    good = ganops("validate", str(write_job(grid_job(), tmp_path / "good.yaml")))
    assert good.returncode == 0, good.stderr


def test_unreadable_dataset_fails_before_training(tmp_path: Path) -> None:
    job = digits_job(dataset={"uri": f"file://{tmp_path}/nothing-here"})
    result = ganops(
        "train",
        "--job",
        str(write_job(job, tmp_path / "j.yaml")),
        "--work-dir",
        str(tmp_path / "w"),
        env={"GANOPS_CHECKPOINT_URI": f"file://{tmp_path}/ckpt"},
    )
    assert result.returncode == 3, result.stderr
    assert "spec.dataset.uri" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path: Path) -> None:
    job = grid_job(training={"steps": 1_000_000, "logEverySteps": 1}, checkpoint={"everySteps": 1_000_000})
    path = write_job(job, tmp_path / "j.yaml")
    env = {**os.environ, "GANOPS_CHECKPOINT_URI": f"file://{tmp_path}/ckpt", "GANOPS_NAMESPACE": "ns"}
    proc = subprocess.Popen(
        [str(BIN / "ganops"), "train", "--job", str(path), "--work-dir", str(tmp_path / "w"), "--no-progress"],
        env=env,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    out = b""

    def events(wait: float) -> list[dict[str, object]]:
        """Read what the trainer wrote (waiting up to `wait` s for the first bytes); every complete JSON event."""
        nonlocal out
        while select.select([fd], [], [], wait)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            out += chunk
            wait = 0
        lines = out.split(b"\n")[:-1]  # a line still being written is not an event yet
        return [json.loads(line[line.index(b'{"event"'):]) for line in lines if b'{"event"' in line]

    def frozen() -> bool:
        """Every thread of the trainer is stopped (SIGSTOP took effect): nothing more can be written."""
        tasks = Path(f"/proc/{proc.pid}/task")
        return all((t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for t in tasks.iterdir())

    try:
        deadline = time.monotonic() + 60
        while not any(e["event"] == "progress" and e["step"] >= 20 for e in events(0.5)):  # type: ignore[operator]
            assert time.monotonic() < deadline and proc.poll() is None, out.decode()[-3000:]
        # Freeze the trainer, then read everything it wrote before it froze: its last logged step is where it is
        # (one step per log line; at most the step in progress is not logged yet).
        proc.send_signal(signal.SIGSTOP)
        while not frozen():
            assert time.monotonic() < deadline, "SIGSTOP did not take effect"
        reached = max(int(e["step"]) for e in events(0) if e["event"] == "progress")  # type: ignore[call-overload]
        proc.send_signal(signal.SIGTERM)  # pending while frozen: delivered the moment it runs again
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=30) == 0  # inside the 30 s grace period a kubelet gives
    finally:
        if proc.poll() is None:  # never leave a trainer behind when the test fails
            proc.kill()
            proc.wait()
    after = events(0)
    (stopped,) = [e for e in after if e["event"] == "stopped"]
    # It stopped at the step it was in when the signal came: the step being computed, then the checkpoint.
    assert reached <= int(stopped["step"]) <= reached + 1, (reached, stopped)  # type: ignore[call-overload]
    assert max(int(e["step"]) for e in after if e["event"] == "progress") <= reached + 1  # type: ignore[call-overload]
    manager = CheckpointManager(f"file://{tmp_path}/ckpt/ns/grid")
    record = manager.latest_record()
    assert record is not None and record["step"] >= 20
    ckpt = manager.load_latest()
    assert ckpt is not None and ckpt.step == record["step"]


def test_torchrun_two_process_gloo_writes_the_same_checkpoint_format(tmp_path: Path) -> None:
    job = digits_job(training={"steps": 4, "logEverySteps": 2}, checkpoint={"everySteps": 2})
    path = write_job(job, tmp_path / "j.yaml")
    env = {
        **os.environ,
        "GANOPS_CHECKPOINT_URI": f"file://{tmp_path}/ckpt",
        "GANOPS_NAMESPACE": "ns",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "ganops.cli",
            "train",
            "--job",
            str(path),
            "--work-dir",
            str(tmp_path / "w"),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single = tmp_path / "single"
    ganops(
        "train",
        "--job",
        str(path),
        "--work-dir",
        str(single / "w"),
        "--no-progress",
        env={"GANOPS_CHECKPOINT_URI": f"file://{single}/ckpt", "GANOPS_NAMESPACE": "ns"},
    )
    ddp_dir = tmp_path / "ckpt/ns/digits/step-000000004"
    single_dir = single / "ckpt/ns/digits/step-000000004"
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in single_dir.iterdir())
    ddp = CheckpointManager(f"file://{tmp_path}/ckpt/ns/digits").load_latest()
    one = CheckpointManager(f"file://{single}/ckpt/ns/digits").load_latest()
    assert ddp is not None and one is not None
    assert ddp.weights["generator"].keys() == one.weights["generator"].keys()
    manifest = json.loads((ddp_dir / "manifest.json").read_text())
    assert manifest["worldSize"] == 2


def test_train_and_generate_against_s3(moto_s3: MotoS3Server, tmp_path: Path) -> None:
    bucket = moto_s3.create_bucket()
    job = grid_job(checkpoint={"uri": f"s3://{bucket}/ckpt"})
    result = ganops(
        "train",
        "--job",
        str(write_job(job, tmp_path / "j.yaml")),
        "--work-dir",
        str(tmp_path / "w"),
        "--no-progress",
        env={"GANOPS_NAMESPACE": "ns"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    root = f"s3://{bucket}/ckpt/ns/grid"
    out = tmp_path / "points.npy"
    gen = ganops("generate", "--checkpoint", root, "-n", "100", "-o", str(out))
    assert gen.returncode == 0, gen.stderr
    points = np.load(out)
    assert points.shape == (100, 2) and np.isfinite(points).all()
    png = tmp_path / "grid.png"
    assert ganops("generate", "--checkpoint", root, "-n", "50", "-o", str(png)).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = ganops("generate", "--checkpoint", root, "-n", "100", "-o", str(tmp_path / "again.npy"))
    assert again.returncode == 0
    assert np.array_equal(np.load(tmp_path / "again.npy"), points), "same checkpoint + seed → same samples"


@pytest.mark.parametrize("suffix", [".txt"])
def test_generate_rejects_unknown_output_format(suffix: str, tmp_path: Path) -> None:
    result = ganops("generate", "--checkpoint", f"file://{tmp_path}", "-o", str(tmp_path / f"x{suffix}"))
    assert result.returncode == 2 and "--output must end in .png or .npy" in result.stderr


def test_missing_s3_credentials_fail_before_training(moto_s3: MotoS3Server, tmp_path: Path) -> None:
    bucket = moto_s3.create_bucket()
    job = grid_job(checkpoint={"uri": f"s3://{bucket}/ckpt"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL_S3=moto_s3.endpoint_url, AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    result = subprocess.run(
        [str(BIN / "ganops"), "train", "--job", str(write_job(job, tmp_path / "j.yaml")),
         "--work-dir", str(tmp_path / "w"), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "AWS_ACCESS_KEY_ID" in result.stderr and "Traceback" not in result.stderr
    assert '"event": "progress"' not in result.stderr

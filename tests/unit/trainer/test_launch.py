"""Preemption under torchrun: `ganops launch` (what the operator runs for multi-GPU pods) turns a SIGTERM into one
checkpoint and exit 0 for every rank, and the operator's classification calls the attempt a preemption.

torchrun alone exits 1 after a SIGTERM even when every worker checkpointed and exited 0 (it re-raises the signal as
``SignalException``), which the operator counted as an application failure against ``runPolicy.backoffLimit``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ganops.api.loader import spec_from_object
from ganops.checkpoints import LatestRecord
from ganops.operator import children
from ganops.operator.faults import attempt_outcome, decide
from ganops.operator.observe import JobView, PodView
from ganops.operator.settings import OperatorConfig
from ganops.trainer import launch
from ganops.trainer.checkpoint import CheckpointManager
from tests.support.jobs import grid_job, write_job

SRC = Path(__file__).resolve().parents[3] / "src"
TOTAL = 100_000


def test_shutdown_timeout_fits_the_grace_period() -> None:
    assert launch.shutdown_timeout(120) == 110 and launch.shutdown_timeout(30) == 20 and launch.shutdown_timeout(8) == 5
    command = launch.torchrun_command(["--nproc-per-node=2", "-m", "ganops.cli", "train"], 120)
    assert command[1:4] == ["-m", "torch.distributed.run", "--shutdown-timeout=110"]
    assert command[4:] == ["--nproc-per-node=2", "-m", "ganops.cli", "train"]
    own = launch.torchrun_command(["--shutdown-timeout=7", "x.py"], 120)
    assert own[3:] == ["--shutdown-timeout=7", "x.py"]


def test_exit_code_after_a_signal_depends_on_every_local_rank_having_stopped() -> None:
    both = [{"rank": 0, "localRank": 0, "localWorldSize": 2}, {"rank": 1, "localRank": 1, "localWorldSize": 2}]
    assert launch.exit_code(0, [], []) == 0
    assert launch.exit_code(1, [signal.SIGTERM], both) == 0  # torchrun's SignalException, every rank checkpointed
    assert launch.exit_code(1, [signal.SIGTERM], both[:1]) == 143  # a rank did not: "terminated by signal"
    assert launch.exit_code(1, [], both) == 1  # no signal: torchrun's failure is the job's failure
    assert launch.exit_code(-9, [], []) == 137


def _pod_command(job_file: Path) -> list[str]:
    """The command the operator renders for a one-node, two-GPU job, with the local interpreter for the binaries."""
    spec = spec_from_object(grid_job("grid")["spec"] | {"resources": {"gpusPerReplica": 2}})
    owner = children.Owner("grid", "ns", "uid")
    job = children.training_job(owner, spec, OperatorConfig(termination_grace_seconds=60), attempt=1)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    binaries = {"ganops": [sys.executable, "-m", "ganops.cli"], "torchrun": [sys.executable, "-m",
                                                                             "torch.distributed.run"]}
    command = binaries.get(container["command"][0], container["command"][:1]) + container["command"][1:]
    return [str(job_file) if part == children.JOB_FILE_PATH else part for part in command]


def test_sigterm_to_a_two_process_torchrun_pod_checkpoints_once_exits_0_and_is_a_preemption(tmp_path: Path) -> None:
    job = grid_job(training={"steps": TOTAL, "logEverySteps": 2}, checkpoint={"everySteps": 10_000},
                   evaluation={"metrics": []})
    job_file = write_job(job, tmp_path / "job.yaml")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "GANOPS_CHECKPOINT_URI": f"file://{tmp_path}/ckpt", "GANOPS_NAMESPACE": "ns", "GANOPS_METRICS_PORT": "0",
           "GANOPS_WORK_DIR": str(tmp_path / "work"), "GANOPS_LOG_FORMAT": "json", "OMP_NUM_THREADS": "1",
           "GANOPS_TERMINATION_GRACE_SECONDS": "60"}
    proc = subprocess.Popen(_pod_command(job_file), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any('"progress"' in line for line in list(lines)):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends to the container's PID 1
        code = proc.wait(timeout=60)  # inside the pod's grace period
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    output = "".join(lines)
    assert code == 0, output[-4000:]
    events = [json.loads(line) for line in lines if line.startswith("{")]
    stopped = [e for e in events if e.get("event") == "stopped"]
    assert len(stopped) == 2, output[-4000:]  # both ranks stopped at the same step
    assert len({e["step"] for e in stopped}) == 1
    manager = CheckpointManager(f"file://{tmp_path}/ckpt/ns/grid")
    step = int(stopped[0]["step"])
    assert manager.steps() == [step]  # exactly one checkpoint: the SIGTERM one (rank 0 writes it)
    record = manager.latest_record()
    assert record is not None and record["step"] == step < TOTAL
    # The operator sees a pod that exited 0 short of the last step: a preemption, relaunched for free.
    pod = PodView(name="grid-0", attempt=1, index=0, phase="Succeeded", exit_code=code, terminated_reason="Completed")
    outcome = attempt_outcome(JobView(name="grid", attempt=1), [pod], replicas=1, total_steps=TOTAL,
                              record=LatestRecord(step=step, uri=record["uri"]))
    assert (outcome.kind, outcome.reason) == ("disrupted", "StoppedEarly")
    decision = decide(outcome, preemptions=0, failures=0, backoff_limit=0)
    assert decision is not None
    assert (decision.action, decision.reason, decision.failures) == ("relaunch", "Preempted", 0)

"""SIGKILL the real trainer (`ganops train`, S3 on moto's server) at random points, again and again: each restart
resumes within one checkpoint interval of where the killed process was, and no checkpoint is ever corrupt."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.resilience.checkpoint_audit import audit_checkpoints
from tests.resilience.report import sized
from tests.resilience.trainer_proc import TrainerProcess
from tests.support.jobs import grid_job, write_job
from tests.support.moto_server import MotoS3Server

EVERY = 5  # checkpoint interval (steps)


@pytest.mark.timeout(sized(600, 5400))  # the full run restarts the trainer 101 times
def test_random_sigkills_lose_at_most_one_interval_and_corrupt_nothing(
    moto_s3: MotoS3Server, tmp_path: Path, figures: dict[str, Any]
) -> None:
    kills = sized(4, 100)
    bucket = moto_s3.create_bucket("kills")
    job = grid_job("kills", training={"steps": 1_000_000, "logEverySteps": 1},
                   checkpoint={"uri": f"s3://{bucket}/ckpt", "everySteps": EVERY, "keepLast": 2, "keepBest": 0})
    path = write_job(job, tmp_path / "job.yaml")
    root = f"s3://{bucket}/ckpt/ns/kills"
    env = {**moto_s3.env(), "GANOPS_NAMESPACE": "ns", "OMP_NUM_THREADS": "1"}
    rng = random.Random(20261203)

    reached = 0  # the furthest step any killed process logged
    worst = beyond = mid_checkpoint = early = recoveries = verified = 0
    corrupt: list[str] = []
    for attempt in range(kills):
        proc = TrainerProcess(path, tmp_path / "work", env)
        try:
            if rng.random() < 0.15:  # now and then during start-up: the import, the resume download, the probe
                time.sleep(rng.uniform(0.2, 4.0))
                early += 1
            else:
                started = proc.wait_event(lambda e: e["event"] == "progress", timeout=120)
                assert started is not None, proc.tail()
                time.sleep(rng.uniform(0.0, 1.2))  # a few checkpoint intervals: steps, saves, prunes
            proc.signal(signal.SIGKILL)
        finally:
            code = proc.finish()
        assert code == -signal.SIGKILL, f"attempt {attempt}: exited {code} before the kill\n{proc.tail()}"

        resumed = proc.resumed_step()
        if proc.named("progress"):  # it got as far as training: it must have resumed from the newest checkpoint
            if resumed is not None:
                recoveries += 1
            lost = reached - (resumed or 0)
            worst = max(worst, lost)
            beyond += max(0, lost - EVERY)
            assert lost <= EVERY, f"attempt {attempt}: resumed at {resumed}, the previous process reached {reached}"
        last = proc.max_step()
        saved = {int(e["step"]) for e in proc.named("checkpoint_saved")}
        if last and last % EVERY == 0 and last not in saved and last > (resumed or 0):
            mid_checkpoint += 1  # killed between the step and its checkpoint_saved: during the upload
        reached = max(reached, last)

        audit = audit_checkpoints(root)
        corrupt += [f"after kill {attempt}: {c}" for c in audit.corrupt]
        verified += len(audit.verified)
        assert (audit.latest_step or 0) >= reached - EVERY, (audit, reached)

    # One last start, stopped gracefully: it resumes within the interval and saves where it stopped.
    final = TrainerProcess(path, tmp_path / "work", env)
    try:
        assert final.wait_event(lambda e: e["event"] == "progress", timeout=120) is not None, final.tail()
        final.signal(signal.SIGTERM)
    finally:
        code = final.finish()
    assert code == 0, final.tail()
    resumed = final.resumed_step()
    assert reached - (resumed or 0) <= EVERY, (reached, resumed)  # None: nothing was saved before (reached < EVERY)
    recoveries += resumed is not None
    stopped = final.named("stopped")
    assert stopped, final.tail()
    audit = audit_checkpoints(root)
    assert audit.latest_step == stopped[0]["step"] and not audit.corrupt, audit

    figures.update(kills=kills, kills_during_startup=early, kills_mid_checkpoint=mid_checkpoint,
                   steps_reached=reached, max_steps_lost=worst, steps_lost_beyond_interval=beyond,
                   corrupt_checkpoints=len(corrupt), checkpoints_verified=verified, recoveries=recoveries)
    assert corrupt == [], corrupt
    assert beyond == 0

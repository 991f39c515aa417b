"""Data parallelism on CPU equivalents: two gloo ranks in spawned processes stand in for two GPUs under torchrun.

- after a resume every rank draws its own latents (they used to restore rank 0's generator state: every rank then
  drew the same z, labels and GP weights, and two GPUs did one GPU's work twice);
- ranks agree on a stop only at log steps (no all-reduce + host sync every step);
- the bucketed gradient all-reduce launches during backward and averages exactly, through R1's double backward;
- evaluation sharded over the ranks reports what a single process reports;
- the process group gets the job's collective timeout (NCCL's 10-minute default killed jobs while rank 0 uploaded a
  checkpoint) and, on CUDA, its device.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from ganops.models.dcgan import DCGANDiscriminator
from ganops.trainer import distributed as dist_utils
from ganops.trainer.distributed import DistContext, GradReducer
from ganops.trainer.evaluator import Evaluator
from ganops.trainer.loop import RunContext, Trainer
from ganops.trainer.losses import r1_penalty
from ganops.trainer.run import context_for
from tests.support.ddp import run_ranks
from tests.support.jobs import as_job, digits_job

EVAL = {"metrics": ["fid", "kid", "precision_recall"], "numSamples": 300, "everySteps": 1000}


def _job(steps: int, **evaluation: Any) -> Any:
    return as_job(digits_job(training={"steps": steps, "logEverySteps": 2}, checkpoint={"everySteps": 4},
                             evaluation={**EVAL, **evaluation}))


def _train_resume_evaluate(ctx: DistContext, out: Path, root: Path) -> None:
    def run_context() -> RunContext:
        return RunContext(namespace="ns", job_name="digits", checkpoint_uri=f"file://{root}/ckpt",
                          work_dir=root / f"work-{ctx.rank}", progress=False, dist=ctx)

    Trainer(_job(4, metrics=[]), run_context()).fit()  # first attempt: checkpoint at step 4
    trainer = Trainer(_job(8, metrics=[]), run_context())  # resumes from step 4
    latents: list[torch.Tensor] = []
    g_step = trainer.g_step

    def recording(z: torch.Tensor, y: torch.Tensor | None) -> Any:
        latents.append(z.detach().clone())
        return g_step(z, y)

    trainer.g_step = recording
    agreed_at: list[int] = []
    any_ranks = dist_utils.any_ranks

    def counting(c: DistContext, *flags: bool) -> tuple[bool, ...]:
        agreed_at.append(trainer.step)
        return any_ranks(c, *flags)

    dist_utils.any_ranks = counting  # type: ignore[assignment]
    try:
        result = trainer.fit()
    finally:
        dist_utils.any_ranks = any_ranks  # type: ignore[assignment]
    # Evaluation sharded over both ranks vs one process computing everything (its own reference, not the cache).
    spec = _job(8).spec
    sharded = Evaluator(spec, trainer.dataset, reference_root=f"file://{root}/ref-ddp", dist=ctx)
    report = sharded.evaluate(trainer.ema.ema_model, trainer.step)
    single_numbers = None
    if ctx.is_main:
        single = Evaluator(spec, trainer.dataset, reference_root=f"file://{root}/ref-single")
        single_numbers = single.evaluate(trainer.ema.ema_model, trainer.step).numeric()  # type: ignore[union-attr]
    torch.save({"first_z": latents[0], "resumed_from": 4, "step": result.step, "agreed_at": agreed_at,
                "g": {k: v.detach() for k, v in trainer.g.named_parameters()},
                "report": None if report is None else report.numeric(),
                "single": single_numbers}, out / f"rank{ctx.rank}.pt")


def test_ranks_draw_their_own_latents_after_a_resume_and_agree_on_stops_at_log_steps(tmp_path: Path) -> None:
    run_ranks(_train_resume_evaluate, 2, tmp_path / "out", tmp_path)
    r0, r1 = (torch.load(tmp_path / "out" / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["step"] == r1["step"] == 8
    assert r0["first_z"].shape == r1["first_z"].shape
    assert not torch.equal(r0["first_z"], r1["first_z"]), "both ranks drew the same latents after the resume"
    # Data parallel, not duplicated: the averaged gradients keep the replicas' weights identical, bit for bit
    # (BatchNorm's running statistics stay per rank, as in DDP without buffer broadcasts).
    for name, tensor in r0["g"].items():
        assert torch.equal(tensor, r1["g"][name]), name
    # The stop/divergence agreement (and the finite-weights check at checkpoints) happen at log steps only
    # (logEverySteps 2): never at the odd steps 5 and 7.
    assert r0["agreed_at"] and all(step % 2 == 0 for step in r0["agreed_at"]), r0["agreed_at"]
    # Rank 0 reports; rank 1 only contributed its share of the samples.
    assert r1["report"] is None and r0["report"] is not None
    assert r0["report"].keys() == r0["single"].keys() >= {"fid", "kid", "precision", "recall"}
    for key, value in r0["single"].items():
        assert r0["report"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def _reduce_through_r1(ctx: DistContext, out: Path) -> None:
    torch.manual_seed(0)
    d = DCGANDiscriminator(8, 1, 8, spectral_norm=True).eval()  # eval: the power iteration does not move u, v
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(100 + ctx.rank)).requires_grad_(True)

    def loss() -> torch.Tensor:
        logits = d(x)
        return torch.nn.functional.softplus(-logits).mean() + r1_penalty(logits, x, 10.0)  # double backward

    loss().backward()
    local = [p.grad.clone() for p in d.parameters()]  # type: ignore[union-attr]
    d.zero_grad(set_to_none=True)
    reducer = GradReducer(ctx, d, bucket_mb=1e-4)  # ~100 bytes: one parameter per bucket
    reducer.arm()
    loss().backward()
    launched = reducer.launched_in_backward
    reducer.finish()
    flat = torch.cat([g.reshape(-1) for g in local])
    everyone = [torch.empty_like(flat) for _ in range(ctx.world_size)]
    dist.all_gather(everyone, flat)
    expected = torch.stack(everyone).sum(0) / ctx.world_size
    got = torch.cat([p.grad.reshape(-1) for p in d.parameters()])  # type: ignore[union-attr]
    torch.save({"launched": launched, "buckets": len(reducer.buckets), "equal": torch.equal(got, expected),
                "differs_from_local": not torch.equal(got, flat)}, out / f"rank{ctx.rank}.pt")


def test_bucketed_all_reduce_overlaps_backward_and_averages_exactly_through_r1(tmp_path: Path) -> None:
    run_ranks(_reduce_through_r1, 2, tmp_path / "out")
    for rank in (0, 1):
        result = torch.load(tmp_path / "out" / f"rank{rank}.pt", weights_only=False)
        assert result["buckets"] > 2
        # every bucket but the last ones to fill was on the wire before backward returned
        assert result["launched"] >= result["buckets"] - 1, result
        assert result["equal"] and result["differs_from_local"], result


def test_the_process_group_gets_the_jobs_timeout_and_device(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    job = as_job(digits_job(training={"distributedTimeoutSeconds": 3600}, resources={"gpusPerReplica": 2}))
    ctx = context_for(job, work_dir=tmp_path)
    assert seen == {"backend": "gloo", "timeout": dt.timedelta(seconds=3600), "device_id": None}
    assert ctx.dist.timeout_seconds == 3600 and ctx.dist.rank == 1
    # With a GPU: NCCL, bound to the rank's device (eager communicator, no guessing in barriers).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    gpu = dist_utils.init_distributed(want_cuda=True, timeout_seconds=900)
    assert seen == {"backend": "nccl", "timeout": dt.timedelta(seconds=900), "device_id": torch.device("cuda", 1)}
    assert gpu.device == torch.device("cuda", 1)
    assert as_job(digits_job()).spec.training.distributed_timeout_seconds == 1800  # NCCL's default is 600

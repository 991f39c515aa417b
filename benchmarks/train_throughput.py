"""Images/s of the ganops trainer against a bare loop written like pytorch/examples' DCGAN, in the same run.

Both train the same networks (ganops' DCGAN at 32×32, batch 64, Adam 2e-4 β=(0.5, 0.999), BCE) on the same
in-memory data. The ganops side runs the real `Trainer` with its checkpoints (every 500 steps), EMA and progress
reporting on. Runs alternate (bare, ganops, bare, ganops, …) so drift of the machine hits both alike.

Each run is timed twice: wall clock, and the CPU time of this process. On a machine shared with other work the wall
figure swings with whoever else holds the cores (seen here: the same loop at 68 and 197 images/s an hour apart), while
the CPU seconds a loop spends per image are what that loop costs. The headline ratio is the CPU one; the wall ratio and
the load average are reported beside it. One torch thread by default, so CPU time is not inflated by OpenMP threads
spinning while they wait for a core.
Target: ratio ≥ 0.95.

With R1 (``--r1-steps``, 0 to skip): the trainer with ``loss.r1`` (every step) against `benchmarks._bare.BareLoop`,
a loop doing the same work (R1 on the same D forward, D frozen in G's step, EMA) and nothing else, per CPU second;
target: within 5 % (ratio ≥ 0.95). Evaluation is off in the R1 comparison's measured runs.

Usage: python -m benchmarks.train_throughput [--steps 600] [--rounds 3] [--threads 1] [--r1-steps 200]
(``--steps 0``: the R1 comparison alone, written to reports/train_throughput_r1.{json,md}.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks._bare import BareLoop
from benchmarks._report import write
from ganops.api.loader import job_from_object
from ganops.models import build_models
from ganops.trainer.data import load_dataset
from ganops.trainer.loop import RunContext, Trainer

IMAGE_SIZE, CHANNELS, LATENT, WIDTH, BATCH = 32, 1, 100, 64, 64


R1_GAMMA = 1.0


def job(steps: int, *, r1: float = 0.0) -> dict[str, object]:
    evaluation: dict[str, object] = {"everySteps": 10**9, "featureExtractor": "digits"}
    if r1:
        evaluation["metrics"] = []  # the R1 comparison measures the step, not the final evaluation
    return {
        "apiVersion": "ganops.io/v1alpha1", "kind": "GanTrainingJob", "metadata": {"name": "throughput"},
        "spec": {
            "model": {"architecture": "dcgan", "imageSize": IMAGE_SIZE, "channels": CHANNELS, "latentDim": LATENT,
                      "width": WIDTH},
            "loss": {"r1": r1},
            "dataset": {"uri": "builtin:digits"},
            "training": {"steps": steps, "batchSize": BATCH, "seed": 0, "logEverySteps": 50},
            "checkpoint": {"everySteps": 500, "keepLast": 1},
            "evaluation": evaluation,
        },
    }


class Clock:
    """Wall and process-CPU seconds of one measured stretch."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bare_loop(steps: int, warmup: int) -> Clock:
    """pytorch/examples/dcgan/main.py's loop, on the same networks and data."""
    parsed = job_from_object(job(steps))
    data = load_dataset(parsed.spec, cache_dir=Path(tempfile.gettempdir()) / "ganops-bench-cache")
    images = data.data  # type: ignore[attr-defined]
    torch.manual_seed(0)
    net_g, net_d = build_models(parsed.spec.model)
    criterion = nn.BCEWithLogitsLoss()
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real_label, fake_label = 1.0, 0.0
    gen = torch.Generator().manual_seed(0)
    clock = Clock()
    for i in range(steps + warmup):
        if i == warmup:
            clock.__enter__()
        idx = torch.randint(0, images.shape[0], (BATCH,), generator=gen)
        real = images[idx]
        net_d.zero_grad()
        label = torch.full((BATCH,), real_label)
        output = net_d(real).view(-1)
        err_d_real = criterion(output, label)
        err_d_real.backward()
        noise = torch.randn(BATCH, LATENT)
        fake = net_g(noise)
        label.fill_(fake_label)
        output = net_d(fake.detach()).view(-1)
        err_d_fake = criterion(output, label)
        err_d_fake.backward()
        opt_d.step()
        net_g.zero_grad()
        label.fill_(real_label)
        output = net_d(fake).view(-1)
        err_g = criterion(output, label)
        err_g.backward()
        opt_g.step()
        _ = (err_d_real + err_d_fake).item(), err_g.item()  # the example prints losses every iteration
    clock.__exit__()
    return clock


def ganops_loop(steps: int, warmup: int, *, r1: float = 0.0) -> Clock:
    with tempfile.TemporaryDirectory() as tmp:
        parsed = job_from_object(job(warmup, r1=r1))
        ctx = RunContext(namespace="bench", job_name="throughput", checkpoint_uri=f"file://{tmp}/ckpt",
                         work_dir=Path(tmp) / "work", progress=True)
        Trainer(parsed, ctx).fit()  # warm-up attempt; the measured one resumes from its checkpoint
        trainer = Trainer(job_from_object(job(warmup + steps, r1=r1)), ctx)
        with contextlib.redirect_stderr(io.StringIO()), Clock() as clock:
            trainer.fit()
    return clock


def bare_r1_loop(steps: int, warmup: int) -> Clock:
    """`BareLoop` with R1: the trainer's work (R1 on the same D forward, frozen D, EMA) and nothing else."""
    parsed = job_from_object(job(steps, r1=R1_GAMMA))
    data = load_dataset(parsed.spec, cache_dir=Path(tempfile.gettempdir()) / "ganops-bench-cache")
    loop = BareLoop(parsed.spec, data.data, torch.device("cpu"))  # type: ignore[attr-defined]
    for _ in range(warmup):
        loop.step()
    with Clock() as clock:
        for _ in range(steps):
            loop.step()
    return clock


def r1_comparison(steps: int, warmup: int, rounds: int) -> tuple[dict[str, object], str]:
    images = steps * BATCH
    rows: list[dict[str, float]] = []
    for _ in range(rounds):
        bare, ours = bare_r1_loop(steps, warmup), ganops_loop(steps, warmup, r1=R1_GAMMA)
        rows.append({"bare_wall": images / bare.wall, "bare_cpu": images / bare.cpu,
                     "ganops_wall": images / ours.wall, "ganops_cpu": images / ours.cpu})
        print("R1: bare {bare_wall:.1f} img/s ({bare_cpu:.1f} per CPU-s)   ganops {ganops_wall:.1f} img/s "
              "({ganops_cpu:.1f} per CPU-s)".format(**rows[-1]), flush=True)
    ratio_cpu = statistics.median(r["ganops_cpu"] / r["bare_cpu"] for r in rows)
    ratio_wall = statistics.median(r["ganops_wall"] / r["bare_wall"] for r in rows)
    figures: dict[str, object] = {"steps": steps, "rounds": rounds, "gamma": R1_GAMMA, "rounds_images_per_second": rows,
                                  "ratio_cpu": ratio_cpu, "ratio_wall": ratio_wall, "target": 0.95,
                                  "passed": ratio_cpu >= 0.95}
    table = "\n".join(
        f"| {i + 1} | {r['bare_cpu']:.1f} | {r['ganops_cpu']:.1f} | {r['ganops_cpu'] / r['bare_cpu']:.3f} "
        f"| {r['ganops_wall'] / r['bare_wall']:.3f} |" for i, r in enumerate(rows))
    md = f"""## With R1 (γ = {R1_GAMMA}, every step): the trainer against a bare loop doing the same work

`benchmarks._bare.BareLoop`: the same networks and data, R1 on the same D forward (the real batch requires grad),
D frozen in G's step, EMA, and nothing else (no stream, checkpoints, logging or health probes). {steps} measured
steps per run, {rounds} alternating rounds; evaluation off in both.

| round | bare img per CPU-s | ganops img per CPU-s | ratio (CPU) | ratio (wall) |
|---|---|---|---|---|
{table}

**ratio {ratio_cpu:.3f}** per CPU second (target ≥ 0.95, within 5 %): {'met' if ratio_cpu >= 0.95 else 'NOT met'};
wall-clock ratio {ratio_wall:.3f}.
"""
    return figures, md


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--r1-steps", type=int, default=200, help="measured steps of the R1 comparison; 0 skips it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = args.steps * BATCH
    load_before = os.getloadavg()
    rows: list[dict[str, float]] = []
    for _ in range(args.rounds if args.steps else 0):
        bare, ours = bare_loop(args.steps, args.warmup), ganops_loop(args.steps, args.warmup)
        rows.append({"bare_wall": images / bare.wall, "bare_cpu": images / bare.cpu,
                     "ganops_wall": images / ours.wall, "ganops_cpu": images / ours.cpu})
        print("bare {bare_wall:.1f} img/s ({bare_cpu:.1f} per CPU-s)   ganops {ganops_wall:.1f} img/s "
              "({ganops_cpu:.1f} per CPU-s)".format(**rows[-1]), flush=True)
    r1_figures, r1_md = r1_comparison(args.r1_steps, args.warmup, args.rounds) if args.r1_steps else ({}, "")
    load_after = os.getloadavg()
    if not rows:  # --steps 0: the R1 comparison alone, in its own report (the plain comparison's stays as it was)
        print(write("train_throughput_r1", {"r1": r1_figures, "threads": args.threads, "batch": BATCH,
                                            "image_size": IMAGE_SIZE, "load_average_before": load_before,
                                            "load_average_after": load_after},
                    f"# Training throughput with R1\n\nDCGAN {IMAGE_SIZE}×{IMAGE_SIZE}, width {WIDTH}, batch {BATCH}, "
                    f"CPU, {args.threads} torch thread(s). Load average {load_before[0]:.2f} before, "
                    f"{load_after[0]:.2f} after (2 cores, shared with other work).\n\n{r1_md}\n"
                    f"Reproduce: `python -m benchmarks.train_throughput --steps 0 --r1-steps {args.r1_steps} "
                    f"--warmup {args.warmup} --rounds {args.rounds} --threads {args.threads}`\n").read_text())
        return

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    ratio_cpu = statistics.median(r["ganops_cpu"] / r["bare_cpu"] for r in rows)
    ratio_wall = statistics.median(r["ganops_wall"] / r["bare_wall"] for r in rows)
    figures = {
        "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "batch": BATCH,
        "image_size": IMAGE_SIZE, "rounds_images_per_second": rows, "ratio": ratio_cpu, "ratio_cpu": ratio_cpu,
        "ratio_wall": ratio_wall, "target": 0.95, "passed": ratio_cpu >= 0.95,
        "load_average_before": load_before, "load_average_after": load_after, "r1": r1_figures,
    }
    table = "\n".join(
        f"| {i + 1} | {r['bare_wall']:.1f} | {r['ganops_wall']:.1f} | {r['ganops_wall'] / r['bare_wall']:.3f} "
        f"| {r['bare_cpu']:.1f} | {r['ganops_cpu']:.1f} | {r['ganops_cpu'] / r['bare_cpu']:.3f} |"
        for i, r in enumerate(rows)
    )
    median_row = (f"| median | {median('bare_wall'):.1f} | {median('ganops_wall'):.1f} | {ratio_wall:.3f} "
                  f"| {median('bare_cpu'):.1f} | {median('ganops_cpu'):.1f} | {ratio_cpu:.3f} |")
    md = f"""# Training throughput: ganops trainer vs a bare pytorch/examples-style DCGAN loop

Same networks (DCGAN {IMAGE_SIZE}×{IMAGE_SIZE}, width {WIDTH}, latent {LATENT}), batch {BATCH}, Adam 2e-4, BCE, CPU,
{args.threads} torch thread(s), {args.steps} measured steps per run, {args.rounds} alternating rounds. ganops:
checkpoints every 500 steps, EMA, progress on. Load average {load_before[0]:.2f} before, {load_after[0]:.2f} after
(2 cores, shared with other work).

| round | bare img/s (wall) | ganops img/s (wall) | ratio | bare img per CPU-s | ganops img per CPU-s | ratio |
|---|---|---|---|---|---|---|
{table}
{median_row}

**ratio {ratio_cpu:.3f}** per CPU second (target ≥ 0.95): {'met' if ratio_cpu >= 0.95 else 'NOT met'}; wall-clock
ratio {ratio_wall:.3f}.

{r1_md}
Reproduce: `python -m benchmarks.train_throughput --steps {args.steps} --warmup {args.warmup} --rounds {args.rounds} \
--threads {args.threads} --r1-steps {args.r1_steps}`
"""
    print(write("train_throughput", figures, md).read_text())


if __name__ == "__main__":
    main()

"""Images/s of the ganops trainer against a bare loop written like pytorch/examples' DCGAN, in the same run.

Both train the same networks (ganops' DCGAN at 32×32, batch 64, Adam 2e-4 β=(0.5, 0.999), BCE) on the same
in-memory data. The ganops side runs the real `Trainer` with its checkpoints (every 500 steps), EMA and progress
reporting on. Runs alternate (bare, ganops, bare, ganops, …) so drift of the machine hits both alike.
Target: ratio ≥ 0.95.  Usage: python -m benchmarks.train_throughput [--steps 600] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks._report import write
from ganops.api.loader import job_from_object
from ganops.trainer.data import load_dataset
from ganops.trainer.loop import RunContext, Trainer
from ganops.trainer.models import build_models

IMAGE_SIZE, CHANNELS, LATENT, WIDTH, BATCH = 32, 1, 100, 64, 64


def job(steps: int) -> dict[str, object]:
    return {
        "apiVersion": "ganops.io/v1alpha1", "kind": "GanTrainingJob", "metadata": {"name": "throughput"},
        "spec": {
            "model": {"architecture": "dcgan", "imageSize": IMAGE_SIZE, "channels": CHANNELS, "latentDim": LATENT,
                      "width": WIDTH},
            "dataset": {"uri": "builtin:digits"},
            "training": {"steps": steps, "batchSize": BATCH, "seed": 0, "logEverySteps": 50},
            "checkpoint": {"everySteps": 500, "keepLast": 1},
            "evaluation": {"everySteps": 10**9, "featureExtractor": "digits"},
        },
    }


def bare_loop(steps: int, warmup: int) -> float:
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
    started = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            started = time.perf_counter()
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
    return steps * BATCH / (time.perf_counter() - started)


def ganops_loop(steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        parsed = job_from_object(job(warmup))
        ctx = RunContext(namespace="bench", job_name="throughput", checkpoint_uri=f"file://{tmp}/ckpt",
                         work_dir=Path(tmp) / "work", progress=True)
        Trainer(parsed, ctx).fit()  # warm-up attempt; the measured one resumes from its checkpoint
        trainer = Trainer(job_from_object(job(warmup + steps)), ctx)
        with contextlib.redirect_stderr(io.StringIO()):
            started = time.perf_counter()
            trainer.fit()
            elapsed = time.perf_counter() - started
    return steps * BATCH / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(args.steps, args.warmup))
        ours.append(ganops_loop(args.steps, args.warmup))
        print(f"bare {bare[-1]:.1f} img/s   ganops {ours[-1]:.1f} img/s", flush=True)
    ratio = statistics.median(ours) / statistics.median(bare)
    figures = {
        "steps": args.steps, "rounds": args.rounds, "batch": BATCH, "image_size": IMAGE_SIZE,
        "bare_images_per_second": bare, "ganops_images_per_second": ours, "ratio": ratio, "target": 0.95,
        "passed": ratio >= 0.95,
    }
    md = f"""# Training throughput: ganops trainer vs a bare pytorch/examples-style DCGAN loop

Same networks (DCGAN {IMAGE_SIZE}×{IMAGE_SIZE}, width {WIDTH}, latent {LATENT}), batch {BATCH}, Adam 2e-4, BCE, CPU,
{args.steps} measured steps per run, {args.rounds} alternating rounds. ganops: checkpoints every 500 steps, EMA,
progress on.

| loop | images/s per round | median |
|---|---|---|
| bare | {', '.join(f'{v:.1f}' for v in bare)} | {statistics.median(bare):.1f} |
| ganops | {', '.join(f'{v:.1f}' for v in ours)} | {statistics.median(ours):.1f} |

**ratio {ratio:.3f}** (target ≥ 0.95): {'met' if ratio >= 0.95 else 'NOT met'}.

Reproduce: `python -m benchmarks.train_throughput --steps {args.steps} --rounds {args.rounds}`
"""
    print(write("train_throughput", figures, md).read_text())


if __name__ == "__main__":
    main()

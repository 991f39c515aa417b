"""A process that writes checkpoints to a URI as fast as it can, for kill tests: `python -m ... ROOT START`."""

from __future__ import annotations

import sys

import torch

from ganops.trainer.checkpoint import CheckpointManager


def main() -> None:
    root, start = sys.argv[1], int(sys.argv[2])
    manager = CheckpointManager(root, keep_last=2, keep_best=0)
    step = start
    while True:
        gen = torch.Generator().manual_seed(step)
        big = torch.randn(1024, 1024, generator=gen)  # 4 MiB per file: uploads take long enough to be hit
        weights = {"generator": {"w": big}, "generator_ema": {"w": big + 1}, "discriminator": {"w": big - 1}}
        manager.save(step, weights, {"step": step})
        print(step, flush=True)
        step += 1


if __name__ == "__main__":
    main()

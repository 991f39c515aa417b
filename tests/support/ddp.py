"""Run a function on N gloo ranks (the CPU stand-in for N GPUs under torchrun): `run_ranks(fn, 2, out_dir, …)`.

Each rank is a spawned process with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), one
torch thread, and the process group started by the trainer's own `init_distributed`. ``fn(rank, out_dir, *args)``
must be a module-level function; results travel through files in ``out_dir`` (torch.save / JSON).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from ganops.trainer import distributed as dist_utils


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world_size: int, port: int, fn: Callable[..., None], out_dir: Path,
           args: tuple[Any, ...]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = dist_utils.init_distributed(want_cuda=False, timeout_seconds=120)
    try:
        fn(ctx, out_dir, *args)
    finally:
        dist_utils.shutdown(ctx)


def run_ranks(fn: Callable[..., None], world_size: int, out_dir: Path, *args: Any) -> None:
    """``fn(ctx: DistContext, out_dir, *args)`` on `world_size` gloo ranks; raises if any rank fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mp.spawn(_entry, args=(world_size, free_port(), fn, out_dir, args), nprocs=world_size, join=True)

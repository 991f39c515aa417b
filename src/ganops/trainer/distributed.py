"""Data parallelism under torchrun, the stylegan2-ada way, with the gradient all-reduce overlapping backward.

A GAN step runs D on real data, on fakes and (with WGAN-GP/R1) on a double-backward penalty; DDP's wrapper does
not like several forwards per backward nor ``autograd.grad(create_graph=True)``, so, like stylegan2-ada-pytorch, we
keep plain modules and broadcast the initial parameters from rank 0. Gradients are averaged by a `GradReducer`:
a post-accumulate-grad hook on every parameter fills fixed buckets (about `BUCKET_MB` each, in reverse parameter
order, which is roughly the order backward produces them) and launches each bucket's all-reduce as soon as it and
every bucket before it are complete, while backward goes on computing the rest. The penalties' inner
``autograd.grad`` never accumulates into ``.grad``, so the hooks fire once per parameter per backward: the
double backward stays exact. Buckets are always launched in index order, so every rank issues the same
collectives in the same order.

`init_distributed` starts the process group with the job's collective timeout (``training.distributedTimeoutSeconds``:
NCCL's watchdog otherwise kills a job after 10 minutes while rank 0 uploads a checkpoint) and, on CUDA, binds it to
the rank's device (``device_id``: eager NCCL communicator, no guessing which GPU a barrier runs on).
NCCL on GPUs; gloo on CPU (what the tests run with two processes).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

BUCKET_MB = 25.0  # DDP's default bucket size
DEFAULT_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 - immutable, safe to share
    timeout_seconds: float = field(default=DEFAULT_TIMEOUT_SECONDS)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(want_cuda: bool, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> DistContext:
    """Read torchrun's environment; start the process group when there is more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = want_cuda and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=dt.timedelta(seconds=timeout_seconds),
            device_id=device if use_cuda else None,
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                       timeout_seconds=timeout_seconds)


def broadcast_parameters(ctx: DistContext, *modules: nn.Module) -> None:
    if not ctx.enabled:
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(ctx: DistContext, module: nn.Module) -> None:
    """One flattened all-reduce of every gradient after backward (no overlap; `GradReducer` is the fast path)."""
    if not ctx.enabled:
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))  # type: ignore[union-attr]
        offset += n


class GradReducer:
    """Averages one module's gradients across ranks in buckets launched during backward (module docstring).

    Use: ``arm()`` before the backward of this module's loss, ``finish()`` after it and before the optimizer step.
    Hooks fire only while armed, so the backward of another network's step (which must not reach these parameters
    anyway: freeze them) launches nothing. A parameter that got no gradient on this rank keeps ``grad = None`` and
    contributes zeros to its bucket (the graph is the same on every rank, so it is unused everywhere).
    """

    def __init__(self, ctx: DistContext, module: nn.Module, *, bucket_mb: float = BUCKET_MB) -> None:
        self.ctx = ctx
        params = [p for p in module.parameters() if p.requires_grad]
        cap = max(1, int(bucket_mb * 1024 * 1024))
        self.buckets: list[list[nn.Parameter]] = []
        current: list[nn.Parameter] = []
        size = 0
        for p in reversed(params):  # backward produces the last layers' gradients first
            if current and (size + p.numel() * p.element_size() > cap or p.dtype != current[0].dtype):
                self.buckets.append(current)
                current, size = [], 0
            current.append(p)
            size += p.numel() * p.element_size()
        if current:
            self.buckets.append(current)
        self._bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        self._ready = [0] * len(self.buckets)
        self._next = 0
        self._works: list[tuple[int, torch.Tensor, dist.Work | None]] = []
        self.armed = False
        self.launched_in_backward = 0  # buckets launched from a hook (before `finish`), for tests and gpu-check
        self._handles = [p.register_post_accumulate_grad_hook(self._hook)  # type: ignore[no-untyped-call]
                         for p in params]

    def arm(self) -> None:
        self._ready = [0] * len(self.buckets)
        self._next = 0
        self._works = []
        self.launched_in_backward = 0
        self.armed = True

    def _hook(self, p: torch.Tensor) -> None:
        if not self.armed:
            return
        b = self._bucket_of[id(p)]
        self._ready[b] += 1
        while self._next < len(self.buckets) and self._ready[self._next] == len(self.buckets[self._next]):
            self._launch(self._next)
            self.launched_in_backward += 1

    def _launch(self, b: int) -> None:
        bucket = self.buckets[b]
        flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
                          for p in bucket])
        work = dist.all_reduce(flat, async_op=True)
        self._works.append((b, flat, work))
        self._next = b + 1

    def finish(self) -> None:
        """Launch what is left (in order), wait for every bucket and write the averages back into ``.grad``."""
        if not self.armed:
            return
        self.armed = False
        while self._next < len(self.buckets):
            self._launch(self._next)
        for b, flat, work in self._works:
            if work is not None:
                work.wait()
            flat /= self.ctx.world_size
            offset = 0
            for p in self.buckets[b]:
                n = p.numel()
                if p.grad is not None:
                    p.grad.copy_(flat[offset : offset + n].view_as(p))
                offset += n
        self._works = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when `flag` is true on any (e.g. one rank got SIGTERM: all must checkpoint and stop)."""
    return any_ranks(ctx, flag)[0]


def any_ranks(ctx: DistContext, *flags: bool) -> tuple[bool, ...]:
    """Several `any_rank` questions in one all-reduce (one host↔device synchronisation)."""
    if not ctx.enabled:
        return tuple(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()

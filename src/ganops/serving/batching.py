"""Dynamic micro-batching: the latents of concurrent requests for the same model version go through one forward pass.

:class:`MicroBatcher` keeps a bounded queue of requests (``max_queue``; a full queue raises :class:`QueueFull`,
which the API answers with 503 + Retry-After). One asyncio task takes the oldest waiting request, waits up to
``max_wait_ms`` (measured from when that request arrived) for more samples of the same model version, concatenates
up to ``max_batch_size`` samples and runs the forward pass in a single dedicated thread under
``torch.inference_mode``, followed in the same thread by ``finish``: the server's post-processing (safety filters,
watermark, encoding, base64) done once for the whole batch, vectorised across its requests, so the event loop only
parses requests and writes answers. While a batch runs, new requests queue up and form the next batch. With
``workers`` > 1 (CPU serving: one per core, each with one torch thread) that many batches run side by side.
Labels travel per sample, so conditional requests for different classes share a pass; versions never mix (a hot
swap leaves queued requests for the old version to finish on it). A request larger than ``max_batch_size`` runs
alone.

Determinism: each request's latents come from its own seed, and a sample's output does not depend on its batch
neighbours (eval mode: batch norm uses running statistics) up to float rounding in the last bits — identical after
encoding to ``uint8`` in every case measured (tests compare PNG bytes across batch compositions).

:class:`DirectGenerator` is the naive baseline with the same interface: one request, one forward pass, in a thread
pool (what a plain FastAPI handler does), then ``finish`` for that request alone in a small post-processing pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio.to_thread
import numpy as np
import torch

from ganops.serving.metrics import ServingMetrics
from ganops.serving.model_store import LoadedModel

__all__ = ["DirectGenerator", "Generator", "MicroBatcher", "QueueFull", "ShuttingDown"]

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Too many requests are waiting for the generator: try again shortly."""


class ShuttingDown(RuntimeError):
    """The server is draining: no new work is accepted."""


class Generator(Protocol):
    async def start(self) -> None: ...

    async def submit(self, model: LoadedModel, z: torch.Tensor, y: torch.Tensor | None, job: Any = None) -> Any: ...

    async def close(self, timeout: float = 30.0) -> None: ...

    @property
    def depth(self) -> int: ...


@dataclass(eq=False)
class _Item:
    model: LoadedModel
    z: torch.Tensor
    y: torch.Tensor | None
    job: Any
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def n(self) -> int:
        return int(self.z.shape[0])


Forward = Callable[[LoadedModel, torch.Tensor, torch.Tensor | None], np.ndarray]
# (model, the batch's output, one job per request in order) → one result (or exception) per request
Finish = Callable[[LoadedModel, np.ndarray, Sequence[Any]], Sequence[Any]]


def _forward(model: LoadedModel, z: torch.Tensor, y: torch.Tensor | None) -> np.ndarray:
    return model.forward(z, y)


def split_rows(model: LoadedModel, out: np.ndarray, jobs: Sequence[Any]) -> list[Any]:
    """The default ``finish``: each request gets its rows of the output (jobs are their sample counts)."""
    parts, offset = [], 0
    for n in jobs:
        parts.append(out[offset : offset + n])
        offset += n
    return parts


class MicroBatcher:
    def __init__(
        self,
        metrics: ServingMetrics,
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        max_queue: int = 256,
        forward: Forward = _forward,
        finish: Finish | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.metrics = metrics
        self.finish = finish
        self.workers = workers
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.forward = forward
        self._pending: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._idle: asyncio.Event | None = None
        self._free: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._free = asyncio.Semaphore(self.workers)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ganops-generate")
        self._task = asyncio.create_task(self._loop(), name="ganops-batcher")

    async def submit(self, model: LoadedModel, z: torch.Tensor, y: torch.Tensor | None, job: Any = None) -> Any:
        """This request's result: ``finish``'s answer for ``job`` (without ``finish``: its rows of the output)."""
        if self._closing or self._wake is None:
            raise ShuttingDown("the server is shutting down")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are waiting for the generator")
        item = _Item(model, z, y, job, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self.metrics.queue_depth.set(len(self._pending))
        self._wake.set()
        try:
            return await item.future
        finally:
            if item.future.cancelled() or not item.future.done():  # the caller gave up: drop it from the queue
                item.future.cancel()
                with contextlib.suppress(ValueError):
                    self._pending.remove(item)
                self.metrics.queue_depth.set(len(self._pending))

    async def close(self, timeout: float = 30.0) -> None:
        """Stop accepting work, finish what is queued (up to ``timeout``), stop the worker."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while (self._pending or (self._idle is not None and not self._idle.is_set())) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._running):
            task.cancel()
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(ShuttingDown("the server shut down before this request ran"))
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------------------------ worker

    async def _loop(self) -> None:
        """Forms a batch whenever a worker is free: with ``workers`` > 1 batches run side by side (each worker
        thread with its own share of the cores), while the next one gathers requests."""
        assert self._wake is not None and self._idle is not None and self._free is not None
        while True:
            self._drop_abandoned()
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._free.acquire()
            self._drop_abandoned()
            if not self._pending:
                self._free.release()
                continue
            first = self._pending[0]
            while self._samples_for(first.model) < self.max_batch_size:
                remaining = first.enqueued + self.max_wait_s - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            batch = self._take(first.model)
            if not batch:
                self._free.release()
                continue
            self._idle.clear()
            task = asyncio.create_task(self._run_released(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_released(self, batch: list[_Item]) -> None:
        assert self._free is not None and self._idle is not None
        try:
            await self._run(batch)
        finally:
            self._free.release()
            if not self._running - {asyncio.current_task()}:
                self._idle.set()

    def _drop_abandoned(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()

    def _samples_for(self, model: LoadedModel) -> int:
        return sum(item.n for item in self._pending if item.model is model and not item.future.done())

    def _take(self, model: LoadedModel) -> list[_Item]:
        batch: list[_Item] = []
        total = 0
        keep: deque[_Item] = deque()
        for item in self._pending:
            if item.future.done():
                continue
            if item.model is model and (not batch or total + item.n <= self.max_batch_size):
                batch.append(item)
                total += item.n
            else:
                keep.append(item)
        self._pending = keep
        self.metrics.queue_depth.set(len(keep))
        return batch

    def _work(
        self, model: LoadedModel, z: torch.Tensor, y: torch.Tensor | None, jobs: list[Any]
    ) -> tuple[Sequence[Any], float]:
        """In the worker thread: the forward pass, then ``finish`` for the whole batch; (results, forward seconds)."""
        start = time.perf_counter()
        out = self.forward(model, z, y)
        forward_s = time.perf_counter() - start
        if self.finish is None:
            return split_rows(model, out, [int(job) for job in jobs]), forward_s
        return self.finish(model, out, jobs), forward_s

    async def _run(self, batch: list[_Item]) -> None:
        model = batch[0].model
        start = time.perf_counter()
        for item in batch:
            self.metrics.stage_duration.labels("queue").observe(start - item.enqueued)
        z = torch.cat([item.z for item in batch]) if len(batch) > 1 else batch[0].z
        y: torch.Tensor | None = None
        if batch[0].y is not None:
            y = torch.cat([item.y for item in batch if item.y is not None]) if len(batch) > 1 else batch[0].y
        jobs = [item.job if self.finish is not None else item.n for item in batch]
        loop = asyncio.get_running_loop()
        try:
            results, forward_s = await loop.run_in_executor(self._executor, self._work, model, z, y, jobs)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)} requests")
        except Exception as exc:
            logger.exception("generation of %s failed for a batch of %d samples", model.model_id, int(z.shape[0]))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self.metrics.stage_duration.labels("generate").observe(forward_s)
        self.metrics.batch_size.observe(int(z.shape[0]))
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)


class DirectGenerator:
    """No batching: every request runs its own forward pass in anyio's thread pool (the naive server), then
    ``finish`` for that one request in a pool of ``finish_threads`` threads."""

    def __init__(
        self,
        metrics: ServingMetrics,
        *,
        max_queue: int = 256,
        forward: Forward = _forward,
        finish: Finish | None = None,
        finish_threads: int = 2,
    ) -> None:
        self.metrics = metrics
        self.max_queue = max_queue
        self.forward = forward
        self.finish = finish
        self.finish_threads = finish_threads
        self._executor: ThreadPoolExecutor | None = None
        self._inflight = 0
        self._closing = False

    @property
    def depth(self) -> int:
        return self._inflight

    async def start(self) -> None:
        if self.finish is not None:
            self._executor = ThreadPoolExecutor(self.finish_threads, thread_name_prefix="ganops-post")

    async def submit(self, model: LoadedModel, z: torch.Tensor, y: torch.Tensor | None, job: Any = None) -> Any:
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if self._inflight >= self.max_queue:
            raise QueueFull(f"{self._inflight} requests are being generated")
        self._inflight += 1
        self.metrics.queue_depth.set(self._inflight)
        try:
            start = time.perf_counter()
            out = await anyio.to_thread.run_sync(self.forward, model, z, y)
            self.metrics.stage_duration.labels("generate").observe(time.perf_counter() - start)
            self.metrics.batch_size.observe(int(z.shape[0]))
            if self.finish is None:
                return out
            finish = self.finish
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, lambda: finish(model, out, [job]))
            result = results[0]
            if isinstance(result, BaseException):
                raise result
            return result
        finally:
            self._inflight -= 1
            self.metrics.queue_depth.set(self._inflight)

    async def close(self, timeout: float = 30.0) -> None:
        self._closing = True
        deadline = time.monotonic() + timeout
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

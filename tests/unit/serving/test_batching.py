"""The micro-batcher: concurrent requests share forward passes, within the size limit, never across model versions;
a full queue refuses; abandoned requests are skipped; close drains."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from ganops.serving.batching import DirectGenerator, MicroBatcher, QueueFull, ShuttingDown
from ganops.serving.metrics import ServingMetrics


class FakeModel:
    def __init__(self, name: str) -> None:
        self.model_id = name


class Recorder:
    """A forward pass that returns z itself and records each batch's size (optionally blocking on a gate);
    ``entered`` is set once a pass has started."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[tuple[str, int]] = []
        self.gate = gate
        self.fail = fail
        self.entered = threading.Event()

    def __call__(self, model: Any, z: torch.Tensor, y: torch.Tensor | None) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.batches.append((model.model_id, int(z.shape[0])))
        if self.fail:
            raise RuntimeError("forward failed")
        out: np.ndarray = z.numpy().copy()
        return out


def _z(n: int, value: float) -> torch.Tensor:
    return torch.full((n, 2), value)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition`` (polled; the batcher's threads move it), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let every callback the event loop has ready run (no clock involved): whatever the batcher's loop would
    do with what is queued now, it has done."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_concurrent_requests_share_one_forward_pass_and_get_their_own_rows() -> None:
    forward = Recorder()
    model = FakeModel("m:1")

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(ServingMetrics(process=False), max_batch_size=64, max_wait_ms=50, forward=forward)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(model, _z(n, float(i)), None)  # type: ignore[arg-type]
                                         for i, n in enumerate([1, 2, 3, 4])))
        await batcher.close()
        return list(results)

    results = run(main())
    assert forward.batches == [("m:1", 10)]
    for i, (n, out) in enumerate(zip([1, 2, 3, 4], results, strict=True)):
        assert out.shape == (n, 2) and np.all(out == i)


def test_batches_respect_the_size_limit_and_a_large_request_runs_alone() -> None:
    gate = threading.Event()
    forward = Recorder(gate)
    model = FakeModel("m:1")

    async def main() -> None:
        batcher = MicroBatcher(ServingMetrics(process=False), max_batch_size=6, max_wait_ms=1, forward=forward)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(model, _z(1, 0), None))  # type: ignore[arg-type]
        await until(forward.entered.is_set)  # the first pass is running (blocked on the gate): the rest queue up
        rest = [asyncio.ensure_future(batcher.submit(model, _z(n, 1), None))  # type: ignore[arg-type]
                for n in (3, 3, 3, 10, 2)]
        await until(lambda: batcher.depth == 5)
        gate.set()
        await asyncio.gather(first, *rest)
        await batcher.close()

    run(main())
    # Greedy fill in arrival order: 3+3, then 3+2 (the 10 does not fit and waits at the front), then the 10 alone.
    # The oldest waiting request always leads the next pass, so nothing starves.
    assert [size for _, size in forward.batches] == [1, 6, 5, 10]


def test_versions_never_share_a_pass() -> None:
    forward = Recorder()
    old, new = FakeModel("m:1"), FakeModel("m:2")

    async def main() -> None:
        batcher = MicroBatcher(ServingMetrics(process=False), max_batch_size=64, max_wait_ms=30, forward=forward)
        await batcher.start()
        await asyncio.gather(*(batcher.submit(m, _z(1, 0), None)  # type: ignore[arg-type]
                               for m in (old, new, old, new, old)))
        await batcher.close()

    run(main())
    assert sorted(forward.batches) == [("m:1", 3), ("m:2", 2)]


def test_a_full_queue_refuses_and_abandoned_requests_are_skipped() -> None:
    gate = threading.Event()
    forward = Recorder(gate)
    model = FakeModel("m:1")

    async def main() -> None:
        batcher = MicroBatcher(ServingMetrics(process=False), max_batch_size=64, max_wait_ms=0, max_queue=2,
                               forward=forward)
        await batcher.start()
        running = asyncio.ensure_future(batcher.submit(model, _z(1, 0), None))  # type: ignore[arg-type]
        await until(forward.entered.is_set)
        waiting = asyncio.ensure_future(batcher.submit(model, _z(2, 1), None))  # type: ignore[arg-type]
        abandoned = asyncio.ensure_future(batcher.submit(model, _z(5, 2), None))  # type: ignore[arg-type]
        await until(lambda: batcher.depth == 2)
        with pytest.raises(QueueFull):
            await batcher.submit(model, _z(1, 3), None)  # type: ignore[arg-type]
        abandoned.cancel()  # the caller timed out
        await until(lambda: batcher.depth == 1)
        gate.set()
        await asyncio.gather(running, waiting)
        await batcher.close()

    run(main())
    assert [size for _, size in forward.batches] == [1, 2]


def test_errors_reach_every_request_of_the_batch_and_close_drains() -> None:
    model = FakeModel("m:1")

    async def main() -> None:
        batcher = MicroBatcher(ServingMetrics(process=False), max_wait_ms=20, forward=Recorder(fail=True))
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(model, _z(1, 0), None)  # type: ignore[arg-type]
                                         for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        await batcher.close()
        with pytest.raises(ShuttingDown):
            await batcher.submit(model, _z(1, 0), None)  # type: ignore[arg-type]

        slow = Recorder()
        draining = MicroBatcher(ServingMetrics(process=False), max_wait_ms=100, forward=slow)
        await draining.start()
        pending = asyncio.ensure_future(draining.submit(model, _z(2, 0), None))  # type: ignore[arg-type]
        await until(lambda: draining.depth == 1 or pending.done())  # queued (not refused), then close
        await draining.close(timeout=5)  # what was queued still runs
        assert (await pending).shape == (2, 2)

    run(main())


def test_the_direct_generator_runs_one_pass_per_request() -> None:
    forward = Recorder()
    model = FakeModel("m:1")

    async def main() -> None:
        direct = DirectGenerator(ServingMetrics(process=False), forward=forward)
        await direct.start()
        await asyncio.gather(*(direct.submit(model, _z(n, 0), None) for n in (1, 2, 3)))  # type: ignore[arg-type]
        await direct.close()

    started = time.perf_counter()
    run(main())
    assert sorted(size for _, size in forward.batches) == [1, 2, 3]
    assert time.perf_counter() - started < 10


def test_two_workers_run_two_batches_side_by_side_and_close_waits_for_both() -> None:
    model = FakeModel("m:1")
    gate = threading.Event()
    entered: list[int] = []
    lock = threading.Lock()

    def forward(m: Any, z: torch.Tensor, y: torch.Tensor | None) -> np.ndarray:
        with lock:
            entered.append(int(z.shape[0]))
        assert gate.wait(10)
        out: np.ndarray = z.numpy().copy()
        return out

    async def main() -> None:
        batcher = MicroBatcher(ServingMetrics(process=False), max_wait_ms=0, forward=forward, workers=2)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(model, _z(1, 0), None))  # type: ignore[arg-type]
        await until(lambda: len(entered) == 1)
        second = asyncio.ensure_future(batcher.submit(model, _z(2, 1), None))  # type: ignore[arg-type]
        await until(lambda: len(entered) == 2)  # both batches reach the (blocked) forward pass: neither waits
        third = asyncio.ensure_future(batcher.submit(model, _z(3, 2), None))  # type: ignore[arg-type]
        await until(lambda: batcher.depth == 1)
        await settle()  # a free worker would have taken it from the queue by now
        assert sorted(entered) == [1, 2] and batcher.depth == 1  # no third worker: it waits in the queue
        closing = asyncio.ensure_future(batcher.close(timeout=10))
        await settle()
        with pytest.raises(ShuttingDown):  # close has begun ...
            await batcher.submit(model, _z(1, 3), None)  # type: ignore[arg-type]
        assert not closing.done()  # ... and waits for the two passes in flight
        gate.set()
        results = await asyncio.gather(first, second, third)
        await closing
        assert [r.shape[0] for r in results] == [1, 2, 3] and float(results[2][0, 0]) == 2.0

    run(main())
    assert sorted(entered) == [1, 2, 3]

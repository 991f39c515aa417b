"""A bounded gate for work that must not run on the event loop (watermark verification): at most ``slots`` jobs run
in the executor, at most ``queue`` wait for a slot (more → 503), and a caller waits at most ``timeout_s`` for its
answer (→ 504). A job that outlives its caller keeps its slot until its thread is done, so timed-out work never
piles up behind the gate: the CPU and memory in use are those of ``slots`` jobs at most."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from ganops.serving.errors import ApiError

__all__ = ["WorkGate"]

T = TypeVar("T")


class WorkGate:
    def __init__(self, slots: int, queue: int, timeout_s: float, *, what: str = "work", noun: str = "work",
                 on_refused: Callable[[str], None] | None = None, retry_after_s: int = 1) -> None:
        """``what`` names the refusals (``<what>_busy``, ``timeout``) for ``on_refused``; ``noun`` the messages."""
        self.slots = slots
        self.queue = queue
        self.timeout_s = timeout_s
        self.what = what
        self.noun = noun
        self.on_refused = on_refused
        self.retry_after_s = retry_after_s
        self.running = 0  # jobs in the executor, including those whose callers gave up
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:  # created on the loop that serves
            self._slots = asyncio.Semaphore(self.slots)
        return self._slots

    def _refuse(self, reason: str, status: int, message: str) -> ApiError:
        if self.on_refused is not None:
            self.on_refused(reason)
        headers = {"Retry-After": str(self.retry_after_s)} if status == 503 else None
        return ApiError(status, message, headers=headers)

    async def run(self, executor: Executor | None, fn: Callable[[], T]) -> T:
        """``fn()`` in ``executor`` once a slot is free; its result, or its exception."""
        loop = asyncio.get_running_loop()
        slots = self._semaphore()
        if slots.locked() and self.waiting >= self.queue:
            raise self._refuse(f"{self.what}_busy", 503, f"{self.noun}: too many at once; retry shortly")
        try:
            async with asyncio.timeout(self.timeout_s):
                self.waiting += 1
                try:
                    await slots.acquire()
                finally:
                    self.waiting -= 1
                self.running += 1

                def done(f: asyncio.Future[T]) -> None:  # on the loop, whenever the thread is done
                    if not f.cancelled():
                        f.exception()  # retrieved: a job that outlived its caller must not log "never retrieved"
                    self.running -= 1
                    slots.release()

                try:
                    future = loop.run_in_executor(executor, fn)
                except BaseException:
                    self.running -= 1
                    slots.release()
                    raise
                future.add_done_callback(done)
                return await asyncio.shield(future)
        except TimeoutError:
            raise self._refuse("timeout", 504, f"{self.noun}: no answer within {self.timeout_s:g} s") from None

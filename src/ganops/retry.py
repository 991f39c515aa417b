"""One retry policy for every place that talks to something that may be briefly away: the object store, MLflow,
the Kubernetes API.

`RetryPolicy` holds the numbers (tries, delays, an optional time budget); `call` runs a function under it with
tenacity; `RetryPolicy.delay` gives the same schedule to loops that cannot wrap a single call (a background worker
that keeps its queue, the operator's reconcile loop). The delay before retry ``n`` (0-based) is
``min(max_delay, base_delay * multiplier**n)``, scaled by a random factor in [0.5, 1] when ``jitter`` is on, so many
clients that failed together do not come back together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")

__all__ = ["RetryPolicy", "attempts_made", "call"]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries in total (1: no retry)
    base_delay: float = 0.5
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: bool = True
    # No retry that would likely end later than this after the first try began, judged by how long the last try
    # took (so a server that hangs costs about one timeout, not `attempts` of them).
    budget_s: float | None = None

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        exponent = min(max(retry, 0), 64)  # past this the cap has long been reached; avoids float overflow
        try:
            grown = self.base_delay * self.multiplier**exponent
        except OverflowError:  # a huge multiplier overflows a float before the 64th power: the cap applies
            grown = self.max_delay
        base = min(self.max_delay, grown)
        return float(base * random.uniform(0.5, 1.0)) if self.jitter else float(base)


def call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    retry_if: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """``fn()``, tried again after ``policy``'s delays while ``retry_if(exc)`` holds and tries are left.

    When it gives up, the last exception propagates unchanged (callers translate it; `attempts_made` tells how
    many tries were made). ``on_retry(exc, attempt, delay)`` is called before each sleep (for a log line), with the
    number of the try that just failed (1 for the first) and the seconds about to be slept."""
    started: list[float] = []  # when each try began

    def attempt() -> T:
        started.append(time.monotonic())
        return fn()

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= max(1, policy.attempts):
            return True
        if policy.budget_s is None:
            return False
        now = time.monotonic()
        last_try = now - started[-1]
        return (now - started[0]) + state.upcoming_sleep + last_try > policy.budget_s

    def wait(state: tenacity.RetryCallState) -> float:
        return policy.delay(state.attempt_number - 1)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            exc = state.outcome.exception()
            assert exc is not None
            on_retry(exc, state.attempt_number, state.next_action.sleep)

    retrying = tenacity.Retrying(
        stop=stop, wait=wait, retry=tenacity.retry_if_exception(retry_if), before_sleep=before_sleep, reraise=True,
    )
    try:
        return retrying(attempt)
    except Exception as exc:
        exc.ganops_attempts = int(retrying.statistics.get("attempt_number", 1))  # type: ignore[attr-defined]
        raise


def attempts_made(exc: BaseException) -> int:
    """How many tries `call` made before ``exc`` escaped it (1 for an exception that did not come through `call`)."""
    value = getattr(exc, "ganops_attempts", 1)
    return value if isinstance(value, int) else 1

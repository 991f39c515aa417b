"""Polling with a deadline instead of sleeping: tests wait for a condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """The condition did not become true in time (an AssertionError, so pytest shows it as a failure)."""


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `condition` until it returns a truthy value and return that value.

    Exceptions listed in `ignore` count as "not yet" (e.g. a 404 while the object is not created yet).
    On timeout, raise `WaitTimeoutError` with the message and the last value or exception seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    delay = interval
    while True:
        try:
            value = condition()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeoutError(f"{text or 'condition not met'} within {timeout}s; last seen: {last!r}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)

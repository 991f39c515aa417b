"""ganops.retry: the delay schedule, `call` under a policy (tries, budget, retry_if, on_retry), `attempts_made`.

No test sleeps for real: `sleeps` records what tenacity would sleep (through ``time.sleep``), and the budget tests
run on a fake clock that only the recorded sleeps advance, so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from ganops.retry import RetryPolicy, attempts_made, call


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


def transient_only(exc: BaseException) -> bool:
    return isinstance(exc, Transient)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds each retry would have slept, in order (nothing actually sleeps)."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake monotonic clock at 100 s that only sleeps advance (``clock[0]`` is now)."""
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    monkeypatch.setattr(time, "sleep", sleep)
    return now


def failing(errors: list[BaseException], result: str = "ok") -> tuple[Callable[[], str], list[int]]:
    """A function raising ``errors`` in order, then returning ``result``; and the list counting its calls."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(len(calls) + 1)
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


# ------------------------------------------------------------------------------------------------ the schedule


def test_delay_doubles_from_the_base_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=10.0, jitter=False)
    assert [policy.delay(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.delay(-3) == 0.5  # a negative retry number is the first retry
    assert policy.delay(10_000) == 10.0  # far past the cap: no overflow


def test_delay_follows_the_multiplier() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=5.0, multiplier=3.0, jitter=False)
    assert [policy.delay(n) for n in range(5)] == pytest.approx([0.1, 0.3, 0.9, 2.7, 5.0])
    assert RetryPolicy(base_delay=2.0, multiplier=1.0, jitter=False).delay(7) == 2.0  # constant delays


def test_delay_with_a_huge_multiplier_is_capped_not_an_overflow() -> None:
    assert RetryPolicy(base_delay=1.0, max_delay=30.0, multiplier=1e6, jitter=False).delay(100) == 30.0
    assert RetryPolicy(base_delay=1.0, max_delay=30.0, multiplier=10**400, jitter=False).delay(2) == 30.0


def test_jitter_scales_the_capped_delay_by_half_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0)
    bounds: list[tuple[float, float]] = []

    def lowest(a: float, b: float) -> float:
        bounds.append((a, b))
        return a

    monkeypatch.setattr(random, "uniform", lowest)
    assert [policy.delay(n) for n in range(5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    assert set(bounds) == {(0.5, 1.0)}
    monkeypatch.setattr(random, "uniform", lambda a, b: b)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_spreads_the_delays() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=1.0)
    draws = [policy.delay(0) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in draws)
    assert min(draws) < 0.6 and max(draws) > 0.9  # fails with probability 2 * 0.8**200


def test_defaults_are_the_platform_limits() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.base_delay, policy.max_delay, policy.multiplier) == (4, 0.5, 10.0, 2.0)
    assert policy.jitter is True and policy.budget_s is None


# ------------------------------------------------------------------------------------------------------ call


def test_retries_until_success_sleeping_the_schedule(sleeps: list[float]) -> None:
    fn, calls = failing([Transient("a"), Transient("b")])
    seen: list[tuple[str, int, float]] = []
    policy = RetryPolicy(attempts=4, base_delay=0.01, jitter=False)
    result = call(fn, policy, retry_if=transient_only, on_retry=lambda e, n, d: seen.append((str(e), n, d)))
    assert result == "ok"
    assert calls == [1, 2, 3]
    assert seen == [("a", 1, 0.01), ("b", 2, 0.02)]
    assert sleeps == [0.01, 0.02]


def test_gives_up_after_the_attempts_with_the_last_exception_unchanged(sleeps: list[float]) -> None:
    errors: list[BaseException] = [Transient(str(i)) for i in range(10)]
    last = errors[3]
    fn, calls = failing(errors)
    seen: list[tuple[BaseException, int, float]] = []
    policy = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.03, jitter=False)
    with pytest.raises(Transient) as info:
        call(fn, policy, retry_if=transient_only, on_retry=lambda e, n, d: seen.append((e, n, d)))
    assert info.value is last
    assert attempts_made(info.value) == 4
    assert calls == [1, 2, 3, 4]
    assert [(str(e), n, d) for e, n, d in seen] == [("0", 1, 0.01), ("1", 2, 0.02), ("2", 3, 0.03)]
    assert sleeps == [0.01, 0.02, 0.03]


def test_on_retry_sees_the_jittered_delay_that_is_slept(sleeps: list[float]) -> None:
    fn, _ = failing([Transient(), Transient(), Transient()])
    seen: list[float] = []
    call(fn, RetryPolicy(attempts=4, base_delay=0.01), retry_if=transient_only,
         on_retry=lambda e, n, d: seen.append(d))
    assert sleeps == seen and len(seen) == 3
    assert all(cap / 2 <= d <= cap for d, cap in zip(seen, [0.01, 0.02, 0.04], strict=True))


def test_retry_if_false_raises_at_once_after_one_try(sleeps: list[float]) -> None:
    error = Permanent("no")
    fn, calls = failing([error])
    seen: list[int] = []
    with pytest.raises(Permanent) as info:
        call(fn, RetryPolicy(attempts=5, base_delay=0.01), retry_if=transient_only,
             on_retry=lambda e, n, d: seen.append(n))
    assert info.value is error
    assert attempts_made(info.value) == 1
    assert calls == [1] and seen == [] and sleeps == []


def test_retry_if_is_asked_about_each_exception(sleeps: list[float]) -> None:
    fn, calls = failing([Transient(), Transient(), Permanent("stop"), Transient()])
    asked: list[str] = []

    def retry_if(exc: BaseException) -> bool:
        asked.append(type(exc).__name__)
        return isinstance(exc, Transient)

    with pytest.raises(Permanent):
        call(fn, RetryPolicy(attempts=10, base_delay=0.01, jitter=False), retry_if=retry_if)
    assert asked == ["Transient", "Transient", "Permanent"]
    assert calls == [1, 2, 3] and sleeps == [0.01, 0.02]


@pytest.mark.parametrize("attempts", [1, 0, -2])
def test_one_attempt_or_fewer_means_no_retry(attempts: int, sleeps: list[float]) -> None:
    fn, calls = failing([Transient(), Transient()])
    with pytest.raises(Transient) as info:
        call(fn, RetryPolicy(attempts=attempts, base_delay=0.01), retry_if=transient_only)
    assert attempts_made(info.value) == 1
    assert calls == [1] and sleeps == []


def test_success_at_once_calls_nothing_else(sleeps: list[float]) -> None:
    fn, calls = failing([], result="first")
    seen: list[int] = []
    assert call(fn, RetryPolicy(), retry_if=transient_only, on_retry=lambda e, n, d: seen.append(n)) == "first"
    assert calls == [1] and seen == [] and sleeps == []


# ---------------------------------------------------------------------------------------------------- budget


def test_budget_stops_a_retry_that_would_start_too_late(clock: list[float]) -> None:
    # Retries would start 0.01 s and then 0.03 s after the first try; a 0.025 s budget allows only the first.
    fn, calls = failing([Transient() for _ in range(10)])
    policy = RetryPolicy(attempts=10, base_delay=0.01, jitter=False, budget_s=0.025)
    with pytest.raises(Transient) as info:
        call(fn, policy, retry_if=transient_only)
    assert calls == [1, 2]
    assert attempts_made(info.value) == 2
    assert clock[0] == pytest.approx(100.01)


def test_budget_counts_the_time_the_tries_take(clock: list[float]) -> None:
    # Each try takes 1 s on the clock; a retry must be likely to end within the budget, judged by the last try: with
    # 1.5 s the second try would end near 2 s (none is made), with 2.5 s it fits but a third (near 3 s) does not.
    def slow() -> str:
        clock[0] += 1.0
        raise Transient()

    for budget, tries in ((1.5, 1), (2.5, 2), (3.5, 3)):
        policy = RetryPolicy(attempts=10, base_delay=0.001, jitter=False, budget_s=budget)
        with pytest.raises(Transient) as info:
            call(slow, policy, retry_if=transient_only)
        assert attempts_made(info.value) == tries, budget


def test_a_large_budget_leaves_the_attempts_in_charge(clock: list[float]) -> None:
    fn, calls = failing([Transient() for _ in range(10)])
    with pytest.raises(Transient) as info:
        call(fn, RetryPolicy(attempts=5, base_delay=0.01, jitter=False, budget_s=60.0), retry_if=transient_only)
    assert calls == [1, 2, 3, 4, 5] and attempts_made(info.value) == 5
    assert clock[0] == pytest.approx(100.0 + 0.01 + 0.02 + 0.04 + 0.08)


def test_a_zero_budget_means_no_retry(clock: list[float]) -> None:
    fn, calls = failing([Transient(), Transient()])
    with pytest.raises(Transient):
        call(fn, RetryPolicy(attempts=5, base_delay=0.01, budget_s=0.0), retry_if=transient_only)
    assert calls == [1]


# --------------------------------------------------------------------------------------------- attempts_made


def test_attempts_made_of_an_exception_that_did_not_come_through_call() -> None:
    assert attempts_made(ValueError("plain")) == 1
    odd = ValueError("tagged by someone else")
    odd.ganops_attempts = "three"  # type: ignore[attr-defined]
    assert attempts_made(odd) == 1


def test_attempts_made_is_per_call(sleeps: list[float]) -> None:
    error = Transient()
    policy = RetryPolicy(attempts=3, base_delay=0.001, jitter=False)

    def always() -> None:
        raise error

    with pytest.raises(Transient):
        call(always, policy, retry_if=transient_only)
    assert attempts_made(error) == 3
    with pytest.raises(Transient):
        call(always, RetryPolicy(attempts=2, base_delay=0.001), retry_if=transient_only)
    assert attempts_made(error) == 2  # the same object through a second call: the latest count

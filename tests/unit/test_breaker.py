"""The circuit breaker: opens after repeated failures, lets one trial through, closes on success."""

from __future__ import annotations

import pytest

from dispatcher.worker.breaker import BreakerState, CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_the_threshold_and_refuses_calls() -> None:
    clock = Clock()
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    for _ in range(3):
        breaker.before_call("psp")
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        breaker.before_call("psp")


def test_after_the_reset_time_one_trial_call_goes_through() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(1, 10.0, clock=clock, on_change=changes.append)
    breaker.before_call("psp")
    breaker.record_failure()
    clock.now = 10.5
    breaker.before_call("psp")  # the trial
    with pytest.raises(CircuitOpen, match="trial"):
        breaker.before_call("psp")
    breaker.record_success()
    breaker.before_call("psp")
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_failed_trial_opens_the_circuit_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    breaker.before_call("psp")
    breaker.record_failure()
    clock.now = 11
    breaker.before_call("psp")
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        breaker.before_call("psp")


def test_successes_reset_the_failure_count() -> None:
    breaker = CircuitBreaker(2, 10.0, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED

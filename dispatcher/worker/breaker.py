"""A circuit breaker per payment system: stop calling one that keeps failing, try again later.

Closed: calls go through; ``failures`` consecutive failures open it. Open: calls fail at once
with :class:`CircuitOpen` (nothing is sent) for ``reset_after`` seconds. Then half-open: one
trial call; success closes the circuit, failure opens it again. :meth:`CircuitBreaker.trip`
opens it at once, whatever the count (the payment system refused our credentials).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from orders.errors import TransientError


class CircuitOpen(TransientError):
    """The payment system failed too often lately; the call was not made."""


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        reset_after: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.threshold = failures
        self.reset_after = reset_after
        self.clock = clock
        self.on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trial_running = False

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(state)

    def before_call(self, name: str) -> None:
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.reset_after:
                raise CircuitOpen(f"{name}: circuit open after {self.failures} failures")
            self._set(BreakerState.HALF_OPEN)
            self.trial_running = False
        if self.state is BreakerState.HALF_OPEN:
            if self.trial_running:
                raise CircuitOpen(f"{name}: circuit half-open, trial call in flight")
            self.trial_running = True

    def record_success(self) -> None:
        self.failures = 0
        self.trial_running = False
        self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        self.trial_running = False
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.opened_at = self.clock()
            self._set(BreakerState.OPEN)

    def trip(self) -> None:
        """Open now: calls are refused for ``reset_after`` seconds, then one trial goes out."""
        self.failures = max(self.failures, self.threshold)
        self.trial_running = False
        self.opened_at = self.clock()
        self._set(BreakerState.OPEN)

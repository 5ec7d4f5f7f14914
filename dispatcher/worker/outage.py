"""One warning per payment system per interval while it is unavailable, not one per order.

A payment system that is down fails every call sent to it: after a restart, hundreds of orders
watched for late payments fail within seconds. The transport reports each failed call here (and
each call its open breaker kept back); the log gets the first failure at once, then at most one
line per ``interval`` saying how many failures it left out, and one line when a call gets
through again. Each order's own failure is in the engine's log at debug; the step-error metric
and the breaker still count every one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

# Seconds between two warnings about the same payment system during one outage.
INTERVAL = 30.0
# Bound by the engine for the step in progress: an adapter-wide line belongs to no one order.
_STEP_KEYS = ("order_id", "action")


class OutageLog:
    """The log lines of one adapter's outages (one instance per transport)."""

    def __init__(
        self,
        adapter: str,
        *,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.interval = interval
        self.clock = clock
        self._began: float | None = None  # None: no outage under way
        self._last_line = 0.0
        self._failed = 0  # calls that failed on the wire during this outage
        self._held_back = 0  # calls the open breaker refused during this outage
        self._suppressed = 0  # failures since the last line

    def failed(self, error: str, *, held_back: bool = False) -> None:
        """A call failed (``held_back``: the breaker refused it, nothing was sent)."""
        now = self.clock()
        if held_back:
            self._held_back += 1
        else:
            self._failed += 1
        if self._began is None:
            self._began = now
        elif now - self._last_line < self.interval:
            self._suppressed += 1
            return
        self._line(
            "warning",
            "payment system unavailable; its orders are retried later",
            error=error,
            failed_calls=self._failed,
            held_back_by_breaker=self._held_back,
            suppressed=self._suppressed,
            down_for=round(now - self._began, 1),
            next_line_after=self.interval,
        )
        self._last_line = now
        self._suppressed = 0

    def recovered(self) -> None:
        """A call got an answer: ends the outage under way, if any, with one line."""
        if self._began is None:
            return
        self._line(
            "info",
            "payment system available again",
            failed_calls=self._failed,
            held_back_by_breaker=self._held_back,
            suppressed=self._suppressed,
            down_for=round(self.clock() - self._began, 1),
        )
        self._began = None
        self._failed = self._held_back = self._suppressed = 0

    def _line(self, level: str, event: str, **fields: object) -> None:
        step = {
            key: value
            for key, value in structlog.contextvars.get_contextvars().items()
            if key in _STEP_KEYS
        }
        structlog.contextvars.unbind_contextvars(*step)
        try:
            getattr(log, level)(event, adapter=self.adapter, **fields)
        finally:
            structlog.contextvars.bind_contextvars(**step)

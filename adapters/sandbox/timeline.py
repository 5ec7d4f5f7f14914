"""Timed actions for the sandbox (scenario outcomes, deadline sweeps) in one asyncio task.

One heap and one task serve any number of invoices, so thousands of pending scenarios cost a heap
entry each rather than a sleeping task or thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Timeline:
    """Runs callbacks at wall-clock times. ``at`` is called on the event loop's thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._wake = asyncio.Event()

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at unix time ``when`` (at once if that has passed)."""
        heapq.heappush(self._heap, (when, next(self._sequence), action))
        self._wake.set()

    def clear(self) -> None:
        self._heap.clear()
        self._wake.set()

    def __len__(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        """Run due actions forever; cancel the task to stop."""
        while True:
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                _, _, action = heapq.heappop(self._heap)
                try:
                    action()
                except Exception:
                    # One failing action must not stop every other invoice's timer.
                    logger.exception("sandbox timeline action failed")
            delay = self._heap[0][0] - now if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

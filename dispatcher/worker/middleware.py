"""dramatiq middleware: message counts and durations per queue and actor, as Prometheus metrics."""

from __future__ import annotations

import time
from typing import Any

import dramatiq

from dispatcher import metrics


def _adapter(queue_name: str) -> str:
    return queue_name.removeprefix("paydispatch.")


class MessageMetrics(dramatiq.Middleware):
    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._started[message.message_id] = time.perf_counter()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        adapter, actor = _adapter(message.queue_name), message.actor_name
        started = self._started.pop(message.message_id, None)
        if started is not None:
            metrics.DRAMATIQ_DURATION.labels(adapter, actor).observe(time.perf_counter() - started)
        outcome = "ok" if exception is None else "error"
        metrics.DRAMATIQ_MESSAGES.labels(adapter, actor, outcome).inc()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._started.pop(message.message_id, None)
        metrics.DRAMATIQ_MESSAGES.labels(
            _adapter(message.queue_name), message.actor_name, "skipped"
        ).inc()

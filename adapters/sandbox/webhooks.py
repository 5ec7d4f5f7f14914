"""Signed webhook delivery for the sandbox, off the request path, with retries and faults.

``send`` only enqueues; one task drains the queue (holding webhooks back to reorder them when that
fault is on) and each delivery runs in its own task, so a slow receiver never blocks a request.
At most ``concurrency`` requests are on the wire at once, each on a kept-alive connection; the
rest wait their turn here, as in a payment system's outbox, and that wait is not part of the
request's timeout. The requests go out through aiohttp, whose connector and C parser cost a
fraction of httpx's per request: the sandbox shares the machine with the daemon it stands in
front of. With httpx and no bound, a burst became thousands of requests queued in httpcore's
pool, whose bookkeeping walks every queued request on each release (87 % of the sandbox's CPU
at 200 orders/s), and whose waits timed out as failed attempts (``PoolTimeout``), then retried
(docs/benchmarks.md, "Issue #15 item 3"). Every failed attempt is counted by its reason.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from adapters.sandbox.faults import WebhookFaults
from adapters.sandbox.protocol import SIGNATURE_HEADER, WEBHOOK_EVENT_TYPE, signature_header
from orders.backoff import ceiling

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Webhook:
    """One event to deliver; duplicates keep the event id so receivers can deduplicate."""

    url: str
    body: bytes
    event_id: str


def build_webhook(url: str, invoice: Mapping[str, Any]) -> Webhook:
    return build_event(url, WEBHOOK_EVENT_TYPE, invoice=invoice)


def build_event(url: str, event_type: str, **objects: Mapping[str, Any]) -> Webhook:
    """A webhook of ``event_type`` carrying ``objects`` (``invoice=...``, ``refund=...``)."""
    event_id = f"evt_{uuid.uuid4().hex}"
    payload: dict[str, Any] = {"event_id": event_id, "type": event_type}
    payload |= {name: dict(value) for name, value in objects.items()}
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Webhook(url, body, event_id)


class WebhookSender:
    def __init__(
        self,
        secret: str,
        faults: Callable[[], WebhookFaults],
        *,
        attempts: int,
        timeout: float,
        backoff: float,
        reorder_window: float,
        concurrency: int,
    ) -> None:
        self._secret = secret
        self._faults = faults
        self._attempts = max(1, attempts)
        self._timeout = timeout
        self._backoff = backoff
        self._reorder_window = reorder_window
        self._concurrency = max(1, concurrency)
        self._slots = asyncio.Semaphore(self._concurrency)
        self._queue: asyncio.Queue[Webhook] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.counts: Counter[str] = Counter()
        # Why attempts failed ("timeout", "connection refused", "HTTP 503": ``failure_reason``).
        self.failures: Counter[str] = Counter()
        self.in_flight = 0
        self._held = 0  # a webhook held back by the reorder fault, waiting for a second one

    def stats(self) -> dict[str, Any]:
        """The counts, the failed attempts by reason, and the deliveries not yet done (a pair
        held back by the ``reorder`` fault is one)."""
        return {
            **self.counts,
            "attempt_failures": dict(self.failures),
            "pending": self._queue.qsize() + self._held + len(self._tasks),
            "in_flight": self.in_flight,
        }

    def clear(self) -> None:
        """Forget the counts (webhooks still being delivered go on)."""
        self.counts.clear()
        self.failures.clear()

    def send(self, webhook: Webhook) -> None:
        """Queue a webhook; never blocks."""
        self.counts["queued"] += 1
        self._queue.put_nowait(webhook)

    async def run(self) -> None:
        """Drain the queue until cancelled."""
        # An idle connection is dropped before the receiver drops it (uvicorn: after 5 s), so a
        # POST never goes out on one the other end is closing (aiohttp does not resend a POST).
        connector = aiohttp.TCPConnector(limit=self._concurrency, keepalive_timeout=4)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            try:
                while True:
                    first = await self._queue.get()
                    batch = [first]
                    if self._faults().reorder:
                        self._held = 1
                        try:
                            second = await asyncio.wait_for(self._queue.get(), self._reorder_window)
                        except TimeoutError:
                            pass
                        else:
                            batch = [second, first]
                            self.counts["reordered"] += 2
                        finally:
                            self._held = 0
                    self._spawn(self._deliver_in_order(batch))
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                self._session = None

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_in_order(self, batch: list[Webhook]) -> None:
        for webhook in batch:
            copies = 2 if self._faults().duplicate else 1
            for _ in range(copies):
                await self._deliver(webhook)

    async def _deliver(self, webhook: Webhook) -> None:
        """Up to ``attempts`` tries, ``backoff`` seconds apart and doubling (docs/sandbox.md):
        no jitter and no cap, so a test knows when each retry comes (``attempts`` bounds it)."""
        for attempt in range(1, self._attempts + 1):
            async with self._slots:
                failure = await self._attempt(webhook)
            if failure is None:
                self.counts["delivered"] += 1
                return
            self.failures[failure] += 1
            logger.info(
                "sandbox webhook %s attempt %d failed: %s", webhook.event_id, attempt, failure
            )
            if attempt < self._attempts:
                await asyncio.sleep(ceiling(self._backoff, attempt - 1, cap=math.inf))
        self.counts["failed"] += 1

    async def _attempt(self, webhook: Webhook) -> str | None:
        """One POST on a slot; None when delivered, else why not."""
        assert self._session is not None
        self.counts["attempts"] += 1
        self.in_flight += 1
        # Signed at each attempt, as a real payment system does: the timestamp is the send time.
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(self._secret, int(time.time()), webhook.body),
        }
        try:
            async with self._session.post(webhook.url, data=webhook.body, headers=headers) as r:
                await r.read()  # the connection goes back to the pool only once read
                return None if 200 <= r.status < 300 else f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return failure_reason(exc)
        finally:
            self.in_flight -= 1


def failure_reason(exc: BaseException) -> str:
    """A failed attempt's reason, as a receiver's operator would name it."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timeout"
    if isinstance(exc, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = exc.os_error.errno == errno.ECONNREFUSED
        return "connection refused" if refused else f"connect error: {exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    return type(exc).__name__

"""Signed webhook delivery for the sandbox, off the request path, with retries and faults.

``send`` only enqueues; one task drains the queue (holding webhooks back to reorder them when that
fault is on) and each delivery runs in its own task, so a slow receiver never blocks a request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from adapters.sandbox.faults import WebhookFaults
from adapters.sandbox.protocol import SIGNATURE_HEADER, WEBHOOK_EVENT_TYPE, signature_header

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
    ) -> None:
        self._secret = secret
        self._faults = faults
        self._attempts = max(1, attempts)
        self._timeout = timeout
        self._backoff = backoff
        self._reorder_window = reorder_window
        self._queue: asyncio.Queue[Webhook] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self.counts: Counter[str] = Counter()

    def send(self, webhook: Webhook) -> None:
        """Queue a webhook; never blocks."""
        self.counts["queued"] += 1
        self._queue.put_nowait(webhook)

    async def run(self) -> None:
        """Drain the queue until cancelled."""
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            self._client = client
            try:
                while True:
                    first = await self._queue.get()
                    batch = [first]
                    if self._faults().reorder:
                        try:
                            second = await asyncio.wait_for(self._queue.get(), self._reorder_window)
                        except TimeoutError:
                            pass
                        else:
                            batch = [second, first]
                            self.counts["reordered"] += 2
                    self._spawn(self._deliver_in_order(batch))
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                self._client = None

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
        assert self._client is not None
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            self.counts["attempts"] += 1
            # Signed at each attempt, as a real payment system does: the timestamp is the send time.
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature_header(self._secret, int(time.time()), webhook.body),
            }
            try:
                response = await self._client.post(
                    webhook.url, content=webhook.body, headers=headers
                )
            except httpx.HTTPError as exc:
                failure = f"{type(exc).__name__}"
            else:
                if response.is_success:
                    self.counts["delivered"] += 1
                    return
                failure = f"HTTP {response.status_code}"
            logger.info(
                "sandbox webhook %s attempt %d failed: %s", webhook.event_id, attempt, failure
            )
            if attempt < self._attempts:
                await asyncio.sleep(delay)
                delay *= 2
        self.counts["failed"] += 1

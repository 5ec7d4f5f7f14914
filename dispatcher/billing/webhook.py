"""The webhook hook: an outbox row per paid order, delivered by the ``deliver`` actor.

The row is written in the paid transaction, with the exact JSON body that every attempt sends
and a stable event id (``id`` in the body), so a site can deduplicate. Each attempt goes to the
order's site's webhook of the moment (:mod:`dispatcher.billing.sites`), signed with that site's
secret (and its previous one during a rotation); an event of a site with no webhook waits like
a failed attempt, and parks, until one is set. The sweeper claims due
rows like orders (``FOR UPDATE SKIP LOCKED``, with a lease) and sends one ``deliver`` message
each; a worker POSTs the body with ``httpx.AsyncClient`` on its event loop, so an unreachable or
slow receiver only holds one coroutine, never a thread or other deliveries. A failed attempt is
retried with capped exponential backoff and full jitter until ``give_up_at`` (3 days by
default); then the event is parked and counted, until ``paydispatch hooks replay``.

:class:`Outbox` and :class:`Delivery` are async, over the one async pool of :mod:`orders.db`;
the sweeper (synchronous) claims through :class:`SyncOutbox`, its face.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import structlog

from dispatcher import logs, metrics
from dispatcher.billing.face import Face
from dispatcher.billing.receiver import HEADER, sign
from orders.backoff import ceiling
from orders.db import AsyncConnection, AsyncPool, Pool, atransaction, database_errors, query
from orders.model import Order, Transfer

log = structlog.get_logger(__name__)

EVENT_PAID = "order.paid"
EVENT_REFUND = "refund"  # a refund of an order succeeded (issue #14): one per refund transfer
# A chargeback (a refund a dispute took) given back: the dispute was won. One per such refund.
EVENT_REFUND_REVERSED = "refund.reversed"
MAX_ERROR = 500


def event_body(event_id: UUID, order: Order, *, late: bool) -> str:
    """The JSON a site receives for a paid order; keys sorted, so the bytes are stable."""
    body = {
        "id": str(event_id),
        "type": EVENT_PAID,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {
            "order_id": str(order.id),
            "site": order.site,
            "site_ref": order.site_ref,
            "user_id": order.user_id,
            "amount": order.money.amount,
            "currency": order.money.currency,
            "amount_decimal": str(order.money.to_decimal()),
            "adapter": order.adapter,
            "description": order.description,
            "metadata": dict(order.metadata),
            "paid_at": None if order.paid_at is None else order.paid_at.isoformat(),
            "late": late,
        },
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def refund_body(event_id: UUID, transfer: Transfer, event_type: str = EVENT_REFUND) -> str:
    """The JSON a site receives for a succeeded refund (or, ``refund.reversed``, a chargeback
    given back); keys sorted, so the bytes are stable."""
    body = {
        "id": str(event_id),
        "type": event_type,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {
            "refund_id": str(transfer.id),
            "order_id": str(transfer.order_id),
            "site": transfer.site,
            "user_id": transfer.user_id,
            "amount": transfer.money.amount,
            "currency": transfer.money.currency,
            "amount_decimal": str(transfer.money.to_decimal()),
            "adapter": transfer.adapter,
            "origin": transfer.origin,
            "reason": transfer.reason,
            "settled_at": None if transfer.settled_at is None else transfer.settled_at.isoformat(),
        },
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with full jitter between delivery attempts."""

    first: timedelta = timedelta(seconds=10)
    cap: timedelta = timedelta(hours=1)
    factor: float = 2.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> timedelta:
        """The wait after failed attempt number ``attempt`` (1 for the first)."""
        highest = ceiling(
            self.first.total_seconds(),
            min(attempt - 1, 60),
            cap=self.cap.total_seconds(),
            factor=self.factor,
        )
        # Full jitter, but never a busy loop: at least a tenth of the ceiling (or of a second).
        return timedelta(seconds=max(highest * rng(), min(1.0, highest) * 0.1))


class Outbox:
    """The ``billing_outbox`` table: enqueue (in the paid transaction), claim, replay, stats."""

    def __init__(self, pool: AsyncPool | None, *, max_age: timedelta = timedelta(days=3)) -> None:
        self._pool = pool  # None: only enqueue (the paid hook) works
        self.max_age = max_age

    @property
    def pool(self) -> AsyncPool:
        if self._pool is None:
            raise RuntimeError("this Outbox has no pool")
        return self._pool

    async def _all(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with database_errors():
            async with self.pool.connection() as conn:
                return await (await conn.execute(query(name), params)).fetchall()

    async def enqueue(self, conn: AsyncConnection, order: Order, *, late: bool = False) -> None:
        """Write the paid event of ``order``; a second call for the same order adds nothing."""
        event_id = uuid.uuid4()
        params = {
            "id": event_id,
            "order_id": order.id,
            "event_type": EVENT_PAID,
            "body": event_body(event_id, order, late=late),
            "max_age": self.max_age,
        }
        row = await (await conn.execute(query("insert_outbox"), params)).fetchone()
        if row is not None:
            await conn.execute(query("notify_outbox"))  # wakes the sweeper once this commits

    async def enqueue_refund(
        self, conn: AsyncConnection, transfer: Transfer, event_type: str = EVENT_REFUND
    ) -> bool:
        """Write the ``refund`` event of a succeeded refund transfer (``refund.reversed``: of a
        chargeback given back); a second call for the same transfer and type adds nothing
        (returns False)."""
        event_id = uuid.uuid4()
        params = {
            "id": event_id,
            "order_id": transfer.order_id,
            "transfer_id": transfer.id,
            "event_type": event_type,
            "body": refund_body(event_id, transfer, event_type),
            "max_age": self.max_age,
        }
        row = await (await conn.execute(query("insert_transfer_outbox"), params)).fetchone()
        if row is not None:
            await conn.execute(query("notify_outbox"))  # wakes the sweeper once this commits
        return row is not None

    async def claim(self, limit: int, lease: timedelta) -> list[tuple[UUID, UUID]]:
        """Lease up to ``limit`` due events: ``(event id, lease token)`` pairs."""
        params = {"limit": limit, "lease": lease, "token": uuid.uuid4()}
        async with atransaction(self.pool) as conn:
            rows = await (await conn.execute(query("claim_outbox"), params)).fetchall()
        return [(row["id"], row["lease_token"]) for row in rows]

    async def replay(self, ids: list[UUID] | None = None) -> list[UUID]:
        """Give parked events (all, or ``ids``) a new delivery window; returns their ids."""
        rows = await self._all("outbox_replay", {"ids": ids, "max_age": self.max_age})
        return [row["id"] for row in rows]

    async def update_metrics(self) -> None:
        rows = await self._all("outbox_stats")
        row = rows[0] if rows else None
        if row is None:  # pragma: no cover - an aggregate always returns a row
            return
        metrics.BILLING_OUTBOX_BACKLOG.set(row["backlog"])
        metrics.BILLING_OUTBOX_OLDEST_AGE.set(float(row["oldest"] or 0.0))
        metrics.BILLING_OUTBOX_PARKED.set(row["parked"])


class SyncOutbox(Face):
    """:class:`Outbox` for synchronous callers: the sweeper's claims and gauges, the CLI's
    replay, tests; see :mod:`dispatcher.billing.face`."""

    def __init__(
        self,
        pool_or_url: Pool | str,
        *,
        max_age: timedelta = timedelta(days=3),
        max_size: int = 2,
        name: str = "outbox",
    ) -> None:
        super().__init__(pool_or_url, max_size=max_size, name=name)
        self.max_age = max_age

    def claim(self, limit: int, lease: timedelta) -> list[tuple[UUID, UUID]]:
        return self.run(lambda pool: Outbox(pool, max_age=self.max_age).claim(limit, lease))

    def replay(self, ids: list[UUID] | None = None) -> list[UUID]:
        return self.run(lambda pool: Outbox(pool, max_age=self.max_age).replay(ids))

    def update_metrics(self) -> None:
        self.run(lambda pool: Outbox(pool, max_age=self.max_age).update_metrics())


class Delivery:
    """Sends claimed events; runs on an event loop (the worker's :class:`EngineHost`)."""

    def __init__(
        self,
        pool: AsyncPool,
        *,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.pool = pool  # opened on the loop the deliveries run on
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._redacted: set[str] = set()

    def __repr__(self) -> str:
        return f"Delivery(timeout={self.timeout})"

    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # created on the loop that uses it
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                transport=self._transport,
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _load(self, event_id: UUID) -> dict[str, Any] | None:
        with database_errors():
            async with self.pool.connection() as conn:
                row = await (await conn.execute(query("get_outbox"), {"id": event_id})).fetchone()
        if row is not None:
            fresh = {row["secret"], row["previous_secret"]} - {None} - self._redacted
            if fresh:  # no log line may ever show a site's secret
                logs.register_secrets(fresh)
                self._redacted |= fresh
        return row

    async def _finish(self, name: str, params: dict[str, Any]) -> bool:
        with database_errors():
            async with self.pool.connection() as conn:
                return await (await conn.execute(query(name), params)).fetchone() is not None

    async def deliver(self, event_id: UUID, token: UUID) -> str:
        """One attempt; returns the outcome (delivered, retry, parked, skipped)."""
        row = await self._load(event_id)
        if row is None or row["status"] != "pending" or row["lease_token"] != token:
            return "skipped"  # delivered, parked or re-claimed meanwhile
        url: str | None = row["site_url"]
        status: int | None = None
        error: str | None = None
        if url is None:
            error = (
                f"site {row['site']!r} has no webhook: "
                "paydispatch sites set-webhook SITE URL, then hooks replay"
            )
        else:
            body = row["body"].encode()
            signers = [row["secret"]] + ([row["previous_secret"]] if row["previous_secret"] else [])
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "paydispatch-webhook/1",
                HEADER: sign(signers, body),
                "Paydispatch-Event-Id": str(event_id),
            }
            try:
                response = await self.client().post(url, content=body, headers=headers)
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR] or type(exc).__name__
        params: dict[str, Any] = {
            "id": event_id,
            "token": token,
            "url": url,
            "last_status": status,
            "last_error": error,
        }
        if error is None:
            await self._finish("outbox_delivered", params)
            outcome = "delivered"
        else:
            attempt = row["attempts"] + 1
            delay = self.backoff.delay(attempt)
            if datetime.now(UTC) + delay >= row["give_up_at"]:
                await self._finish("outbox_park", params)
                metrics.BILLING_PARKED.inc()
                log.error("webhook event parked", event_id=str(event_id), error=error)
                outcome = "parked"
            else:
                params["delay"] = delay
                await self._finish("outbox_retry", params)
                log.info("webhook delivery failed; will retry", event_id=str(event_id),
                         error=error, attempt=attempt, delay=delay.total_seconds())  # fmt: skip
                outcome = "retry"
        metrics.BILLING_DELIVERIES.labels(outcome).inc()
        return outcome

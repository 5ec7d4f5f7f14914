"""The sweeper: claims due orders in batches and sends each to its adapter's queue.

After the orders, each tick claims the due refunds and payouts (``transfers``, issue #14) the
same way and sends them as ``transfer`` steps on their adapter's queue, then the due refund
checks of paid orders (a hint nobody signed said a payment was refunded) as ``refund_check``
steps.

Every tick, and soon after a ``NOTIFY paydispatch_orders`` (sent when an order is created),
it claims up to ``batch`` due rows with one ``UPDATE ... FOR UPDATE SKIP LOCKED`` and enqueues
one message per ``message_size`` steps of an adapter and action. It claims for an adapter only
while fewer than ``max_queued`` messages wait in its queue (:mod:`dispatcher.sweeper.backlog`):
work the workers cannot start soon waits in the table, not in the broker past its lease.
Any number of sweepers may run: a row is claimed by one of them only.
Messages lost after the claim (a Redis restart, a crash) cost nothing but the lease's length.
It sends through :class:`dispatcher.steps.Steps` only: no actor, engine or worker is loaded here.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
import structlog

from dispatcher import metrics
from dispatcher.billing.webhook import SyncOutbox
from dispatcher.steps import Action, Steps, action_for
from dispatcher.sweeper.backlog import Backlog, broker_backlog
from dispatcher.sweeper.dbstats import DbStats
from orders.db import query
from orders.errors import TransientError
from orders.repository import OrderRepository
from orders.transfers import SyncTransfers

log = structlog.get_logger(__name__)

CHANNEL = "paydispatch_orders"


class Sweeper:
    def __init__(
        self,
        repo: OrderRepository,
        dispatch: Steps,
        adapters: list[str],
        *,
        batch: int = 500,
        lease: timedelta = timedelta(seconds=120),
        interval: float = 1.0,
        debounce: float = 0.02,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        outbox: SyncOutbox | None = None,
        stats: DbStats | None = None,
        message_size: int = 50,
        stats_interval: float = 5.0,
        transfers: SyncTransfers | None = None,
        backlog: Backlog | None = None,
        max_queued: int = 20,
    ) -> None:
        """``backlog`` tells how many messages wait in an adapter's queue (by default, read
        from ``dispatch``'s broker): no order of an adapter is claimed while ``max_queued`` or
        more do (:mod:`dispatcher.sweeper.backlog`)."""
        self.repo = repo
        self.transfers = transfers or SyncTransfers(repo)  # refunds and payouts
        self.dispatch = dispatch
        self.adapters = adapters
        self.batch = batch
        self.lease = lease
        self.interval = interval
        self.debounce = debounce
        self.clock = clock
        self.last_tick = 0.0
        self.outbox = outbox  # billing webhook events, when the webhook hook is on
        self.stats = stats  # database-derived gauges: refreshed by this one process
        self.message_size = message_size  # steps per broker message
        self.stats_interval = stats_interval
        self._last_stats = 0.0
        broker = getattr(dispatch, "broker", None)
        if backlog is None and broker is not None:
            backlog = broker_backlog(broker)
        self.backlog = backlog
        self.max_queued = max_queued

    def tick(self) -> int:
        """Claim one batch and send it; returns how many orders were sent."""
        adapters, limit = self._room()
        claimed = self.repo.claim(limit, self.lease, adapters=adapters) if adapters else []
        now = self.clock()
        sent = 0
        groups: dict[tuple[str, Action], list[tuple[UUID, UUID]]] = {}
        for order in claimed:
            action = action_for(order, now)
            if action is None or order.lease_token is None:
                self.repo.release(order, next_run_at=None)
                continue
            groups.setdefault((order.adapter, action), []).append((order.id, order.lease_token))
        for (adapter, action), steps in groups.items():
            for start in range(0, len(steps), self.message_size):
                self.dispatch.send_many(adapter, action, steps[start : start + self.message_size])
            metrics.CLAIMED.labels(adapter).inc(len(steps))
            sent += len(steps)
        sent += self.sweep_transfers()
        if self.outbox is not None:
            sent += self.sweep_outbox()
        self.last_tick = time.time()
        metrics.SWEEPER_LAST_TICK.set(self.last_tick)
        if self.stats is not None:
            self.stats.maybe_refresh()
        return sent

    def _room(self) -> tuple[list[str], int]:
        """The adapters whose queues have room for more steps, and how many to claim."""
        if self.backlog is None:
            return self.adapters, self.batch
        open_, room = [], 0
        for adapter in self.adapters:
            waiting = self.backlog(adapter)
            if waiting is None:
                open_.append(adapter)
                room = self.batch
            elif waiting < self.max_queued:
                open_.append(adapter)
                room = max(room, (self.max_queued - waiting) * self.message_size)
        if len(open_) < len(self.adapters):
            log.debug(
                "queues full; their orders wait", full=sorted(set(self.adapters) - set(open_))
            )
        return open_, min(self.batch, room)

    def sweep_transfers(self) -> int:
        """Claim due refunds and payouts and send one ``transfer`` step each (batched)."""
        claimed = self.transfers.claim(self.batch, self.lease, adapters=self.adapters)
        groups: dict[str, list[tuple[UUID, UUID]]] = {}
        for transfer in claimed:
            if transfer.lease_token is not None:
                groups.setdefault(transfer.adapter, []).append((transfer.id, transfer.lease_token))
        for adapter, steps in groups.items():
            for start in range(0, len(steps), self.message_size):
                batch = steps[start : start + self.message_size]
                self.dispatch.send_many(adapter, Action.TRANSFER, batch)
        return len(claimed) + self.sweep_refund_checks()

    def sweep_refund_checks(self) -> int:
        """Claim due refund checks and send one ``refund_check`` step each (batched). The
        token is fresh and unchecked: the check's due time is its lease."""
        claimed = self.transfers.claim_refund_checks(self.batch, self.lease, adapters=self.adapters)
        groups: dict[str, list[tuple[UUID, UUID]]] = {}
        for order_id, adapter in claimed:
            groups.setdefault(adapter, []).append((order_id, uuid.uuid4()))
        for adapter, steps in groups.items():
            for start in range(0, len(steps), self.message_size):
                batch = steps[start : start + self.message_size]
                self.dispatch.send_many(adapter, Action.REFUND_CHECK, batch)
        return len(claimed)

    def sweep_outbox(self) -> int:
        """Claim due billing webhook events and send one ``deliver`` message each."""
        assert self.outbox is not None
        claimed = self.outbox.claim(self.batch, self.lease)
        for event_id, token in claimed:
            self.dispatch.send_delivery(event_id, token)
        if time.monotonic() - self._last_stats >= self.stats_interval:
            self.outbox.update_metrics()
            self._last_stats = time.monotonic()
        return len(claimed)

    def run(self, stop: threading.Event, database_url: str) -> None:
        """Sweep until ``stop`` is set. Database or broker outages only pause the loop."""
        listener: psycopg.Connection[tuple[object, ...]] | None = None
        while not stop.is_set():
            try:
                if listener is None or listener.closed:
                    listener = psycopg.connect(database_url, autocommit=True)
                    listener.execute(query("listen_orders"))
                sent = self.tick()
                if sent >= self.batch:
                    continue  # more is due right now
                woke = self._wait(listener, stop)
                if woke and self.debounce:
                    stop.wait(self.debounce)  # let a burst of creates arrive, claim them together
            except (TransientError, psycopg.Error, OSError) as exc:
                log.warning("sweep failed; retrying", error=str(exc))
                if listener is not None:
                    listener.close()
                    listener = None
                stop.wait(min(self.interval, 1.0))
            except Exception as exc:  # a broker error must not kill the sweeper
                log.exception("sweep failed unexpectedly; retrying", error=str(exc))
                stop.wait(min(self.interval, 1.0))
        if listener is not None:
            listener.close()

    def _wait(
        self, listener: psycopg.Connection[tuple[object, ...]], stop: threading.Event
    ) -> bool:
        """Wait up to one interval for a notification; True when one came."""
        deadline = time.monotonic() + self.interval
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for _ in listener.notifies(timeout=min(left, 0.5), stop_after=1):
                return True
        return False

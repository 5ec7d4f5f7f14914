"""Gauges read from the database: orders per status, the oldest due order, overdue orders.

One process refreshes them (the sweeper, every ``interval`` seconds), so a scrape never costs a
query per worker; the other processes do not export them at all.
"""

from __future__ import annotations

import time

from psycopg.rows import DictRow

from dispatcher import metrics
from orders.repository import OrderRepository, database_errors
from orders.sql import query
from orders.status import OrderStatus


class DbStats:
    def __init__(self, repo: OrderRepository, interval: float = 15.0) -> None:
        self.repo = repo
        self.interval = interval
        self.refreshed = 0.0
        self._seen: set[tuple[str, str]] = set()

    def maybe_refresh(self) -> bool:
        if time.monotonic() - self.refreshed < self.interval:
            return False
        self.refresh()
        return True

    def refresh(self) -> None:
        counts = self.repo.status_counts()
        current = {(adapter, str(status)) for adapter, status in counts}
        for adapter, status in self._seen - current:
            metrics.ORDERS_BY_STATUS.labels(adapter, status).set(0)
        for (adapter, status), n in counts.items():
            metrics.ORDERS_BY_STATUS.labels(adapter, str(status)).set(n)
        adapters = {adapter for adapter, _ in counts}
        for adapter in adapters:
            metrics.NEEDS_REVIEW.labels(adapter).set(
                counts.get((adapter, OrderStatus.NEEDS_REVIEW), 0)
            )
        self._seen = current
        with database_errors(), self.repo.pool.connection() as conn:
            row: DictRow | None = conn.execute(query("due_stats")).fetchone()
            overdue = conn.execute(query("overdue_counts")).fetchall()
        metrics.OLDEST_DUE_AGE.set(float(row["oldest_due"]) if row else 0.0)
        late = {r["adapter"]: r["n"] for r in overdue}
        for adapter in adapters | set(late):
            metrics.OVERDUE_ORDERS.labels(adapter).set(late.get(adapter, 0))
        self.refreshed = time.monotonic()

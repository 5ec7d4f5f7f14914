"""Gauges read from the database: orders per status, the oldest due order, overdue orders, the
orders table's dead rows and last vacuum (from the server's statistics), and the server settings
that would keep it from being vacuumed.

One process refreshes them (the sweeper, every ``interval`` seconds), so a scrape never costs a
query per worker; the other processes do not export them at all.

None of the queries reads the finished orders, so a refresh costs the same with ten thousand
orders in the table as with ten million (``bench/long_table.py``). Orders per status come from
the counts the triggers of schema.sql keep: every statement that inserts, deletes or changes the
status of orders appends its signed changes to ``order_count_deltas``, and each refresh first
folds them into ``order_counts``. Appended rows were chosen over counter rows updated in place
because an update of the (adapter, status) row would make every create of that adapter wait for
the previous creator's commit, and sharded counter rows touched in different orders by batched
statements could deadlock; an append waits for no one, and the fold is done by one process.
Orders past their deadline are counted through a partial index that holds only active orders.
"""

from __future__ import annotations

import math
import time

from psycopg.rows import DictRow

from dispatcher import metrics
from orders.db import Connection, database_errors, query, schema, transaction
from orders.repository import OrderRepository
from orders.status import OrderStatus


def fold_counts(repo: OrderRepository) -> None:
    """Fold the appended count changes into ``order_counts``, so a read sums a few rows."""
    with transaction(repo.pool) as conn:
        conn.execute(query("fold_order_counts"))


def recount(conn: Connection) -> None:
    """Count the orders table again, e.g. after rows were loaded with triggers disabled.

    Runs in the caller's transaction and locks out writes to ``orders`` until it ends, so the
    counts and the table agree when it commits.
    """
    conn.execute(query("recount_orders"))


class DbStats:
    def __init__(self, repo: OrderRepository, interval: float = 15.0) -> None:
        self.repo = repo
        self.interval = interval
        self.refreshed = 0.0
        self._seen: set[tuple[str, str]] = set()
        self._held_seen: set[str] = set()

    def maybe_refresh(self) -> bool:
        if time.monotonic() - self.refreshed < self.interval:
            return False
        self.refresh()
        return True

    def refresh(self) -> None:
        fold_counts(self.repo)
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
            vacuum: DictRow | None = conn.execute(query("vacuum_stats")).fetchone()
            upkeep = schema.server_warnings(conn)
            withdrawals = conn.execute(query("withdrawal_stats")).fetchall()
        metrics.OLDEST_DUE_AGE.set(float(row["oldest_due"]) if row else 0.0)
        metrics.UPKEEP_PROBLEMS.set(len(upkeep))
        if vacuum is not None:
            metrics.ORDERS_DEAD_ROWS.set(vacuum["dead_rows"])
            age = vacuum["vacuum_age"]
            metrics.ORDERS_VACUUM_AGE.set(math.inf if age is None else float(age))
        self._withdrawals(withdrawals)
        late = {r["adapter"]: r["n"] for r in overdue}
        for adapter in adapters | set(late):
            metrics.OVERDUE_ORDERS.labels(adapter).set(late.get(adapter, 0))
        self.refreshed = time.monotonic()

    def _withdrawals(self, rows: list[DictRow]) -> None:
        """What open withdrawals hold per currency, and the oldest of each open status (issue
        #14); a currency or status with none open reads 0 rather than its last value."""
        held: dict[str, int] = dict.fromkeys(self._held_seen, 0)
        oldest = dict.fromkeys(("awaiting_approval", "approved", "sent"), 0.0)
        for r in rows:
            held[r["currency"]] = held.get(r["currency"], 0) + r["held"]
            oldest[r["status"]] = max(oldest.get(r["status"], 0.0), float(r["oldest_age"]))
        for currency, amount in held.items():
            metrics.WITHDRAWALS_HELD.labels(currency).set(amount)
        for status, age in oldest.items():
            metrics.WITHDRAWALS_OLDEST_AGE.labels(status).set(age)
        self._held_seen = set(held)

"""The sweeper's gauges on a long table (issue #15, item 1): counts kept by triggers, overdue
orders through a partial index, and neither reading the finished orders."""

from __future__ import annotations

import json
import math
import uuid
from datetime import timedelta
from typing import Any

import psycopg
from prometheus_client import REGISTRY
from psycopg.rows import dict_row

from dispatcher.sweeper import dbstats
from dispatcher.sweeper.dbstats import DbStats
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool, open_pool, query, schema
from orders.repository import OrderRepository, Write
from tests.dispatch_support import wait_until

S = OrderStatus


def table_counts(pool: Pool) -> dict[tuple[str, OrderStatus], int]:
    """What the gauges used to scan the table for."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT adapter, status, count(*) AS n FROM orders GROUP BY adapter, status"
        ).fetchall()
    return {(r["adapter"], S(r["status"])): r["n"] for r in rows}


def make(repo: OrderRepository, site: str, adapter: str = "sandbox") -> uuid.UUID:
    new = NewOrder(site=site, user_id="u1", money=Money(500, "EUR"), adapter=adapter)
    return repo.create(new).order.id


def deltas(pool: Pool) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) AS n FROM order_count_deltas").fetchone()
    return int(row["n"]) if row else -1


def plan(pool: Pool, sql: str) -> str:
    with pool.connection() as conn, conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL enable_seqscan = off")  # a tiny table would be scanned anyway
        rows = conn.execute(("EXPLAIN (FORMAT JSON) " + sql).encode()).fetchall()
    return json.dumps(rows[0]["QUERY PLAN"])


def test_counts_follow_creates_batches_transitions_claims_and_deletes(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    # Given orders created one by one, for two adapters,
    a, b, c, d = (make(repo, site) for _ in range(4))
    y = make(repo, site, adapter="yookassa")
    assert repo.status_counts() == table_counts(pool)
    # and a batch of creates in one statement (the API's path),
    with pool.connection() as conn:
        rows = [
            {
                "id": str(uuid.uuid4()),
                "site": site,
                "site_ref": None,
                "user_id": "u2",
                "amount": 100,
                "currency": "EUR",
                "adapter": "yookassa",
                "description": "",
                "return_url": None,
                "metadata": {},
                "expires_in": 3600.0,
                "idempotency_key": None,
                "request_hash": "h",
                "actor": "site",
            }
            for _ in range(3)
        ]
        conn.execute(query("create_orders"), {"rows": json.dumps(rows)}).fetchall()
    assert repo.status_counts() == table_counts(pool)
    # when a claim leases them (no status changes), a batch moves some and one is cancelled,
    assert repo.claim(limit=500, lease=timedelta(minutes=5))
    repo.write_many(
        [
            Write.move(a, S.NEW, S.SUBMITTING, actor="t"),
            Write.move(b, S.NEW, S.SUBMITTING, actor="t"),
            Write.move(y, S.NEW, S.CANCELLED, actor="t"),
        ]
    )
    repo.transition(a, S.SUBMITTING, S.AWAITING_PAYMENT, actor="t", psp_id=f"p-{a}")
    repo.transition(a, S.AWAITING_PAYMENT, S.PAID, actor="t")
    repo.cancel(c, site=site)
    # and one order is deleted,
    with pool.connection() as conn:
        conn.execute("DELETE FROM order_events WHERE order_id = %s", (d,))
        conn.execute("DELETE FROM orders WHERE id = %s", (d,))
    # then the counts are the table's, before and after the sweeper folds the deltas,
    counts = repo.status_counts()
    assert counts == table_counts(pool)
    assert counts[("sandbox", S.PAID)] >= 1
    assert deltas(pool) > 0
    dbstats.fold_counts(repo)
    assert deltas(pool) == 0
    assert repo.status_counts() == table_counts(pool)


def test_a_failed_transaction_changes_no_count(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    dbstats.fold_counts(repo)
    before = repo.status_counts()
    order_id = make(repo, site)

    # Given a status change rolled back with its transaction,
    async def rolled_back() -> None:
        async with repo.orders.pool.connection() as conn, conn.transaction(force_rollback=True):
            await repo.orders.transition(order_id, S.NEW, S.CANCELLED, actor="t", conn=conn)

    repo.run(rolled_back)
    # then only the create is counted.
    after = repo.status_counts()
    assert after[("sandbox", S.NEW)] == before.get(("sandbox", S.NEW), 0) + 1
    assert after == table_counts(pool)


def test_recount_restores_counts_after_rows_written_with_triggers_off(
    repo: OrderRepository, pool: Pool, site: str, database_url: str
) -> None:
    # Given an order inserted with the triggers off (a data-only restore, say),
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO orders (site, user_id, amount, currency, adapter, status, expires_at,"
            " request_hash, paid_at) VALUES (%s, 'u', 1, 'EUR', 'sandbox', 'paid', now(), 'h',"
            " now())",
            (site,),
        )
    assert repo.status_counts() != table_counts(pool)
    # when the orders are counted again, then the counts are the table's.
    with pool.connection() as conn, conn.transaction():
        dbstats.recount(conn)
    assert repo.status_counts() == table_counts(pool)


def test_status_counts_and_overdue_counts_do_not_read_the_finished_orders(pool: Pool) -> None:
    # The gauges cost the same with ten million finished orders as with ten thousand because
    # status_counts never touches orders, and overdue_counts reads only the active orders' index.
    assert '"orders"' not in plan(pool, query("status_counts"))
    overdue = plan(pool, query("overdue_counts"))
    assert "orders_active_expires_idx" in overdue
    assert "Seq Scan" not in overdue


def test_due_stats_reads_the_first_due_entry_even_when_statistics_expect_one(
    database_url: str,
) -> None:
    # Given a table whose statistics say almost every order is finished (next_run_at NULL),
    with (
        psycopg.connect(database_url, row_factory=dict_row) as conn,
        conn.transaction(force_rollback=True),
    ):
        conn.execute(
            "INSERT INTO orders (site, user_id, amount, currency, adapter, status, expires_at,"
            " request_hash, next_run_at) SELECT 'long', 'u', 1, 'EUR', 'sandbox',"
            " CASE WHEN g <= 20 THEN 'new' ELSE 'expired' END, now(), 'h',"
            " CASE WHEN g <= 20 THEN now() END FROM generate_series(1, 30000) AS g"
        )
        conn.execute("ANALYZE orders")

        def explain(sql: str) -> str:
            rows = conn.execute(("EXPLAIN (FORMAT JSON) " + sql).encode()).fetchall()
            return json.dumps(rows[0]["QUERY PLAN"])

        # then due_stats reads the first entry of the due index (PostgreSQL 15 plans a min()
        # over the due rows as a scan of all of them here, which made due_stats grow).
        due = explain(query("due_stats"))
        assert '"Limit"' in due
        assert "orders_due_idx" in due


def test_the_sweepers_gauges_export_counts_needs_review_and_overdue_orders(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    # Given an active order past its deadline and one in review, for an adapter of their own,
    adapter = "yookassa"
    late = make(repo, site, adapter=adapter)
    review = make(repo, site, adapter=adapter)
    repo.transition(review, S.NEW, S.SUBMITTING, actor="t")
    repo.transition(review, S.SUBMITTING, S.NEEDS_REVIEW, actor="t")
    with pool.connection() as conn:
        conn.execute(
            "UPDATE orders SET expires_at = now() - interval '10 minutes' WHERE id = %s", (late,)
        )
    # when the sweeper refreshes its gauges,
    DbStats(repo, interval=0).refresh()

    # then they say what the table holds.
    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    for (a, status), n in table_counts(pool).items():
        assert sample("paydispatch_orders", adapter=a, status=str(status)) == n
    expected_review = table_counts(pool)[(adapter, S.NEEDS_REVIEW)]
    assert sample("paydispatch_needs_review_orders", adapter=adapter) == expected_review
    with pool.connection() as conn:
        overdue: Any = conn.execute(
            "SELECT count(*) AS n FROM orders WHERE adapter = %s AND status IN"
            " ('new', 'submitting', 'awaiting_payment') AND expires_at < now() - interval"
            " '5 minutes'",
            (adapter,),
        ).fetchone()
    assert overdue["n"] >= 1
    assert sample("paydispatch_orders_past_deadline", adapter=adapter) == overdue["n"]


def test_truncating_orders_empties_the_counts(own_database_url: str) -> None:
    with psycopg.connect(own_database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "INSERT INTO orders (site, user_id, amount, currency, adapter, expires_at,"
            " request_hash) VALUES ('s', 'u', 1, 'EUR', 'sandbox', now(), 'h')"
        )
        assert conn.execute(query("status_counts")).fetchall()
        conn.execute("TRUNCATE orders CASCADE")
        assert conn.execute(query("status_counts")).fetchall() == []


def test_orders_are_vacuumed_by_dead_rows_and_db_check_sees_it(database_url: str) -> None:
    # A ten-million-row table left to the default scale factor waits for two million dead rows.
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'orders'").fetchone()
        assert row is not None
        assert row[0] == ["autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=10000"]
        with conn.transaction(force_rollback=True):
            conn.execute("ALTER TABLE orders RESET (autovacuum_vacuum_scale_factor)")
            result = schema.check(conn)
    assert "orders autovacuum_vacuum_threshold=10000" in " ".join(result.unexpected)
    assert any("autovacuum_vacuum_scale_factor=0" in line for line in result.missing)


def test_the_sweepers_gauges_say_how_many_dead_rows_orders_holds_and_when_it_was_vacuumed(
    own_database_url: str,
) -> None:
    def vacuum_stats() -> dict[str, Any]:
        with psycopg.connect(own_database_url, autocommit=True, row_factory=dict_row) as conn:
            row = conn.execute(query("vacuum_stats")).fetchone()
        assert row is not None
        return row

    def sample(name: str) -> float | None:
        return REGISTRY.get_sample_value(name)

    # Given orders rewritten twice (two dead versions each) in a table never vacuumed,
    with psycopg.connect(own_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (site, user_id, amount, currency, adapter, expires_at,"
            " request_hash) SELECT 's', 'u', 1, 'EUR', 'sandbox', now(), 'h'"
            " FROM generate_series(1, 50)"
        )
        conn.execute("UPDATE orders SET updated_at = now()")
        conn.execute("UPDATE orders SET updated_at = now()")
        conn.execute("SELECT pg_stat_force_next_flush()")
    wait_until(lambda: vacuum_stats()["dead_rows"] > 0, what="the dead rows in the statistics")
    pool = open_pool(own_database_url, max_size=2, name="tests-vacuum")
    try:
        with OrderRepository(pool, {"sandbox": timedelta(hours=1)}) as repo:
            # when the sweeper refreshes its gauges, they say so, and that it was never vacuumed;
            DbStats(repo, interval=0).refresh()
            dead = sample("paydispatch_db_orders_dead_rows")
            assert dead is not None
            assert dead > 0
            assert sample("paydispatch_db_orders_vacuum_age_seconds") == math.inf
            with psycopg.connect(own_database_url, autocommit=True) as conn:
                problems = len(schema.server_warnings(conn))  # autovacuum off on some servers
            assert sample("paydispatch_db_upkeep_problems") == problems
            # after a vacuum, the dead rows are gone and the vacuum is seconds old.
            with psycopg.connect(own_database_url, autocommit=True) as conn:
                conn.execute("VACUUM orders")
            wait_until(lambda: vacuum_stats()["vacuum_age"] is not None, what="the vacuum")
            DbStats(repo, interval=0).refresh()
            assert sample("paydispatch_db_orders_dead_rows") == 0
            age = sample("paydispatch_db_orders_vacuum_age_seconds")
            assert age is not None
            assert 0 <= age < 300
    finally:
        pool.close()

"""`paydispatch db archive`: finished orders nothing refers to leave the hot tables after the
retention, with their events; active, watched, recent and referenced orders stay."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from orders import Money, NewOrder, OrderStatus
from orders.archive import Progress, archive, parse_age
from orders.db import open_pool, query
from orders.errors import InvalidInput
from orders.repository import OrderRepository
from tests.conftest import cli
from tests.integration.conftest import ADAPTERS

S = OrderStatus
RETENTION = timedelta(days=90)
PATHS = {
    S.PAID: [S.SUBMITTING, S.AWAITING_PAYMENT, S.PAID],
    S.EXPIRED: [S.SUBMITTING, S.AWAITING_PAYMENT, S.EXPIRED],
    S.REJECTED: [S.SUBMITTING, S.AWAITING_PAYMENT, S.REJECTED],
    S.CANCELLED: [S.CANCELLED],
    S.FAILED: [S.SUBMITTING, S.FAILED],
    S.NEEDS_REVIEW: [S.SUBMITTING, S.NEEDS_REVIEW],
    S.AWAITING_PAYMENT: [S.SUBMITTING, S.AWAITING_PAYMENT],
}


@pytest.fixture
def repo(own_database_url: str) -> Iterator[OrderRepository]:
    pool = open_pool(own_database_url, max_size=4, name="archive-tests")
    with OrderRepository(pool, ADAPTERS) as repo:
        yield repo
    pool.close()


@pytest.fixture
def conn(own_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(own_database_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def order(repo: OrderRepository, to: OrderStatus, *, watched: bool = False) -> uuid.UUID:
    """An order taken to ``to`` through the state machine; ``watched``: left due for a late
    payment, as the dispatcher leaves expired, rejected and cancelled orders."""
    new = NewOrder(site="shop", user_id="u1", money=Money(500, "EUR"), adapter="sandbox")
    order_id = repo.create(new).order.id
    status = S.NEW
    for step in PATHS[to]:
        extra: dict[str, Any] = {"psp_id": f"p-{order_id}"} if step is S.AWAITING_PAYMENT else {}
        if step is to and watched:
            extra["next_run_at"] = datetime.now(UTC) + timedelta(hours=1)
        repo.transition(order_id, status, step, actor="t", **extra)
        status = step
    return order_id


def age(conn: psycopg.Connection[Any], *ids: uuid.UUID, days: int = 100) -> None:
    conn.execute(
        "UPDATE orders SET created_at = now() - make_interval(days => %(d)s),"
        " updated_at = now() - make_interval(days => %(d)s) WHERE id = ANY(%(ids)s)",
        {"d": days, "ids": list(ids)},
    )


def where(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> str:
    """Which table holds the order, and whether its events went with it."""
    hot = conn.execute("SELECT 1 FROM orders WHERE id = %s", (order_id,)).fetchone()
    cold = conn.execute("SELECT 1 FROM orders_archive WHERE id = %s", (order_id,)).fetchone()
    hot_events = conn.execute(
        "SELECT count(*) AS n FROM order_events WHERE order_id = %s", (order_id,)
    ).fetchone()
    cold_events = conn.execute(
        "SELECT count(*) AS n FROM order_events_archive WHERE order_id = %s", (order_id,)
    ).fetchone()
    assert hot_events is not None
    assert cold_events is not None
    if hot and not cold and hot_events["n"] > 0 and cold_events["n"] == 0:
        return "orders"
    if cold and not hot and hot_events["n"] == 0 and cold_events["n"] > 0:
        return "archive"
    raise AssertionError(f"order {order_id} is split: {hot=} {cold=} {hot_events} {cold_events}")


def test_old_finished_orders_move_with_their_events_and_the_rest_stay(
    repo: OrderRepository, conn: psycopg.Connection[Any]
) -> None:
    # Given old orders in every finished status,
    leaving = {
        str(s): order(repo, s) for s in (S.PAID, S.EXPIRED, S.REJECTED, S.CANCELLED, S.FAILED)
    }
    # and old ones that must stay: active, in review, watched for a late payment,
    staying = {
        "active": order(repo, S.AWAITING_PAYMENT),
        "review": order(repo, S.NEEDS_REVIEW),
        "watched": order(repo, S.EXPIRED, watched=True),
    }
    # credited to a wallet, named by a billing webhook event, by an operator's action,
    staying["wallet"] = credited = order(repo, S.PAID)
    conn.execute("INSERT INTO wallets (site, user_id, currency) VALUES ('shop', 'u1', 'EUR')")
    conn.execute(
        "INSERT INTO wallet_entries (site, user_id, currency, amount, balance_after, kind,"
        " order_id) VALUES ('shop', 'u1', 'EUR', 500, 500, 'topup', %s)",
        (credited,),
    )
    staying["webhook"] = hooked = order(repo, S.PAID)
    conn.execute(
        "INSERT INTO billing_outbox (order_id, event_type, body, status, give_up_at,"
        " delivered_at) VALUES (%s, 'order.paid', '{}', 'delivered', now(), now())",
        (hooked,),
    )
    staying["operator"] = resolved = order(repo, S.REJECTED)
    conn.execute("INSERT INTO operators (name, password_hash) VALUES ('alice', 'x')")
    conn.execute(
        "INSERT INTO operator_actions (operator, action, order_id, target, reason)"
        " VALUES ('alice', 'resolve', %s, 'order', 'checked with the bank')",
        (resolved,),
    )
    # or replaced by a buyer's switch (the replacement itself may leave),
    staying["replaced"] = replaced = order(repo, S.CANCELLED)
    replacement = conn.execute(
        "INSERT INTO orders (site, user_id, amount, currency, adapter, status, expires_at,"
        " request_hash, replaces, switch_depth) VALUES ('shop', 'u1', 500, 'EUR', 'sandbox',"
        " 'expired', now(), 'h', %s, 1) RETURNING id",
        (replaced,),
    ).fetchone()
    assert replacement is not None
    conn.execute(
        "INSERT INTO order_events (order_id, from_status, to_status, actor)"
        " VALUES (%s, NULL, 'new', 't')",
        (replacement["id"],),
    )
    leaving["replacement"] = replacement["id"]
    age(conn, *leaving.values(), *staying.values())
    # and a finished order too recent to leave,
    staying["recent"] = order(repo, S.PAID)
    counted_before = repo.status_counts()

    # when the archive runs with a 90-day retention, two orders per transaction,
    batches: list[Progress] = []
    with psycopg.connect(conn.info.dsn, autocommit=True) as own:
        done = archive(own, RETENTION, batch=2, on_batch=batches.append)

    # then exactly the old finished unreferenced orders left, each with all its events,
    assert {k: where(conn, i) for k, i in staying.items()} == dict.fromkeys(staying, "orders")
    assert {k: where(conn, i) for k, i in leaving.items()} == dict.fromkeys(leaving, "archive")
    assert done.archived == len(leaving)
    assert len(batches) > 1
    assert [b.archived for b in batches] == sorted(b.archived for b in batches)
    moved_events = conn.execute("SELECT count(*) AS n FROM order_events_archive").fetchone()
    assert moved_events is not None
    assert done.events == moved_events["n"]
    # and the archived rows are whole, and the counts dropped by the orders that left.
    row = conn.execute(
        "SELECT status, psp_id, archived_at FROM orders_archive WHERE id = %s", (leaving["paid"],)
    ).fetchone()
    assert row is not None
    assert (row["status"], row["psp_id"]) == ("paid", f"p-{leaving['paid']}")
    assert row["archived_at"] is not None
    counted_after = repo.status_counts()
    assert sum(counted_before.values()) - sum(counted_after.values()) == len(leaving)
    counted = sum(r["n"] for r in conn.execute(query("status_counts")).fetchall())
    assert counted == len(conn.execute("SELECT id FROM orders").fetchall())


def test_an_interrupted_run_is_resumed_by_the_next(
    repo: OrderRepository, conn: psycopg.Connection[Any]
) -> None:
    ids = [order(repo, S.EXPIRED) for _ in range(5)]
    age(conn, *ids)

    class Interrupted(Exception):
        pass

    def stop_after_first(progress: Progress) -> None:
        raise Interrupted

    # Given a run stopped after its first batch of two,
    with psycopg.connect(conn.info.dsn, autocommit=True) as own:
        with pytest.raises(Interrupted):
            archive(own, RETENTION, batch=2, on_batch=stop_after_first)
        assert [where(conn, i) for i in ids] == ["archive"] * 2 + ["orders"] * 3
        # when the archive runs again, then it moves the rest, and nothing twice.
        done = archive(own, RETENTION, batch=2)
    assert done.archived == 3
    assert [where(conn, i) for i in ids] == ["archive"] * 5


def test_an_order_locked_by_a_worker_is_left_for_the_next_run(
    repo: OrderRepository, conn: psycopg.Connection[Any]
) -> None:
    held, free = order(repo, S.REJECTED), order(repo, S.REJECTED)
    age(conn, held, free)
    with psycopg.connect(conn.info.dsn) as worker:
        worker.execute("SELECT 1 FROM orders WHERE id = %s FOR UPDATE", (held,))
        with psycopg.connect(conn.info.dsn, autocommit=True) as own:
            done = archive(own, RETENTION)
        worker.rollback()
    assert done.archived == 1
    assert (where(conn, held), where(conn, free)) == ("orders", "archive")


def test_the_archive_tables_hold_every_column_of_the_hot_tables(
    conn: psycopg.Connection[Any],
) -> None:
    # A migration that adds a column to orders or order_events must add it to the archive too.
    def columns(table: str) -> dict[str, str]:
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
            " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (table,),
        ).fetchall()
        return {r["attname"]: r["type"] for r in rows}

    for hot, cold in (("orders", "orders_archive"), ("order_events", "order_events_archive")):
        archived = columns(cold)
        assert {k: archived.get(k) for k in columns(hot)} == columns(hot)


def test_the_retention_is_days_hours_or_minutes_and_at_least_a_day() -> None:
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("36h") == timedelta(hours=36)
    assert parse_age("1440m") == timedelta(days=1)
    for bad in ("12h", "90", "d", "-3d", "1.5d", "3w"):
        with pytest.raises(InvalidInput) as refused:
            parse_age(bad)
        assert refused.value.field == "older_than"


def test_db_archive_command_reports_progress_and_refuses_a_short_retention(
    own_database_url: str, repo: OrderRepository, conn: psycopg.Connection[Any]
) -> None:
    ids = [order(repo, S.CANCELLED) for _ in range(3)]
    age(conn, *ids)
    refused = cli(own_database_url, "db", "archive", "--older-than", "2h")
    assert refused.returncode == 2
    assert "at least 1 day" in refused.stdout
    missing = cli(own_database_url, "db", "archive")
    assert missing.returncode == 2
    assert [where(conn, i) for i in ids] == ["orders"] * 3
    result = cli(own_database_url, "db", "archive", "--older-than", "90d", "--batch", "2")
    assert result.returncode == 0, result.stderr
    assert "checked 2 orders (up to number 2), archived 2 with 4 events" in result.stdout
    assert "done: 3 finished orders older than 90d" in result.stdout
    assert [where(conn, i) for i in ids] == ["archive"] * 3

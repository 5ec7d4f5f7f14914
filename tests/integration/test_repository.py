"""The order repository against a real PostgreSQL: create, read, list, cancel, transitions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import psycopg
import pytest

from orders import (
    FieldTooLong,
    IdempotencyConflict,
    InvalidAmount,
    InvalidInput,
    InvalidTransition,
    Money,
    NewOrder,
    Order,
    OrderNotFound,
    OrderStatus,
    StaleOrder,
    UnknownAdapter,
)
from orders.db import AsyncConnection, Pool
from orders.repository import OrderRepository

S = OrderStatus
T = TypeVar("T")


def new_order(site: str, **changes: Any) -> NewOrder:
    base = NewOrder(
        site=site, user_id="u1", money=Money(1999, "USD"), adapter="sandbox", description="top-up"
    )
    return replace(base, **changes)


def count(pool: Pool, table: str, site: str) -> int:
    with pool.connection() as conn:
        if table == "orders":
            row = conn.execute("SELECT count(*) AS n FROM orders WHERE site = %s", (site,))
        else:
            row = conn.execute(
                "SELECT count(*) AS n FROM order_events e JOIN orders o ON o.id = e.order_id "
                "WHERE o.site = %s",
                (site,),
            )
        result = row.fetchone()
        assert result is not None
        return int(result["n"])


def race(workers: list[Callable[[], T]]) -> list[T | Exception]:
    """Run the callables at the same moment from separate threads."""
    barrier = threading.Barrier(len(workers))

    def start(fn: Callable[[], T]) -> T | Exception:
        barrier.wait(timeout=10)
        try:
            return fn()
        except Exception as exc:  # the outcome is what the test inspects
            return exc

    with ThreadPoolExecutor(len(workers)) as pool:
        return list(pool.map(start, workers))


def awaiting(repo: OrderRepository, site: str, **changes: Any) -> Any:
    order = repo.create(new_order(site, **changes)).order
    repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test")
    return repo.transition(
        order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=f"psp-{order.id}"
    )


def test_create_saves_a_new_due_order_and_its_first_event(repo: OrderRepository, site: str) -> None:
    result = repo.create(new_order(site, site_ref="A-1", metadata={"plan": "gold"}))
    order = result.order
    assert result.created
    assert order.status is S.NEW
    assert order.money == Money(1999, "USD")
    assert order.metadata == {"plan": "gold"}
    assert order.next_run_at is not None
    assert order.expires_at > order.created_at
    events = repo.events(order.id)
    assert [(e.from_status, e.to_status) for e in events] == [(None, S.NEW)]


def test_replay_with_same_site_ref_returns_the_same_order(repo: OrderRepository, site: str) -> None:
    first = repo.create(new_order(site, site_ref="A-2"))
    second = repo.create(new_order(site, site_ref="A-2"))
    assert second.order.id == first.order.id
    assert not second.created
    assert count(repo.pool, "orders", site) == 1


def test_same_site_ref_with_a_different_body_is_a_conflict_and_writes_nothing(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    repo.create(new_order(site, site_ref="A-3"))
    with pytest.raises(IdempotencyConflict, match="site_ref already used"):
        repo.create(new_order(site, site_ref="A-3", money=Money(2000, "USD")))
    assert count(pool, "orders", site) == 1
    assert count(pool, "events", site) == 1


def test_idempotency_key_replay_and_conflict(repo: OrderRepository, site: str) -> None:
    first = repo.create(new_order(site, idempotency_key="key-1"))
    again = repo.create(new_order(site, idempotency_key="key-1"))
    assert again.order.id == first.order.id
    assert not again.created
    with pytest.raises(IdempotencyConflict, match="Idempotency-Key already used"):
        repo.create(new_order(site, idempotency_key="key-1", user_id="someone-else"))


def test_same_key_in_another_site_is_another_order(repo: OrderRepository, site: str) -> None:
    a = repo.create(new_order(site, idempotency_key="shared"))
    b = repo.create(new_order(site + "-b", idempotency_key="shared"))
    assert a.order.id != b.order.id


def test_concurrent_creates_with_one_key_make_one_order(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    outcomes = race([lambda: repo.create(new_order(site, idempotency_key="burst"))] * 8)
    ids = {o.order.id for o in outcomes if not isinstance(o, Exception)}
    assert len(ids) == 1
    assert sum(1 for o in outcomes if not isinstance(o, Exception) and o.created) == 1
    assert count(pool, "orders", site) == 1


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"money": Money(0, "USD")}, InvalidAmount),
        ({"money": Money(-100, "USD")}, InvalidAmount),
        ({"adapter": "nowhere"}, UnknownAdapter),
        ({"description": "x" * 1001}, FieldTooLong),
        ({"site_ref": "r" * 129}, FieldTooLong),
        ({"return_url": "ftp://example.com"}, InvalidInput),
    ],
)
def test_bad_input_raises_its_own_error_and_writes_nothing(
    repo: OrderRepository, pool: Pool, site: str, changes: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        repo.create(new_order(site, **changes))
    assert count(pool, "orders", site) == 0


def test_get_hides_orders_of_other_sites(repo: OrderRepository, site: str) -> None:
    order = repo.create(new_order(site)).order
    assert repo.get(order.id, site=site).id == order.id
    with pytest.raises(OrderNotFound):
        repo.get(order.id, site="another-site")


def test_list_pages_through_every_order_newest_first(repo: OrderRepository, site: str) -> None:
    made = [repo.create(new_order(site, site_ref=f"L-{i}")).order for i in range(7)]
    seen = []
    cursor = None
    pages = 0
    while True:
        page = repo.list_orders(site=site, limit=3, cursor=cursor)
        seen.extend(page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert [o.id for o in seen] == [
        o.id for o in sorted(made, key=lambda o: (o.created_at, o.id), reverse=True)
    ]


def test_list_filters_by_status_and_user(repo: OrderRepository, site: str) -> None:
    keep = repo.create(new_order(site, user_id="alice")).order
    repo.create(new_order(site, user_id="bob"))
    gone = repo.create(new_order(site, user_id="alice")).order
    repo.cancel(gone.id)
    page = repo.list_orders(site=site, user_id="alice", status=S.NEW)
    assert [o.id for o in page.items] == [keep.id]
    assert page.next_cursor is None


@pytest.mark.parametrize(("limit", "cursor"), [(0, None), (501, None), (10, "not-a-cursor")])
def test_list_refuses_bad_paging(
    repo: OrderRepository, site: str, limit: int, cursor: str | None
) -> None:
    with pytest.raises(InvalidInput):
        repo.list_orders(site=site, limit=limit, cursor=cursor)


def test_cancel_is_idempotent_and_refused_once_paid(repo: OrderRepository, site: str) -> None:
    order = repo.create(new_order(site)).order
    cancelled = repo.cancel(order.id, reason="buyer left")
    assert cancelled.status is S.CANCELLED
    assert cancelled.next_run_at is None
    assert repo.cancel(order.id).status is S.CANCELLED
    assert len(repo.events(order.id)) == 2

    paid = awaiting(repo, site)
    repo.transition(paid.id, S.AWAITING_PAYMENT, S.PAID, actor="test")
    with pytest.raises(InvalidTransition, match="the order is paid"):
        repo.cancel(paid.id)


def test_cas_race_has_exactly_one_winner_and_one_event(repo: OrderRepository, site: str) -> None:
    # Given an order awaiting payment,
    order = awaiting(repo, site)
    # when one writer marks it paid and another rejected at the same moment,
    outcomes = race(
        [
            lambda: repo.transition(order.id, S.AWAITING_PAYMENT, S.PAID, actor="poller"),
            lambda: repo.transition(order.id, S.AWAITING_PAYMENT, S.REJECTED, actor="callback"),
        ]
    )
    # then exactly one wins, the other learns it was too late, and one event records the move.
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    losers = [o for o in outcomes if isinstance(o, Exception)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], StaleOrder)
    moves = [e for e in repo.events(order.id) if e.from_status is S.AWAITING_PAYMENT]
    assert len(moves) == 1
    assert moves[0].to_status == repo.get(order.id).status == winners[0].status


def test_forbidden_transition_is_refused_before_the_database(
    repo: OrderRepository, site: str
) -> None:
    order = repo.create(new_order(site)).order
    with pytest.raises(InvalidTransition):
        repo.transition(order.id, S.NEW, S.PAID, actor="test")
    assert repo.get(order.id).status is S.NEW
    assert len(repo.events(order.id)) == 1


def test_database_trigger_refuses_a_forbidden_move_by_raw_sql(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    order = repo.create(new_order(site)).order
    with pool.connection() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "UPDATE orders SET status = 'paid', paid_at = now() WHERE id = %s", (order.id,)
        )
    assert repo.get(order.id).status is S.NEW


def test_a_raising_hook_rolls_the_transition_back(repo: OrderRepository, site: str) -> None:
    order = awaiting(repo, site)

    async def hook(tx: AsyncConnection, paid: Order) -> None:
        raise RuntimeError("wallet unavailable")

    with pytest.raises(RuntimeError, match="wallet unavailable"):
        repo.run(
            repo.orders.transition(order.id, S.AWAITING_PAYMENT, S.PAID, actor="t", within=hook)
        )
    after = repo.get(order.id)
    assert after.status is S.AWAITING_PAYMENT
    assert after.paid_at is None
    assert [e.to_status for e in repo.events(order.id)][-1] is S.AWAITING_PAYMENT


def test_paid_sets_paid_at_and_clears_next_run(repo: OrderRepository, site: str) -> None:
    order = awaiting(repo, site)
    paid = repo.transition(order.id, S.AWAITING_PAYMENT, S.PAID, actor="test", detail={"n": 1})
    assert paid.paid_at is not None
    assert paid.next_run_at is None
    assert repo.events(order.id)[-1].detail == {"n": 1}


def test_transition_of_a_missing_order_is_not_found(repo: OrderRepository) -> None:
    with pytest.raises(OrderNotFound):
        repo.transition(uuid.uuid4(), S.NEW, S.SUBMITTING, actor="test")


def test_transition_refuses_columns_outside_the_whitelist(repo: OrderRepository, site: str) -> None:
    order = repo.create(new_order(site)).order
    with pytest.raises(TypeError, match="cannot set"):
        repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test", amount=1)

"""Many step ends in one statement: transitions and lease releases, each succeeding on its own."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from orders import Money, NewOrder, Order, OrderNotFound, OrderStatus, StaleOrder
from orders.db import Pool
from orders.errors import InvalidTransition
from orders.repository import SETTABLE, OrderRepository, Write

S = OrderStatus
LEASE = timedelta(minutes=5)


def leased(repo: OrderRepository, site: str, n: int) -> list[Order]:
    """``n`` new orders of ``site``, claimed (the claim returns every due order of any site)."""
    ids = {
        repo.create(
            NewOrder(site=site, user_id=f"u{i}", money=Money(100 + i, "EUR"), adapter="sandbox")
        ).order.id
        for i in range(n)
    }
    claimed: list[Order] = []
    while len(claimed) < n:
        batch = repo.claim(limit=500, lease=LEASE)
        assert batch, "the new orders were not claimable"
        claimed += [o for o in batch if o.id in ids]
    return claimed


def events(pool: Pool, order_id: uuid.UUID) -> list[tuple[str | None, str, str]]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT from_status, to_status, actor FROM order_events "
            "WHERE order_id = %s ORDER BY id",
            (order_id,),
        ).fetchall()
    return [(r["from_status"], r["to_status"], r["actor"]) for r in rows]


def test_a_batch_mixes_transitions_and_releases(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    a, b, c = leased(repo, site, 3)
    later = datetime.now(UTC) + timedelta(minutes=7)
    results = repo.write_many(
        [
            Write.move(
                a.id, S.NEW, S.SUBMITTING, actor="w", lease_token=a.lease_token, keep_lease=True,
                attempts=1,
            ),
            Write.release(b, next_run_at=later, polls=3, last_error="slow"),
            Write.move(
                c.id, S.NEW, S.CANCELLED, actor="site", detail={"reason": "changed my mind"}
            ),
        ]
    )  # fmt: skip
    moved_a, released_b, cancelled_c = results
    assert isinstance(moved_a, Order)
    assert isinstance(released_b, Order)
    assert isinstance(cancelled_c, Order)
    # a: moved, lease kept, column set, one event
    assert moved_a.status is S.SUBMITTING
    assert moved_a.attempts == 1
    assert moved_a.lease_token == a.lease_token
    assert events(pool, a.id)[-1] == ("new", "submitting", "w")
    # b: status unchanged, lease back, columns set, no event
    assert released_b.status is S.NEW
    assert released_b.lease_token is None
    assert released_b.polls == 3
    assert released_b.last_error == "slow"
    assert released_b.next_run_at == later
    assert events(pool, b.id) == [(None, "new", "site")]
    # c: leaving the active statuses clears next_run_at and the lease
    assert cancelled_c.status is S.CANCELLED
    assert cancelled_c.next_run_at is None
    assert cancelled_c.lease_token is None
    with pool.connection() as conn:
        detail = conn.execute(
            "SELECT detail FROM order_events WHERE order_id = %s AND to_status = 'cancelled'",
            (c.id,),
        ).fetchone()
    assert detail is not None
    assert detail["detail"] == {"reason": "changed my mind"}


def test_misses_say_why_and_do_not_stop_the_others(repo: OrderRepository, site: str) -> None:
    a, b, c, d = leased(repo, site, 4)
    stolen = repo.write_many([Write.release(b, next_run_at=None)])[0]
    assert isinstance(stolen, Order)
    results = repo.write_many(
        [
            Write.move(a.id, S.NEW, S.SUBMITTING, actor="w", lease_token=a.lease_token),
            Write.release(b, next_run_at=None),  # the lease was given back already
            Write.move(c.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="w"),  # c is new
            Write.move(uuid.uuid4(), S.NEW, S.SUBMITTING, actor="w"),
            Write.move(d.id, S.NEW, S.SUBMITTING, actor="w", lease_token=uuid.uuid4()),
        ]
    )
    assert isinstance(results[0], Order)
    assert results[0].status is S.SUBMITTING
    assert isinstance(results[1], StaleOrder)
    assert "no longer held" in str(results[1])
    assert isinstance(results[2], StaleOrder)
    assert "is new, not submitting" in str(results[2])
    assert isinstance(results[3], OrderNotFound)
    assert isinstance(results[4], StaleOrder)
    assert "no longer held" in str(results[4])


def test_two_writes_for_one_order_in_a_batch_have_one_winner(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    (a,) = leased(repo, site, 1)
    results = repo.write_many(
        [
            Write.move(a.id, S.NEW, S.SUBMITTING, actor="first", lease_token=a.lease_token),
            Write.move(a.id, S.NEW, S.CANCELLED, actor="second", lease_token=a.lease_token),
        ]
    )
    winners = [r for r in results if isinstance(r, Order)]
    assert len(winners) == 1
    assert sum(isinstance(r, StaleOrder) for r in results) == 1
    assert len(events(pool, a.id)) == 2  # created + the winner's move


def test_a_write_the_database_refuses_does_not_sink_the_batch(
    repo: OrderRepository, site: str
) -> None:
    a, b = leased(repo, site, 2)
    results = repo.write_many(
        [
            Write.release(a, next_run_at=None, polls=-1),  # CHECK (polls >= 0)
            Write.release(b, next_run_at=None, polls=2),
        ]
    )
    assert isinstance(results[0], Exception)
    assert "polls" in str(results[0])
    assert isinstance(results[1], Order)
    assert results[1].polls == 2


def test_writes_are_checked_before_the_database(repo: OrderRepository) -> None:
    with pytest.raises(InvalidTransition):
        Write.move(uuid.uuid4(), S.NEW, S.PAID, actor="w")
    with pytest.raises(TypeError, match="amount"):
        Write.move(uuid.uuid4(), S.NEW, S.SUBMITTING, actor="w", amount=1)
    assert repo.write_many([]) == []


def test_get_many_keeps_the_order_asked_and_names_the_missing(
    repo: OrderRepository, site: str
) -> None:
    a, b = leased(repo, site, 2)
    missing = uuid.uuid4()
    found = repo.get_many([b.id, missing, a.id])
    assert [o.id for o in found if isinstance(o, Order)] == [b.id, a.id]
    assert isinstance(found[1], OrderNotFound)


def test_every_settable_column_is_written_by_a_release(repo: OrderRepository, site: str) -> None:
    # Given a claimed order and a value for every column a step may set,

    (order,) = leased(repo, site, 1)
    later = datetime.now(UTC) + timedelta(minutes=9)
    values = {
        "psp_id": "psp-77",
        "pay_url": "https://psp.example/pay/77",
        "attempts": 4,
        "polls": 5,
        "errors": 3,
        "expires_at": later + timedelta(hours=1),
        "last_error": "slow",
        "next_run_at": later,
        "psp_payment_id": "pi_77",
    }
    assert set(values) == set(SETTABLE), "give this test a value for every settable column"
    # when one release sets them all,
    (written,) = repo.write_many([Write.release(order, **values)])
    # then each is stored (a column the statement forgets would keep its old value).
    assert isinstance(written, Order)
    stored = repo.get(order.id)
    assert {name: getattr(stored, name) for name in values} == values

"""``settle.apply`` through the real async repository: the paid transaction with its hook is
one, and all-or-nothing; every other move is coalesced with the writes around it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dispatcher import settle
from dispatcher.settle import Decision
from orders import Money, NewOrder, OrderStatus
from orders.db import AsyncConnection, Pool
from orders.errors import StaleOrder
from orders.model import Order, PaidEvent
from orders.repository import OrderRepository

S = OrderStatus


def awaiting(repo: OrderRepository, site: str) -> Order:
    """An order with an invoice, as the engine leaves it before the payment is seen."""
    new = NewOrder(site=site, user_id="buyer", money=Money(1500, "USD"), adapter="sandbox")
    order = repo.create(new).order
    repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test", next_run_at=None)
    return repo.transition(
        order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=f"inv-{order.id}"
    )


def events(pool: Pool, order: Order) -> list[tuple[str | None, str, str]]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT from_status, to_status, actor FROM order_events"
            " WHERE order_id = %s ORDER BY id",
            (order.id,),
        ).fetchall()
    return [(row["from_status"], row["to_status"], row["actor"]) for row in rows]


class Hook:
    """A billing hook that writes a row in the paid transaction (then refuses, if told to)."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.events: list[PaidEvent] = []
        self.seen: list[str] = []

    async def __call__(self, tx: AsyncConnection, event: PaidEvent) -> None:
        self.events.append(event)
        cursor = await tx.execute("SELECT status FROM orders WHERE id = %s", (event.order.id,))
        row = await cursor.fetchone()
        assert row is not None
        self.seen.append(row["status"])  # the move is visible inside its own transaction
        await tx.execute(
            "UPDATE orders SET last_error = 'written by the hook' WHERE id = %s", (event.order.id,)
        )
        if self.refuse:
            raise RuntimeError("wallet unavailable")


def paid(order: Order) -> Decision:
    return Decision(S.PAID, {"psp_status": "succeeded", "late": False})


def test_a_paid_move_runs_the_hook_once_in_its_transaction_with_the_paid_event(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    # Given an order awaiting payment and a hook that writes in the paid transaction,
    order = awaiting(repo, site)
    hook = Hook()

    # when the payment is applied with the hook,
    moved = repo.run(settle.apply(repo.orders, order, paid(order), actor="worker", hook=hook))

    # then the hook ran once, saw the order paid, and was told where the payment came from;
    assert hook.events == [PaidEvent(moved, previous=S.AWAITING_PAYMENT, actor="worker")]
    assert hook.events[0].late is False
    assert hook.seen == ["paid"]
    # and the move, its event and the hook's write were committed together.
    after = repo.get(order.id)
    assert (after.status, after.last_error) == (S.PAID, "written by the hook")
    assert events(pool, order)[-1] == ("awaiting_payment", "paid", "worker")


def test_a_failing_hook_leaves_nothing_written(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    # Given an order awaiting payment and a hook that writes, then refuses,
    order = awaiting(repo, site)
    before = events(pool, order)
    hook = Hook(refuse=True)

    # when the payment is applied,
    with pytest.raises(RuntimeError, match="wallet unavailable"):
        repo.run(settle.apply(repo.orders, order, paid(order), actor="worker", hook=hook))

    # then neither the move, nor its event, nor the hook's own write is there.
    assert len(hook.events) == 1
    after = repo.get(order.id)
    assert (after.status, after.paid_at, after.last_error) == (S.AWAITING_PAYMENT, None, None)
    assert events(pool, order) == before


def test_a_failing_also_leaves_the_move_unwritten(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    # Given an order a person is resolving, whose record of the action fails,
    order = awaiting(repo, site)
    order = repo.transition(order.id, S.AWAITING_PAYMENT, S.NEEDS_REVIEW, actor="test")
    before = events(pool, order)

    async def record(tx: AsyncConnection, moved: Order) -> None:
        await tx.execute("SELECT 1")
        raise RuntimeError("the console's record failed")

    # when the resolution is applied with it,
    with pytest.raises(RuntimeError, match="record failed"):
        repo.run(
            settle.apply(
                repo.orders,
                order,
                Decision(S.REJECTED, {"reason": "test"}),
                actor="ops:alice",
                hook=None,
                use_lease=False,
                also=record,
            )
        )

    # then the order is still in review, with no new event.
    assert repo.get(order.id).status is S.NEEDS_REVIEW
    assert events(pool, order) == before


def test_moves_applied_together_each_get_their_own_result(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    # Given orders awaiting payment, one of them already moved by someone else,
    orders = [awaiting(repo, site) for _ in range(6)]
    repo.transition(orders[0].id, S.AWAITING_PAYMENT, S.CANCELLED, actor="site")
    hook = Hook()
    rejected = Decision(S.REJECTED, {"psp_status": "declined"})

    async def together() -> list[Any]:
        moves = [
            settle.apply(
                repo.orders,
                order,
                paid(order) if i % 2 else rejected,
                actor="worker",
                hook=hook,
                use_lease=False,
            )
            for i, order in enumerate(orders)
        ]
        return await asyncio.gather(*moves, return_exceptions=True)

    # when all of their decisions are applied at once (paid ones with the hook),
    results = repo.run(together())

    # then the stale one misses on its own, and every other is written as decided.
    assert isinstance(results[0], StaleOrder)
    assert [r.status for r in results[1:]] == [S.PAID, S.REJECTED, S.PAID, S.REJECTED, S.PAID]
    assert sorted(e.order.id for e in hook.events) == sorted(o.id for o in orders[1::2])
    assert [repo.get(o.id).status for o in orders] == [
        S.CANCELLED, S.PAID, S.REJECTED, S.PAID, S.REJECTED, S.PAID,
    ]  # fmt: skip

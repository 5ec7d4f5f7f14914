"""The async repository (``Orders``) on its pool, and its synchronous face from threads."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
import pytest

from orders import Money, NewOrder, Order, OrderStatus, StaleOrder
from orders.db import AsyncConnection, Pool, atransaction, open_async_pool, query
from orders.repository import OrderRepository, Orders, Write
from tests.conftest import ROOT
from tests.integration.conftest import ADAPTERS

S = OrderStatus
T = TypeVar("T")


def on_orders(url: str, work: Callable[[Orders], Awaitable[T]]) -> T:
    """Run ``work`` with an ``Orders`` on a pool of a fresh event loop, then close the pool."""

    async def go() -> T:
        pool = await open_async_pool(url, max_size=4, name="test-orders")
        try:
            return await work(Orders(pool, ADAPTERS))
        finally:
            await pool.close()

    return asyncio.run(go())


def conninfo(pool: Pool) -> str:
    info = pool.conninfo
    return info() if callable(info) else info


def new_order(site: str, **changes: Any) -> NewOrder:
    return NewOrder(
        **(
            {"site": site, "user_id": "u1", "money": Money(1500, "EUR"), "adapter": "sandbox"}
            | changes
        )
    )


async def awaiting(orders: Orders, site: str) -> Order:
    order = (await orders.create(new_order(site))).order
    await orders.transition(order.id, S.NEW, S.SUBMITTING, actor="test")
    return await orders.transition(order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test")


def test_a_raising_within_rolls_back_the_transition_and_its_event(pool: Pool, site: str) -> None:
    seen: list[tuple[str, int]] = []

    async def hook(tx: AsyncConnection, paid: Order) -> None:
        # The update and its event row are already written, in this transaction...
        cursor = await tx.execute(query("list_events"), {"order_id": paid.id})
        seen.append((str(paid.status), len(await cursor.fetchall())))
        raise RuntimeError("wallet unavailable")

    async def work(orders: Orders) -> tuple[Order, int]:
        order = await awaiting(orders, site)
        with pytest.raises(RuntimeError, match="wallet unavailable"):
            await orders.transition(order.id, S.AWAITING_PAYMENT, S.PAID, actor="t", within=hook)
        return await orders.get(order.id), len(await orders.events(order.id))

    after, events = on_orders(conninfo(pool), work)
    # ...and the hook's failure took both back.
    assert seen == [("paid", 4)]
    assert after.status is S.AWAITING_PAYMENT
    assert after.paid_at is None
    assert events == 3


def test_a_within_that_succeeds_commits_with_the_move(pool: Pool, site: str) -> None:
    async def hook(tx: AsyncConnection, paid: Order) -> None:
        await tx.execute(query("poll_soon"), {"ids": [paid.id], "statuses": [""], "quiet": [0.0]})

    async def work(orders: Orders) -> Order:
        order = await awaiting(orders, site)
        await orders.transition(order.id, S.AWAITING_PAYMENT, S.PAID, actor="t", within=hook)
        return await orders.get(order.id)

    assert on_orders(conninfo(pool), work).status is S.PAID


async def cancel_then_fail(orders: Orders, order: Order, tx: AsyncConnection) -> None:
    async with atransaction(None, tx) as inner:
        await orders.transition(order.id, S.NEW, S.CANCELLED, actor="t", conn=inner)
        raise RuntimeError("inner")


def test_a_write_in_a_callers_transaction_is_a_savepoint(pool: Pool, site: str) -> None:
    # Given two orders and one transaction of the caller's,
    async def work(orders: Orders) -> tuple[Order, Order]:
        a = (await orders.create(new_order(site))).order
        b = (await orders.create(new_order(site))).order
        async with atransaction(orders.pool) as tx:
            # when one write in it misses (a stale expectation) and another succeeds,
            with pytest.raises(StaleOrder):
                await orders.transition(b.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="t", conn=tx)
            await orders.transition(a.id, S.NEW, S.CANCELLED, actor="t", conn=tx)
            # and a savepoint of its own is rolled back,
            with pytest.raises(RuntimeError, match="inner"):
                await cancel_then_fail(orders, b, tx)
        return await orders.get(a.id), await orders.get(b.id)

    a, b = on_orders(conninfo(pool), work)
    # then the caller's transaction still commits what it did outside the failed savepoint.
    assert a.status is S.CANCELLED
    assert b.status is S.NEW


def test_writes_of_concurrent_steps_are_one_statement_each_with_its_own_result(
    pool: Pool, site: str
) -> None:
    # Given ten orders awaiting payment,
    async def work(orders: Orders) -> tuple[list[Any], int, int]:
        made = [await awaiting(orders, site) for _ in range(10)]
        batches = orders.writes.batches
        # when eleven steps end at once: eight pay, one expects a status its order is not in,
        # one rejects an order another step of the same batch pays, and one expires,
        writes = [
            orders.transition(o.id, S.AWAITING_PAYMENT, S.PAID, actor="step") for o in made[:8]
        ]
        writes.append(orders.transition(made[8].id, S.NEW, S.CANCELLED, actor="step"))
        writes.append(orders.transition(made[0].id, S.AWAITING_PAYMENT, S.REJECTED, actor="late"))
        writes.append(orders.transition(made[9].id, S.AWAITING_PAYMENT, S.EXPIRED, actor="step"))
        results = await asyncio.gather(*writes, return_exceptions=True)
        return results, orders.writes.batches - batches, len(await orders.events(made[0].id))

    results, batches, events_of_first = on_orders(conninfo(pool), work)
    # then they went out as one statement and each step has its own answer.
    assert batches == 1
    assert [r.status for r in results[1:8]] == [S.PAID] * 7
    assert isinstance(results[8], StaleOrder)
    assert results[10].status is S.EXPIRED
    # Of the two moves of the first order exactly one won; the other learnt it was too late.
    first = [r for r in (results[0], results[9]) if isinstance(r, Order)]
    assert len(first) == 1
    assert first[0].status in {S.PAID, S.REJECTED}
    assert sum(isinstance(r, StaleOrder) for r in (results[0], results[9])) == 1
    assert events_of_first == 4  # new, submitting, awaiting and the one move that won


def test_concurrent_reads_and_creates_on_the_loop_are_coalesced(pool: Pool, site: str) -> None:
    async def work(orders: Orders) -> tuple[int, int, list[Order]]:
        created = await asyncio.gather(
            *(orders.create(new_order(site, site_ref=f"r{i}")) for i in range(5))
        )
        read = await asyncio.gather(*(orders.get(c.order.id) for c in created))
        return orders.creates.batches, orders.reads.batches, read

    creates, reads, read = on_orders(conninfo(pool), work)
    assert (creates, reads) == (1, 1)
    assert sorted(o.site_ref or "" for o in read) == [f"r{i}" for i in range(5)]


def watched_later(pool: Pool, *orders: Order) -> None:
    """As the dispatcher leaves an order awaiting payment: its next poll ahead, looked at a
    while ago."""
    with pool.connection() as conn:
        conn.execute(
            "UPDATE orders SET next_run_at = now() + interval '1 hour',"
            " updated_at = now() - interval '1 hour' WHERE id = ANY(%s)",
            [[o.id for o in orders]],
        )


def test_concurrent_pulls_are_one_statement_each_with_its_own_result(pool: Pool, site: str) -> None:
    # Given two orders awaiting payment with their next poll an hour away, and a new one,
    async def made(orders: Orders) -> list[Order]:
        fresh = (await orders.create(new_order(site))).order
        return [await awaiting(orders, site), await awaiting(orders, site), fresh]

    a, b, fresh = on_orders(conninfo(pool), made)
    watched_later(pool, a, b)

    # when four pages pull at once (one of them twice),
    async def pull(orders: Orders) -> tuple[list[bool], int]:
        pulled: list[bool] = await asyncio.gather(
            orders.poll_soon(a.id),
            orders.poll_soon(b.id),
            orders.poll_soon(fresh.id),
            orders.poll_soon(a.id, quiet=timedelta(hours=2)),
        )
        return pulled, orders.pulls.batches

    with psycopg.connect(conninfo(pool), autocommit=True) as sweeper:
        sweeper.execute("LISTEN paydispatch_orders")
        pulled, batches = on_orders(conninfo(pool), pull)
        # then one statement pulled the two awaiting orders forward and woke the sweeper,
        woken = list(sweeper.notifies(timeout=10, stop_after=1))
    assert batches == 1
    assert [n.payload for n in woken] == ["sandbox"]
    # and each caller has its own answer: the new order is not watched, and the pull with a
    # longer quiet did not move its order though another pull of the same batch did.
    assert pulled == [True, True, False, False]
    with pool.connection() as conn:
        due = conn.execute(
            "SELECT count(*) AS n FROM orders WHERE id = ANY(%s) AND next_run_at <= now()",
            [[a.id, b.id]],
        ).fetchone()
    assert due is not None
    assert due["n"] == 2


def test_a_pull_skips_an_order_another_transaction_holds(pool: Pool, site: str) -> None:
    # Given an order awaiting payment whose row a worker's transaction holds,
    order = on_orders(conninfo(pool), lambda orders: awaiting(orders, site))
    watched_later(pool, order)
    with pool.connection() as holder, holder.transaction():
        holder.execute("SELECT 1 FROM orders WHERE id = %s FOR UPDATE", [order.id])

        # when a page pulls its poll, then the pull does not wait for the row: nothing moves.
        async def pull(orders: Orders) -> bool:
            return await asyncio.wait_for(orders.poll_soon(order.id), timeout=10)

        assert on_orders(conninfo(pool), pull) is False
    # Once the row is free, the next pull moves it.
    assert on_orders(conninfo(pool), lambda orders: orders.poll_soon(order.id)) is True


def test_the_face_serves_plain_threads(pool: Pool, site: str) -> None:
    with OrderRepository(pool, ADAPTERS) as repo:
        made: list[Order] = []
        errors: list[BaseException] = []

        def create(i: int) -> None:
            try:
                made.append(repo.create(new_order(site, site_ref=f"t{i}")).order)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len({o.id for o in made}) == 6
        assert {o.id for o in repo.list_orders(site=site).items} == {o.id for o in made}
        # The async repository behind it is reachable for any other coroutine.
        assert repo.run(repo.orders.get(made[0].id)).id == made[0].id
        assert repo.run(repo.orders.status_counts)[("sandbox", S.NEW)] >= 6


def test_calling_the_face_from_its_own_loop_is_a_clear_error(pool: Pool, site: str) -> None:
    with OrderRepository(pool, ADAPTERS) as repo:
        order = repo.create(new_order(site)).order

        async def blocking_inside() -> Order:
            return repo.get(order.id)  # a sync call on the loop that would serve it

        with pytest.raises(RuntimeError, match="background loop's own thread"):
            repo.run(blocking_inside)
        assert repo.get(order.id).id == order.id  # the face still works afterwards


def test_a_face_dropped_without_close_is_closed_quietly_when_collected(
    pool: Pool, site: str
) -> None:
    repo = OrderRepository(conninfo(pool), ADAPTERS)
    assert repo.create(new_order(site)).created
    async_pool = repo.orders.pool
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del repo
        gc.collect()
    assert async_pool.closed


def test_an_unclosed_face_does_not_hold_up_the_interpreters_exit(pool: Pool, site: str) -> None:
    script = (
        "import sys\n"
        "from orders import Money, NewOrder\n"
        "from orders.repository import OrderRepository\n"
        "from datetime import timedelta\n"
        "repo = OrderRepository(sys.argv[1], {'sandbox': timedelta(hours=1)})\n"
        "m = Money(100, 'EUR')\n"
        "new = NewOrder(site=sys.argv[2], user_id='u', money=m, adapter='sandbox')\n"
        "print(repo.create(new).created)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script, conninfo(pool), site],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "True", "")


def test_connect_opens_the_pool_at_once_and_close_is_idempotent(pool: Pool) -> None:
    repo = OrderRepository.connect(conninfo(pool), ADAPTERS, max_size=2)
    async_pool = repo.orders.pool
    assert not async_pool.closed
    repo.close()
    repo.close()
    assert async_pool.closed


def test_a_release_returns_the_lease_through_the_shared_statement(pool: Pool, site: str) -> None:
    async def work(orders: Orders) -> Order:
        created = (await orders.create(new_order(site))).order
        claimed = [o for o in await orders.claim(500, timedelta(minutes=5)) if o.id == created.id]
        (order,) = claimed
        await orders.write(Write.release(order, next_run_at=None, polls=2))
        return await orders.get(order.id)

    released = on_orders(conninfo(pool), work)
    assert released.lease_token is None
    assert released.polls == 2

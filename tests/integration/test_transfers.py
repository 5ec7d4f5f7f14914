"""Transfers in PostgreSQL (issue #14): the database refuses refunds beyond what was paid,
replays by key, the state machine, the events, reported refunds once, and the hook."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from adapters.base import Capabilities, RefundReport, RefundState
from orders import Money, NewOrder
from orders.db import open_async_pool, open_pool
from orders.errors import (
    IdempotencyConflict,
    InvalidTransition,
    OrderNotFound,
    RefundRefused,
    StaleOrder,
)
from orders.model import TransferEvent, TransferKind, TransferStatus
from orders.repository import OrderRepository
from orders.transfers import SyncTransfers, Transfers

TS = TransferStatus


@pytest.fixture
def repo(own_database_url: str) -> Iterator[OrderRepository]:
    pool = open_pool(own_database_url, max_size=12, name="test-transfers")
    with OrderRepository(pool, {"sandbox": timedelta(hours=1)}, max_size=12) as face:
        yield face
    pool.close()


def paid_order(repo: OrderRepository, amount: int = 1000, *, paid: bool = True) -> UUID:
    new = NewOrder(site="shop", user_id="u1", money=Money(amount, "USD"), adapter="sandbox")
    order_id = repo.create(new).order.id
    if paid:
        with repo.pool.connection() as conn:
            for status in ("submitting", "awaiting_payment"):
                conn.execute("UPDATE orders SET status = %s WHERE id = %s", (status, order_id))
            conn.execute(
                "UPDATE orders SET status = 'paid', paid_at = now() WHERE id = %s", (order_id,)
            )
    return order_id


def totals(repo: OrderRepository, order_id: UUID) -> tuple[int, int]:
    order = repo.get(order_id)
    return order.refund_reserved, order.refunded_amount


def refund(
    transfers: SyncTransfers, order_id: UUID, amount: int | None, key: str | None = None
) -> Any:
    money = None if amount is None else Money(amount, "USD")
    return transfers.request_refund(
        order_id, money, site="shop", idempotency_key=key, reason="r", requested_by="test"
    )


def test_refunds_take_from_what_is_left_and_the_database_refuses_more(
    repo: OrderRepository,
) -> None:
    transfers = SyncTransfers(repo)
    order_id = paid_order(repo)
    first, created = refund(transfers, order_id, 400)
    assert created
    assert first.status is TS.REQUESTED
    assert first.kind is TransferKind.REFUND
    assert first.next_run_at is not None  # due now: the sweeper picks it up
    assert totals(repo, order_id) == (400, 0)
    with pytest.raises(RefundRefused, match="more than is left"):
        refund(transfers, order_id, 601)
    rest, _ = refund(transfers, order_id, None)  # all that is left
    assert rest.money == Money(600, "USD")
    assert totals(repo, order_id) == (1000, 0)
    with pytest.raises(RefundRefused, match="nothing is left"):
        refund(transfers, order_id, None)


def test_the_check_holds_even_for_sql_that_skips_python(repo: OrderRepository) -> None:
    order_id = paid_order(repo, 500)
    with repo.pool.connection() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO transfers (kind, site, adapter, user_id, amount, currency, order_id,"
            " origin, requested_by) VALUES ('refund', 'shop', 'sandbox', 'u1', 501, 'USD', %s,"
            " 'operator', 'sql')",
            (order_id,),
        )
    assert totals(repo, order_id) == (0, 0)


def test_parallel_refunds_from_threads_never_exceed_the_paid_amount(
    own_database_url: str, repo: OrderRepository
) -> None:
    # Given an order of 1000 and 12 threads, each with its own loop and connection, asking for
    # 300 at the same moment,
    order_id = paid_order(repo)
    n = 12
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()

    async def ask() -> str:
        pool = await open_async_pool(own_database_url, max_size=1, name="test-thread")
        try:
            await asyncio.to_thread(barrier.wait, 10)
            await Transfers(pool).request_refund(
                order_id,
                Money(300, "USD"),
                site="shop",
                idempotency_key=None,
                reason="r",
                requested_by="thread",
            )
        except RefundRefused:
            return "refused"
        finally:
            await pool.close()
        return "ok"

    def run() -> None:
        result = asyncio.run(ask())
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # then exactly three are taken, and the rest get RefundRefused from the database's CHECK.
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * (n - 3)
    assert totals(repo, order_id) == (900, 0)


def test_parallel_refund_requests_on_the_async_repository_get_refund_refused(
    own_database_url: str, repo: OrderRepository
) -> None:
    order_id = paid_order(repo)

    async def go() -> list[Any]:
        pool = await open_async_pool(own_database_url, max_size=10, name="test-parallel")
        try:
            transfers = Transfers(pool)
            return await asyncio.gather(
                *(
                    transfers.request_refund(
                        order_id,
                        Money(250, "USD"),
                        site="shop",
                        idempotency_key=f"k{i}",
                        reason="r",
                        requested_by="test",
                    )
                    for i in range(10)
                ),
                return_exceptions=True,
            )
        finally:
            await pool.close()

    results = asyncio.run(go())
    made = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, RefundRefused)]
    assert len(made) == 4, results
    assert len(refused) == 6, results
    assert totals(repo, order_id) == (1000, 0)


def test_same_key_replays_and_another_request_conflicts(repo: OrderRepository) -> None:
    transfers = SyncTransfers(repo)
    order_id = paid_order(repo)
    first, created = refund(transfers, order_id, 100, key="k1")
    again, created_again = refund(transfers, order_id, 100, key="k1")
    assert created
    assert not created_again
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        refund(transfers, order_id, 200, key="k1")
    all_of_it, _ = refund(transfers, order_id, None, key="all")
    replay, created = refund(transfers, order_id, None, key="all")  # nothing left, same answer
    assert replay.id == all_of_it.id
    assert not created
    assert totals(repo, order_id) == (1000, 0)


def test_refunds_only_of_paid_orders_and_payment_systems_that_refund(
    repo: OrderRepository,
) -> None:
    unpaid = paid_order(repo, paid=False)
    with pytest.raises(RefundRefused, match="not paid"):
        refund(SyncTransfers(repo), unpaid, 100)
    with pytest.raises(OrderNotFound):
        refund(SyncTransfers(repo), uuid4(), 100)
    paid = paid_order(repo)
    cannot = SyncTransfers(repo, capabilities={"sandbox": Capabilities(idempotent_create=True)})
    with pytest.raises(RefundRefused, match="payment system sandbox cannot refund"):
        refund(cannot, paid, 100)
    whole_only = SyncTransfers(
        repo, capabilities={"sandbox": Capabilities(idempotent_create=True, refunds=True)}
    )
    with pytest.raises(RefundRefused, match="part of a payment"):
        refund(whole_only, paid, 100)
    assert refund(whole_only, paid, None)[0].money == Money(1000, "USD")
    with repo.pool.connection() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(  # the database refuses it too
            "INSERT INTO transfers (kind, site, adapter, user_id, amount, currency, order_id,"
            " origin, requested_by) VALUES ('refund', 'shop', 'sandbox', 'u1', 1, 'USD', %s,"
            " 'operator', 'sql')",
            (unpaid,),
        )


def test_moves_follow_the_state_machine_and_keep_the_totals(repo: OrderRepository) -> None:
    transfers = SyncTransfers(repo)
    order_id = paid_order(repo)
    a, _ = refund(transfers, order_id, 300)
    b, _ = refund(transfers, order_id, 200)
    c, _ = refund(transfers, order_id, 100)
    claimed = {t.id: t for t in transfers.claim(10, timedelta(minutes=1))}
    assert set(claimed) == {a.id, b.id, c.id}
    a = transfers.write(claimed[a.id], TS.SUBMITTING, keep_lease=True)
    a = transfers.write(a, TS.PENDING, psp_transfer_id="psp-a", next_run_at=None)
    assert a.lease_token is None
    assert a.psp_transfer_id == "psp-a"
    with pytest.raises(StaleOrder):  # a lease this writer does not hold
        transfers.write(replace(claimed[b.id], lease_token=uuid4()), TS.SUBMITTING)
    b = transfers.write(claimed[b.id], TS.SUBMITTING, keep_lease=True)
    b = transfers.write(b, TS.FAILED, last_error="refused")
    assert b.settled_at is not None
    assert b.next_run_at is None
    assert totals(repo, order_id) == (400, 0)
    a = transfers.write(a, TS.SUCCEEDED, use_lease=False)
    assert totals(repo, order_id) == (400, 300)
    with pytest.raises(InvalidTransition):
        transfers.write(a, TS.PENDING, use_lease=False)
    with repo.pool.connection() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE transfers SET status = 'requested' WHERE id = %s", (a.id,))
    cancelled = transfers.cancel(c.id, actor="op")
    assert cancelled.status is TS.CANCELLED
    assert totals(repo, order_id) == (300, 300)
    with pytest.raises(InvalidTransition):
        transfers.cancel(a.id, actor="op")
    # Every move is in transfer_events, and a refund's in its order's history too.
    assert [e["to_status"] for e in transfers.events(a.id)] == [
        "requested",
        "submitting",
        "pending",
        "succeeded",
    ]
    mine = [e for e in repo.events(order_id) if e.detail.get("refund") == str(a.id)]
    assert [(e.from_status, e.to_status, e.detail["to"]) for e in mine] == [
        ("paid", "paid", "requested"),
        ("paid", "paid", "submitting"),
        ("paid", "paid", "pending"),
        ("paid", "paid", "succeeded"),
    ]
    page = transfers.list(order_id=order_id, limit=2)
    assert len(page.items) == 2
    assert page.next_cursor is not None
    rest = transfers.list(order_id=order_id, limit=2, cursor=page.next_cursor)
    assert {t.id for t in page.items + rest.items} == {a.id, b.id, c.id}


def test_a_reported_refund_is_recorded_once(repo: OrderRepository) -> None:
    seen: list[TransferEvent] = []

    async def hook(tx: Any, event: TransferEvent) -> None:
        seen.append(event)

    transfers = SyncTransfers(repo, hook=hook)
    order_id = paid_order(repo)
    order = repo.get(order_id)
    report = RefundReport(RefundState.SUCCEEDED, psp_refund_id="re-1", money=Money(250, "USD"))
    first = transfers.record_reported_refund(order, report, actor="notification")
    second = transfers.record_reported_refund(order, report, actor="notification")
    assert first is not None
    assert second is None
    assert first.status is TS.SUCCEEDED
    assert first.origin == "psp"
    assert totals(repo, order_id) == (250, 250)
    assert [(e.transfer.id, e.previous) for e in seen] == [(first.id, TS.SUCCEEDED)]


def test_a_report_that_may_be_our_own_refund_waits_for_it(repo: OrderRepository) -> None:
    transfers = SyncTransfers(repo)
    order_id = paid_order(repo)
    _ours, _ = refund(transfers, order_id, 400)
    (claimed,) = transfers.claim(1, timedelta(minutes=1))
    transfers.write(claimed, TS.SUBMITTING, next_run_at=None)  # sent, its answer lost
    report = RefundReport(RefundState.SUCCEEDED, psp_refund_id="re-9", money=Money(400, "USD"))
    assert transfers.record_reported_refund(repo.get(order_id), report, actor="n") is None
    assert totals(repo, order_id) == (400, 0)


def test_the_hook_runs_once_per_final_state_and_a_raising_hook_rolls_back(
    repo: OrderRepository,
) -> None:
    calls: list[tuple[UUID, TransferStatus, TransferStatus]] = []
    fail = {"on": True}

    async def hook(tx: Any, event: TransferEvent) -> None:
        await tx.execute("SELECT 1")
        calls.append((event.transfer.id, event.previous, event.transfer.status))
        if fail["on"]:
            raise RuntimeError("billing said no")

    transfers = SyncTransfers(repo, hook=hook)
    order_id = paid_order(repo)
    t, _ = refund(transfers, order_id, 500)
    (claimed,) = transfers.claim(1, timedelta(minutes=1))
    t = transfers.write(claimed, TS.SUBMITTING, keep_lease=True)
    assert calls == []  # not final: no hook
    t = transfers.write(t, TS.PENDING, keep_lease=True)
    with pytest.raises(RuntimeError, match="billing said no"):
        transfers.write(t, TS.SUCCEEDED)
    # The move was rolled back with the hook's work: still pending, nothing refunded.
    assert transfers.get(t.id).status is TS.PENDING
    assert totals(repo, order_id) == (500, 0)
    assert [e["to_status"] for e in transfers.events(t.id)][-1] == "pending"
    fail["on"] = False
    done = transfers.write(t, TS.SUCCEEDED)
    assert done.status is TS.SUCCEEDED
    assert totals(repo, order_id) == (500, 500)
    with pytest.raises((StaleOrder, InvalidTransition)):
        transfers.write(t, TS.SUCCEEDED)  # a second writer: no second hook
    assert calls == [(t.id, TS.PENDING, TS.SUCCEEDED)] * 2  # the rolled-back one and the real one
    # A cancellation is final too: one hook call.
    c, _ = refund(transfers, order_id, 100)
    transfers.cancel(c.id, actor="op")
    assert calls[-1] == (c.id, TS.REQUESTED, TS.CANCELLED)
    assert len(calls) == 3

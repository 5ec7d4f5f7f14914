"""Batched claims with leases: no order twice, every due order once, expired leases come back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from uuid import UUID

import pytest

from dispatcher.services import Services
from orders import Money, NewOrder, OrderStatus, StaleOrder
from orders.db import open_pool
from orders.repository import OrderRepository
from tests.conftest import drop_database, make_database
from tests.integration.conftest import ADAPTERS

S = OrderStatus
LEASE = timedelta(minutes=5)


@pytest.fixture
def repo(found_services: Services, template_database: str) -> Iterator[OrderRepository]:
    """A repository on a database of this test's own: claims see every due row."""
    url = make_database(found_services, template_database)
    pool = open_pool(url, max_size=10, name="claims")
    try:
        with OrderRepository(pool, ADAPTERS) as repo:
            yield repo
    finally:
        pool.close()
        drop_database(found_services, url)


def make(repo: OrderRepository, n: int, adapter: str = "sandbox") -> list[UUID]:
    return [
        repo.create(
            NewOrder(site="s", user_id=f"u{i}", money=Money(100 + i, "EUR"), adapter=adapter)
        ).order.id
        for i in range(n)
    ]


def test_concurrent_claimers_share_every_due_order_without_overlap(repo: OrderRepository) -> None:
    # Given 300 due orders,
    ids = set(make(repo, 300))
    claimed: list[list[UUID]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def claimer(slot: int) -> None:
        barrier.wait(timeout=10)
        while batch := repo.claim(limit=7, lease=LEASE):
            claimed[slot].extend(o.id for o in batch)

    # when four threads claim in small batches until nothing is left,
    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    everything = [i for batch in claimed for i in batch]
    # then every order was claimed exactly once.
    assert len(everything) == len(set(everything)) == 300
    assert set(everything) == ids


def test_a_claimed_order_is_not_claimed_again_while_its_lease_lasts(repo: OrderRepository) -> None:
    make(repo, 5)
    first = repo.claim(limit=10, lease=LEASE)
    assert len(first) == 5
    assert len({o.lease_token for o in first}) == 1
    assert all(o.lease_until is not None for o in first)
    assert repo.claim(limit=10, lease=LEASE) == []


def test_an_expired_lease_makes_the_order_claimable_again(repo: OrderRepository) -> None:
    # Given an order claimed by a worker whose lease has already run out (a zero lease
    # stands for a worker that died: nothing was released),
    make(repo, 1)
    dead = repo.claim(limit=1, lease=timedelta(0))
    assert len(dead) == 1
    # when another claimer looks, it gets the order, under a new lease;
    again = repo.claim(limit=1, lease=LEASE)
    assert [o.id for o in again] == [dead[0].id]
    assert again[0].lease_token != dead[0].lease_token
    # and the dead worker's late commit is refused.
    with pytest.raises(StaleOrder, match="lease"):
        repo.transition(
            dead[0].id, S.NEW, S.SUBMITTING, actor="dead", lease_token=dead[0].lease_token
        )
    moved = repo.transition(
        again[0].id, S.NEW, S.SUBMITTING, actor="live", lease_token=again[0].lease_token
    )
    assert moved.status is S.SUBMITTING


def test_finished_orders_are_never_claimed(repo: OrderRepository) -> None:
    # Given orders in every status where the dispatcher has nothing left to do,
    ids = make(repo, 6)
    repo.cancel(ids[0])
    finals = [S.PAID, S.REJECTED, S.EXPIRED, S.NEEDS_REVIEW]
    for order_id, final in zip(ids[1:5], finals, strict=True):
        repo.transition(order_id, S.NEW, S.SUBMITTING, actor="t")
        repo.transition(order_id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="t")
        repo.transition(order_id, S.AWAITING_PAYMENT, final, actor="t")
    repo.transition(ids[5], S.NEW, S.SUBMITTING, actor="t")
    repo.transition(ids[5], S.SUBMITTING, S.FAILED, actor="t")
    # when a sweeper claims, none of them comes back,
    assert repo.claim(limit=100, lease=timedelta(0)) == []
    # and they are not in the due index at all.
    with repo.pool.connection() as conn:
        row = conn.execute("SELECT count(*) AS n FROM orders WHERE next_run_at IS NOT NULL")
        result = row.fetchone()
    assert result is not None
    assert result["n"] == 0


def test_claim_takes_the_most_overdue_first_and_honours_the_limit(repo: OrderRepository) -> None:
    ids = make(repo, 10)
    with repo.pool.connection() as conn:
        for age, order_id in enumerate(reversed(ids)):
            conn.execute(
                "UPDATE orders SET next_run_at = now() - make_interval(mins => %s) WHERE id = %s",
                (age + 1, order_id),
            )
    batch = repo.claim(limit=3, lease=LEASE)
    assert len(batch) == 3
    assert {o.id for o in batch} == set(ids[:3])


def test_claim_can_be_limited_to_some_adapters(repo: OrderRepository) -> None:
    sandbox = set(make(repo, 3, "sandbox"))
    yookassa = set(make(repo, 2, "yookassa"))
    assert {o.id for o in repo.claim(limit=10, lease=LEASE, adapters=["yookassa"])} == yookassa
    assert {o.id for o in repo.claim(limit=10, lease=LEASE)} == sandbox


def test_release_gives_the_lease_back_for_later(repo: OrderRepository) -> None:
    make(repo, 1)
    (order,) = repo.claim(limit=1, lease=LEASE)
    released = repo.release(order, next_run_at=None)
    assert released.lease_token is None
    assert repo.claim(limit=1, lease=LEASE) == []
    with pytest.raises(StaleOrder):
        repo.release(order, next_run_at=None)

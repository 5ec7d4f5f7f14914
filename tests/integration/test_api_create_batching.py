"""POST /v1/orders' batched creates: many requests, one statement, each with its own answer."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import psycopg

from dispatcher.api.batched import BatchedOrders
from orders import IdempotencyConflict, Money, NewOrder
from orders.db import Pool
from orders.errors import OrderNotFound
from orders.repository import Created, OrderRepository
from tests.integration.test_api import ORDER, Api, running_api


def new(site: str, key: str | None = None, **changes: Any) -> NewOrder:
    base: dict[str, Any] = {
        "site": site,
        "user_id": "u1",
        "money": Money(1999, "USD"),
        "adapter": "sandbox",
        "idempotency_key": key,
    }
    return NewOrder(**(base | changes))


def run_batch(repo: OrderRepository, orders: list[NewOrder]) -> tuple[list[Any], int]:
    """Create ``orders`` concurrently on one loop; the outcomes and how many statements ran."""

    async def go() -> tuple[list[Any], int]:
        creator = BatchedOrders(repo, str(repo.pool.conninfo))
        await creator.open()
        try:
            results = await asyncio.gather(
                *(creator.create(o, actor="site:test") for o in orders), return_exceptions=True
            )
        finally:
            await creator.close()
        return list(results), creator.creates.batches

    return asyncio.run(go())


def test_creates_that_arrive_together_are_one_statement_with_replays_and_conflicts(
    repo: OrderRepository, site: str
) -> None:
    results, batches = run_batch(
        repo,
        [
            new(site, "k1"),
            new(site, "k1"),  # the same request again: a replay of the first
            new(site, "k1", user_id="u2"),  # the same key, another body: a conflict
            new(site, "k2"),
            new(site, site_ref="ref-1"),
        ],
    )
    assert batches == 1
    first, replay, conflict, other, by_ref = results
    assert isinstance(first, Created)
    assert first.created
    assert isinstance(replay, Created)
    assert not replay.created
    assert replay.order.id == first.order.id
    assert isinstance(conflict, IdempotencyConflict)
    assert isinstance(other, Created)
    assert other.created
    assert isinstance(by_ref, Created)
    assert by_ref.order.site_ref == "ref-1"
    assert len(repo.list_orders(site=site).items) == 3


def test_reads_that_arrive_together_are_one_statement_each_with_its_own_answer(
    repo: OrderRepository, site: str
) -> None:
    made = [repo.create(new(site, f"r{i}")).order for i in range(3)]
    missing = uuid.uuid4()

    async def go() -> tuple[list[Any], int]:
        batched = BatchedOrders(repo, str(repo.pool.conninfo))
        await batched.open()
        try:
            ids = [made[0].id, missing, made[2].id, made[1].id, made[0].id]
            results = await asyncio.gather(*(batched.get(i) for i in ids), return_exceptions=True)
        finally:
            await batched.close()
        return list(results), batched.reads.batches

    results, batches = asyncio.run(go())
    assert batches == 1
    first, absent, third, second, again = results
    assert isinstance(absent, OrderNotFound)
    assert [o.id for o in (first, third, second, again)] == [
        made[0].id, made[2].id, made[1].id, made[0].id,
    ]  # fmt: skip
    assert first == repo.get(made[0].id)


def test_a_create_the_database_refuses_does_not_fail_the_others(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    # The API refuses NUL in metadata before this point; the creator must still cope alone.
    results, _ = run_batch(
        repo, [new(site, "a"), new(site, "b", metadata={"note": "x\x00y"}), new(site, "c")]
    )
    assert isinstance(results[0], Created)
    assert isinstance(results[1], psycopg.DataError)
    assert isinstance(results[2], Created)
    assert {o.idempotency_key for o in repo.list_orders(site=site).items} == {"a", "c"}


def test_expiry_and_metadata_survive_the_batch_encoding(repo: OrderRepository, site: str) -> None:
    metadata = {"cart": [1, 2, {"sku": "é-42"}], "gift": True, "note": None}
    results, _ = run_batch(
        repo, [new(site, "m", metadata=metadata, expires_in=timedelta(seconds=90))]
    )
    (created,) = results
    assert isinstance(created, Created)
    order = created.order
    assert dict(order.metadata) == metadata
    assert order.expires_at - order.created_at == timedelta(seconds=90)  # one transaction


def test_the_lane_and_the_route_answer_a_create_alike(pool: Pool, site: str) -> None:
    with running_api(pool) as api, httpx.Client(base_url=api.url, timeout=10) as http:
        headers = api_key(api, site)
        before = api.ctx.lane_creates
        cold = http.post("/v1/orders", json=ORDER, headers=headers | {"Idempotency-Key": "c"})
        assert api.ctx.lane_creates == before  # a key not seen yet: the route verified it
        warm = http.post("/v1/orders", json=ORDER, headers=headers | {"Idempotency-Key": "w"})
        assert api.ctx.lane_creates == before + 1
        replay = http.post("/v1/orders", json=ORDER, headers=headers | {"Idempotency-Key": "c"})
        assert api.ctx.lane_creates == before + 2
    assert (cold.status_code, warm.status_code, replay.status_code) == (201, 201, 200)
    assert cold.json().keys() == warm.json().keys()
    assert replay.json() == cold.json()
    for response in (cold, warm, replay):
        assert response.headers["content-type"] == "application/json"
        assert response.headers["location"] == f"/v1/orders/{response.json()['id']}"


def api_key(api: Api, site: str) -> dict[str, str]:
    return api.site_key(site)

"""POST /v1/orders: one create path behind the app's middleware; batched creates (many
requests, one statement, each with its own answer)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any, ClassVar

import httpx
import psycopg
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orders import IdempotencyConflict, Money, NewOrder
from orders.db import Pool, open_async_pool
from orders.errors import OrderNotFound
from orders.repository import Created, OrderRepository, Orders
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
        pool = await open_async_pool(repo.conninfo, max_size=3, name="test-creates")
        creator = Orders(pool, repo.adapters)
        try:
            results = await asyncio.gather(
                *(creator.create(o, actor="site:test") for o in orders), return_exceptions=True
            )
        finally:
            await pool.close()
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
        pool = await open_async_pool(repo.conninfo, max_size=3, name="test-reads")
        batched = Orders(pool, repo.adapters)
        try:
            ids = [made[0].id, missing, made[2].id, made[1].id, made[0].id]
            results = await asyncio.gather(*(batched.get(i) for i in ids), return_exceptions=True)
        finally:
            await pool.close()
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


def test_a_create_is_answered_alike_with_a_new_and_a_verified_key(pool: Pool, site: str) -> None:
    # One create path: a key checked against the database and one from the key cache are
    # answered the same way (the fast lane that answered only the second is gone).
    with running_api(pool) as api, httpx.Client(base_url=api.url, timeout=10) as http:
        headers = api_key(api, site)
        cold = http.post("/v1/orders", json=ORDER, headers=headers | {"Idempotency-Key": "c"})
        warm = http.post("/v1/orders", json=ORDER, headers=headers | {"Idempotency-Key": "w"})
        replay = http.post("/v1/orders", json=ORDER, headers=headers | {"Idempotency-Key": "c"})
    assert (cold.status_code, warm.status_code, replay.status_code) == (201, 201, 200)
    assert cold.json().keys() == warm.json().keys()
    assert replay.json() == cold.json()
    for response in (cold, warm, replay):
        assert response.headers["content-type"] == "application/json"
        assert response.headers["location"] == f"/v1/orders/{response.json()['id']}"


class Stamp:
    """A middleware a deployment might add: it records each request and stamps each answer."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        Stamp.seen.append((scope["method"], scope["path"]))

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stamp", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


def test_middleware_added_to_the_app_runs_for_every_create(pool: Pool, site: str) -> None:
    # Given an app with a middleware added after it was built,
    Stamp.seen.clear()
    with (
        running_api(pool, middleware=[Stamp]) as api,
        httpx.Client(base_url=api.url, timeout=10) as http,
    ):
        headers = api_key(api, site)
        # when a site creates orders, with a key new to the process and a cached one,
        made = [
            http.post("/v1/orders", json=ORDER, headers=headers | {"Idempotency-Key": k})
            for k in ("m1", "m2", "m1")
        ]
        refused = http.post("/v1/orders", json=ORDER | {"amount": 0}, headers=headers)
    # then the middleware saw every one of them and every answer carries its stamp.
    assert [r.status_code for r in made] == [201, 201, 200]
    assert refused.status_code == 422
    assert Stamp.seen.count(("POST", "/v1/orders")) == 4
    assert all(r.headers["x-stamp"] == "1" for r in [*made, refused])


def api_key(api: Api, site: str) -> dict[str, str]:
    return api.site_key(site)

"""The client against the real API and database: typed results and mapped errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from uuid import uuid4

import pytest

from orders import InvalidInput, Money, OrderNotFound, OrderStatus
from orders.client import AsyncClient, Client, Conflict, KeyConflict, Unauthorized
from orders.db import Pool
from tests.integration.test_api import Api, make_paid, running_api


@pytest.fixture(scope="module")
def api(pool: Pool) -> Iterator[Api]:
    with running_api(pool) as running:
        yield running


@pytest.fixture
def pd(api: Api, site: str) -> Iterator[Client]:
    _, key = api.ctx.keys.create(site)
    with Client(api.url, key, retries=1) as client:
        yield client


def test_create_read_list_and_cancel(pd: Client, api: Api) -> None:
    created = pd.create_order(
        user_id="42", money=Money.parse("19.99", "EUR"), adapter="sandbox", site_ref="C-1",
        description="Top-up", metadata={"plan": "gold"},
    )  # fmt: skip
    assert created.created
    order = created.order
    assert (order.money, order.status, order.metadata) == (
        Money(1999, "EUR"), OrderStatus.NEW, {"plan": "gold"}
    )  # fmt: skip
    assert order.status_url == f"{api.url}/pay/{order.id}"
    replay = pd.create_order(
        user_id="42", money=Money(1999, "EUR"), adapter="sandbox", site_ref="C-1",
        description="Top-up", metadata={"plan": "gold"},
    )  # fmt: skip
    assert (replay.created, replay.order.id) == (False, order.id)
    with pytest.raises(KeyConflict):
        pd.create_order(user_id="43", money=Money(1999, "EUR"), adapter="sandbox", site_ref="C-1")

    fetched = pd.get_order(order.id)
    assert [e.to_status for e in fetched.events] == [OrderStatus.NEW]
    for i in range(3):
        pd.create_order(user_id="42", amount=100 + i, currency="USD", adapter="sandbox")
    assert len(list(pd.iter_orders(limit=2))) == 4
    assert pd.cancel_order(order.id).status is OrderStatus.CANCELLED
    assert {a.name for a in pd.adapters()} == {"sandbox", "yookassa"}


def test_errors_map_to_the_one_tree(pd: Client, api: Api) -> None:
    with pytest.raises(InvalidInput) as invalid:
        pd.create_order(user_id="42", amount=5, currency="USD", adapter="nowhere")
    assert invalid.value.field == "adapter"
    with pytest.raises(OrderNotFound):
        pd.get_order(uuid4())
    with Client(api.url, "pd_wrong", retries=0) as stranger, pytest.raises(Unauthorized):
        stranger.list_orders()
    paid = pd.create_order(user_id="42", amount=5, currency="USD", adapter="sandbox").order
    make_paid(api.repo, paid.id)
    with pytest.raises(Conflict) as refused:
        pd.cancel_order(paid.id)
    assert refused.value.code == "not_cancellable"


def test_the_async_client(api: Api, site: str) -> None:
    _, key = api.ctx.keys.create(site)

    async def main() -> None:
        async with AsyncClient(api.url, key) as client:
            created = await client.create_order(
                user_id="7", money=Money(500, "USD"), adapter="sandbox"
            )
            again = await client.get_order(created.order.id)
            assert again.id == created.order.id
            assert [o.id async for o in client.iter_orders()] == [created.order.id]
            assert await client.wallet("7") == []

    asyncio.run(main())

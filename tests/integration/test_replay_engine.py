"""The real engine against an adapter's fixtures, replayed: how an author runs their adapter.

The engine, the transport and the order repository on a real database are the daemon's own; the
payment system is :class:`adapters.replay.Replay` answering from the YooKassa conformance
fixtures, served over HTTP (and, without a server, through ``httpx.MockTransport``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

from adapters import paypal, tbank, yookassa
from adapters.base import AdapterSettings, CanonicalState, PspResponse
from adapters.replay import Replay
from adapters.testing import load_response
from dispatcher.runtime import AdapterRuntime
from dispatcher.steps import action_for
from dispatcher.worker.engine import Engine
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool, open_async_pool, open_pool
from orders.model import Order
from orders.repository import OrderRepository, Orders
from tests.dispatch_support import FAST
from tests.integration.conftest import ADAPTERS
from tests.unit import test_paypal as paypal_tests
from tests.unit import test_tbank as tbank_tests
from tests.unit import test_yookassa as yookassa_tests

S = OrderStatus
# The fixtures describe a payment of 100.00 RUB; the paid answer must match the order.
AMOUNT = Money(10000, "RUB")
PAYPAL_FIXTURES = paypal_tests.FIXTURES
HOUR = timedelta(hours=1)


@pytest.fixture
def fresh(own_database_url: str) -> Iterator[tuple[OrderRepository, Pool]]:
    """A database of the test's own: the fixtures describe one payment, and a payment id is
    unique per adapter, so each replayed order needs a database without the others."""
    pool = open_pool(own_database_url, max_size=4, name="replay")
    try:
        with OrderRepository(pool, {**ADAPTERS, "tbank": HOUR, "paypal": HOUR}) as repo:
            yield repo, pool
    finally:
        pool.close()


def new_order(
    repo: OrderRepository, site: str, adapter: str = "yookassa", money: Money = AMOUNT
) -> UUID:
    new = NewOrder(
        site=site,
        user_id="buyer",
        money=money,
        adapter=adapter,
        description="Order 42",
        return_url="https://shop.example/return/42",
    )
    return repo.create(new).order.id


def yookassa_replay() -> Replay:
    fixtures = yookassa_tests.TestYooKassaConformance.fixtures
    return Replay(yookassa.adapter, fixtures, yookassa_tests.SETTINGS)


async def run_until_settled(
    engine: Engine, repo: OrderRepository, pool: Pool, order_id: UUID, max_steps: int = 10
) -> list[Order]:
    """Run the order's steps one at a time, each made due and claimed as the sweeper would,
    until nothing is left to do; returns the order after each step."""
    seen: list[Order] = []
    for _ in range(max_steps):
        with pool.connection() as conn:
            conn.execute("UPDATE orders SET next_run_at = now() WHERE id = %s", (order_id,))
        claimed = [o for o in repo.claim(1000, timedelta(seconds=30)) if o.id == order_id]
        assert claimed, f"order {order_id} was not due"
        order = claimed[0]
        action = action_for(order, engine.clock())
        if action is None or order.status is S.PAID:
            break
        assert order.lease_token is not None
        await engine.run(order_id, order.lease_token, action)
        seen.append(repo.get(order_id))
        if seen[-1].status is S.PAID:
            break
    return seen


def engine_run(
    repo: OrderRepository, target: AdapterSettings | AdapterRuntime, **engine_options: Any
) -> Callable[[Callable[[Engine], Coroutine[Any, Any, None]]], None]:
    """Run a scenario on an engine with the adapter's runtime (YooKassa pointed at settings
    by default), closing the engine after."""
    runtime = (
        target
        if isinstance(target, AdapterRuntime)
        else AdapterRuntime(yookassa.adapter, target, FAST)
    )

    def run(scenario: Callable[[Engine], Coroutine[Any, Any, None]]) -> None:
        async def main() -> None:
            runtimes = {runtime.name: runtime}
            # The engine's repository lives on this loop, over a pool opened here.
            pool = await open_async_pool(repo.conninfo, max_size=2, name="replay-engine")
            engine = Engine(Orders(pool, repo.adapters), runtimes, **engine_options)
            try:
                await scenario(engine)
            finally:
                await engine.aclose()
                await pool.close()

        asyncio.run(main())

    return run


def test_engine_pays_an_order_against_the_replayed_yookassa_fixtures(
    fresh: tuple[OrderRepository, Pool], site: str
) -> None:
    repo, pool = fresh
    replay = yookassa_replay()
    replay.script("status", CanonicalState.PENDING, CanonicalState.PENDING, CanonicalState.PAID)
    order_id = new_order(repo, site)
    replay.bind(repo.get(order_id))
    steps: list[Order] = []

    with replay.serve() as url:

        async def scenario(engine: Engine) -> None:
            steps.extend(await run_until_settled(engine, repo, pool, order_id))

        engine_run(repo, replay.settings(url))(scenario)

    assert [order.status for order in steps] == [
        S.AWAITING_PAYMENT,
        S.AWAITING_PAYMENT,
        S.AWAITING_PAYMENT,
        S.PAID,
    ]
    paid = steps[-1]
    assert paid.psp_id == yookassa_tests.PAYMENT_ID
    assert paid.pay_url is not None
    assert paid.pay_url.startswith("https://yoomoney.ru/")
    assert replay.counts() == {"create": 1, "status": 3}
    assert replay.unmatched == []
    create = next(r for r in replay.requests if r.operation == "create")
    assert create.headers["idempotence-key"] == f"pd-{order_id}"


def test_engine_runs_against_the_replay_without_a_server(
    fresh: tuple[OrderRepository, Pool], site: str
) -> None:
    repo, pool = fresh
    replay = yookassa_replay()
    replay.script("status", CanonicalState.PENDING, CanonicalState.PAID)
    order_id = new_order(repo, site)
    steps: list[Order] = []

    async def scenario(engine: Engine) -> None:
        steps.extend(await run_until_settled(engine, repo, pool, order_id))

    settings = replay.settings("https://replay.invalid")
    engine_run(repo, settings, http_transport=replay.mock_transport())(scenario)

    assert steps[-1].status is S.PAID
    assert replay.counts() == {"create": 1, "status": 2}


@pytest.mark.parametrize(
    "bad",
    [PspResponse(502, b"<html>bad gateway</html>"), PspResponse(200, b'{"id": "truncated')],
    ids=["error-page", "malformed"],
)
def test_engine_keeps_polling_through_unreadable_replayed_answers(
    fresh: tuple[OrderRepository, Pool], site: str, bad: PspResponse
) -> None:
    repo, pool = fresh
    replay = yookassa_replay()
    # Twice: the transport retries an error page once within a step.
    replay.script("status", bad, bad, CanonicalState.PAID)
    order_id = new_order(repo, site)
    steps: list[Order] = []

    async def scenario(engine: Engine) -> None:
        steps.extend(await run_until_settled(engine, repo, pool, order_id))

    settings = replay.settings("https://replay.invalid")
    engine_run(repo, settings, http_transport=replay.mock_transport())(scenario)

    assert steps[-1].status is S.PAID
    assert steps[1].status is S.AWAITING_PAYMENT
    assert steps[1].last_error is not None


def test_engine_looks_a_tbank_payment_up_instead_of_creating_it_twice(
    fresh: tuple[OrderRepository, Pool], site: str
) -> None:
    # Given T-Bank (no idempotency key) whose Init reached it but was answered by a gateway's
    # error page, then GetState saying FORM_SHOWED and CONFIRMED,
    repo, pool = fresh
    replay = Replay(tbank.adapter, tbank_tests.TestTBankConformance.fixtures, tbank_tests.SETTINGS)
    replay.script("create", PspResponse(502, b"<html>bad gateway</html>"))
    replay.script("status", CanonicalState.PENDING, CanonicalState.PAID)
    order_id = new_order(repo, site, adapter="tbank")
    replay.bind(repo.get(order_id))  # T-Bank's answers name our OrderId: make it this order's
    steps: list[Order] = []

    async def scenario(engine: Engine) -> None:
        steps.extend(await run_until_settled(engine, repo, pool, order_id))

    runtime = AdapterRuntime(tbank.adapter, replay.settings("https://replay.invalid"), FAST)
    engine_run(repo, runtime, http_transport=replay.mock_transport())(scenario)

    # when the engine runs the order, it sends Init once, finds the payment with CheckOrder,
    # and polls it to paid.
    assert [order.status for order in steps] == [
        S.SUBMITTING,
        S.AWAITING_PAYMENT,
        S.AWAITING_PAYMENT,
        S.PAID,
    ]
    assert replay.counts() == {"create": 1, "lookup": 1, "status": 2}
    assert steps[-1].psp_id == tbank_tests.PAYMENT_ID
    assert steps[1].pay_url is None  # CheckOrder gives no pay link: the buyer's page waits


def test_engine_fetches_a_paypal_token_once_and_captures_an_approved_order(
    fresh: tuple[OrderRepository, Pool], site: str
) -> None:
    # Given PayPal (an OAuth token for every call) whose order is first waiting for the buyer,
    # then approved (money held for us), and a capture that completes,
    repo, pool = fresh
    fixtures = paypal_tests.TestPaypalConformance.fixtures
    replay = Replay(paypal.adapter, fixtures, paypal_tests.TestPaypalConformance.settings)
    approved = load_response(PAYPAL_FIXTURES / "status_approved.json")
    replay.script("status", CanonicalState.PENDING, approved)
    # PayPal's fixtures describe a payment of the kit's order in US dollars.
    order_id = new_order(repo, site, adapter="paypal", money=paypal_tests.ORDER.money)
    replay.bind(repo.get(order_id))
    steps: list[Order] = []

    async def scenario(engine: Engine) -> None:
        steps.extend(await run_until_settled(engine, repo, pool, order_id))

    with replay.serve() as url:
        runtime = AdapterRuntime(paypal.adapter, replay.settings(url), FAST)
        engine_run(repo, runtime)(scenario)

    # when the engine runs the order, one token serves every call, and the approved order is
    # captured and paid.
    assert steps[-1].status is S.PAID
    assert replay.counts() == {"token": 1, "create": 1, "status": 2, "capture": 1}
    calls = [r for r in replay.requests if r.operation != "token"]
    assert all(r.headers["authorization"].startswith("Bearer ") for r in calls)

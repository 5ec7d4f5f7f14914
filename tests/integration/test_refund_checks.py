"""Refunds made at the payment system on its own (its dashboard), read from the payment (issue
#14): an unverified hint only makes the paid order's refund check due; the worker reads the
payment's status itself (real PostgreSQL, the sandbox over HTTP, the real wallet hooks) and
records what our refunds do not account for, once. A forged hint records and reserves nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest

from adapters.base import RefundRequest
from adapters.sandbox import SCENARIO_METADATA_KEY
from dispatcher.billing import hooks
from dispatcher.billing.wallet import SyncWallets
from dispatcher.config import BillingSettings
from dispatcher.runtime import AdapterRuntime
from dispatcher.steps import Action
from dispatcher.worker.engine import Engine
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool, open_async_pool
from orders.model import Order, TransferStatus
from orders.repository import OrderRepository, Orders
from orders.transfers import SyncTransfers
from tests.dispatch_support import SandboxControl, sandbox_runtime, wait_until
from tests.integration.test_api import Api, running_api
from tests.integration.test_api_callbacks import signed
from tests.integration.test_transfers_callbacks import paid, refund_webhook

S = OrderStatus
QUIET = timedelta(seconds=30)
LEASE = timedelta(seconds=30)
Scenario = Callable[[Engine, AdapterRuntime], Awaitable[None]]


@pytest.fixture
def wallets(pool: Pool) -> Iterator[SyncWallets]:
    with SyncWallets(pool) as face:
        yield face


def check_due(pool: Pool, order_id: UUID) -> Any:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT refund_check_at FROM orders WHERE id = %s", (order_id,)
        ).fetchone()
    assert row is not None
    return row["refund_check_at"]


def with_engine(repo: OrderRepository, sandbox_url: str, scenario: Scenario) -> None:
    """Run ``scenario`` with an engine that has the real billing hooks (paid and refund)."""
    runtime = sandbox_runtime(sandbox_url)
    settings = BillingSettings()

    async def run() -> None:
        engine_pool = await open_async_pool(repo.conninfo, max_size=2, name="tests-refund-checks")
        engine = Engine(
            Orders(engine_pool, repo.adapters),
            {"sandbox": runtime},
            paid_hook=hooks.build(settings),
            transfer_hook=hooks.build_transfer_hook(settings),
        )
        try:
            await scenario(engine, runtime)
        finally:
            await engine.aclose()
            await engine_pool.close()

    asyncio.run(run())


async def pay(repo: OrderRepository, pool: Pool, engine: Engine, site: str) -> Order:
    """An order created, submitted and paid at the sandbox through the engine's own steps."""
    new = NewOrder(
        site=site,
        user_id="buyer",
        money=Money(1500, "USD"),
        adapter="sandbox",
        metadata={SCENARIO_METADATA_KEY: "pay_after:0"},
    )
    order_id = repo.create(new).order.id
    for action in (Action.SUBMIT, Action.POLL):
        with pool.connection() as conn:
            conn.execute("UPDATE orders SET next_run_at = now() WHERE id = %s", (order_id,))
        (claimed,) = [o for o in repo.claim(1000, LEASE) if o.id == order_id]
        assert claimed.lease_token is not None
        await engine.run(order_id, claimed.lease_token, action)
    order = repo.get(order_id)
    assert order.status is S.PAID
    return order


async def check(transfers: SyncTransfers, engine: Engine, order_id: UUID) -> None:
    """The sweeper's claim and the worker's step of one refund check."""
    claimed = [c for c in transfers.claim_refund_checks(1000, LEASE) if c[0] == order_id]
    assert claimed == [(order_id, "sandbox")]
    assert [c for c in transfers.claim_refund_checks(1000, LEASE) if c[0] == order_id] == []
    await engine.run(order_id, uuid.uuid4(), Action.REFUND_CHECK)


def refund_at_the_dashboard(runtime: AdapterRuntime, order: Order, amount: int) -> None:
    """A refund made at the payment system, not by us: its reference is nobody's id of ours."""
    request = RefundRequest(uuid.uuid4(), order, Money(amount, order.money.currency), "dashboard")
    sent = runtime.adapter.build_refund(request, runtime.settings)
    httpx.request(
        sent.method, sent.url, headers=dict(sent.headers), json=sent.json, timeout=10
    ).raise_for_status()


def test_a_refund_made_at_the_payment_system_is_read_recorded_once_and_reverses_the_wallet(
    repo: OrderRepository,
    pool: Pool,
    site: str,
    control: SandboxControl,
    wallets: SyncWallets,
) -> None:
    transfers = SyncTransfers(repo)

    async def scenario(engine: Engine, runtime: AdapterRuntime) -> None:
        # Given a paid order, credited to the buyer's wallet, refunded 500 at the dashboard,
        order = await pay(repo, pool, engine, site)
        assert wallets.balance(site, "buyer", "USD") == Money(1500, "USD")
        refund_at_the_dashboard(runtime, order, 500)
        psp_id = order.psp_id or ""
        wait_until(lambda: control.invoice(psp_id)["refunded"] == 500, what="refunded")
        # when a hint makes its refund check due (twice: the second changes nothing)
        assert transfers.mark_refund_check(order.id, quiet=QUIET)
        assert not transfers.mark_refund_check(order.id, quiet=QUIET)
        assert repo.get(order.id).refund_reserved == 0  # a hint reserves nothing
        # and the worker reads the payment,
        await check(transfers, engine, order.id)
        # then the refund is recorded once, as the payment system's, and the wallet reversed.
        (refund,) = transfers.list(order_id=order.id).items
        assert (refund.status, refund.origin) == (TransferStatus.SUCCEEDED, "psp")
        assert refund.money == Money(500, "USD")
        current = repo.get(order.id)
        assert (current.refunded_amount, current.refund_reserved) == (500, 500)
        assert wallets.balance(site, "buyer", "USD") == Money(1000, "USD")
        assert check_due(pool, order.id) is None
        # A second check of the same state (a later hint, once the quiet interval is over)
        # records nothing more.
        assert transfers.mark_refund_check(order.id, quiet=timedelta(0))
        await check(transfers, engine, order.id)
        assert len(transfers.list(order_id=order.id).items) == 1
        assert repo.get(order.id).refunded_amount == 500
        assert wallets.balance(site, "buyer", "USD") == Money(1000, "USD")

    with_engine(repo, control.url, scenario)


def test_a_forged_hint_costs_one_status_read_and_records_and_reserves_nothing(
    repo: OrderRepository,
    pool: Pool,
    site: str,
    control: SandboxControl,
    wallets: SyncWallets,
) -> None:
    transfers = SyncTransfers(repo)

    async def scenario(engine: Engine, runtime: AdapterRuntime) -> None:
        order = await pay(repo, pool, engine, site)
        reads = control.stats()["calls"].get("status", 0)
        events = repo.events(order.id)
        assert transfers.mark_refund_check(order.id, quiet=QUIET)
        await check(transfers, engine, order.id)
        assert control.stats()["calls"].get("status", 0) == reads + 1
        assert transfers.list(order_id=order.id).items == []
        current = repo.get(order.id)
        assert (current.refunded_amount, current.refund_reserved) == (0, 0)
        assert (current.status, repo.events(order.id)) == (S.PAID, events)  # no order moved
        assert wallets.balance(site, "buyer", "USD") == Money(1500, "USD")
        # More hints within the quiet interval: the check is due only when it ends.
        assert transfers.mark_refund_check(order.id, quiet=QUIET)
        assert not transfers.mark_refund_check(order.id, quiet=QUIET)
        assert [c for c in transfers.claim_refund_checks(1000, LEASE) if c[0] == order.id] == []

    with_engine(repo, control.url, scenario)


@pytest.fixture(scope="module")
def api(pool: Pool) -> Iterator[Api]:
    with running_api(pool) as running:
        yield running


def test_an_unverified_refund_hint_for_a_paid_order_makes_its_refund_check_due_once(
    api: Api, pool: Pool
) -> None:
    order = paid(api)
    body = refund_webhook(order, refund_id="re_forged", amount=1500)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        for _ in range(2):
            answer = http.post(
                "/v1/callbacks/sandbox", content=body, headers=signed(body, secret="no")
            )
            assert answer.status_code == 200
            due = check_due(pool, order.id)
            assert due is not None
    assert check_due(pool, order.id) == due  # the second hint left the first one's due time
    assert api.repo.run(api.ctx.transfers.list(order_id=order.id)).items == []
    current = api.repo.get(order.id)
    assert (current.refunded_amount, current.refund_reserved) == (0, 0)

"""The paid hooks in the paid transaction: credited exactly once, or not at all."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from adapters.sandbox import SCENARIO_METADATA_KEY
from adapters.sandbox.runner import SandboxHandle
from dispatcher.billing import hooks
from dispatcher.billing.bonus import SyncReferrals
from dispatcher.billing.wallet import POINTS, EntryKind, Points, SyncWallets
from dispatcher.config import BillingSettings, ConfigError
from dispatcher.steps import Action
from dispatcher.worker.engine import Engine
from orders import Money, NewOrder, OrderStatus, StaleOrder
from orders.db import AsyncConnection, Pool, open_async_pool
from orders.model import Order, PaidEvent, PaidHook
from orders.repository import OrderRepository, Orders
from tests.billing_support import pay, replay_hook
from tests.dispatch_support import sandbox_runtime

S = OrderStatus


class HookFailure(RuntimeError):
    pass


class Flaky:
    """A Python hook that raises while ``failing`` is set; counts its calls."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    async def __call__(self, tx: AsyncConnection, event: PaidEvent) -> None:
        self.calls += 1
        await tx.execute("SELECT 1")  # it runs on the paid transaction's connection
        if self.failing:
            raise HookFailure(f"site's hook refused order {event.order.id}")


flaky_hook = Flaky()


class Recorder:
    """A site's own async hook: records each event it is handed and the order's status as its
    transaction sees it."""

    def __init__(self) -> None:
        self.seen: list[tuple[PaidEvent, str]] = []

    async def __call__(self, tx: AsyncConnection, event: PaidEvent) -> None:
        cursor = await tx.execute("SELECT status FROM orders WHERE id = %s", (event.order.id,))
        row = await cursor.fetchone()
        assert row is not None
        self.seen.append((event, row["status"]))


recorder = Recorder()


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    flaky_hook.failing = True
    flaky_hook.calls = 0
    yield flaky_hook
    flaky_hook.failing = False


def awaiting(repo: OrderRepository, site: str, user: str = "buyer", amount: int = 1500) -> Order:
    """An order with an invoice, as the engine leaves it before the payment is seen."""
    new = NewOrder(site=site, user_id=user, money=Money(amount, "USD"), adapter="sandbox")
    order = repo.create(new).order
    repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test", next_run_at=None)
    return repo.transition(
        order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=f"inv-{order.id}"
    )


def credits(pool: Pool, order_id: UUID) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return conn.execute(
            "SELECT * FROM wallet_entries WHERE order_id = %s ORDER BY id", (order_id,)
        ).fetchall()


@pytest.fixture
def wallets(pool: Pool) -> Iterator[SyncWallets]:
    with SyncWallets(pool) as face:
        yield face


def wallet_hook(**billing: Any) -> PaidHook:
    hook = hooks.build(BillingSettings(**billing))
    assert hook is not None
    return hook


def test_paid_transition_credits_the_wallet_in_the_same_transaction(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    order = awaiting(repo, site)
    hook = wallet_hook()
    paid = pay(repo, order.id, S.AWAITING_PAYMENT, hook)
    assert paid.status is S.PAID
    rows = credits(pool, order.id)
    assert [(r["kind"], r["amount"], r["currency"], r["user_id"]) for r in rows] == [
        ("topup", 1500, "USD", "buyer")
    ]
    assert wallets.balance(site, "buyer", "USD") == Money(1500, "USD")


def test_replayed_paid_transition_credits_once(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    order = awaiting(repo, site)
    hook = wallet_hook()
    paid = pay(repo, order.id, S.AWAITING_PAYMENT, hook)
    # The compare-and-set refuses a second move from awaiting_payment,
    with pytest.raises(StaleOrder):
        pay(repo, order.id, S.AWAITING_PAYMENT, hook)
    # and the hook itself, replayed in another transaction, returns the existing credit
    # instead of raising (the unique constraint is the second line of defence).
    replay_hook(repo, hook, paid, S.AWAITING_PAYMENT)
    assert len(credits(pool, order.id)) == 1
    assert wallets.balance(site, "buyer", "USD") == Money(1500, "USD")


def test_a_second_credit_for_an_order_is_impossible_in_sql(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    import psycopg

    order = awaiting(repo, site)
    pay(repo, order.id, S.AWAITING_PAYMENT, wallet_hook())
    with pool.connection() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "INSERT INTO wallet_entries (site, user_id, currency, amount, balance_after, kind,"
            " order_id) VALUES (%s, 'buyer', 'USD', 1500, 3000, 'topup', %s)",
            (site, order.id),
        )


def test_raced_paid_transitions_credit_once(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    orders = [awaiting(repo, site, user=f"u{i}") for i in range(5)]
    hook = wallet_hook()
    start = threading.Barrier(8)

    def race(order: Order) -> str:
        start.wait()
        try:
            pay(repo, order.id, S.AWAITING_PAYMENT, hook, actor="race")
            return "moved"
        except StaleOrder:
            return "stale"

    for order in orders:
        start.reset()
        with ThreadPoolExecutor(8) as executor:
            results = list(executor.map(race, [order] * 8))
        assert results.count("moved") == 1
        assert len(credits(pool, order.id)) == 1
    assert [wallets.balance(site, f"u{i}", "USD").amount for i in range(5)] == [1500] * 5


def test_late_payment_is_credited_and_labelled(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    order = awaiting(repo, site)
    repo.transition(order.id, S.AWAITING_PAYMENT, S.EXPIRED, actor="test")
    pay(repo, order.id, S.EXPIRED, wallet_hook())
    (row,) = credits(pool, order.id)
    assert row["amount"] == 1500
    assert row["description"].startswith("late payment")


def test_the_webhook_event_of_a_late_payment_says_late(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    on_time = awaiting(repo, site)
    late = awaiting(repo, site)
    repo.transition(late.id, S.AWAITING_PAYMENT, S.EXPIRED, actor="test")
    hook = wallet_hook(hooks=("webhook",))
    pay(repo, on_time.id, S.AWAITING_PAYMENT, hook)
    pay(repo, late.id, S.EXPIRED, hook)
    with pool.connection() as conn:
        for order, expected in ((on_time, False), (late, True)):
            row = conn.execute(
                "SELECT body FROM billing_outbox WHERE order_id = %s", (order.id,)
            ).fetchone()
            assert row is not None
            assert json.loads(row["body"])["data"]["late"] is expected


def test_a_custom_async_hook_is_handed_a_paid_event_late_after_expiry(
    repo: OrderRepository, site: str
) -> None:
    # Given a site's own async hook, configured by path,
    hook = wallet_hook(hooks=(f"{__name__}:recorder",))
    recorder.seen.clear()
    on_time = awaiting(repo, site)
    late = awaiting(repo, site)
    repo.transition(late.id, S.AWAITING_PAYMENT, S.EXPIRED, actor="test")
    # when one order is paid in time and the other after it expired,
    pay(repo, on_time.id, S.AWAITING_PAYMENT, hook)
    pay(repo, late.id, S.EXPIRED, hook, actor="notification")
    # then the hook is handed each paid order, where it was paid from, by whom, and whether late,
    (first, first_status), (second, second_status) = recorder.seen
    assert (first.order.id, first.previous, first.actor, first.late) == (
        on_time.id, S.AWAITING_PAYMENT, "test", False,
    )  # fmt: skip
    assert (second.order.id, second.previous, second.actor, second.late) == (
        late.id, S.EXPIRED, "notification", True,
    )  # fmt: skip
    assert second.order.status is S.PAID
    assert second.order.paid_at is not None
    # inside the paid transaction (it already sees the order paid), and nothing re-read.
    assert first_status == second_status == "paid"
    assert repo.get(late.id).status is S.PAID


def test_failing_python_hook_rolls_back_the_paid_transition_and_the_credit(
    repo: OrderRepository, pool: Pool, site: str, flaky: Flaky, wallets: SyncWallets
) -> None:
    # Given the wallet hook followed by a site's Python hook that raises,
    hook = wallet_hook(hooks=("wallet", f"{__name__}:flaky_hook"))
    order = awaiting(repo, site)
    # when the order is paid, the transition fails with the hook's error
    with pytest.raises(HookFailure):
        pay(repo, order.id, S.AWAITING_PAYMENT, hook)
    # and nothing of it is left: still awaiting payment, no credit, no event, no wallet.
    assert repo.get(order.id).status is S.AWAITING_PAYMENT
    assert credits(pool, order.id) == []
    assert [e.to_status for e in repo.events(order.id)][-1] is S.AWAITING_PAYMENT
    assert wallets.balances(site, "buyer") == []
    # Once the hook accepts, the same move credits exactly once.
    flaky.failing = False
    pay(repo, order.id, S.AWAITING_PAYMENT, hook)
    assert len(credits(pool, order.id)) == 1
    assert flaky.calls == 2


def test_engine_retries_an_order_whose_hook_raised(
    repo: OrderRepository,
    pool: Pool,
    site: str,
    sandbox: SandboxHandle,
    flaky: Flaky,
) -> None:
    hook = wallet_hook(hooks=("wallet", f"{__name__}:flaky_hook"))
    runtimes = {"sandbox": sandbox_runtime(sandbox.url)}
    new = NewOrder(
        site=site,
        user_id="buyer",
        money=Money(2500, "USD"),
        adapter="sandbox",
        metadata={SCENARIO_METADATA_KEY: "pay_after:0"},
    )
    order_id = repo.create(new).order.id

    async def step(engine: Engine, action: Action) -> Order:
        with pool.connection() as conn:  # make it due now, then claim it like the sweeper
            conn.execute("UPDATE orders SET next_run_at = now() WHERE id = %s", (order_id,))
        claimed = [o for o in repo.claim(1000, timedelta(seconds=30)) if o.id == order_id]
        assert claimed, "the order was not due"
        assert claimed[0].lease_token is not None
        await engine.run(order_id, claimed[0].lease_token, action)
        return repo.get(order_id)

    async def scenario(engine: Engine) -> None:
        assert (await step(engine, Action.SUBMIT)).status is S.AWAITING_PAYMENT
        # The payment system says paid, but the hook raises: the order stays where it was,
        # with the error recorded and a retry scheduled; nothing was credited.
        failed = await step(engine, Action.POLL)
        assert failed.status is S.AWAITING_PAYMENT
        assert failed.last_error is not None
        assert "HookFailure" in failed.last_error
        assert failed.next_run_at is not None
        assert failed.lease_token is None
        assert credits(pool, order_id) == []
        # The retry, with the hook accepting now, pays and credits once.
        flaky.failing = False
        paid = await step(engine, Action.POLL)
        assert paid.status is S.PAID
        assert [(r["kind"], r["amount"]) for r in credits(pool, order_id)] == [("topup", 2500)]

    async def run() -> None:
        # The engine's repository lives on this loop, over a pool opened here.
        engine_pool = await open_async_pool(repo.conninfo, max_size=2, name="tests-engine")
        engine = Engine(Orders(engine_pool, repo.adapters), runtimes, paid_hook=hook)
        try:
            await scenario(engine)
        finally:
            await engine.aclose()
            await engine_pool.close()

    asyncio.run(run())


def test_cashback_and_referral_bonuses(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    with SyncReferrals(pool) as referrals:
        referrals.invite(site, "buyer", "level1")
        referrals.invite(site, "level1", "level2")
        referrals.invite(site, "level2", "level3")
        referrals.invite(site, "level3", "buyer")  # a cycle ends the chain, never loops
        assert referrals.invite(site, "buyer", "someone-else") == "level1"  # set once
    hook = wallet_hook(
        cashback_percent=Decimal("2.5"),
        referral_percents=(Decimal(10), Decimal(5), Decimal(1), Decimal(1)),
    )
    order = awaiting(repo, site, amount=10_000)
    pay(repo, order.id, S.AWAITING_PAYMENT, hook)
    assert wallets.balance(site, "buyer", "USD") == Money(10_000, "USD")
    assert wallets.balance(site, "buyer", POINTS) == Points(250, POINTS)
    assert wallets.balance(site, "level1", "USD") == Money(1000, "USD")
    assert wallets.balance(site, "level2", "USD") == Money(500, "USD")
    assert wallets.balance(site, "level3", "USD") == Money(100, "USD")
    kinds = sorted((r["kind"], r["user_id"]) for r in credits(pool, order.id))
    assert kinds == [
        ("cashback", "buyer"),
        ("referral", "level1"),
        ("referral", "level2"),
        ("referral", "level3"),
        ("topup", "buyer"),
    ]
    # A replay of the hook adds no bonus either.
    replay_hook(repo, hook, repo.get(order.id), S.AWAITING_PAYMENT)
    assert len(credits(pool, order.id)) == 5
    assert EntryKind.CASHBACK in {EntryKind(r["kind"]) for r in credits(pool, order.id)}


def test_unknown_hooks_stop_at_start() -> None:
    with pytest.raises(ConfigError, match="no hook 'nope'"):
        hooks.build(BillingSettings(hooks=("nope",)))
    with pytest.raises(ConfigError, match="cannot load"):
        hooks.build(BillingSettings(hooks=("tests.nowhere:hook",)))
    assert hooks.build(BillingSettings(hooks=())) is None

"""Refund billing against a real PostgreSQL (issue #14): a succeeded refund reverses the credit
once, in the transaction that settles it; the overdraft policy (refuse: held at request, or
refused; allow: negative, flagged and counted); bonuses reversed in proportion; the webhook's
``refund`` event; the audit.

Transfers are written here with plain SQL into G1's ``transfers`` table and moved along its
transitions, with the hook run in the transaction that makes them final, as the worker does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from dispatcher.billing import hooks
from dispatcher.billing.audit import AuditReport, audit
from dispatcher.billing.bonus import SyncReferrals
from dispatcher.billing.face import Face
from dispatcher.billing.refunds import RefundHold
from dispatcher.billing.wallet import POINTS, EntryKind, Points, SyncWallets
from dispatcher.config import BillingSettings
from orders import Money, NewOrder, OrderStatus
from orders.db import AsyncConnection, Pool, atransaction
from orders.errors import InsufficientFunds, RefundRefused
from orders.model import Order, Transfer, TransferEvent, TransferHook, TransferStatus
from orders.repository import OrderRepository
from tests.billing_support import pay

S = OrderStatus
T = TransferStatus
USD = "USD"
# How a transfer reaches each final status (the schema's transfer_transitions).
PATHS = {
    T.SUCCEEDED: (T.SUBMITTING, T.PENDING, T.SUCCEEDED),
    T.FAILED: (T.SUBMITTING, T.FAILED),
    T.CANCELLED: (T.CANCELLED,),
}


@pytest.fixture
def wallets(pool: Pool) -> Iterator[SyncWallets]:
    with SyncWallets(pool) as face:
        yield face


def paid_order(repo: OrderRepository, site: str, amount: int = 1000, **billing: Any) -> Order:
    new = NewOrder(site=site, user_id="buyer", money=Money(amount, USD), adapter="sandbox")
    order = repo.create(new).order
    repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test", next_run_at=None)
    repo.transition(order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", next_run_at=None)
    return pay(repo, order.id, S.AWAITING_PAYMENT, hooks.build(BillingSettings(**billing)))


def refund_hook(**billing: Any) -> TransferHook:
    hook = hooks.build_transfer_hook(BillingSettings(**billing))
    assert hook is not None
    return hook


def request(
    repo: OrderRepository,
    order: Order,
    amount: int,
    *,
    hold: RefundHold | None = None,
    status: TransferStatus = T.REQUESTED,
    origin: str = "site",
) -> Transfer:
    """A refund written as the API writes it: in one transaction with the request-time hold."""

    async def write() -> Transfer:
        async with atransaction(repo.orders.pool) as tx:
            row = await (
                await tx.execute(
                    "INSERT INTO transfers (kind, site, adapter, user_id, amount, currency, "
                    "status, order_id, origin, requested_by, reason, settled_at) "
                    "VALUES ('refund', %s, 'sandbox', %s, %s, %s, %s, %s, %s, 'test', "
                    "'changed their mind', CASE WHEN %s THEN now() END) RETURNING *",
                    (
                        order.site,
                        order.user_id,
                        amount,
                        order.money.currency,
                        str(status),
                        order.id,
                        origin,
                        status is T.SUCCEEDED,
                    ),
                )
            ).fetchone()
            assert row is not None
            transfer = Transfer.from_row(row)
            if hold is not None:
                await hold(tx, transfer)
            return transfer

    return repo.run(write())


def finish(
    repo: OrderRepository,
    transfer: Transfer,
    status: TransferStatus,
    hook: TransferHook | None,
) -> Transfer:
    """Move ``transfer`` to ``status`` along its transitions, the hook in the last move's
    transaction (as the worker's write does)."""

    async def move() -> Transfer:
        previous = transfer.status
        async with atransaction(repo.orders.pool) as tx:
            row: dict[str, Any] | None = None
            for step in PATHS[status]:
                row = await (
                    await tx.execute(
                        "UPDATE transfers SET status = %s, updated_at = now(), "
                        "settled_at = CASE WHEN %s THEN now() END WHERE id = %s RETURNING *",
                        (str(step), step is status, transfer.id),
                    )
                ).fetchone()
                if step is not status:
                    previous = step
            assert row is not None
            moved = Transfer.from_row(row)
            if hook is not None:
                await hook(tx, TransferEvent(moved, previous, "test"))
            return moved

    return repo.run(move())


def replay(repo: OrderRepository, transfer: Transfer, hook: TransferHook) -> None:
    """The hook run again for a final transfer, in a transaction of its own."""

    async def again() -> None:
        async with atransaction(repo.orders.pool) as tx:
            await hook(tx, TransferEvent(transfer, T.PENDING, "test"))

    repo.run(again())


def run_audit(pool: Pool, site: str, **kwargs: bool) -> AuditReport:
    with Face(pool) as database:
        return database.run(lambda async_pool: audit(async_pool, site=site, **kwargs))


def entries(pool: Pool, site: str, *kinds: str) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return conn.execute(
            "SELECT * FROM wallet_entries WHERE site = %s AND kind = ANY(%s) ORDER BY id",
            (site, list(kinds)),
        ).fetchall()


def wallet(pool: Pool, site: str, user: str, currency: str = USD) -> tuple[int, int, bool]:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT balance, held, overdrawn FROM wallets "
            "WHERE site = %s AND user_id = %s AND currency = %s",
            (site, user, currency),
        ).fetchone()
    assert row is not None
    return row["balance"], row["held"], row["overdrawn"]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_succeeded_refund_reverses_the_credit_once(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    # Given a paid order of 10.00 credited to the buyer (policy allow: nothing held),
    order = paid_order(repo, site)
    hook = refund_hook(refund_overdraft="allow")
    # when a 4.00 refund succeeds, and its hook is run a second time,
    refund = finish(repo, request(repo, order, 400), T.SUCCEEDED, hook)
    replay(repo, refund, hook)
    # then one refund entry, keyed by the transfer, took 4.00 back.
    rows = entries(pool, site, "refund")
    assert [(r["amount"], r["held_amount"], r["idempotency_key"]) for r in rows] == [
        (-400, 0, f"refund:{refund.id}")
    ]
    assert rows[0]["order_id"] == order.id
    assert wallet(pool, site, "buyer") == (600, 0, False)
    report = run_audit(pool, site)
    assert report.ok, report.discrepancies
    assert report.refunds == [f"order {order.id} ({site}): refunded 400 of 1000 USD credited"]


def test_refuse_policy_holds_at_request_and_settles_the_hold_on_success(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    order = paid_order(repo, site)
    hold = hooks.build_refund_hold(BillingSettings())
    assert hold is not None  # refuse is the default
    hook = refund_hook()
    # When a 7.00 refund is requested, its amount is held at once:
    refund = request(repo, order, 700, hold=hold)
    assert wallet(pool, site, "buyer") == (300, 700, False)
    # it cannot be spent while the refund is being sent,
    with pytest.raises(InsufficientFunds):
        wallets.debit(site, "buyer", Money(400, USD), key="spend", description="spend")
    # and its success takes the hold out for good, once.
    done = finish(repo, refund, T.SUCCEEDED, hook)
    replay(repo, done, hook)
    rows = entries(pool, site, "hold", "refund", "release")
    assert [(r["kind"], r["amount"], r["held_amount"]) for r in rows] == [
        ("hold", -700, 700),
        ("refund", 0, -700),
    ]
    assert wallet(pool, site, "buyer") == (300, 0, False)
    report = run_audit(pool, site)
    assert report.ok, report.discrepancies
    assert report.refunds == [f"order {order.id} ({site}): refunded 700 of 1000 USD credited"]


def test_refuse_policy_releases_the_hold_when_the_refund_fails_or_is_cancelled(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    order = paid_order(repo, site)
    hold = hooks.build_refund_hold(BillingSettings())
    assert hold is not None
    hook = refund_hook()
    failed = finish(repo, request(repo, order, 500, hold=hold), T.FAILED, hook)
    replay(repo, failed, hook)
    cancelled = finish(repo, request(repo, order, 200, hold=hold), T.CANCELLED, hook)
    assert wallet(pool, site, "buyer") == (1000, 0, False)
    rows = entries(pool, site, "hold", "release", "refund")
    assert [(r["kind"], r["amount"], r["idempotency_key"]) for r in rows] == [
        ("hold", -500, f"refund-hold:{failed.id}"),
        ("release", 500, f"refund-release:{failed.id}"),
        ("hold", -200, f"refund-hold:{cancelled.id}"),
        ("release", 200, f"refund-release:{cancelled.id}"),
    ]
    report = run_audit(pool, site)
    assert report.ok, report.discrepancies


def test_refuse_policy_refuses_a_refund_the_balance_cannot_cover(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    # Given a paid order of 10.00 of which the buyer spent 8.00,
    order = paid_order(repo, site)
    wallets.debit(site, "buyer", Money(800, USD), key="spent", description="spent")
    hold = hooks.build_refund_hold(BillingSettings(refund_overdraft="refuse"))
    assert hold is not None
    # when a 5.00 refund is requested, it is refused before anything is written or sent.
    with pytest.raises(RefundRefused, match="cannot cover"):
        request(repo, order, 500, hold=hold)
    with pool.connection() as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM transfers WHERE order_id = %(o)s) AS transfers, "
            "(SELECT refund_reserved FROM orders WHERE id = %(o)s) AS reserved",
            {"o": order.id},
        ).fetchone()
    assert left is not None
    assert (left["transfers"], left["reserved"]) == (0, 0)
    assert wallet(pool, site, "buyer") == (200, 0, False)
    # What the balance covers is still held and refunded.
    refund = request(repo, order, 200, hold=hold)
    finish(repo, refund, T.SUCCEEDED, refund_hook())
    assert wallet(pool, site, "buyer") == (0, 0, False)
    assert run_audit(pool, site).ok


def test_allow_policy_lets_only_refunds_overdraw_flagged_and_counted(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    assert hooks.build_refund_hold(BillingSettings(refund_overdraft="allow")) is None
    order = paid_order(repo, site)
    wallets.debit(site, "buyer", Money(800, USD), key="spent", description="spent")
    before = counter("paydispatch_wallet_overdrafts_total", kind="refund")
    hook = refund_hook(refund_overdraft="allow")
    refund = finish(repo, request(repo, order, 500), T.SUCCEEDED, hook)
    replay(repo, refund, hook)
    # The balance went below zero through the refund entry alone, flagged and counted once.
    assert wallet(pool, site, "buyer") == (-300, 0, True)
    [entry] = entries(pool, site, "refund")
    assert (entry["amount"], entry["balance_after"]) == (-500, -300)
    assert counter("paydispatch_wallet_overdrafts_total", kind="refund") == before + 1
    # Nothing else may take it further down,
    with pytest.raises(InsufficientFunds):
        wallets.debit(site, "buyer", Money(1, USD), key="more", description="more")
    with pytest.raises(InsufficientFunds):
        wallets.hold(site, "buyer", Money(1, USD), key="hold", description="hold")
    report = run_audit(pool, site)
    assert report.ok, report.discrepancies
    assert report.wallets == [f"wallet {site}/buyer/USD: balance -300, held 0, overdrawn"]
    # credits raise it, and the flag goes when it is back at zero.
    wallets.credit(site, "buyer", Money(100, USD), kind="adjustment", key="c1", description="c")
    assert wallet(pool, site, "buyer") == (-200, 0, True)
    wallets.credit(site, "buyer", Money(200, USD), kind="adjustment", key="c2", description="c")
    assert wallet(pool, site, "buyer") == (0, 0, False)
    assert run_audit(pool, site).ok


def test_a_refund_the_payment_system_made_is_written_whatever_the_policy(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    # Under refuse, a refund nobody requested here (reported as succeeded) cannot be refused:
    # the money is gone. It is written, flagged, never silent.
    order = paid_order(repo, site)
    wallets.debit(site, "buyer", Money(900, USD), key="spent", description="spent")
    reported = request(repo, order, 1000, status=T.SUCCEEDED, origin="psp")
    replay(repo, reported, refund_hook(refund_overdraft="refuse"))
    assert wallet(pool, site, "buyer") == (-900, 0, True)
    report = run_audit(pool, site)
    assert report.ok, report.discrepancies


def test_bonuses_are_reversed_in_proportion_rounding_down(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    with SyncReferrals(pool) as referrals:
        referrals.invite(site, "buyer", "level1")
        referrals.invite(site, "level1", "level2")
    billing: dict[str, Any] = {
        "cashback_percent": Decimal(3),
        "referral_percents": (Decimal(10), Decimal(5)),
    }
    # 9.99 paid: 29 points of cashback (29.97 rounded down), 0.99 and 0.49 to the inviters.
    order = paid_order(repo, site, 999, **billing)
    assert wallet(pool, site, "buyer", POINTS)[0] == 29
    assert wallet(pool, site, "level1")[0] == 99
    assert wallet(pool, site, "level2")[0] == 49
    hold = hooks.build_refund_hold(BillingSettings(**billing))
    assert hold is not None
    hook = refund_hook(**billing)
    # About half refunded: each bonus gives back its share, rounded down (14.48 -> 14, ...).
    half = finish(repo, request(repo, order, 499, hold=hold), T.SUCCEEDED, hook)
    replay(repo, half, hook)
    assert wallet(pool, site, "buyer", POINTS)[0] == 29 - 14
    assert wallet(pool, site, "level1")[0] == 99 - 49
    assert wallet(pool, site, "level2")[0] == 49 - 24
    # The rest refunded: the rest of every bonus, so nothing of it is left.
    rest = finish(repo, request(repo, order, 500, hold=hold), T.SUCCEEDED, hook)
    replay(repo, rest, hook)
    assert wallet(pool, site, "buyer", POINTS) == (0, 0, False)
    assert wallet(pool, site, "level1") == (0, 0, False)
    assert wallet(pool, site, "level2") == (0, 0, False)
    assert wallet(pool, site, "buyer") == (0, 0, False)
    reversals = entries(pool, site, "bonus_reversal")
    assert sorted((r["user_id"], r["currency"], r["amount"]) for r in reversals) == [
        ("buyer", POINTS, -15), ("buyer", POINTS, -14),
        ("level1", USD, -50), ("level1", USD, -49),
        ("level2", USD, -25), ("level2", USD, -24),
    ]  # fmt: skip
    report = run_audit(pool, site)
    assert report.ok, report.discrepancies


def test_refuse_policy_takes_back_only_what_is_left_of_a_spent_bonus(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    order = paid_order(repo, site, 1000, cashback_percent=Decimal(10))
    wallets.debit(site, "buyer", Points(80, POINTS), key="spent", description="spent points")
    before = counter("paydispatch_bonus_reversal_shortfalls_total")
    hold = hooks.build_refund_hold(BillingSettings())
    assert hold is not None
    finish(repo, request(repo, order, 1000, hold=hold), T.SUCCEEDED, refund_hook())
    # 100 points were due back; 20 were left: 20 taken, the rest counted, never negative.
    assert wallet(pool, site, "buyer", POINTS) == (0, 0, False)
    assert [r["amount"] for r in entries(pool, site, "bonus_reversal")] == [-20]
    assert counter("paydispatch_bonus_reversal_shortfalls_total") == before + 1
    assert run_audit(pool, site).ok


def test_the_webhook_gets_one_refund_event_per_succeeded_refund(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    billing: dict[str, Any] = {"hooks": ("wallet", "webhook"), "refund_overdraft": "allow"}
    order = paid_order(repo, site, **billing)
    hook = refund_hook(**billing)
    first = finish(repo, request(repo, order, 300), T.SUCCEEDED, hook)
    replay(repo, first, hook)
    second = finish(repo, request(repo, order, 200), T.SUCCEEDED, hook)
    finish(repo, request(repo, order, 100), T.FAILED, hook)
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT * FROM billing_outbox WHERE order_id = %s ORDER BY created_at, event_type",
            (order.id,),
        ).fetchall()
    assert [(r["event_type"], r["transfer_id"]) for r in rows] == [
        ("order.paid", None),
        ("refund", first.id),
        ("refund", second.id),
    ]
    body = json.loads(rows[1]["body"])
    assert body["type"] == "refund"
    assert body["id"] == str(rows[1]["id"])
    assert {k: body["data"][k] for k in ("refund_id", "order_id", "amount", "currency")} == {
        "refund_id": str(first.id),
        "order_id": str(order.id),
        "amount": 300,
        "currency": USD,
    }
    report = run_audit(pool, site, webhook_hook=True)
    assert report.ok, report.discrepancies


class SiteHook:
    """A site's own Python billing hook with ``on_refund``: records what it is handed."""

    def __init__(self) -> None:
        self.refunds: list[tuple[TransferStatus, int]] = []

    async def __call__(self, tx: AsyncConnection, event: Any) -> None:
        return None

    async def on_refund(self, tx: AsyncConnection, event: TransferEvent) -> None:
        cursor = await tx.execute(
            "SELECT status FROM transfers WHERE id = %s", (event.transfer.id,)
        )
        row = await cursor.fetchone()
        assert row is not None
        assert row["status"] == str(event.transfer.status)
        self.refunds.append((event.transfer.status, event.transfer.money.amount))


site_hook = SiteHook()


def test_a_python_hook_gets_refund_events_through_on_refund(
    repo: OrderRepository, site: str
) -> None:
    site_hook.refunds.clear()
    spec = f"{__name__}:site_hook"
    order = paid_order(repo, site)
    hook = refund_hook(hooks=("wallet", spec), refund_overdraft="allow")
    finish(repo, request(repo, order, 250), T.SUCCEEDED, hook)
    finish(repo, request(repo, order, 150), T.CANCELLED, hook)
    assert site_hook.refunds == [(T.SUCCEEDED, 250), (T.CANCELLED, 150)]
    # Billing off: no refund hook at all.
    assert hooks.build_transfer_hook(BillingSettings(hooks=())) is None


def test_audit_catches_unbilled_refunds_open_holds_and_tampered_entries(
    repo: OrderRepository, pool: Pool, site: str
) -> None:
    order = paid_order(repo, site)
    hold = hooks.build_refund_hold(BillingSettings())
    assert hold is not None
    billed = finish(repo, request(repo, order, 100, hold=hold), T.SUCCEEDED, refund_hook())
    assert run_audit(pool, site).ok
    # A refund that succeeded without its hook, and a failed one whose hold stayed:
    unbilled = finish(repo, request(repo, order, 200), T.SUCCEEDED, None)
    stuck = finish(repo, request(repo, order, 300, hold=hold), T.FAILED, None)
    report = run_audit(pool, site)
    assert sorted(report.discrepancies) == sorted(
        [
            f"refund {unbilled.id} ({site}, order {order.id}, succeeded): 200 USD refunded, "
            "0 billed",
            f"refund {stuck.id} ({site}, order {order.id}, failed): its hold was never released",
        ]
    )
    # and an entry changed behind the ledger's back.
    with pool.connection() as conn, conn.transaction():
        conn.execute("ALTER TABLE wallet_entries DISABLE TRIGGER wallet_entries_append_only")
        conn.execute(
            "UPDATE wallet_entries SET held_amount = -50 WHERE idempotency_key = %s",
            (f"refund:{billed.id}",),
        )
        conn.execute("ALTER TABLE wallet_entries ENABLE TRIGGER wallet_entries_append_only")
    tampered = run_audit(pool, site)
    assert any(f"refund {billed.id} " in line and "50 billed" in line
               for line in tampered.discrepancies), tampered.discrepancies  # fmt: skip
    assert any(line.startswith("balance: wallet") for line in tampered.discrepancies)
    assert any(EntryKind.REFUND in line or "running sum" in line
               for line in tampered.discrepancies)  # fmt: skip

"""``paydispatch wallet ...`` commands and the audit, against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

import pytest

from dispatcher.billing import hooks
from dispatcher.billing.audit import AuditReport, audit
from dispatcher.billing.face import Face
from dispatcher.billing.wallet import SyncWallets
from dispatcher.config import BillingSettings
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool
from orders.repository import OrderRepository
from tests.billing_support import pay
from tests.conftest import cli

S = OrderStatus


def paid_order(
    repo: OrderRepository, pool: Pool, site: str, *, late: bool = False, credit: bool = True
) -> UUID:
    new = NewOrder(site=site, user_id="buyer", money=Money(1000, "USD"), adapter="sandbox")
    order = repo.create(new).order
    repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test", next_run_at=None)
    repo.transition(order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", next_run_at=None)
    current = S.AWAITING_PAYMENT
    if late:
        repo.transition(order.id, current, S.EXPIRED, actor="test", next_run_at=None)
        current = S.EXPIRED
    pay(repo, order.id, current, hooks.build(BillingSettings()) if credit else None)
    return order.id


@pytest.fixture
def wallets(pool: Pool) -> Iterator[SyncWallets]:
    with SyncWallets(pool) as face:
        yield face


def run_audit(pool: Pool, site: str) -> AuditReport:
    with Face(pool) as database:
        return database.run(lambda async_pool: audit(async_pool, site=site))


def test_cli_credit_debit_balance_history(database_url: str, site: str) -> None:
    credit = cli(
        database_url, "wallet", "credit", "alice", "12.50", "USD",
        "--reason", "goodwill", "--key", "c-1", "--site", site,
    )  # fmt: skip
    assert credit.returncode == 0, credit.stdout + credit.stderr
    assert "+12.50 USD" in credit.stdout
    again = cli(
        database_url, "wallet", "credit", "alice", "12.50", "USD",
        "--reason", "goodwill", "--key", "c-1", site=site,
    )  # fmt: skip
    assert again.returncode == 0
    assert "replay" in again.stdout
    debit = cli(
        database_url, "wallet", "debit", "alice", "2.50", "USD",
        "--reason", "sticker", "--key", "d-1", site=site,
    )  # fmt: skip
    assert debit.returncode == 0, debit.stdout
    assert "= 10.00 USD" in debit.stdout
    balance = cli(database_url, "wallet", "balance", "alice", site=site)
    assert balance.stdout.strip() == "10.00 USD  (available 10.00 USD, held 0.00 USD)"
    history = cli(database_url, "wallet", "history", "alice", "--limit", "1", site=site)
    assert "debit" in history.stdout
    assert "more: --cursor" in history.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["debit", "alice", "1000", "USD"], "less than"),
        (["debit", "nobody", "1", "USD"], "no USD wallet"),
        (["credit", "alice", "-5", "USD"], "must be positive"),
        (["credit", "alice", "5", "XYZ"], "not an active ISO 4217"),
        (["credit", "alice", "1.001", "USD"], "decimal place"),
    ],
)
def test_cli_refuses_bad_input_and_writes_nothing(
    database_url: str, wallets: SyncWallets, site: str, args: list[str], message: str
) -> None:
    wallets.credit(site, "alice", Money(100, "USD"), kind="adjustment", key="s", description="")
    result = cli(database_url, "wallet", *args, "--reason", "r", "--key", "bad", site=site)
    assert result.returncode != 0
    assert message in result.stdout
    assert wallets.history(site, "alice").items[0].key == "s"


def test_cli_key_reused_with_another_amount_conflicts(database_url: str, site: str) -> None:
    base = ["wallet", "credit", "bob", "1.00", "USD", "--reason", "r", "--key", "k", "--site", site]
    assert cli(database_url, *base).returncode == 0
    base[3] = "2.00"
    result = cli(database_url, *base)
    assert result.returncode == 1
    assert "already used" in result.stdout


def test_wallet_commands_need_a_site(database_url: str) -> None:
    result = cli(database_url, "wallet", "balance", "alice")
    assert result.returncode != 0
    assert "--site" in result.stderr


def test_audit_passes_then_catches_a_tampered_balance(
    repo: OrderRepository, pool: Pool, database_url: str, site: str, wallets: SyncWallets
) -> None:
    paid_order(repo, pool, site)
    late = paid_order(repo, pool, site, late=True)
    wallets.refund(
        site, "buyer", Money(400, "USD"), order_id=late, key="refund-1", description="partial"
    )
    clean = run_audit(pool, site)
    assert clean.ok, clean.discrepancies
    assert len(clean.late_payments) == 1
    assert "paid after expired; credited" in clean.late_payments[0]
    assert clean.refunds == [f"order {late} ({site}): refunded 400 of 1000 USD credited"]
    # A refund entry no refund records (as the retired `wallet refund` wrote) is listed.
    (unlinked,) = clean.unlinked
    assert f"400 USD from {site}/buyer for order {late} (key refund-1)" in unlinked
    ok = cli(database_url, "wallet", "audit", "--site", site)
    assert ok.returncode == 0, ok.stdout
    assert "OK" in ok.stdout
    # A balance changed behind the ledger's back is caught.
    with pool.connection() as conn:
        conn.execute(
            "UPDATE wallets SET balance = balance + 100 WHERE site = %s AND user_id = 'buyer'",
            (site,),
        )
    tampered = cli(database_url, "wallet", "audit", "--site", site)
    assert tampered.returncode == 1
    assert f"balance: wallet {site}/buyer/USD holds 1700, its entries sum to 1600" in (
        tampered.stdout
    )


def test_audit_catches_paid_orders_without_credit_and_credits_without_paid_order(
    repo: OrderRepository, pool: Pool, site: str, wallets: SyncWallets
) -> None:
    uncredited = paid_order(repo, pool, site, credit=False)
    new = NewOrder(site=site, user_id="buyer", money=Money(500, "USD"), adapter="sandbox")
    unpaid = repo.create(new).order
    wallets.credit(
        site, "buyer", Money(500, "USD"), kind="topup", key=None, description="", order_id=unpaid.id
    )
    report = run_audit(pool, site)
    assert not report.ok
    text = "\n".join(report.discrepancies)
    assert f"paid order {uncredited}" in text
    assert "0 top-up credit(s)" in text
    assert f"for order {unpaid.id}, which is new, not paid" in text

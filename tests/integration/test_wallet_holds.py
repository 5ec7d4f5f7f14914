"""Wallet holds against a real PostgreSQL (issue #14): balance set aside, then settled or
released, each exactly once per key; never an overdraft, whatever runs at the same time; the
audit replays balance and held from the entries."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from dispatcher.billing.audit import AuditReport, audit
from dispatcher.billing.face import Face
from dispatcher.billing.wallet import EntryKind, SyncWallets
from orders import IdempotencyConflict, InvalidInput, Money
from orders.db import Pool
from orders.errors import InsufficientFunds, WalletNotFound

USD = "USD"


@pytest.fixture
def wallets(pool: Pool) -> Iterator[SyncWallets]:
    # As many connections as the race below has threads, so the race is real.
    with SyncWallets(pool, max_size=12) as face:
        yield face


def run_audit(pool: Pool, site: str) -> AuditReport:
    with Face(pool) as database:
        return database.run(lambda async_pool: audit(async_pool, site=site))


def seed(wallets: SyncWallets, site: str, user: str, amount: int) -> None:
    wallets.credit(
        site, user, Money(amount, USD), kind=EntryKind.ADJUSTMENT, key=f"seed-{user}",
        description="seed",
    )  # fmt: skip


def wallet_row(pool: Pool, site: str, user: str) -> tuple[int, int, bool]:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT balance, held, overdrawn FROM wallets WHERE site = %s AND user_id = %s",
            (site, user),
        ).fetchone()
    assert row is not None
    return row["balance"], row["held"], row["overdrawn"]


def entry_sums(pool: Pool, site: str, user: str) -> tuple[int, int, int]:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n, coalesce(sum(amount), 0) AS amount, "
            "coalesce(sum(held_amount), 0) AS held FROM wallet_entries "
            "WHERE site = %s AND user_id = %s",
            (site, user),
        ).fetchone()
    assert row is not None
    return row["n"], row["amount"], row["held"]


def test_hold_settle_release_each_once_per_key_and_the_audit_replays_them(
    wallets: SyncWallets, pool: Pool, site: str
) -> None:
    # Given 10.00 USD on the balance,
    seed(wallets, site, "u1", 1000)
    # when 6.00 is held twice under one key, then 4.00 under another,
    first = wallets.hold(site, "u1", Money(600, USD), key="h1", description="withdrawal")
    again = wallets.hold(site, "u1", Money(600, USD), key="h1", description="withdrawal")
    assert (first.money, first.held, first.balance_after, first.held_after) == (
        Money(-600, USD), Money(600, USD), Money(400, USD), Money(600, USD),
    )  # fmt: skip
    assert again.replayed
    assert again.id == first.id
    wallets.hold(site, "u1", Money(400, USD), key="h2", description="another")
    # then nothing is left to spend, and nothing more can be held.
    assert wallets.balance(site, "u1", USD) == Money(0, USD)
    with pytest.raises(InsufficientFunds):
        wallets.debit(site, "u1", Money(1, USD), key="d1", description="spend")
    with pytest.raises(InsufficientFunds):
        wallets.hold(site, "u1", Money(1, USD), key="h3", description="too much")
    # Settling 5.00 (twice: once) and a 1.00 fee takes them out for good; releasing 4.00
    # (twice: once) gives them back.
    out = wallets.settle_hold(site, "u1", Money(500, USD), key="s1", description="paid out")
    assert wallets.settle_hold(site, "u1", Money(500, USD), key="s1", description="x").replayed
    fee = wallets.settle_hold(
        site, "u1", Money(100, USD), key="f1", description="fee", kind=EntryKind.FEE
    )
    back = wallets.release_hold(site, "u1", Money(400, USD), key="r1", description="cancelled")
    assert wallets.release_hold(site, "u1", Money(400, USD), key="r1", description="x").replayed
    assert (out.kind, out.money, out.held, out.held_after) == (
        EntryKind.WITHDRAWAL, Money(0, USD), Money(-500, USD), Money(500, USD),
    )  # fmt: skip
    assert (fee.kind, fee.held_after) == (EntryKind.FEE, Money(400, USD))
    assert (back.kind, back.money, back.balance_after, back.held_after) == (
        EntryKind.RELEASE, Money(400, USD), Money(400, USD), Money(0, USD),
    )  # fmt: skip
    assert wallet_row(pool, site, "u1") == (400, 0, False)
    assert entry_sums(pool, site, "u1") == (6, 400, 0)  # seed, 2 holds, settle, fee, release
    # Nothing more is held: a settlement or release beyond it is refused, and writes nothing.
    with pytest.raises(InsufficientFunds, match="held"):
        wallets.settle_hold(site, "u1", Money(1, USD), key="s2", description="nothing held")
    with pytest.raises(InsufficientFunds, match="held"):
        wallets.release_hold(site, "u1", Money(1, USD), key="r2", description="nothing held")
    assert entry_sums(pool, site, "u1") == (6, 400, 0)
    report = run_audit(pool, site)
    assert report.ok, report.discrepancies


def test_a_key_reused_for_another_hold_conflicts_and_bad_holds_are_refused(
    wallets: SyncWallets, pool: Pool, site: str
) -> None:
    seed(wallets, site, "u1", 1000)
    wallets.hold(site, "u1", Money(300, USD), key="k", description="hold")
    with pytest.raises(IdempotencyConflict):
        wallets.hold(site, "u1", Money(301, USD), key="k", description="another amount")
    with pytest.raises(IdempotencyConflict):
        wallets.release_hold(site, "u1", Money(300, USD), key="k", description="same key")
    with pytest.raises(InvalidInput):
        wallets.settle_hold(site, "u1", Money(1, USD), key="x", description="?", kind="debit")
    with pytest.raises(WalletNotFound):
        wallets.hold(site, "nobody", Money(1, USD), key="n", description="no wallet")
    assert wallet_row(pool, site, "u1") == (700, 300, False)


def test_parallel_holds_and_debits_never_overdraw(
    wallets: SyncWallets, pool: Pool, site: str
) -> None:
    # Given 10.00 USD, when 12 threads each try two 0.50 holds and two 0.50 debits (12.00 of
    # demand for 10.00),
    seed(wallets, site, "u1", 1000)

    def spend(n: int) -> int:
        done = 0
        for i in range(2):
            for kind in ("hold", "debit"):
                key = f"{kind}-{n}-{i}"
                try:
                    if kind == "hold":
                        wallets.hold(site, "u1", Money(50, USD), key=key, description=key)
                    else:
                        wallets.debit(site, "u1", Money(50, USD), key=key, description=key)
                    done += 1
                except InsufficientFunds:
                    pass
        return done

    with ThreadPoolExecutor(max_workers=12) as pool_:
        done = sum(pool_.map(spend, range(12)))
    # then exactly 20 of them went through, the balance never went below zero, and balance and
    # held each equal their entries' sums.
    assert done == 20
    balance, held, overdrawn = wallet_row(pool, site, "u1")
    assert balance == 0
    assert not overdrawn
    count, amount, held_sum = entry_sums(pool, site, "u1")
    assert (count, amount, held_sum) == (21, balance, held)
    assert balance + held == 1000 - 50 * (done - held // 50)
    with pool.connection() as conn:
        negative = conn.execute(
            "SELECT count(*) AS n FROM wallet_entries WHERE site = %s AND balance_after < 0",
            (site,),
        ).fetchone()
    assert negative is not None
    assert negative["n"] == 0
    report = run_audit(pool, site)
    assert report.ok, report.discrepancies


def test_the_database_refuses_a_negative_balance_or_hold_outside_refunds(
    wallets: SyncWallets, pool: Pool, site: str
) -> None:
    seed(wallets, site, "u1", 100)
    with pytest.raises(psycopg.errors.CheckViolation), pool.connection() as conn:
        conn.execute("UPDATE wallets SET balance = -1 WHERE site = %s AND user_id = 'u1'", (site,))
    with pytest.raises(psycopg.errors.CheckViolation), pool.connection() as conn:
        conn.execute("UPDATE wallets SET held = -1 WHERE site = %s AND user_id = 'u1'", (site,))
    with pytest.raises(psycopg.errors.CheckViolation), pool.connection() as conn:
        conn.execute(
            "INSERT INTO wallet_entries (site, user_id, currency, amount, balance_after, kind, "
            "idempotency_key) VALUES (%s, 'u1', 'USD', -200, -100, 'debit', 'neg')",
            (site,),
        )


def test_audit_catches_a_tampered_held_after(wallets: SyncWallets, pool: Pool, site: str) -> None:
    seed(wallets, site, "u1", 1000)
    hold = wallets.hold(site, "u1", Money(250, USD), key="h", description="hold")
    assert run_audit(pool, site).ok
    # An entry changed behind the ledger's back (its append-only trigger off for a moment).
    with pool.connection() as conn, conn.transaction():
        conn.execute("ALTER TABLE wallet_entries DISABLE TRIGGER wallet_entries_append_only")
        conn.execute("UPDATE wallet_entries SET held_after = 200 WHERE id = %s", (hold.id,))
        conn.execute("ALTER TABLE wallet_entries ENABLE TRIGGER wallet_entries_append_only")
    report = run_audit(pool, site)
    assert not report.ok
    assert any(
        f"entry {hold.id} " in line and "held_after 200, running sum 250" in line
        for line in report.discrepancies
    ), report.discrepancies
    assert any("held 250, its entries' held sum to 250, last held_after 200" in line
               for line in report.discrepancies), report.discrepancies  # fmt: skip

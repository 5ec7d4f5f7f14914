"""The wallet ledger against a real PostgreSQL: credits, debits, balances, history, bad input."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from dispatcher.billing.wallet import (
    POINTS,
    Balance,
    Entry,
    EntryKind,
    EntryPage,
    Points,
    SyncWallets,
    Wallets,
    parse_amount,
)
from orders import IdempotencyConflict, InvalidAmount, InvalidInput, Money, UnknownCurrency
from orders.db import Pool, open_async_pool
from orders.errors import InsufficientFunds, WalletNotFound

USD = "USD"


@pytest.fixture
def wallets(pool: Pool) -> Iterator[SyncWallets]:
    # As many connections as the races below have threads, so the races are real.
    with SyncWallets(pool, max_size=12) as face:
        yield face


def count_rows(pool: Pool, site: str) -> tuple[int, int]:
    with pool.connection() as conn:
        w = conn.execute("SELECT count(*) AS n FROM wallets WHERE site = %s", (site,)).fetchone()
        e = conn.execute(
            "SELECT count(*) AS n FROM wallet_entries WHERE site = %s", (site,)
        ).fetchone()
    assert w is not None
    assert e is not None
    return w["n"], e["n"]


def top_up(wallets: SyncWallets, site: str, user: str, amount: int, currency: str = USD) -> None:
    wallets.credit(
        site,
        user,
        Money(amount, currency),
        kind=EntryKind.ADJUSTMENT,
        key=f"seed-{user}-{currency}-{amount}",
        description="seed",
    )


def test_credit_creates_the_wallet_and_debit_takes_from_it(wallets: SyncWallets, site: str) -> None:
    entry = wallets.credit(
        site, "u1", Money(1000, USD), kind="adjustment", key="c1", description="goodwill"
    )
    assert entry.balance_after == Money(1000, USD)
    debit = wallets.debit(site, "u1", Money(250, USD), key="d1", description="sticker pack")
    assert debit.money == Money(-250, USD)
    assert debit.balance_after == Money(750, USD)
    assert wallets.balance(site, "u1", USD) == Money(750, USD)
    assert [b.money for b in wallets.balances(site, "u1")] == [Money(750, USD)]


def test_balances_are_per_currency_and_per_site(wallets: SyncWallets, site: str) -> None:
    top_up(wallets, site, "u1", 500, USD)
    top_up(wallets, site, "u1", 700, "EUR")
    top_up(wallets, site + "-other", "u1", 900, USD)
    wallets.credit(site, "u1", Points(42, POINTS), kind="adjustment", key="p", description="x")
    by_currency = {b.currency: b.money for b in wallets.balances(site, "u1")}
    assert by_currency == {
        "EUR": Money(700, "EUR"),
        USD: Money(500, USD),
        POINTS: Points(42, POINTS),
    }
    assert str(by_currency[POINTS]) == "42 points"
    assert wallets.balance(site + "-other", "u1", USD) == Money(900, USD)


def test_debit_never_overdraws_and_writes_nothing(
    wallets: SyncWallets, pool: Pool, site: str
) -> None:
    top_up(wallets, site, "u1", 100)
    before = count_rows(pool, site)
    with pytest.raises(InsufficientFunds) as caught:
        wallets.debit(site, "u1", Money(101, USD), key="too-much", description="")
    assert caught.value.balance == 100
    assert caught.value.requested == 101
    assert count_rows(pool, site) == before
    assert wallets.balance(site, "u1", USD) == Money(100, USD)


def test_debit_from_a_wallet_that_does_not_exist_is_refused(
    wallets: SyncWallets, pool: Pool, site: str
) -> None:
    top_up(wallets, site, "u1", 100, USD)
    with pytest.raises(WalletNotFound):
        wallets.debit(site, "u1", Money(1, "EUR"), key="k", description="")
    with pytest.raises(WalletNotFound):
        wallets.debit(site, "nobody", Money(1, USD), key="k", description="")
    with pytest.raises(WalletNotFound):
        wallets.balance(site, "nobody", USD)
    assert count_rows(pool, site) == (1, 1)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: Money(-5, USD), InvalidAmount),
        (lambda: Money(0, USD), InvalidAmount),
        (lambda: Money(5, "XYZ"), UnknownCurrency),
        (lambda: parse_amount("1.234", USD), InvalidInput),
        (lambda: parse_amount("1.5", POINTS), InvalidAmount),
        (lambda: Points(5, "PTS"), UnknownCurrency),
    ],
)
def test_bad_amounts_are_refused_before_anything_is_written(
    wallets: SyncWallets, pool: Pool, site: str, make: Callable[[], Money], error: type[Exception]
) -> None:
    with pytest.raises(error):
        wallets.credit(site, "u1", make(), kind="adjustment", key="k", description="")
    assert count_rows(pool, site) == (0, 0)


def test_bad_text_and_kinds_are_refused(wallets: SyncWallets, pool: Pool, site: str) -> None:
    with pytest.raises(InvalidInput, match="user_id"):
        wallets.credit(site, "", Money(1, USD), kind="adjustment", key="k", description="")
    with pytest.raises(InvalidInput, match="key"):
        wallets.credit(site, "u", Money(1, USD), kind="adjustment", key=None, description="")
    with pytest.raises(InvalidInput, match="order"):
        wallets.credit(site, "u", Money(1, USD), kind="topup", key="k", description="")
    with pytest.raises(InvalidInput, match="not a credit"):
        wallets.credit(site, "u", Money(1, USD), kind="debit", key="k", description="")
    with pytest.raises(InvalidInput, match="cursor"):
        wallets.history(site, "u", cursor="garbage!")
    assert count_rows(pool, site) == (0, 0)


def test_same_key_replays_and_a_different_amount_conflicts(
    wallets: SyncWallets, pool: Pool, site: str
) -> None:
    top_up(wallets, site, "u1", 1000)
    first = wallets.debit(site, "u1", Money(300, USD), key="buy-1", description="item")
    again = wallets.debit(site, "u1", Money(300, USD), key="buy-1", description="item")
    assert again.id == first.id
    assert again.replayed
    assert wallets.balance(site, "u1", USD) == Money(700, USD)
    rows = count_rows(pool, site)
    for call in (
        lambda: wallets.debit(site, "u1", Money(301, USD), key="buy-1", description="item"),
        lambda: wallets.debit(site, "u2", Money(300, USD), key="buy-1", description="item"),
        lambda: wallets.credit(
            site, "u1", Money(300, USD), kind="adjustment", key="buy-1", description=""
        ),
    ):
        with pytest.raises(IdempotencyConflict):
            call()
    assert count_rows(pool, site) == rows
    assert wallets.balance(site, "u1", USD) == Money(700, USD)


def test_history_pages_newest_first_with_a_cursor(wallets: SyncWallets, site: str) -> None:
    for i in range(7):
        wallets.credit(
            site, "u1", Money(i + 1, USD), kind="adjustment", key=f"h{i}", description=""
        )
    wallets.credit(site, "u1", Points(3, POINTS), kind="adjustment", key="pts", description="")
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = wallets.history(site, "u1", currency=USD, limit=3, cursor=cursor)
        seen.extend(e.money.amount for e in page.items)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 3
    everything = wallets.history(site, "u1", limit=50)
    assert everything.items[0].money == Points(3, POINTS)
    assert len(everything.items) == 8
    assert everything.next_cursor is None


def test_entries_are_append_only(wallets: SyncWallets, pool: Pool, site: str) -> None:
    top_up(wallets, site, "u1", 100)
    with pool.connection() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE wallet_entries SET amount = 1 WHERE site = %s", (site,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM wallet_entries WHERE site = %s", (site,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE wallets SET balance = -1 WHERE site = %s", (site,))


def test_concurrent_debits_never_overdraw_and_the_sum_matches(
    wallets: SyncWallets, pool: Pool, site: str
) -> None:
    # Given one wallet holding 10.00 and 12 threads each trying 10 debits of 0.15 (18.00 asked),
    top_up(wallets, site, "hot", 1000)
    start = threading.Barrier(12)
    outcomes: list[str] = []
    lock = threading.Lock()

    def spend(t: int) -> None:
        start.wait()
        for i in range(10):
            try:
                wallets.debit(site, "hot", Money(15, USD), key=f"t{t}-{i}", description="")
                result = "ok"
            except InsufficientFunds:
                result = "refused"
            with lock:
                outcomes.append(result)

    with ThreadPoolExecutor(12) as executor:
        list(executor.map(spend, range(12)))
    # then exactly floor(1000 / 15) = 66 succeed, the balance is what is left, never negative,
    ok = outcomes.count("ok")
    assert ok == 1000 // 15
    assert outcomes.count("refused") == 120 - ok
    assert wallets.balance(site, "hot", USD) == Money(1000 - 15 * ok, USD)
    # and the ledger agrees with the balance entry by entry.
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT sum(amount) AS total, min(balance_after) AS low, count(*) AS n "
            "FROM wallet_entries WHERE site = %s",
            (site,),
        ).fetchone()
    assert row is not None
    assert row["total"] == 1000 - 15 * ok
    assert row["low"] >= 0
    assert row["n"] == ok + 1


def test_the_same_debit_raced_from_many_threads_is_taken_once(
    wallets: SyncWallets, site: str
) -> None:
    top_up(wallets, site, "u1", 1000)
    start = threading.Barrier(8)

    def spend(_: int) -> int:
        start.wait()
        return wallets.debit(site, "u1", Money(400, USD), key="once", description="").id

    with ThreadPoolExecutor(8) as executor:
        ids = set(executor.map(spend, range(8)))
    assert len(ids) == 1
    assert wallets.balance(site, "u1", USD) == Money(600, USD)


def test_the_sync_face_and_the_async_class_give_the_same_results(
    wallets: SyncWallets, site: str
) -> None:
    # Given a wallet written through the face,
    top_up(wallets, site, "u1", 1000)
    wallets.credit(site, "u1", Points(5, POINTS), kind="adjustment", key="p", description="")
    debit = wallets.debit(site, "u1", Money(300, USD), key="buy", description="item")

    async def through_the_class() -> tuple[list[Balance], Money, EntryPage, Entry]:
        async_pool = await open_async_pool(wallets.conninfo, max_size=2, name="tests")
        try:
            ledger = Wallets(async_pool)
            again = await ledger.debit(site, "u1", Money(300, USD), key="buy", description="item")
            with pytest.raises(InsufficientFunds):  # refused as the face refuses it below
                await ledger.debit(site, "u1", Money(10**6, USD), key="big", description="")
            return (
                await ledger.balances(site, "u1"),
                await ledger.balance(site, "u1", USD),
                await ledger.history(site, "u1", limit=2),
                again,
            )
        finally:
            await async_pool.close()

    # the async class reads the same balances, balance and history page,
    balances, balance, page, again = asyncio.run(through_the_class())
    assert balances == wallets.balances(site, "u1")
    assert {b.currency: b.money for b in balances} == {
        USD: Money(700, USD),
        POINTS: Points(5, POINTS),
    }
    assert balance == wallets.balance(site, "u1", USD) == Money(700, USD)
    assert page == wallets.history(site, "u1", limit=2)
    assert len(page.items) == 2
    assert page.next_cursor is not None
    # replays the face's debit as the face would, and refuses what the face refuses.
    assert again.id == debit.id
    assert again.replayed
    assert again == wallets.debit(site, "u1", Money(300, USD), key="buy", description="item")
    with pytest.raises(InsufficientFunds):
        wallets.debit(site, "u1", Money(10**6, USD), key="big", description="")


def test_a_face_left_unclosed_is_closed_when_collected(pool: Pool, site: str) -> None:
    # Given a face that was used, then dropped without close(),
    face = SyncWallets(pool)
    assert face.balances(site, "nobody") == []
    opened = face.pool
    del face
    # when it is collected, its pool is closed, with no warning (they are errors here).
    gc.collect()
    assert opened.closed

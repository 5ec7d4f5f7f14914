"""Wallet withdrawals over real PostgreSQL (issue #14): the hold at request, the refusals, the
approval, cancelling, the payout hook's settle and release (each once), concurrency against
debits and the daily limit, and a clean audit. No worker runs here: a payout's dispatch is
simulated by moving its transfer as the worker would (``Transfers.write``, hook included)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from prometheus_client import REGISTRY

from adapters.base import Capabilities
from adapters.sandbox import Sandbox
from dispatcher.billing.audit import audit
from dispatcher.billing.face import Face
from dispatcher.billing.wallet import EntryKind, SyncWallets
from dispatcher.billing.withdrawals import (
    SyncWithdrawals,
    Withdrawal,
    WithdrawalConflict,
    WithdrawalNotFound,
    WithdrawalRefused,
    WithdrawalStatus,
    fee_for,
    payout_hook,
)
from dispatcher.config import WithdrawalSettings
from dispatcher.sweeper.dbstats import DbStats
from orders.db import Pool, atransaction
from orders.errors import IdempotencyConflict, InsufficientFunds, InvalidInput
from orders.model import Transfer, TransferEvent, TransferStatus
from orders.money import Money
from orders.repository import OrderRepository
from orders.transfers import Transfers

RUB = "RUB"
DEST = {"account": "acc-1"}
SETTINGS = WithdrawalSettings(
    minimum=Decimal("1.00"),
    fee_fixed=Decimal("0.30"),
    fee_percent=Decimal("1.5"),
    daily_limit=Decimal("500"),
    approval=False,
    adapter="sandbox",
)
CAPS: dict[str, Capabilities] = {"sandbox": Sandbox.capabilities}


def rub(minor: int) -> Money:
    return Money(minor, RUB)


@pytest.fixture
def wallets(pool: Pool) -> Iterator[SyncWallets]:
    with SyncWallets(pool) as face:
        yield face


def face(
    pool: Pool, settings: WithdrawalSettings = SETTINGS, **caps: Capabilities
) -> SyncWithdrawals:
    return SyncWithdrawals(pool, settings, capabilities=caps or CAPS)


@pytest.fixture
def withdrawals(pool: Pool) -> Iterator[SyncWithdrawals]:
    with face(pool) as w:
        yield w


def top_up(wallets: SyncWallets, site: str, user: str, minor: int) -> None:
    wallets.credit(
        site, user, rub(minor), kind=EntryKind.ADJUSTMENT, key=f"top-{uuid4()}",
        description="test top-up",
    )  # fmt: skip


def wallet(pool: Pool, site: str, user: str) -> tuple[int, int]:
    """(balance, held) of the user's RUB wallet."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT balance, held FROM wallets WHERE site = %s AND user_id = %s AND currency = %s",
            (site, user, RUB),
        ).fetchone()
    assert row is not None
    return row["balance"], row["held"]


def entries(pool: Pool, site: str, withdrawal_id: UUID) -> list[tuple[str, int, int]]:
    """(kind, amount, held_amount) of the withdrawal's ledger entries, in order."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT kind, amount, held_amount FROM wallet_entries "
            "WHERE site = %s AND idempotency_key LIKE %s ORDER BY id",
            (site, f"withdrawal:{withdrawal_id}%"),
        ).fetchall()
    return [(r["kind"], r["amount"], r["held_amount"]) for r in rows]


def rows(pool: Pool, site: str) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) AS n FROM withdrawals WHERE site = %s", (site,))
        found = row.fetchone()
    assert found is not None
    return int(found["n"])


def request(
    withdrawals: SyncWithdrawals, site: str, user: str, minor: int, key: str | None = None
) -> Withdrawal:
    return withdrawals.request(
        site, user, rub(minor), destination=DEST, idempotency_key=key or f"k-{uuid4()}",
        requested_by="test",
    )  # fmt: skip


def move(pool: Pool, transfer_id: UUID, *steps: TransferStatus, last_error: str = "") -> Transfer:
    """Move a payout as the worker would, the payout hook running on its final status."""

    async def go(apool: object) -> Transfer:
        transfers = Transfers(apool, hook=payout_hook)  # type: ignore[arg-type]
        transfer = await transfers.get(transfer_id)
        for status in steps:
            extra: dict[str, Any] = {"last_error": last_error} if last_error else {}
            transfer = await transfers.write(
                transfer, status, actor="worker", use_lease=False, **extra
            )
        return transfer

    with Face(pool, max_size=2) as database:
        return database.run(go)


def audit_ok(pool: Pool, site: str) -> None:
    with Face(pool, max_size=2) as database:
        report = database.run(lambda apool: audit(apool, site=site))
    assert report.ok, report.lines()


# -- the fee -----------------------------------------------------------------------------------


def test_the_fee_is_fixed_plus_percent_each_rounded_up_to_a_minor_unit() -> None:
    # 1.5 % of 10.01 RUB is 0.15015 RUB: 16 kopecks, plus 30 fixed.
    assert fee_for(rub(1001), SETTINGS) == rub(46)
    assert fee_for(rub(1000), SETTINGS) == rub(45)
    free = dataclasses.replace(SETTINGS, fee_fixed=Decimal(0), fee_percent=Decimal(0))
    assert fee_for(rub(1001), free) == rub(0)
    # A fixed fee finer than the currency's unit is rounded up too (JPY has none).
    assert fee_for(Money(100, "JPY"), dataclasses.replace(SETTINGS, fee_percent=Decimal(0))) == (
        Money(1, "JPY")
    )


# -- request -----------------------------------------------------------------------------------


def test_a_request_holds_the_amount_and_the_fee_at_once_and_requests_the_payout(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    # Given 100.00 RUB,
    top_up(wallets, site, "u1", 10_000)
    # when the user withdraws 10.01 RUB (fee 0.46),
    w = request(withdrawals, site, "u1", 1001)
    # then both are held in the same transaction and the payout is requested.
    assert w.status is WithdrawalStatus.APPROVED
    assert (w.money, w.fee) == (rub(1001), rub(46))
    assert wallet(pool, site, "u1") == (10_000 - 1047, 1047)
    assert entries(pool, site, w.id) == [("hold", -1047, 1047)]
    assert w.transfer_id is not None
    transfer = Transfers_get(pool, w.transfer_id)
    assert transfer.status is TransferStatus.REQUESTED
    assert transfer.money == rub(1001)
    assert transfer.withdrawal_id == w.id
    assert dict(transfer.destination or {}) == DEST
    audit_ok(pool, site)


def Transfers_get(pool: Pool, transfer_id: UUID) -> Transfer:  # noqa: N802 - reads as the call
    with Face(pool, max_size=1) as database:
        return database.run(lambda apool: Transfers(apool).get(transfer_id))


@pytest.mark.parametrize(
    ("settings", "minor", "reason"),
    [
        (SETTINGS, 99, "below the minimum"),
        (SETTINGS, 50_001, "over the daily limit"),
        (SETTINGS, 9_999, "insufficient funds"),  # 99.99 + fee 1.80 > 100.00
        (dataclasses.replace(SETTINGS, adapter=None), 1000, "no payment system to pay out"),
        (dataclasses.replace(SETTINGS, adapter="stripe"), 1000, "no payout adapter"),
    ],
)
def test_a_refused_withdrawal_says_why_and_holds_nothing(
    *,
    pool: Pool,
    wallets: SyncWallets,
    site: str,
    settings: WithdrawalSettings,
    minor: int,
    reason: str,
) -> None:
    top_up(wallets, site, "u1", 10_000)
    with face(pool, settings) as withdrawals, pytest.raises(WithdrawalRefused, match=reason):
        request(withdrawals, site, "u1", minor)
    assert wallet(pool, site, "u1") == (10_000, 0)
    assert rows(pool, site) == 0


def test_an_adapter_that_cannot_pay_out_is_refused(
    pool: Pool, wallets: SyncWallets, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    no_payouts = dataclasses.replace(Sandbox.capabilities, payouts=False)
    with (
        face(pool, sandbox=no_payouts) as withdrawals,
        pytest.raises(WithdrawalRefused, match="sandbox cannot pay out"),
    ):
        request(withdrawals, site, "u1", 1000)
    assert wallet(pool, site, "u1") == (10_000, 0)


def test_a_user_without_a_wallet_is_refused_for_insufficient_funds(
    pool: Pool, withdrawals: SyncWithdrawals, site: str
) -> None:
    with pytest.raises(WithdrawalRefused, match="insufficient funds: no RUB balance"):
        request(withdrawals, site, "nobody", 1000)
    assert rows(pool, site) == 0


def test_bad_input_is_refused_before_anything_is_written(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    bad: list[Any] = [[], "acc", {"a": object()}]
    for destination in bad:
        with pytest.raises(InvalidInput):
            withdrawals.request(
                site, "u1", rub(1000), destination=destination,
                idempotency_key="k", requested_by="test",
            )  # fmt: skip
    with pytest.raises(InvalidInput):
        withdrawals.request(
            site, "u1", rub(-5), destination=DEST, idempotency_key="k", requested_by="test"
        )
    assert wallet(pool, site, "u1") == (10_000, 0)


def test_one_request_per_idempotency_key(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    first = request(withdrawals, site, "u1", 1000, key="same")
    again = request(withdrawals, site, "u1", 1000, key="same")
    assert again.id == first.id
    assert again.replayed
    assert not first.replayed
    with pytest.raises(IdempotencyConflict):
        request(withdrawals, site, "u1", 2000, key="same")
    assert rows(pool, site) == 1
    assert wallet(pool, site, "u1") == (10_000 - 1045, 1045)


def test_the_same_key_raced_from_threads_holds_once(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    results: list[Withdrawal] = []
    barrier = threading.Barrier(6)

    def go() -> None:
        barrier.wait()
        results.append(request(withdrawals, site, "u1", 1000, key="raced"))

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    assert len({w.id for w in results}) == 1
    assert sum(not w.replayed for w in results) == 1
    assert wallet(pool, site, "u1") == (10_000 - 1045, 1045)


# -- approval and cancelling -------------------------------------------------------------------


def test_with_approval_the_payout_waits_for_approve(
    pool: Pool, wallets: SyncWallets, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    with face(pool, dataclasses.replace(SETTINGS, approval=True)) as withdrawals:
        w = request(withdrawals, site, "u1", 1000)
        assert w.status is WithdrawalStatus.AWAITING_APPROVAL
        assert w.transfer_id is None
        assert wallet(pool, site, "u1") == (10_000 - 1045, 1045)
        approved = withdrawals.approve(w.id, by="alice")
        assert approved.status is WithdrawalStatus.APPROVED
        assert approved.approved_by == "alice"
        assert approved.transfer_id is not None
        assert Transfers_get(pool, approved.transfer_id).status is TransferStatus.REQUESTED
        again = withdrawals.approve(w.id, by="bob")
        assert again.replayed
        assert again.transfer_id == approved.transfer_id
        assert again.approved_by == "alice"
    # the approval held nothing more
    assert wallet(pool, site, "u1") == (10_000 - 1045, 1045)


def test_cancel_before_approval_releases_the_hold_exactly_once(
    pool: Pool, wallets: SyncWallets, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    with face(pool, dataclasses.replace(SETTINGS, approval=True)) as withdrawals:
        w = request(withdrawals, site, "u1", 1000)
        cancelled = withdrawals.cancel(w.id, by="alice")
        assert cancelled.status is WithdrawalStatus.CANCELLED
        assert "alice" in cancelled.reason
        again = withdrawals.cancel(w.id, by="alice")
        assert again.replayed
        assert again.status is WithdrawalStatus.CANCELLED
        with pytest.raises(WithdrawalConflict):
            withdrawals.approve(w.id, by="bob")
    assert wallet(pool, site, "u1") == (10_000, 0)
    assert entries(pool, site, w.id) == [("hold", -1045, 1045), ("release", 1045, -1045)]
    audit_ok(pool, site)


def test_cancel_of_an_approved_payout_not_yet_sent_cancels_it_and_releases_once(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    w = request(withdrawals, site, "u1", 1000)
    assert w.transfer_id is not None
    cancelled = withdrawals.cancel(w.id, by="alice")
    assert cancelled.status is WithdrawalStatus.CANCELLED
    assert Transfers_get(pool, w.transfer_id).status is TransferStatus.CANCELLED
    assert withdrawals.cancel(w.id, by="alice").replayed
    assert wallet(pool, site, "u1") == (10_000, 0)
    assert entries(pool, site, w.id) == [("hold", -1045, 1045), ("release", 1045, -1045)]
    audit_ok(pool, site)


def test_cancel_after_the_payout_was_sent_is_refused_and_keeps_the_hold(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    w = request(withdrawals, site, "u1", 1000)
    assert w.transfer_id is not None
    move(pool, w.transfer_id, TransferStatus.SUBMITTING)
    assert withdrawals.get(w.id).status is WithdrawalStatus.SENT  # the schema's trigger
    with pytest.raises(WithdrawalConflict, match="can no longer be cancelled"):
        withdrawals.cancel(w.id, by="alice")
    assert wallet(pool, site, "u1") == (10_000 - 1045, 1045)


def test_another_sites_withdrawal_is_not_found(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    w = request(withdrawals, site, "u1", 1000)
    with pytest.raises(WithdrawalNotFound):
        withdrawals.get(w.id, site="other")
    with pytest.raises(WithdrawalNotFound):
        withdrawals.cancel(w.id, by="x", site="other")
    with pytest.raises(WithdrawalNotFound):
        withdrawals.approve(w.id, by="x", site="other")
    with pytest.raises(WithdrawalNotFound):
        withdrawals.get(uuid4())
    assert withdrawals.get(w.id, site=site).status is WithdrawalStatus.APPROVED


# -- the payout hook ---------------------------------------------------------------------------


def test_a_succeeded_payout_settles_the_amount_and_the_fee_once(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    w = request(withdrawals, site, "u1", 1001)
    assert w.transfer_id is not None
    paid = move(
        pool, w.transfer_id, TransferStatus.SUBMITTING, TransferStatus.PENDING,
        TransferStatus.SUCCEEDED,
    )  # fmt: skip
    done = withdrawals.get(w.id)
    assert done.status is WithdrawalStatus.SUCCEEDED
    assert wallet(pool, site, "u1") == (10_000 - 1047, 0)
    assert entries(pool, site, w.id) == [
        ("hold", -1047, 1047), ("withdrawal", 0, -1001), ("fee", 0, -46),
    ]  # fmt: skip
    # The hook run again (a redelivered final write) changes nothing.
    rerun(pool, paid)
    assert entries(pool, site, w.id)[-1] == ("fee", 0, -46)
    assert len(entries(pool, site, w.id)) == 3
    assert wallet(pool, site, "u1") == (10_000 - 1047, 0)
    with pytest.raises(WithdrawalConflict):
        withdrawals.cancel(w.id, by="alice")
    audit_ok(pool, site)


def test_a_failed_payout_releases_the_hold_once_with_the_reason(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    w = request(withdrawals, site, "u1", 1000)
    assert w.transfer_id is not None
    failed = move(
        pool, w.transfer_id, TransferStatus.SUBMITTING, TransferStatus.FAILED,
        last_error="account closed",
    )  # fmt: skip
    done = withdrawals.get(w.id)
    assert done.status is WithdrawalStatus.FAILED
    assert done.reason == "account closed"
    assert wallet(pool, site, "u1") == (10_000, 0)
    rerun(pool, failed)
    assert entries(pool, site, w.id) == [("hold", -1045, 1045), ("release", 1045, -1045)]
    # A failed withdrawal no longer counts against the daily limit: 500 RUB can go again.
    top_up(wallets, site, "u1", 50_000)
    assert request(withdrawals, site, "u1", 50_000).status is WithdrawalStatus.APPROVED
    audit_ok(pool, site)


def rerun(pool: Pool, transfer: Transfer) -> None:
    """The payout hook handed the same final transfer again, in a transaction of its own."""

    async def go(apool: object) -> None:
        async with atransaction(apool) as tx:  # type: ignore[arg-type]
            await payout_hook(tx, TransferEvent(transfer, TransferStatus.PENDING, "again"))

    with Face(pool, max_size=1) as database:
        database.run(go)


def test_the_hook_ignores_refunds_and_unfinished_payouts(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 10_000)
    w = request(withdrawals, site, "u1", 1000)
    assert w.transfer_id is not None
    transfer = Transfers_get(pool, w.transfer_id)
    rerun(pool, dataclasses.replace(transfer, status=TransferStatus.PENDING))
    rerun(pool, dataclasses.replace(transfer, kind="refund", status=TransferStatus.SUCCEEDED))  # type: ignore[arg-type]
    assert withdrawals.get(w.id).status is WithdrawalStatus.APPROVED
    assert len(entries(pool, site, w.id)) == 1


# -- concurrency -------------------------------------------------------------------------------


def test_parallel_withdrawals_and_debits_never_overdraw(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    # Given 100.00 RUB and no daily limit,
    top_up(wallets, site, "u1", 10_000)
    unlimited = dataclasses.replace(SETTINGS, daily_limit=None)
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(12)

    with face(pool, unlimited) as many:

        def withdraw() -> None:
            barrier.wait()
            for _ in range(3):
                try:
                    request(many, site, "u1", 1000)  # 10.00 + 0.45
                    with lock:
                        outcomes.append("withdrawn")
                except WithdrawalRefused:
                    with lock:
                        outcomes.append("refused")

        def debit() -> None:
            barrier.wait()
            for _ in range(3):
                try:
                    wallets.debit(site, "u1", rub(700), key=f"d-{uuid4()}", description="buy")
                    with lock:
                        outcomes.append("debited")
                except InsufficientFunds:
                    with lock:
                        outcomes.append("short")

        # when six threads withdraw and six debit at once, three times each,
        threads = [threading.Thread(target=withdraw) for _ in range(6)]
        threads += [threading.Thread(target=debit) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # then the balance never went below zero and equals what the successes took.
    balance, held = wallet(pool, site, "u1")
    taken = outcomes.count("withdrawn") * 1045 + outcomes.count("debited") * 700
    assert balance >= 0
    assert balance == 10_000 - taken
    assert held == outcomes.count("withdrawn") * 1045
    assert len(outcomes) == 36
    assert outcomes.count("refused") + outcomes.count("short") > 0
    audit_ok(pool, site)


def test_the_daily_limit_holds_under_concurrency(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    # Given plenty of balance and a 500 RUB daily limit,
    top_up(wallets, site, "u1", 1_000_000)
    accepted: list[Withdrawal] = []
    refused: list[str] = []
    barrier = threading.Barrier(10)

    def go() -> None:
        barrier.wait()
        try:
            accepted.append(request(withdrawals, site, "u1", 12_000))  # 120 RUB each
        except WithdrawalRefused as exc:
            refused.append(str(exc))

    # when ten withdrawals of 120 RUB race,
    threads = [threading.Thread(target=go) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then exactly four fit in the limit and six are refused for it.
    assert len(accepted) == 4
    assert len(refused) == 6
    assert all("over the daily limit" in reason for reason in refused)
    # A cancelled one frees its share of the limit.
    withdrawals.cancel(accepted[0].id, by="test")
    assert request(withdrawals, site, "u1", 12_000).status is WithdrawalStatus.APPROVED
    audit_ok(pool, site)


def test_the_schema_refuses_a_payout_without_its_withdrawal(pool: Pool, site: str) -> None:
    # The foreign key the withdrawals migration adds: a payout names a real withdrawal.
    async def go(apool: object) -> None:
        await Transfers(apool).request_payout(  # type: ignore[arg-type]
            site=site, user_id="u1", adapter="sandbox", money=rub(100),
            destination=DEST, withdrawal_id=uuid4(), requested_by="test",
        )  # fmt: skip

    with Face(pool, max_size=1) as database, pytest.raises(psycopg.errors.ForeignKeyViolation):
        database.run(go)


def test_the_list_pages_newest_first(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    top_up(wallets, site, "u1", 100_000)
    made = [request(withdrawals, site, "u1", 1000 + i) for i in range(5)]
    first, cursor = withdrawals.list(site=site, user_id="u1", limit=3)
    assert [w.id for w in first] == [w.id for w in reversed(made)][:3]
    assert cursor is not None
    rest, end = withdrawals.list(site=site, user_id="u1", limit=3, cursor=cursor)
    assert [w.id for w in rest] == [made[1].id, made[0].id]
    assert end is None
    withdrawals.cancel(made[0].id, by="t")
    cancelled, _ = withdrawals.list(site=site, status="cancelled")
    assert [w.id for w in cancelled] == [made[0].id]
    with pytest.raises(InvalidInput):
        withdrawals.list(site=site, cursor="nope")
    assert asyncio.iscoroutinefunction(payout_hook)


def test_the_sweepers_gauges_show_what_open_withdrawals_hold(
    pool: Pool, repo: OrderRepository, wallets: SyncWallets, site: str
) -> None:
    # Given EUR withdrawals (a currency no other test here withdraws): one open, one cancelled,
    wallets.credit(
        site, "u1", Money(10_000, "EUR"), kind=EntryKind.ADJUSTMENT, key=f"top-{uuid4()}",
        description="test top-up",
    )  # fmt: skip
    with face(pool, dataclasses.replace(SETTINGS, approval=True)) as eur:
        kept = eur.request(
            site, "u1", Money(1000, "EUR"), destination=DEST, idempotency_key="e1",
            requested_by="test",
        )  # fmt: skip
        gone = eur.request(
            site, "u1", Money(2000, "EUR"), destination=DEST, idempotency_key="e2",
            requested_by="test",
        )  # fmt: skip
        eur.cancel(gone.id, by="test")
    # when the sweeper refreshes its database gauges,
    stats = DbStats(repo)
    stats.refresh()
    # then the held gauge counts the open one's amount and fee, and its age is read.
    assert sample("paydispatch_withdrawals_held", currency="EUR") == kept.held.amount
    assert (
        sample("paydispatch_withdrawals_oldest_age_seconds", status="awaiting_approval") or -1
    ) >= 0
    # Cancelled too, it holds nothing: the gauge reads 0 rather than its last value.
    with face(pool) as eur:
        eur.cancel(kept.id, by="test")
    stats.refresh()
    assert sample("paydispatch_withdrawals_held", currency="EUR") == 0


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_payout_handed_back_unsent_makes_its_withdrawal_cancellable_again(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    # Given a payout the worker began to send (its withdrawal `sent`),
    top_up(wallets, site, "u1", 10_000)
    w = request(withdrawals, site, "u1", 1000)
    assert w.transfer_id is not None
    move(pool, w.transfer_id, TransferStatus.SUBMITTING)
    assert withdrawals.get(w.id).status is WithdrawalStatus.SENT
    # when it is handed back without being sent (submitting -> requested),
    move(pool, w.transfer_id, TransferStatus.REQUESTED)
    # then the withdrawal is approved again, and cancelling it releases the hold.
    assert withdrawals.get(w.id).status is WithdrawalStatus.APPROVED
    assert withdrawals.cancel(w.id, by="alice").status is WithdrawalStatus.CANCELLED
    assert wallet(pool, site, "u1") == (10_000, 0)


def test_the_audit_names_a_withdrawal_whose_hold_the_ledger_does_not_show(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    # Given a clean ledger with withdrawals in every state,
    top_up(wallets, site, "u1", 10_000)
    ok = request(withdrawals, site, "u1", 1000)
    audit_ok(pool, site)
    # when a withdrawal is written behind the ledger's back (no hold) and one is marked
    # succeeded without its settlement,
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO withdrawals (site, user_id, currency, amount, fee, adapter, destination,"
            " status, request_hash, requested_by) VALUES (%s, 'u1', 'RUB', 500, 0, 'sandbox',"
            " '{}', 'awaiting_approval', 'x', 'test')",
            (site,),
        )
        conn.execute("UPDATE withdrawals SET status = 'succeeded' WHERE id = %s", (ok.id,))
    # then the audit names both.
    with Face(pool, max_size=1) as database:
        report = database.run(lambda apool: audit(apool, site=site))
    assert not report.ok
    found = [line for line in report.discrepancies if line.startswith("withdrawal ")]
    assert len(found) == 2
    assert any(f"withdrawal {ok.id}" in line and "paid out 0" in line for line in found)
    assert any("held 0" in line for line in found)


def test_each_withdrawal_status_is_counted_once(
    pool: Pool, wallets: SyncWallets, withdrawals: SyncWithdrawals, site: str
) -> None:
    # paydispatch_withdrawals_total{status}: what the dashboards and alerts read.
    statuses = ("requested", "approved", "refused", "succeeded", "failed", "cancelled")

    def counted() -> dict[str, float]:
        return {s: sample("paydispatch_withdrawals_total", status=s) or 0.0 for s in statuses}

    before = counted()
    top_up(wallets, site, "u1", 10_000)
    paid = request(withdrawals, site, "u1", 1000)
    with pytest.raises(WithdrawalRefused):
        request(withdrawals, site, "u1", 99)  # below the minimum
    failed = request(withdrawals, site, "u1", 1000)
    cancelled = request(withdrawals, site, "u1", 1000)
    assert paid.transfer_id is not None
    assert failed.transfer_id is not None
    done = move(pool, paid.transfer_id, TransferStatus.SUBMITTING, TransferStatus.SUCCEEDED)
    rerun(pool, done)  # a redelivered final write counts nothing more
    move(pool, failed.transfer_id, TransferStatus.SUBMITTING, TransferStatus.FAILED)
    withdrawals.cancel(cancelled.id, by="alice")
    withdrawals.cancel(cancelled.id, by="alice")  # again: the same answer, not counted again
    after = counted()
    assert {s: after[s] - before[s] for s in statuses} == {
        "requested": 3,
        "approved": 3,
        "refused": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }

"""The demo's money going out (issue #14): one partial refund and one withdrawal.

Once the demo's orders have settled, it asks for both through the HTTP API with a site's key,
as a site's backend would: ``POST /v1/orders/{id}/refunds`` for a part of a paid order and
``POST /v1/wallets/{user}/withdrawals`` for a part of a wallet's balance, each with its own
``Idempotency-Key``. So the demo goes the whole way an operator will see in production: the
API's checks and billing's holds in the request's transaction, the sweeper and the worker
sending the transfer to the payment system with our id as its key, reading it until final, and
the transfer hook writing the wallet's entries in the transaction that makes it final.

A sandbox payout stays ``pending`` until someone completes it (``docs/sandbox.md``): the demo
does so through the sandbox's control API, as a person would with the payout page's Complete
button. A payment system whose adapter cannot pay out (the fakes of Stripe, PayPal, T-Bank and
Robokassa) gets no withdrawal, and the output says so rather than passing over it in silence.

Then the invariants the demo already holds the orders to, for money going out: the payment
system made exactly one refund and one payout for our ids, and the wallet audit of the demo's
site is clean (every balance and hold equal to its entries, the refund reversed once, the
withdrawal's hold settled once). The lines printed are built by the ``*_line`` functions below;
README.md's demo section quotes them and ``tests/unit/test_first_hour.py`` holds the two to
each other.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx

from adapters import registry
from adapters.fakes.common import FakeControl
from dispatcher.api.keys import ApiKeys
from dispatcher.billing.audit import audit
from dispatcher.billing.wallet import Balance, SyncWallets
from orders.db import Pool
from orders.model import Order, TransferStatus
from orders.money import Money
from orders.repository import OrderRepository
from orders.transfers import SyncTransfers

WITHIN = 60.0  # seconds each of the refund and the withdrawal gets to become final
FINAL = frozenset({"succeeded", "failed", "cancelled"})
# The daemon's settings for the demo's withdrawal: the fee is 1 % plus 0.30 of the currency.
WITHDRAWAL_ENV = {
    "PAYDISPATCH_WITHDRAWALS_FEE_FIXED": "0.30",
    "PAYDISPATCH_WITHDRAWALS_FEE_PERCENT": "1",
    "PAYDISPATCH_WITHDRAWALS_MIN": "0",
    "PAYDISPATCH_WITHDRAWALS_APPROVAL": "off",
    # The default, said out loud: a refund is held in the wallet when it is requested.
    "PAYDISPATCH_BILLING_REFUND_OVERDRAFT": "refuse",
}


def daemon_env(adapter: str) -> dict[str, str]:
    """What the daemon needs for the demo's money going out: the withdrawal settings, and the
    payment system that pays out when its adapter can."""
    env = dict(WITHDRAWAL_ENV)
    if pays_out(adapter):
        env["PAYDISPATCH_WITHDRAWALS_ADAPTER"] = adapter
    return env


def pays_out(adapter: str) -> bool:
    return registry.get(adapter).capabilities.payouts


def refunds(adapter: str) -> bool:
    return registry.get(adapter).capabilities.refunds


def _major(money: Money) -> str:
    """Major units as the API's refund body takes them (``"12.50"``)."""
    return f"{money.to_decimal():.{money.exponent}f}"


# -- the lines printed (README.md quotes them) --------------------------------------------------


def header_line() -> str:
    return "money going out, asked for through the API with the site's key:"


def refund_line(
    number: int, refund: Money, paid: Money, *, status: str, seconds: float, refund_status: str
) -> str:
    return (
        f"  refund of order {number}: {refund} of {paid}, {status} in {seconds:.1f}s "
        f"(the order: {refund_status})"
    )


def wallet_line(user: str, before: Money, after: Money, held: Money) -> str:
    return f"    {user}'s wallet: {before} -> {after}, held {held}"


def withdrawal_line(user: str, amount: Money, fee: Money, status: str, seconds: float) -> str:
    return f"  withdrawal by {user}: {amount} + fee {fee}, {status} in {seconds:.1f}s"


def payout_completed_line(adapter: str) -> str:
    return f"    payout completed through the {adapter}'s control API (as on its payout page)"


def skipped_line(what: str, adapter: str) -> str:
    """A refund or withdrawal the payment system cannot do: said, never passed over."""
    cannot = "refund" if what == "refund" else "pay out"
    return f"  {what}: skipped, the {adapter} adapter cannot {cannot}"


def psp_line(adapter: str, refund_count: int | None, payout_count: int | None) -> str:
    """What the payment system made: the sandbox counts records per our id (its
    ``reference``); a fake counts the refunds it made, and the demo asked for one."""
    if adapter != "sandbox":
        return f"  {adapter} made {refund_count} refund in all (the demo asked for one)"
    parts = []
    if refund_count is not None:
        parts.append(f"{refund_count} refund for the refund's id")
    if payout_count is not None:
        parts.append(f"{payout_count} payout for the payout's id")
    return f"  {adapter} made " + " and ".join(parts)


def audit_line(site: str, ok: bool, totals: dict[str, int]) -> str:
    counted = f"{totals.get('wallets', 0)} wallets, {totals.get('entries', 0)} entries"
    return f"  wallet audit of {site}: {'clean' if ok else 'DISCREPANCIES'} ({counted})"


# -- the run ----------------------------------------------------------------------------------


@dataclass
class _Outcome:
    ok: bool = True
    refund_id: UUID | None = None
    transfer_id: UUID | None = None  # the withdrawal's payout


class MoneyOut:
    """One partial refund and one withdrawal of a demo site, through its API."""

    def __init__(
        self,
        *,
        pool: Pool,
        repo: OrderRepository,
        site: str,
        adapter: str,
        psp_url: str,
        public_url: str,
        daemon: subprocess.Popen[bytes],
    ) -> None:
        self.site = site
        self.adapter = adapter
        self.psp_url = psp_url
        self.daemon = daemon
        _, key = ApiKeys(pool).create(site, "the demo's site backend")
        self.api = httpx.Client(
            base_url=public_url, headers={"Authorization": f"Bearer {key}"}, timeout=10.0
        )
        self.wallets = SyncWallets(pool, max_size=1, name="demo-wallets")
        self.transfers = SyncTransfers(repo)

    def close(self) -> None:
        self.api.close()
        self.wallets.close()

    def run(self, paid: Sequence[Order], users: Sequence[str]) -> bool:
        """Both (the refund of the largest of the ``paid`` orders, the withdrawal from the
        richest wallet of ``users``), each followed until final, then the checks; True when
        all held."""
        print(header_line())
        outcome = _Outcome()
        refunded_user = None
        if not refunds(self.adapter):
            print(skipped_line("refund", self.adapter))
        elif not paid:
            print("  refund: no paid order to refund")
            outcome.ok = False
        else:
            order = max(paid, key=lambda o: o.money.amount)
            refunded_user = order.user_id
            self._refund(order, outcome)
        if not pays_out(self.adapter):
            print(skipped_line("withdrawal", self.adapter))
        else:
            self._withdraw(users, refunded_user, outcome)
        self._check(outcome)
        return outcome.ok

    # -- the refund ---------------------------------------------------------------------------

    def _refund(self, order: Order, outcome: _Outcome) -> None:
        money = Money(max(1, order.money.amount // 3), order.money.currency)
        before = self._balance(order.user_id, money.currency)
        started = time.monotonic()
        answer = self.api.post(
            f"/v1/orders/{order.id}/refunds",
            json={"amount": _major(money), "reason": "the buyer returned part of the top-up"},
            headers={"Idempotency-Key": f"demo-refund-{order.id}"},
        )
        if answer.status_code != 201:
            print(f"  refund of order {order.number}: refused, {answer.status_code} {answer.text}")
            outcome.ok = False
            return
        refund_id = answer.json()["id"]
        outcome.refund_id = UUID(refund_id)

        def status() -> str:
            items = self._get(f"/v1/orders/{order.id}/refunds")["items"]
            return str(next((r["status"] for r in items if r["id"] == refund_id), "missing"))

        final = self._until_final(status)
        shown = self._get(f"/v1/orders/{order.id}")
        print(
            refund_line(
                order.number,
                money,
                order.money,
                status=final,
                seconds=time.monotonic() - started,
                refund_status=shown["refund_status"],
            )
        )
        after = self._balance(order.user_id, money.currency)
        if before is not None and after is not None:
            print(wallet_line(order.user_id, before.money, after.money, after.held))
        outcome.ok &= (
            final == "succeeded"
            and shown["refunded_amount"] == money.amount
            and shown["refund_status"] == "partially_refunded"
            and before is not None
            and after is not None
            and after.money.amount == before.money.amount - money.amount
            and after.held.amount == 0
        )

    # -- the withdrawal -----------------------------------------------------------------------

    def _withdraw(self, users: Sequence[str], refunded_user: str | None, outcome: _Outcome) -> None:
        wallet = self._richest(users, refunded_user)
        if wallet is None:
            print("  withdrawal: no wallet with a balance to withdraw from")
            outcome.ok = False
            return
        user, before = wallet.user_id, wallet.money
        money = Money(max(1, before.amount // 2), before.currency)
        started = time.monotonic()
        answer = self.api.post(
            f"/v1/wallets/{user}/withdrawals",
            json={
                "amount": money.amount,
                "currency": money.currency,
                "destination": {"account": f"demo-{user}"},
            },
            headers={"Idempotency-Key": f"demo-withdrawal-{self.site}-{user}"},
        )
        if answer.status_code != 201:
            print(f"  withdrawal by {user}: refused, {answer.status_code} {answer.text}")
            outcome.ok = False
            return
        withdrawal = answer.json()
        path = f"/v1/wallets/{user}/withdrawals/{withdrawal['id']}"
        completed = False

        def status() -> str:
            nonlocal completed, withdrawal
            withdrawal = self._get(path)
            if not completed and withdrawal["transfer_id"]:
                completed = self._complete_payout(UUID(withdrawal["transfer_id"]))
            return str(withdrawal["status"])

        final = self._until_final(status)
        if withdrawal["transfer_id"]:
            outcome.transfer_id = UUID(withdrawal["transfer_id"])
        fee = Money(withdrawal["fee"], money.currency)
        print(withdrawal_line(user, money, fee, final, time.monotonic() - started))
        if completed:
            print(payout_completed_line(self.adapter))
        after = self._balance(user, money.currency)
        if after is not None:
            print(wallet_line(user, before, after.money, after.held))
        outcome.ok &= (
            final == "succeeded"
            and after is not None
            and after.money.amount == before.amount - money.amount - fee.amount
            and after.held.amount == 0
        )

    def _complete_payout(self, transfer_id: UUID) -> bool:
        """Complete the payout at the sandbox once it waits there (``pending``, its id known),
        as a person would on its payout page; True once done."""
        payout = self.transfers.get(transfer_id)
        if payout.status is not TransferStatus.PENDING or not payout.psp_transfer_id:
            return False
        url = f"{self.psp_url}/_control/payouts/{payout.psp_transfer_id}/succeed"
        httpx.post(url, timeout=10.0).raise_for_status()
        return True

    def _richest(self, users: Sequence[str], other_than: str | None) -> Balance | None:
        """The wallet with the most money of ``users``, another user's than the one refunded
        when there is one (so each wallet line shows one movement)."""
        found = [
            b
            for user in users
            for b in self.wallets.balances(self.site, user)
            if b.currency != "points" and b.money.amount >= 2
        ]
        others = [b for b in found if b.user_id != other_than] or found
        return max(others, key=lambda b: b.money.amount, default=None)

    # -- the checks ---------------------------------------------------------------------------

    def _check(self, outcome: _Outcome) -> None:
        refund_count = payout_count = None
        if self.adapter == "sandbox":
            stats = httpx.get(f"{self.psp_url}/_control/stats", timeout=5).json()
            if outcome.refund_id is not None:
                refund_count = stats["refunds_per_reference"].get(str(outcome.refund_id), 0)
            if outcome.transfer_id is not None:
                payout_count = stats["payouts_per_reference"].get(str(outcome.transfer_id), 0)
        elif outcome.refund_id is not None:
            # A fake counts the refunds it made per idempotency key; the demo asked for one.
            control = FakeControl(self.psp_url)
            try:
                refund_count = sum(control.stats()["refunds"].values())
            finally:
                control.close()
        if refund_count is not None or payout_count is not None:
            print(psp_line(self.adapter, refund_count, payout_count))
        if refunds(self.adapter):
            outcome.ok &= refund_count == 1
        if pays_out(self.adapter):
            outcome.ok &= payout_count == 1
        report = self.wallets.run(lambda pool: audit(pool, site=self.site, wallet_hook=True))
        print(audit_line(self.site, report.ok, report.totals))
        for line in report.discrepancies:
            print(f"    {line}")
        outcome.ok &= report.ok

    # -- helpers ------------------------------------------------------------------------------

    def _get(self, path: str) -> dict[str, Any]:
        answer = self.api.get(path)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    def _balance(self, user: str, currency: str) -> Balance | None:
        return next(
            (b for b in self.wallets.balances(self.site, user) if b.currency == currency), None
        )

    def _until_final(self, status: Callable[[], str]) -> str:
        """``status()`` read until final, the daemon gone, or :data:`WITHIN` seconds."""
        started = time.monotonic()
        while True:
            now = status()
            if (
                now in FINAL
                or time.monotonic() - started > WITHIN
                or self.daemon.poll() is not None
            ):
                return now
            time.sleep(0.25)

"""Refund billing (issue #14): what a refund of a paid order does to the wallets.

A paid order credited its user's wallet (and maybe cashback and referral bonuses). When a refund
of it succeeds, :class:`RefundWalletHook` takes that money back, in the transaction that marks
the refund succeeded (or inserts one the payment system reported), keyed by the transfer's id:

* one ``refund`` entry per refund (key ``refund:<transfer id>``): from the hold made at request
  time, or else from the balance;
* ``bonus_reversal`` entries taking back the order's bonuses in proportion to what was refunded
  so far: ``floor(bonus * refunded / paid)`` in all, less what earlier refunds took back (so a
  half refund takes back half the cashback rounded down, and the last refund the rest);
* a replayed hook (the refund entry already there) writes nothing more;
* a chargeback the payment system gives back (a dispute won: the refund moves to ``reversed``)
  is credited again with one ``refund_reversal`` entry (key ``refund-reversal:<transfer id>``);
  the bonuses it took back stay taken back (a person may credit them by hand).

What the balance cannot cover is the ``refund_overdraft`` setting (``[billing]``,
``PAYDISPATCH_BILLING_REFUND_OVERDRAFT``), never a silent overdraft:

* ``refuse`` (default): :class:`RefundHold`, called when a refund is requested, in the request's
  transaction, holds its amount in the wallet (``refund-hold:<transfer id>``) or refuses the
  refund with :class:`~orders.errors.RefundRefused` before anything is sent. The hold is settled
  on success and released (``refund-release:<transfer id>``) on failure or cancellation. Bonus
  reversals take back what is there and count the rest (``paydispatch_bonus_reversal_shortfalls``).
* ``allow``: nothing is held; the refund and bonus reversals may take the balance below zero.

Money the payment system already gave back (a refund it reported on its own, a chargeback, or a
refund requested with no hold) cannot be refused: it is written whatever the policy. Every entry
that leaves a balance below zero flags the wallet ``overdrawn`` (while it stays negative), logs a
warning and counts ``paydispatch_wallet_overdrafts{kind}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

import structlog

from dispatcher import metrics
from dispatcher.billing.wallet import Entry, EntryKind, Wallets, money
from dispatcher.billing.webhook import EVENT_REFUND_REVERSED, Outbox
from orders.db import AsyncConnection, query
from orders.errors import InsufficientFunds, RefundRefused, WalletNotFound
from orders.model import Transfer, TransferEvent, TransferKind, TransferStatus

log = structlog.get_logger(__name__)


class RefundOverdraft(StrEnum):
    """What a refund the balance cannot cover does (the ``refund_overdraft`` setting)."""

    REFUSE = "refuse"  # refused at request time; its amount held until it is final
    ALLOW = "allow"  # the balance may go below zero, flagged


def hold_key(transfer_id: UUID) -> str:
    return f"refund-hold:{transfer_id}"


def release_key(transfer_id: UUID) -> str:
    return f"refund-release:{transfer_id}"


def refund_key(transfer_id: UUID) -> str:
    return f"refund:{transfer_id}"


def reversal_key(transfer_id: UUID) -> str:
    return f"refund-reversal:{transfer_id}"


def bonus_key(transfer_id: UUID, user_id: str, currency: str) -> str:
    return f"refund:{transfer_id}:bonus:{currency}:{user_id}"


def proportion(bonus: int, refunded: int, paid: int) -> int:
    """How much of ``bonus`` all refunds so far take back: rounded down, never more than it."""
    if paid <= 0:
        return 0
    return min(bonus, bonus * max(refunded, 0) // paid)


class RefundHold:
    """The request-time check of the ``refuse`` policy: hold the refund's amount, or refuse."""

    def __init__(self, wallets: Wallets | None = None) -> None:
        self.wallets = wallets or Wallets(None)

    async def __call__(self, tx: AsyncConnection, transfer: Transfer) -> Entry | None:
        """Hold the amount of a just requested refund in its user's wallet, in the request's
        transaction ``tx``; :class:`RefundRefused` when the balance cannot cover it (roll the
        request back). Payouts are not refunds: None. A replay returns the earlier hold."""
        if transfer.kind is not TransferKind.REFUND:
            return None
        try:
            return await self.wallets.hold(
                transfer.site,
                transfer.user_id,
                transfer.money,
                key=hold_key(transfer.id),
                description=f"refund {transfer.id} of order {transfer.order_id} being sent",
                conn=tx,
            )
        except (InsufficientFunds, WalletNotFound) as exc:
            raise RefundRefused(
                f"the user's balance cannot cover the refund of {transfer.money}: {exc} "
                "(the refund_overdraft policy is refuse)"
            ) from exc


@dataclass(frozen=True, slots=True)
class _Ledger:
    """What the ledger holds for one order, as read by ``order_refund_entries``."""

    rows: list[dict[str, Any]]

    def total(self, kind: str, user_id: str | None = None, currency: str | None = None) -> int:
        return sum(
            int(row["amount"]) + int(row["held_amount"])
            for row in self.rows
            if row["kind"] == kind
            and (user_id is None or row["user_id"] == user_id)
            and (currency is None or row["currency"] == currency)
        )


class RefundWalletHook:
    """The refund :data:`~orders.model.TransferHook` of the wallet: reverse the credit on
    success, release the request's hold on failure or cancellation; payouts are ignored."""

    def __init__(
        self, wallets: Wallets | None = None, policy: RefundOverdraft = RefundOverdraft.REFUSE
    ) -> None:
        self.wallets = wallets or Wallets(None)
        self.policy = RefundOverdraft(policy)

    async def __call__(self, tx: AsyncConnection, event: TransferEvent) -> None:
        transfer = event.transfer
        if transfer.kind is not TransferKind.REFUND or transfer.order_id is None:
            return
        if transfer.status is TransferStatus.SUCCEEDED:
            await self._reverse(tx, transfer, transfer.order_id)
        elif transfer.status in (TransferStatus.FAILED, TransferStatus.CANCELLED):
            await self._release(tx, transfer)
        elif transfer.status is TransferStatus.REVERSED:
            await self._give_back(tx, transfer, transfer.order_id)

    async def _give_back(self, tx: AsyncConnection, transfer: Transfer, order_id: UUID) -> None:
        """A chargeback given back (a dispute won): what its refund entry took is credited again,
        once (``refund-reversal:<transfer id>``). Bonuses it took back stay taken back."""
        await self.wallets.credit(
            transfer.site,
            transfer.user_id,
            transfer.money,
            kind=EntryKind.REFUND_REVERSAL,
            order_id=order_id,
            key=reversal_key(transfer.id),
            description=f"chargeback {transfer.id} of order {order_id} given back: dispute won",
            conn=tx,
        )

    async def _release(self, tx: AsyncConnection, transfer: Transfer) -> None:
        held = await self.wallets.entry(transfer.site, hold_key(transfer.id), conn=tx)
        if held is None:
            return
        await self.wallets.release_hold(
            transfer.site,
            transfer.user_id,
            held.held,
            key=release_key(transfer.id),
            description=f"refund {transfer.id} {transfer.status}: hold released",
            conn=tx,
        )

    async def _reverse(self, tx: AsyncConnection, transfer: Transfer, order_id: UUID) -> None:
        description = f"refund {transfer.id} of order {order_id}" + (
            f": {transfer.reason}" if transfer.reason else ""
        )
        held = await self.wallets.entry(transfer.site, hold_key(transfer.id), conn=tx)
        if held is not None:
            entry = await self.wallets.settle_hold(
                transfer.site,
                transfer.user_id,
                held.held,
                kind=EntryKind.REFUND,
                order_id=order_id,
                key=refund_key(transfer.id),
                description=description,
                conn=tx,
            )
        else:
            # Nothing was held (policy allow, a refund the payment system made on its own, or
            # one requested before the policy changed): the money is gone, so it is written.
            entry = await self.wallets.refund(
                transfer.site,
                transfer.user_id,
                transfer.money,
                order_id=order_id,
                key=refund_key(transfer.id),
                description=description,
                overdraft=True,
                conn=tx,
            )
        if entry.replayed:
            return  # this refund was billed already, bonuses included
        _flag(entry, transfer)
        await self._reverse_bonuses(tx, transfer, order_id)

    async def _reverse_bonuses(
        self, tx: AsyncConnection, transfer: Transfer, order_id: UUID
    ) -> None:
        rows = await (
            await tx.execute(query("order_refund_entries"), {"order_id": order_id})
        ).fetchall()
        ledger = _Ledger(rows)
        paid = ledger.total("topup")
        refunded = -ledger.total("refund", currency=transfer.money.currency)
        for row in rows:
            if row["kind"] not in ("cashback", "referral"):
                continue
            user_id, currency = row["user_id"], row["currency"]
            granted = ledger.total(row["kind"], user_id, currency)
            taken = -ledger.total("bonus_reversal", user_id, currency)
            due = proportion(granted, refunded, paid) - taken
            if due <= 0:
                continue
            if self.policy is RefundOverdraft.REFUSE:
                due = await self._cap(tx, transfer, user_id, currency, due)
                if due <= 0:
                    continue
            entry = await self.wallets.refund(
                transfer.site,
                user_id,
                money(due, currency),
                order_id=order_id,
                kind=EntryKind.BONUS_REVERSAL,
                key=bonus_key(transfer.id, user_id, currency),
                description=f"{row['kind']} of order {order_id} taken back: refund {transfer.id}",
                overdraft=self.policy is RefundOverdraft.ALLOW,
                conn=tx,
            )
            _flag(entry, transfer)

    async def _cap(
        self, tx: AsyncConnection, transfer: Transfer, user_id: str, currency: str, due: int
    ) -> int:
        """What the wallet can give back of ``due`` without going below zero (policy refuse);
        the rest is logged and counted."""
        params = {"site": transfer.site, "user_id": user_id, "currency": currency}
        wallet = await (await tx.execute(query("lock_wallet"), params)).fetchone()
        available = max(int(wallet["balance"]), 0) if wallet is not None else 0
        if available >= due:
            return due
        metrics.BONUS_REVERSAL_SHORTFALLS.inc()
        log.warning(
            "bonus reversal short: the balance was spent",
            site=transfer.site,
            user_id=user_id,
            currency=currency,
            due=due,
            taken=available,
            transfer_id=str(transfer.id),
            order_id=str(transfer.order_id),
        )
        return available


def _flag(entry: Entry, transfer: Transfer) -> None:
    """Never a silent overdraft: log and count an entry that left a balance below zero."""
    if entry.balance_after.amount >= 0:
        return
    metrics.WALLET_OVERDRAFTS.labels(kind=str(entry.kind)).inc()
    log.warning(
        "wallet overdrawn by a refund",
        site=entry.site,
        user_id=entry.user_id,
        currency=entry.money.currency,
        balance=entry.balance_after.amount,
        kind=str(entry.kind),
        transfer_id=str(transfer.id),
        order_id=str(transfer.order_id),
        origin=transfer.origin,
    )


class RefundWebhookHook:
    """The ``refund`` event of a succeeded refund, to the site's webhook through the outbox."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def __call__(self, tx: AsyncConnection, event: TransferEvent) -> None:
        transfer = event.transfer
        if transfer.kind is not TransferKind.REFUND:
            return
        if transfer.status is TransferStatus.SUCCEEDED:
            await self.outbox.enqueue_refund(tx, transfer)
        elif transfer.status is TransferStatus.REVERSED:
            await self.outbox.enqueue_refund(tx, transfer, EVENT_REFUND_REVERSED)

"""Wallet withdrawals (issue #14): a user takes balance out through a payout.

A request is one transaction under the wallet row's lock: the minimum, the daily limit and the
balance are checked, the amount and the fee are moved into the wallet's hold (so nothing can
spend them meanwhile), the withdrawal is written and, unless the site approves each one first,
its payout transfer is requested (:meth:`orders.transfers.Transfers.request_payout`). Approval
requests the payout later; cancelling before the payout is sent releases the hold.

The payout's end is :func:`payout_hook`, a transfer hook run in the transaction that moves the
payout to a final status: ``succeeded`` settles the hold (the amount as a ``withdrawal`` entry,
the fee as a ``fee`` entry), ``failed`` and ``cancelled`` release it. Each happens once: the
hook moves the withdrawal to its final status with a compare-and-set, and every wallet entry has
its own idempotency key (``withdrawal:<id>`` for the hold, ``:payout``, ``:fee``, ``:release``).

The fee is ``fee_fixed`` plus ``fee_percent`` of the amount, each rounded UP to the currency's
minor unit (1.5 % of 10.01 RUB is 0.150 15 RUB: 0.16 RUB), so rounding never favours the
user at the site's expense and a fee is always whole minor units.

:class:`Withdrawals` is async, over the one async pool of :mod:`orders.db`; :class:`SyncWithdrawals`
is its synchronous face for the CLI and tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

import psycopg
import structlog
from psycopg.types.json import Jsonb

from adapters.base import Capabilities
from dispatcher import metrics
from dispatcher.billing.face import Face
from dispatcher.billing.wallet import EntryKind, Wallets
from dispatcher.config import WithdrawalSettings
from orders.db import AsyncConnection, AsyncPool, atransaction, database_errors, query
from orders.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    InvalidTransition,
    PermanentError,
    StaleOrder,
)
from orders.model import LIMITS, TransferEvent, TransferKind, TransferStatus, check_text
from orders.money import Money, currency_exponent
from orders.transfers import Transfers

log = structlog.get_logger(__name__)

MAX_PAGE = 500
MAX_DESTINATION_BYTES = 4096
ACTOR_LIMIT = 200


class WithdrawalRefused(PermanentError):
    """A withdrawal that cannot be made, and why (below the minimum, over the daily limit,
    more than the balance, no payment system to pay out): nothing was held or written."""


class WithdrawalNotFound(PermanentError):
    """No such withdrawal (or not one of this site's)."""


class WithdrawalConflict(PermanentError):
    """The withdrawal's status does not allow this: a cancel once its payout was sent, an
    approval of a cancelled or failed one. Nothing changed."""


class WithdrawalStatus(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"  # held; waits for `paydispatch withdrawals approve`
    APPROVED = "approved"  # held; its payout is requested, not yet sent
    SENT = "sent"  # the payout is being sent or was (the schema's trigger sets it)
    SUCCEEDED = "succeeded"  # paid out: the hold is settled
    FAILED = "failed"  # the payout failed: the hold is released
    CANCELLED = "cancelled"  # cancelled before the payout was sent: the hold is released


# Where an approval has nothing left to do (a repeat of it).
_APPROVED = frozenset(
    {WithdrawalStatus.APPROVED, WithdrawalStatus.SENT, WithdrawalStatus.SUCCEEDED}
)
OPEN = frozenset(
    {WithdrawalStatus.AWAITING_APPROVAL, WithdrawalStatus.APPROVED, WithdrawalStatus.SENT}
)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One row of ``withdrawals``: ``money`` is what the user receives, ``fee`` what is kept;
    both were held at request."""

    id: UUID
    site: str
    user_id: str
    money: Money
    fee: Money
    adapter: str
    destination: Mapping[str, Any]
    status: WithdrawalStatus
    transfer_id: UUID | None
    idempotency_key: str | None
    requested_by: str
    approved_by: str | None
    reason: str
    created_at: datetime
    updated_at: datetime
    replayed: bool = False  # True when an earlier identical request wrote it

    @property
    def held(self) -> Money:
        """What the request moved into the wallet's hold: the amount and the fee."""
        return Money(self.money.amount + self.fee.amount, self.money.currency)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, replayed: bool = False) -> Withdrawal:
        return cls(
            id=row["id"],
            site=row["site"],
            user_id=row["user_id"],
            money=Money(row["amount"], row["currency"]),
            fee=Money(row["fee"], row["currency"]),
            adapter=row["adapter"],
            destination=row["destination"],
            status=WithdrawalStatus(row["status"]),
            transfer_id=row["transfer_id"],
            idempotency_key=row["idempotency_key"],
            requested_by=row["requested_by"],
            approved_by=row["approved_by"],
            reason=row["reason"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            replayed=replayed,
        )


def _minor(value: Decimal, currency: str, rounding: str) -> int:
    """Major units as whole minor units of ``currency``, rounded as ``rounding`` says."""
    return int(value.scaleb(currency_exponent(currency)).to_integral_value(rounding=rounding))


def fee_for(money: Money, settings: WithdrawalSettings) -> Money:
    """The fee of withdrawing ``money``: fixed plus percent, each rounded up to a minor unit."""
    fixed = _minor(settings.fee_fixed, money.currency, ROUND_CEILING)
    share = (Decimal(money.amount) * settings.fee_percent / 100).to_integral_value(
        rounding=ROUND_CEILING
    )
    return Money(fixed + int(share), money.currency)


def _request_hash(user_id: str, money: Money, destination: Mapping[str, Any]) -> str:
    body = {
        "user_id": user_id,
        "amount": money.amount,
        "currency": money.currency,
        "destination": destination,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_destination(destination: object) -> dict[str, Any]:
    if not isinstance(destination, Mapping):
        raise InvalidInput("destination", "must be an object (what the payment system pays to)")
    as_dict = dict(destination)
    try:
        size = len(json.dumps(as_dict, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        raise InvalidInput("destination", "must be plain JSON") from None
    if size > MAX_DESTINATION_BYTES:
        raise InvalidInput("destination", f"must be at most {MAX_DESTINATION_BYTES} bytes of JSON")
    return as_dict


def _count(status: str) -> None:
    metrics.WITHDRAWALS.labels(status).inc()


class Withdrawals:
    """Withdrawals in PostgreSQL, for the HTTP API, the CLI and the payout hook.

    ``capabilities``: the enabled payment systems' capabilities by name, so a withdrawal is
    refused at once when the configured one is not enabled or cannot pay out. ``transfers``:
    the payouts' repository; by default one on ``pool`` whose hook is :func:`payout_hook`, so
    a payout this object cancels releases its hold.
    """

    def __init__(
        self,
        pool: AsyncPool,
        settings: WithdrawalSettings,
        *,
        capabilities: Mapping[str, Capabilities] | None = None,
        transfers: Transfers | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.capabilities = dict(capabilities or {})
        self.transfers = transfers or Transfers(
            pool, capabilities=self.capabilities, hook=payout_hook
        )

    # -- read --------------------------------------------------------------------------------

    async def get(self, withdrawal_id: UUID, *, site: str | None = None) -> Withdrawal:
        """The withdrawal; :class:`WithdrawalNotFound` when it is not (this site's)."""
        with database_errors():
            async with self.pool.connection() as conn:
                return await self._get(conn, withdrawal_id, site, lock=False)

    async def list(
        self,
        *,
        site: str | None = None,
        user_id: str | None = None,
        status: WithdrawalStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Withdrawal], str | None]:
        """Newest first; the second item is the cursor of the next page (None: the last)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", f"must be between 1 and {MAX_PAGE}, got {limit}")
        before: UUID | None = None
        if cursor is not None:
            try:
                before = UUID(cursor)
            except ValueError:
                raise InvalidInput("cursor", "is not a cursor this API returned") from None
        params = {
            "site": site,
            "user_id": user_id,
            "status": None if status is None else str(WithdrawalStatus(status)),
            "before_id": before,
            "limit": limit + 1,
        }
        with database_errors():
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(query("list_withdrawals"), params)).fetchall()
        items = [Withdrawal.from_row(row) for row in rows[:limit]]
        return items, (str(items[-1].id) if len(rows) > limit else None)

    # -- request -----------------------------------------------------------------------------

    def _adapter(self) -> str:
        name = self.settings.adapter
        if name is None:
            raise WithdrawalRefused("withdrawals are off: no payment system to pay out is set")
        caps = self.capabilities.get(name)
        if caps is None:
            raise WithdrawalRefused(f"no payout adapter: payment system {name} is not enabled")
        if not caps.payouts:
            raise WithdrawalRefused(f"no payout adapter: payment system {name} cannot pay out")
        return name

    def _check_amount(self, money: Money) -> Money:
        """The fee, or :class:`WithdrawalRefused` below the minimum."""
        if not isinstance(money, Money) or money.amount <= 0:
            raise InvalidInput("amount", "must be positive Money")
        minimum = Money(
            _minor(self.settings.minimum, money.currency, ROUND_CEILING), money.currency
        )
        if money.amount < minimum.amount:
            raise WithdrawalRefused(f"below the minimum: {money} is less than {minimum}")
        return fee_for(money, self.settings)

    async def request(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        destination: Mapping[str, Any],
        idempotency_key: str | None,
        requested_by: str,
    ) -> Withdrawal:
        """Hold ``money`` and its fee and write the withdrawal (with its payout unless each one
        needs approval), in one transaction; the same key and request return the first
        (``replayed``), a different request under it raises :class:`IdempotencyConflict`."""
        check_text("site", site, limit=LIMITS["site"])
        check_text("user_id", user_id, limit=LIMITS["user_id"], controls=True)
        check_text("idempotency_key", idempotency_key, limit=255, required=False, controls=True)
        check_text("requested_by", requested_by, limit=ACTOR_LIMIT)
        target = _check_destination(destination)
        try:
            adapter = self._adapter()
            fee = self._check_amount(money)
        except WithdrawalRefused:
            _count("refused")
            raise
        request_hash = _request_hash(user_id, money, target)
        try:
            withdrawal = await self._request(
                site=site, user_id=user_id, money=money, fee=fee, adapter=adapter,
                destination=target, key=idempotency_key, request_hash=request_hash,
                requested_by=requested_by,
            )  # fmt: skip
        except WithdrawalRefused:
            _count("refused")
            raise
        except psycopg.errors.UniqueViolation:
            # The same key won by a concurrent request that locked the wallet first; ours was
            # rolled back whole (its hold too).
            earlier = await self._by_key(site, idempotency_key, request_hash)
            if earlier is None:  # pragma: no cover - the winner cannot vanish
                raise
            return earlier
        if not withdrawal.replayed:
            _count("requested")
            if withdrawal.status is WithdrawalStatus.APPROVED:
                _count("approved")
        return withdrawal

    async def _by_key(
        self,
        site: str,
        key: str | None,
        request_hash: str,
        conn: AsyncConnection | None = None,
    ) -> Withdrawal | None:
        if key is None:
            return None
        async with atransaction(self.pool, conn) as tx:
            row = await (
                await tx.execute(query("withdrawal_by_key"), {"site": site, "key": key})
            ).fetchone()
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was used for another withdrawal ({row['id']})"
            )
        return Withdrawal.from_row(row, replayed=True)

    async def _request(
        self,
        *,
        site: str,
        user_id: str,
        money: Money,
        fee: Money,
        adapter: str,
        destination: dict[str, Any],
        key: str | None,
        request_hash: str,
        requested_by: str,
    ) -> Withdrawal:
        wallet = {"site": site, "user_id": user_id, "currency": money.currency}
        async with atransaction(self.pool) as tx:
            # The wallet row's lock first: a user's requests (and debits) queue here, so the
            # key's lookup, the daily sum and the hold below see every earlier one committed.
            locking = await tx.execute(query("lock_wallet_for_withdrawal"), wallet)
            locked = await locking.fetchone()
            earlier = await self._by_key(site, key, request_hash, tx)
            if earlier is not None:
                return earlier
            if locked is None:
                raise WithdrawalRefused(f"insufficient funds: no {money.currency} balance")
            limit = self.settings.daily_limit
            if limit is not None:
                cap = _minor(limit, money.currency, ROUND_FLOOR)
                row = await (await tx.execute(query("withdrawn_today"), wallet)).fetchone()
                done = int(row["total"]) if row else 0
                if done + money.amount > cap:
                    left = Money(max(cap - done, 0), money.currency)
                    raise WithdrawalRefused(
                        f"over the daily limit: {Money(cap, money.currency)} a day, "
                        f"{left} left today"
                    )
            withdrawal_id = uuid4()
            held = Money(money.amount + fee.amount, money.currency)
            try:
                await Wallets(None).hold(
                    site, user_id, held, key=f"withdrawal:{withdrawal_id}",
                    description=f"withdrawal {withdrawal_id}", conn=tx,
                )  # fmt: skip
            except InsufficientFunds:
                what = f"{money} and a fee of {fee}" if fee.amount else str(money)
                raise WithdrawalRefused(
                    f"insufficient funds: {what} is more than the balance "
                    f"{Money(locked['balance'], money.currency)}"
                ) from None
            status = (
                WithdrawalStatus.AWAITING_APPROVAL
                if self.settings.approval
                else WithdrawalStatus.APPROVED
            )
            params = {
                "id": withdrawal_id,
                "amount": money.amount,
                "fee": fee.amount,
                "adapter": adapter,
                "destination": Jsonb(destination),
                "status": str(WithdrawalStatus.AWAITING_APPROVAL),
                "key": key,
                "request_hash": request_hash,
                "requested_by": requested_by,
                **wallet,
            }
            row = await (await tx.execute(query("insert_withdrawal"), params)).fetchone()
            assert row is not None
            withdrawal = Withdrawal.from_row(row)
            if status is WithdrawalStatus.APPROVED:
                withdrawal = await self._send(tx, withdrawal, approved_by=None)
            return withdrawal

    async def _send(
        self, tx: AsyncConnection, withdrawal: Withdrawal, *, approved_by: str | None
    ) -> Withdrawal:
        """Request the payout of an awaiting withdrawal and mark it approved (in ``tx``)."""
        transfer = await self.transfers.request_payout(
            site=withdrawal.site,
            user_id=withdrawal.user_id,
            adapter=withdrawal.adapter,
            money=withdrawal.money,
            destination=withdrawal.destination,
            withdrawal_id=withdrawal.id,
            requested_by=approved_by or withdrawal.requested_by,
            conn=tx,
        )
        params = {
            "id": withdrawal.id,
            "transfer_id": transfer.id,
            "approved_by": approved_by,
            "from_status": str(WithdrawalStatus.AWAITING_APPROVAL),
        }
        row = await (await tx.execute(query("set_withdrawal_transfer"), params)).fetchone()
        if row is None:  # pragma: no cover - the caller holds the row's lock
            raise StaleOrder(f"withdrawal {withdrawal.id} changed meanwhile")
        return Withdrawal.from_row(row)

    # -- approve, cancel ---------------------------------------------------------------------

    async def approve(self, withdrawal_id: UUID, *, by: str, site: str | None = None) -> Withdrawal:
        """Request the payout of a withdrawal awaiting approval. Approving an approved one
        again changes nothing; a cancelled or failed one raises :class:`WithdrawalConflict`."""
        check_text("by", by, limit=ACTOR_LIMIT)
        async with atransaction(self.pool) as tx:
            withdrawal = await self._get(tx, withdrawal_id, site, lock=True)
            if withdrawal.status in _APPROVED:
                return replace(withdrawal, replayed=True)
            if withdrawal.status is not WithdrawalStatus.AWAITING_APPROVAL:
                raise WithdrawalConflict(
                    f"withdrawal {withdrawal.id} is {withdrawal.status}: nothing to approve"
                )
            approved = await self._send(tx, withdrawal, approved_by=by)
        _count("approved")
        log.info("withdrawal approved", withdrawal=str(withdrawal_id), by=by)
        return approved

    async def cancel(self, withdrawal_id: UUID, *, by: str, site: str | None = None) -> Withdrawal:
        """Cancel a withdrawal whose payout was not sent, releasing its hold (once: cancelling
        a cancelled one returns it); :class:`WithdrawalConflict` once it was sent."""
        check_text("by", by, limit=ACTOR_LIMIT)
        reason = f"cancelled by {by}"
        async with atransaction(self.pool) as tx:
            withdrawal = await self._get(tx, withdrawal_id, site, lock=True)
            if withdrawal.status is WithdrawalStatus.CANCELLED:
                return replace(withdrawal, replayed=True)
            if withdrawal.status is WithdrawalStatus.AWAITING_APPROVAL:
                done = await _finish(tx, withdrawal, WithdrawalStatus.CANCELLED, reason)
                _count("cancelled")
                return done
            if withdrawal.status is not WithdrawalStatus.APPROVED or withdrawal.transfer_id is None:
                raise WithdrawalConflict(
                    f"withdrawal {withdrawal.id} is {withdrawal.status}: "
                    "its payout was sent, it can no longer be cancelled"
                )
            transfer_id = withdrawal.transfer_id
        # Approved: cancel its payout, which only a never-sent one allows; the payout hook
        # releases the hold and marks the withdrawal in the cancelling transaction. (The row
        # lock above is given back first: the hook takes it again.)
        try:
            await self.transfers.cancel(transfer_id, actor=f"withdrawal:{by}"[:ACTOR_LIMIT])
        except (InvalidTransition, StaleOrder):
            current = await self.get(withdrawal_id, site=site)
            if current.status is WithdrawalStatus.CANCELLED:
                return replace(current, replayed=True)
            raise WithdrawalConflict(
                f"withdrawal {withdrawal_id} is {current.status}: "
                "its payout was sent, it can no longer be cancelled"
            ) from None
        return await self.get(withdrawal_id, site=site)

    @staticmethod
    async def _get(
        conn: AsyncConnection, withdrawal_id: UUID, site: str | None, *, lock: bool
    ) -> Withdrawal:
        name = "lock_withdrawal" if lock else "get_withdrawal"
        row = await (
            await conn.execute(query(name), {"id": withdrawal_id, "site": site})
        ).fetchone()
        if row is None:
            raise WithdrawalNotFound(f"withdrawal {withdrawal_id} not found")
        return Withdrawal.from_row(row)


async def _finish(
    tx: AsyncConnection, withdrawal: Withdrawal, status: WithdrawalStatus, reason: str
) -> Withdrawal:
    """Move an open withdrawal to a final status and settle or release its hold, in ``tx``;
    the compare-and-set makes a second call a no-op (the withdrawal as it is)."""
    params = {"id": withdrawal.id, "status": str(status), "reason": reason[:1000]}
    row = await (await tx.execute(query("finish_withdrawal"), params)).fetchone()
    if row is None:
        return withdrawal
    wallets, base = Wallets(None), f"withdrawal:{withdrawal.id}"
    who = (withdrawal.site, withdrawal.user_id)
    if status is WithdrawalStatus.SUCCEEDED:
        await wallets.settle_hold(
            *who, withdrawal.money, key=f"{base}:payout", kind=EntryKind.WITHDRAWAL,
            description=f"withdrawal {withdrawal.id} paid out", conn=tx,
        )  # fmt: skip
        if withdrawal.fee.amount:
            await wallets.settle_hold(
                *who, withdrawal.fee, key=f"{base}:fee", kind=EntryKind.FEE,
                description=f"fee of withdrawal {withdrawal.id}", conn=tx,
            )  # fmt: skip
    else:
        await wallets.release_hold(
            *who, withdrawal.held, key=f"{base}:release",
            description=f"withdrawal {withdrawal.id} {status}: {reason}"[:1000], conn=tx,
        )  # fmt: skip
    return Withdrawal.from_row(row)


_FINAL = {
    TransferStatus.SUCCEEDED: WithdrawalStatus.SUCCEEDED,
    TransferStatus.FAILED: WithdrawalStatus.FAILED,
    TransferStatus.CANCELLED: WithdrawalStatus.CANCELLED,
}


async def payout_hook(tx: Any, event: TransferEvent) -> None:
    """The transfer hook of payouts: settle or release the withdrawal's hold, once.

    Runs in the transaction that moves the payout to a final status (other kinds and statuses
    are ignored); if it raises, that move is rolled back with it."""
    transfer = event.transfer
    status = _FINAL.get(transfer.status)
    if transfer.kind is not TransferKind.PAYOUT or transfer.withdrawal_id is None or not status:
        return
    withdrawal = await Withdrawals._get(tx, transfer.withdrawal_id, None, lock=True)
    if withdrawal.status not in OPEN:
        return
    if status is WithdrawalStatus.SUCCEEDED:
        reason = ""
    elif status is WithdrawalStatus.FAILED:
        reason = transfer.last_error or "the payment system did not pay out"
    else:
        reason = f"cancelled ({event.actor})"
    done = await _finish(tx, withdrawal, status, reason)
    if done.status is status:
        _count(str(status))
        log.info(
            "withdrawal finished",
            withdrawal=str(withdrawal.id),
            transfer=str(transfer.id),
            status=str(status),
        )


class SyncWithdrawals(Face):
    """:class:`Withdrawals` for synchronous callers (the CLI, tests): the same methods, each
    run on the background loop; see :mod:`dispatcher.billing.face`."""

    def __init__(
        self,
        pool_or_url: Any,
        settings: WithdrawalSettings,
        *,
        capabilities: Mapping[str, Capabilities] | None = None,
        max_size: int = 4,
        name: str = "withdrawals",
    ) -> None:
        super().__init__(pool_or_url, max_size=max_size, name=name)
        self.settings = settings
        self.capabilities = dict(capabilities or {})

    def _w(self, pool: AsyncPool) -> Withdrawals:
        return Withdrawals(pool, self.settings, capabilities=self.capabilities)

    def request(
        self,
        site: str,
        user_id: str,
        money: Money,
        *,
        destination: Mapping[str, Any],
        idempotency_key: str | None,
        requested_by: str,
    ) -> Withdrawal:
        return self.run(
            lambda pool: self._w(pool).request(
                site, user_id, money, destination=destination,
                idempotency_key=idempotency_key, requested_by=requested_by,
            )
        )  # fmt: skip

    def approve(self, withdrawal_id: UUID, *, by: str, site: str | None = None) -> Withdrawal:
        return self.run(lambda pool: self._w(pool).approve(withdrawal_id, by=by, site=site))

    def cancel(self, withdrawal_id: UUID, *, by: str, site: str | None = None) -> Withdrawal:
        return self.run(lambda pool: self._w(pool).cancel(withdrawal_id, by=by, site=site))

    def get(self, withdrawal_id: UUID, *, site: str | None = None) -> Withdrawal:
        return self.run(lambda pool: self._w(pool).get(withdrawal_id, site=site))

    def list(
        self,
        *,
        site: str | None = None,
        user_id: str | None = None,
        status: WithdrawalStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Withdrawal], str | None]:
        return self.run(
            lambda pool: self._w(pool).list(
                site=site, user_id=user_id, status=status, limit=limit, cursor=cursor
            )
        )

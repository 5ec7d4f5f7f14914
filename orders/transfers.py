"""Money going out (issue #14): refunds and payouts, the rows of ``transfers``.

A refund and a payout are the same dispatched work: sent to a payment system with our id as the
idempotency key, read until final, retried through faults under a lease, never sent twice. So
they are rows of one table, claimed and run like orders, and every move is one compare-and-set
``UPDATE ... WHERE id = ? AND status = ?`` with its event rows, in one statement.

Refunds never exceed what was paid, and the DATABASE holds that promise: a trigger on
``transfers`` keeps ``orders.refund_reserved`` (the refunds that may still give money back, and
those that did) and ``orders.refunded_amount`` (those that did), and ``CHECK (refund_reserved <=
amount)`` on the order refuses the insert that would take more. The update of the order's row
serialises concurrent refunds of one order; the refused one becomes :class:`RefundRefused`.

:class:`Transfers` is the repository, async, on the same kind of pool as
:class:`orders.repository.Orders`; :class:`SyncTransfers` is its thin synchronous face, on an
:class:`~orders.repository.OrderRepository`'s background loop.

The transfer hook (billing for refunds, withdrawals for payouts) runs in the transaction that
moves a transfer to ``succeeded``, ``failed`` or ``cancelled``, and in the one that inserts a
refund the payment system reported: if it raises, nothing is committed.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from orders.db import AsyncConnection, AsyncPool, atransaction, database_errors, query
from orders.errors import (
    IdempotencyConflict,
    InvalidAmount,
    InvalidInput,
    InvalidTransition,
    OrderNotFound,
    RefundRefused,
    StaleOrder,
)
from orders.model import (
    LIMITS,
    TRANSFER_FINAL,
    TRANSFER_TRANSITIONS,
    Order,
    Transfer,
    TransferEvent,
    TransferHook,
    TransferKind,
    TransferStatus,
    check_text,
)
from orders.money import Money
from orders.status import OrderStatus

if TYPE_CHECKING:
    from adapters.base import Capabilities, RefundReport
    from orders.repository import OrderRepository

T = TypeVar("T")

ORIGINS: Final = frozenset({"site", "psp", "operator", "user"})
# Columns a write may also set, besides the status and the lease.
SETTABLE: Final = frozenset({"psp_transfer_id", "attempts", "errors", "last_error"})
MAX_PAGE: Final = 500
REASON_LIMIT: Final = 1000
ACTOR_LIMIT: Final = 200

CURSOR_PATTERN: Final = r"^[0-9]{1,16}\.[0-9a-f]{32}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NOW: Final = timedelta(0)

# The constraints whose violation means "no such refund can be made" (the schema names them).
_REFUSING: Final = {
    "orders_refund_reserved_check": "more than is left to refund",
    "transfers_refund_paid_check": "the order is not paid",
    "transfers_refund_currency_check": "not the currency the order was paid in",
}


@dataclass(frozen=True, slots=True)
class TransferPage:
    items: builtins.list[Transfer]
    next_cursor: str | None


def check_transfer_transition(from_status: TransferStatus, to_status: TransferStatus) -> None:
    """Raise :class:`InvalidTransition` unless a transfer may move so (the schema's
    ``transfer_transitions`` holds the same moves)."""
    if to_status not in TRANSFER_TRANSITIONS[from_status]:
        allowed = ", ".join(sorted(TRANSFER_TRANSITIONS[from_status])) or "nothing (final)"
        raise InvalidTransition(
            from_status, to_status, f"a transfer: from {from_status} only to {allowed}"
        )


def _refund_hash(order_id: UUID, money: Money | None, reason: str) -> str:
    """Hash of a refund request, to tell an honest replay from a reused key. The amount as
    asked (None: all that is left), so a replay still matches after the first took it all."""
    body = {
        "order_id": str(order_id),
        "amount": None if money is None else money.amount,
        "currency": None if money is None else money.currency,
        "reason": reason,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _encode_cursor(transfer: Transfer) -> str:
    micros = (transfer.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{transfer.id.hex}"


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    if _CURSOR.fullmatch(cursor) is None:
        raise InvalidInput("cursor", "is not a cursor this API returned")
    micros, _, hex_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), UUID(hex=hex_id)


def _refused(exc: psycopg.errors.CheckViolation, what: str) -> RefundRefused | None:
    """The :class:`RefundRefused` a refused insert means, or None for another violation."""
    reason = _REFUSING.get(exc.diag.constraint_name or "")
    return None if reason is None else RefundRefused(f"{what}: {reason}")


def unaccounted_refund(
    order: Order, refunded: Money | None, *, chargeback: bool
) -> RefundReport | None:
    """The part of a payment's refunded total (all of it for a chargeback without a total) that
    the order's refunds do not account for (``refund_reserved``: the succeeded ones and those
    that may still give money back), as a report of one refund; None when they account for it.

    Its id is the payment's id, the kind and the total: the same state seen twice (two
    notifications, two status reads) is recorded once. A refunded total is a refund even when
    the payment is disputed too (Stripe's ``amount_refunded`` counts no dispute): only a
    chargeback without a total is recorded as one (a ``chargeback`` key).
    """
    from adapters.base import RefundReport, RefundState  # adapters load with the daemon only

    if refunded is None and not chargeback:
        return None
    total = refunded.amount if refunded is not None else order.money.amount
    unaccounted = total - order.refund_reserved
    if unaccounted <= 0:
        return None
    what = "chargeback" if chargeback and refunded is None else "refunded"
    return RefundReport(
        RefundState.SUCCEEDED,
        psp_refund_id=f"{order.psp_id}:{what}:{total}",
        money=Money(unaccounted, order.money.currency),
        raw_status=what,
    )


def _by_total(order: Order, psp_refund_id: str) -> bool:
    """Whether ``psp_refund_id`` is a key :func:`unaccounted_refund` makes (a refunded total),
    rather than the id of one refund."""
    return psp_refund_id.startswith((f"{order.psp_id}:refunded:", f"{order.psp_id}:chargeback:"))


def _still_unaccounted(order: Order, psp_refund_id: str) -> RefundReport | None:
    """The report :func:`unaccounted_refund` makes of the total in ``psp_refund_id`` (one of its
    keys) for ``order`` as it is now; of nothing left (amount 0) when its refunds account for
    it; None when the key holds no total."""
    from adapters.base import RefundReport, RefundState  # adapters load with the daemon only

    what, _, total = psp_refund_id.removeprefix(f"{order.psp_id}:").partition(":")
    if not total.isdigit():
        return None
    refunded = Money(int(total), order.money.currency)
    found = unaccounted_refund(order, refunded, chargeback=what == "chargeback")
    nothing = RefundReport(RefundState.SUCCEEDED, psp_refund_id, Money(0, refunded.currency))
    return found or nothing


async def _covered_by_total(tx: AsyncConnection, order: Order) -> bool:
    """Whether the order has refunds recorded from its payment's refunded total: a refund named
    by its own id may be one of them, and only the payment's total can tell."""
    params = {"order_id": order.id, "payment": order.psp_id or ""}
    return await (await tx.execute(query("transfer_by_total"), params)).fetchone() is not None


async def _chargebacks(tx: AsyncConnection, order: Order) -> builtins.list[Transfer]:
    """The order's chargebacks (refunds a dispute took), whatever their status."""
    rows = await (
        await tx.execute(query("transfer_chargebacks"), {"order_id": order.id})
    ).fetchall()
    return [Transfer.from_row(row) for row in rows]


class Transfers:
    """Transfers in PostgreSQL, on an async pool: THE repository of money going out.

    ``capabilities`` (adapter name -> its :class:`~adapters.base.Capabilities`) lets a refund
    of an order whose payment system cannot refund be refused before anything is written; an
    adapter it does not name is not checked. ``hook`` is the transfer hook (see the module).
    """

    def __init__(
        self,
        pool: AsyncPool,
        *,
        capabilities: Mapping[str, Capabilities] | None = None,
        hook: TransferHook | None = None,
    ) -> None:
        self.pool = pool
        self.capabilities = dict(capabilities or {})
        self.hook = hook

    # -- requests ----------------------------------------------------------------------------

    async def request_refund(
        self,
        order_id: UUID,
        money: Money | None,
        *,
        site: str | None,
        idempotency_key: str | None,
        reason: str,
        requested_by: str,
        origin: str = "site",
        conn: AsyncConnection | None = None,
    ) -> tuple[Transfer, bool]:
        """Ask for a refund of ``money`` of a paid order (None: all that is left); the bool
        says whether this call created it.

        The same ``idempotency_key`` with the same request returns the earlier refund, with
        another request raises :class:`IdempotencyConflict`. :class:`RefundRefused`: the order
        is not paid, the amount is more than is left (the database's CHECK), or the order's
        payment system cannot refund (or not part of a payment). ``conn``: inside the caller's
        transaction (a savepoint), so a hold it writes next commits with the refund or not at all.
        """
        check_text("reason", reason, limit=REASON_LIMIT, required=False)
        check_text("requested_by", requested_by, limit=ACTOR_LIMIT)
        check_text(
            "idempotency_key", idempotency_key, limit=LIMITS["idempotency_key"], required=False
        )
        if idempotency_key is not None and not idempotency_key.strip():
            raise InvalidInput("idempotency_key", "must not be blank when given")
        if origin not in ORIGINS:
            raise InvalidInput("origin", f"must be one of {sorted(ORIGINS)}")
        if money is not None:
            if not isinstance(money, Money):
                raise InvalidAmount("amount", "must be Money")
            if money.amount <= 0:
                raise InvalidAmount("amount", f"must be positive, got {money.amount}")
        request_hash = _refund_hash(order_id, money, reason)
        async with atransaction(self.pool, conn) as tx:
            lock = "transfer_lock_order" if money is None else "transfer_get_order"
            row = await (await tx.execute(query(lock), {"id": order_id, "site": site})).fetchone()
            if row is None:
                raise OrderNotFound(f"order {order_id} not found")
            order = Order.from_row(row)
            if idempotency_key is not None:
                earlier = await self._find_key(tx, order.site, TransferKind.REFUND, idempotency_key)
                if earlier is not None:
                    return self._replayed(earlier, order_id, request_hash), False
            amount = self._refund_amount(order, money)
            params = self._order_refund_params(
                order,
                Money(amount, order.money.currency),
                origin=origin,
                reason=reason,
                requested_by=requested_by,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                actor=requested_by,
            )
            try:
                async with tx.transaction():
                    cursor = await tx.execute(query("transfer_insert"), params)
                    inserted = await cursor.fetchone()
            except psycopg.errors.CheckViolation as exc:
                refused = _refused(
                    exc, f"a refund of {Money(amount, order.money.currency)} of order {order.id}"
                )
                if refused is None:
                    raise
                raise refused from None
            if inserted is not None:
                return Transfer.from_row(inserted), True
            assert idempotency_key is not None  # only the key can conflict on a fresh id
            earlier = await self._find_key(tx, order.site, TransferKind.REFUND, idempotency_key)
            if earlier is None:  # pragma: no cover - the conflicting row was rolled back
                raise IdempotencyConflict("Idempotency-Key is being used by another request")
            return self._replayed(earlier, order_id, request_hash), False

    def _refund_amount(self, order: Order, money: Money | None) -> int:
        """The amount to refund, or :class:`RefundRefused` before anything is written."""
        what = f"order {order.id}"
        if order.status is not OrderStatus.PAID:
            raise RefundRefused(f"{what} is {order.status}, not paid: nothing to refund")
        caps = self.capabilities.get(order.adapter)
        if caps is not None and not caps.refunds:
            raise RefundRefused(f"payment system {order.adapter} cannot refund")
        left = order.money.amount - order.refund_reserved
        if money is not None and money.currency != order.money.currency:
            raise RefundRefused(f"{what} was paid in {order.money.currency}, not {money.currency}")
        amount = left if money is None else money.amount
        if money is None and left <= 0:
            raise RefundRefused(f"nothing is left to refund of {what}")
        if (
            caps is not None
            and not caps.partial_refunds
            and (amount != order.money.amount or order.refund_reserved)
        ):
            raise RefundRefused(
                f"payment system {order.adapter} cannot refund part of a payment: only all of it"
            )
        return amount

    @staticmethod
    def _replayed(earlier: Transfer, order_id: UUID, request_hash: str) -> Transfer:
        if earlier.order_id != order_id or earlier.request_hash != request_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key already used for refund {earlier.id} with a different request"
            )
        return earlier

    @staticmethod
    async def _find_key(
        tx: AsyncConnection, site: str, kind: TransferKind, key: str
    ) -> Transfer | None:
        params = {"site": site, "kind": kind.value, "idempotency_key": key}
        row = await (await tx.execute(query("transfer_find_key"), params)).fetchone()
        return None if row is None else Transfer.from_row(row)

    @classmethod
    def _order_refund_params(cls, order: Order, money: Money, **rest: Any) -> dict[str, Any]:
        """:meth:`_params` of a refund of ``order``, asked for or already made at the payment
        system: its site, adapter, user and order are the order's; ``rest`` is the refund's own."""
        return cls._params(
            kind=TransferKind.REFUND,
            site=order.site,
            adapter=order.adapter,
            user_id=order.user_id,
            money=money,
            order_id=order.id,
            **rest,
        )

    @staticmethod
    def _params(
        *,
        kind: TransferKind,
        site: str,
        adapter: str,
        user_id: str,
        money: Money,
        origin: str,
        reason: str,
        requested_by: str,
        actor: str,
        order_id: UUID | None = None,
        withdrawal_id: UUID | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        psp_transfer_id: str | None = None,
        destination: Mapping[str, Any] | None = None,
        status: TransferStatus = TransferStatus.REQUESTED,
        detail: Mapping[str, Any] | None = None,
        chargeback: bool = False,
    ) -> dict[str, Any]:
        return {
            "id": uuid.uuid4(),
            "kind": kind.value,
            "site": site,
            "adapter": adapter,
            "user_id": user_id,
            "amount": money.amount,
            "currency": money.currency,
            "status": status.value,
            "order_id": order_id,
            "withdrawal_id": withdrawal_id,
            "origin": origin,
            "reason": reason,
            "requested_by": requested_by,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
            "psp_transfer_id": psp_transfer_id,
            "destination": None if destination is None else Jsonb(dict(destination)),
            "chargeback": chargeback,
            "actor": actor[:ACTOR_LIMIT],
            "detail": json.dumps(dict(detail or {})),
        }

    async def request_payout(
        self,
        *,
        site: str,
        user_id: str,
        adapter: str,
        money: Money,
        destination: Mapping[str, Any],
        withdrawal_id: UUID,
        requested_by: str,
        conn: AsyncConnection | None = None,
    ) -> Transfer:
        """A payout of ``money`` to ``destination`` for a withdrawal, requested (due now).

        One per withdrawal: its key is the withdrawal's id, so asking twice returns the first.
        ``conn``: inside the withdrawal's transaction."""
        check_text("requested_by", requested_by, limit=ACTOR_LIMIT)
        if not isinstance(money, Money) or money.amount <= 0:
            raise InvalidAmount("amount", "must be positive Money")
        caps = self.capabilities.get(adapter)
        if caps is not None and not caps.payouts:
            raise InvalidInput("adapter", f"payment system {adapter} cannot pay out")
        key = f"withdrawal-{withdrawal_id}"
        params = self._params(
            kind=TransferKind.PAYOUT,
            site=site,
            adapter=adapter,
            user_id=user_id,
            money=money,
            origin="user",
            reason="withdrawal",
            requested_by=requested_by,
            actor=requested_by,
            withdrawal_id=withdrawal_id,
            idempotency_key=key,
            destination=destination,
        )
        async with atransaction(self.pool, conn) as tx:
            row = await (await tx.execute(query("transfer_insert"), params)).fetchone()
            if row is not None:
                return Transfer.from_row(row)
            earlier = await self._find_key(tx, site, TransferKind.PAYOUT, key)
            if earlier is None:  # pragma: no cover - the conflicting row was rolled back
                raise IdempotencyConflict(f"the payout of withdrawal {withdrawal_id} is being made")
            return earlier

    async def record_reported_refund(
        self,
        order: Order,
        report: RefundReport,
        *,
        actor: str,
        reason: str = "",
        chargeback: bool = False,
    ) -> Transfer | None:
        """Record a refund the payment system reports on its own (a notification, a status read
        showing more refunded, a chargeback), as ``succeeded`` with origin ``psp``, and run the
        hook in the same transaction. Once per ``report.psp_refund_id``: None when known.

        ``chargeback``: a dispute took the money, ``report.psp_refund_id`` is the dispute's id and
        ``report.money`` what it names; what is taken is that, bounded by what is left (a dispute
        of a partly refunded payment may name the whole amount), and nothing once the order has
        a chargeback (a payment is disputed once: the same dispute seen by a status read, which
        knows no dispute id, is the same chargeback). A status read's chargeback (a key of
        :func:`unaccounted_refund`) is one too.

        A report that may be about one of our own refunds whose id is not known yet (one still
        being sent or read) is not recorded: that refund is made due now, and its own reading
        settles it; a later report of an amount nobody accounts for is recorded then. A report
        without an amount refunds all that is left. More than is left: :class:`RefundRefused`
        (the payment system and we disagree: a person looks).
        """
        if not report.psp_refund_id:
            raise InvalidInput(
                "psp_refund_id", "a reported refund must name the payment system's id"
            )
        async with atransaction(self.pool) as tx:
            row = await (
                await tx.execute(query("transfer_lock_order"), {"id": order.id, "site": None})
            ).fetchone()
            if row is None:
                raise OrderNotFound(f"order {order.id} not found")
            current = Order.from_row(row)
            known = await (
                await tx.execute(
                    query("transfer_find_psp"),
                    {
                        "adapter": current.adapter,
                        "kind": "refund",
                        "psp_transfer_id": report.psp_refund_id,
                    },
                )
            ).fetchone()
            if known is not None:  # ours (its own read settles it) or recorded already
                if known["next_run_at"] is not None:
                    await tx.execute(query("transfer_wake"), {"ids": [known["id"]]})
                return None
            chargeback = chargeback or report.psp_refund_id.startswith(
                f"{current.psp_id}:chargeback:"
            )
            if chargeback:
                return await self._record_chargeback(tx, current, report, actor, reason)
            open_rows = await (
                await tx.execute(query("transfer_open_refunds"), {"order_id": current.id})
            ).fetchall()
            if open_rows:
                await tx.execute(query("transfer_wake"), {"ids": [r["id"] for r in open_rows]})
                return None
            if _by_total(current, report.psp_refund_id):
                # What the total leaves unaccounted for, now that the order is locked: a refund
                # recorded since the report was made (a notification of it, in parallel) counts.
                report = _still_unaccounted(current, report.psp_refund_id) or report
                if report.money is not None and report.money.amount <= 0:
                    return None
            elif await _covered_by_total(tx, current):
                # The payment's refunded total was recorded already and may include this refund:
                # the order's refund check reads the total and records what is not accounted for.
                await tx.execute(query("refund_check_mark"), {"id": current.id, "quiet": _NOW})
                return None
            money = report.money or Money(
                current.money.amount - current.refund_reserved, current.money.currency
            )
            if money.amount <= 0:
                raise RefundRefused(f"nothing is left to refund of order {current.id}")
            params = self._order_refund_params(
                current,
                money,
                origin="psp",
                reason=reason or report.reason or "reported by the payment system",
                requested_by=actor,
                actor=actor,
                psp_transfer_id=report.psp_refund_id,
                status=TransferStatus.SUCCEEDED,
                detail={"reported": True, "raw_status": report.raw_status},
            )
            return await self._insert_succeeded(
                tx, params, f"the reported refund {report.psp_refund_id}"
            )

    async def _record_chargeback(
        self,
        tx: AsyncConnection,
        order: Order,
        report: RefundReport,
        actor: str,
        reason: str,
    ) -> Transfer | None:
        """The chargeback ``report`` names, bounded by what is left, in ``tx`` (the order locked);
        None when the order has one already, or nothing is left to take. :class:`RefundRefused`
        (a person decides) when it names another currency than the order's, or more than is left
        while refunds of ours are still being sent or read."""
        assert report.psp_refund_id is not None
        if await _chargebacks(tx, order):
            return None
        what = f"the chargeback {report.psp_refund_id} of order {order.id}"
        if report.money is not None and report.money.currency != order.money.currency:
            raise RefundRefused(
                f"{what} names {report.money}, not the currency the order was paid in "
                f"({order.money.currency}): a person decides"
            )
        left = order.money.amount - order.refund_reserved
        named = report.money.amount if report.money is not None else left
        if named > left and order.refund_reserved > order.refunded_amount:
            # Refunds of ours are still being sent: if the payment system refuses them (the
            # charge is disputed) their holds are released, and taking only what they leave
            # would lose the difference; taking more would take it twice if they succeed.
            raise RefundRefused(
                f"{what} names {Money(named, order.money.currency)}, more than the "
                f"{Money(left, order.money.currency)} left while refunds of ours are not final: "
                "a person decides"
            )
        amount = min(named, left)
        if amount <= 0:  # refunds gave it all back already: the dispute takes nothing more
            return None
        params = self._order_refund_params(
            order,
            Money(amount, order.money.currency),
            origin="psp",
            reason=reason or ("chargeback: " + report.reason if report.reason else "chargeback"),
            requested_by=actor,
            actor=actor,
            psp_transfer_id=report.psp_refund_id,
            status=TransferStatus.SUCCEEDED,
            detail={"reported": True, "raw_status": report.raw_status, "named": named},
            chargeback=True,
        )
        return await self._insert_succeeded(tx, params, f"the chargeback {report.psp_refund_id}")

    async def reverse_chargeback(
        self, order: Order, report: RefundReport, *, actor: str
    ) -> Transfer | None:
        """A chargeback the payment system gave back (a dispute won, ``report.psp_refund_id`` the
        dispute's id): its refund moves from ``succeeded`` to ``reversed``, which releases its
        amount from the order's refund accounting (the database's trigger), and the hook runs in
        the same transaction (billing credits the wallet back). Once: None when it was reversed
        already, or no chargeback of the order is known (a person looks). A chargeback recorded
        from a status read (no dispute id) is the order's only one, and is the one reversed."""
        if not report.psp_refund_id:
            raise InvalidInput("psp_refund_id", "a reversal must name the payment system's id")
        async with atransaction(self.pool) as tx:
            row = await (
                await tx.execute(query("transfer_lock_order"), {"id": order.id, "site": None})
            ).fetchone()
            if row is None:
                raise OrderNotFound(f"order {order.id} not found")
            current = Order.from_row(row)
            found = await _chargebacks(tx, current)
            named = [t for t in found if t.psp_transfer_id == report.psp_refund_id]
            by_total = [
                t for t in found if t.psp_transfer_id and _by_total(current, t.psp_transfer_id)
            ]
            if not found and current.status is OrderStatus.PAID:
                # Won before its chargeback was seen (Stripe does not promise event order): the
                # win is remembered, so the dispute's own events later take nothing.
                await self._remember_won(tx, current, report, actor)
                return None
            candidates = named or (by_total if len(found) == 1 else [])
            target = candidates[0] if candidates else None
            if target is None or target.status is not TransferStatus.SUCCEEDED:
                return None
            return await self.write(
                target,
                TransferStatus.REVERSED,
                actor=actor,
                detail={"reversed": report.raw_status or "the payment system gave it back"},
                use_lease=False,
                conn=tx,
            )

    async def _remember_won(
        self, tx: AsyncConnection, order: Order, report: RefundReport, actor: str
    ) -> None:
        """A dispute won that took nothing yet, as the order's chargeback recorded ``cancelled``
        under the dispute's id: nothing taken, nothing given back, no hook; the dispute's
        ``created`` or ``funds_withdrawn`` then finds it and takes nothing."""
        assert report.psp_refund_id is not None
        named = report.money
        amount = (
            named.amount
            if named is not None and named.currency == order.money.currency and named.amount > 0
            else order.money.amount
        )
        params = self._order_refund_params(
            order,
            Money(amount, order.money.currency),
            origin="psp",
            reason="dispute won before its chargeback was seen: nothing taken",
            requested_by=actor,
            actor=actor,
            psp_transfer_id=report.psp_refund_id,
            status=TransferStatus.CANCELLED,
            detail={"reported": True, "raw_status": report.raw_status, "won_first": True},
            chargeback=True,
        )
        await tx.execute(query("transfer_insert"), params)

    async def record_refund(
        self,
        order_id: UUID,
        money: Money | None,
        *,
        psp_refund_id: str,
        reason: str,
        requested_by: str,
        site: str | None = None,
    ) -> tuple[Transfer, bool]:
        """Record a refund made at the payment system outside paydispatch (in its dashboard, by
        its support), as ``succeeded`` with origin ``operator``, and run the hook in the same
        transaction (billing reverses the wallet as for any refund). ``money`` None: all that is
        left. The bool says whether this call recorded it.

        Once per ``psp_refund_id``, whoever records it first (this, a notification, or our own
        refund that learned its id): the same id for the same order (and amount, if given)
        returns the refund recorded, for another raises :class:`IdempotencyConflict`.
        :class:`RefundRefused`, nothing written: the order is not paid; more than is left (the
        database's CHECK); a refund of ours may be this one (sent, its id not known yet); or
        refunds were recorded from the payment's refunded total, which may include this one: then
        the order's refund check is made due (the worker reads the total and records what the
        refunds do not account for) and that is committed, nothing else.
        """
        check_text("reason", reason, limit=REASON_LIMIT)
        check_text("requested_by", requested_by, limit=ACTOR_LIMIT)
        check_text("psp_refund_id", psp_refund_id, limit=LIMITS["idempotency_key"])
        if not psp_refund_id.strip():
            raise InvalidInput("psp_refund_id", "must name the payment system's refund")
        if money is not None and (not isinstance(money, Money) or money.amount <= 0):
            raise InvalidAmount("amount", "must be positive Money")
        deferred: RefundRefused | None = None
        async with atransaction(self.pool) as tx:
            row = await (
                await tx.execute(query("transfer_lock_order"), {"id": order_id, "site": site})
            ).fetchone()
            if row is None:
                raise OrderNotFound(f"order {order_id} not found")
            order = Order.from_row(row)
            earlier = await self._recorded_already(tx, order, psp_refund_id, money)
            if earlier is not None:
                return earlier, False
            what = f"refund {psp_refund_id} of order {order.id}"
            if order.status is not OrderStatus.PAID:
                raise RefundRefused(f"order {order.id} is {order.status}, not paid: no refund")
            if money is not None and money.currency != order.money.currency:
                raise RefundRefused(
                    f"order {order.id} was paid in {order.money.currency}, not {money.currency}"
                )
            open_rows = await (
                await tx.execute(query("transfer_open_refunds"), {"order_id": order.id})
            ).fetchall()
            if open_rows:
                ids = ", ".join(str(r["id"]) for r in open_rows)
                raise RefundRefused(
                    f"{what}: refunds of ours are being sent and their ids are not known yet "
                    f"({ids}); the refund may be one of them: record it once they are final"
                )
            if not await _covered_by_total(tx, order):
                left = order.money.amount - order.refund_reserved
                amount = left if money is None else money.amount
                if amount <= 0:
                    raise RefundRefused(f"{what}: nothing is left to refund")
                params = self._order_refund_params(
                    order,
                    Money(amount, order.money.currency),
                    origin="operator",
                    reason=reason,
                    requested_by=requested_by,
                    actor=f"operator:{requested_by}",
                    psp_transfer_id=psp_refund_id,
                    status=TransferStatus.SUCCEEDED,
                    detail={"recorded": True},
                )
                inserted = await self._insert_succeeded(tx, params, what)
                if inserted is not None:
                    return inserted, True
                earlier = await self._recorded_already(tx, order, psp_refund_id, money)
                if earlier is None:  # pragma: no cover - the row holding the id was rolled back
                    raise IdempotencyConflict(f"{what} is being recorded")
                return earlier, False
            await tx.execute(query("refund_check_mark"), {"id": order.id, "quiet": _NOW})
            deferred = RefundRefused(
                f"{what}: the order has refunds recorded from the payment's refunded total, "
                "which may include this one; nothing recorded: a refund check is due instead "
                "(a worker reads the payment and records what its refunds do not account for)"
            )
        raise deferred

    @staticmethod
    async def _recorded_already(
        tx: AsyncConnection, order: Order, psp_refund_id: str, money: Money | None
    ) -> Transfer | None:
        """The refund recorded under the payment system's ``psp_refund_id``, if it is this
        order's (of ``money``, if given); :class:`IdempotencyConflict` if it is another's."""
        params = {"adapter": order.adapter, "kind": "refund", "psp_transfer_id": psp_refund_id}
        row = await (await tx.execute(query("transfer_find_psp"), params)).fetchone()
        if row is None:
            return None
        earlier = Transfer.from_row(row)
        if earlier.order_id == order.id and money in (None, earlier.money):
            return earlier
        raise IdempotencyConflict(
            f"{order.adapter} refund {psp_refund_id} is recorded already: refund {earlier.id} "
            f"of {earlier.money} of order {earlier.order_id} (origin {earlier.origin})"
        )

    async def _insert_succeeded(
        self, tx: AsyncConnection, params: dict[str, Any], what: str
    ) -> Transfer | None:
        """Insert a refund that already gave the money back and run the hook, in ``tx``; None
        when its payment system id is taken already (our own refund's worker stored that id
        meanwhile: the order's lock does not serialise that write), nothing written;
        :class:`RefundRefused` when the database's CHECK refuses it."""
        try:
            async with tx.transaction():
                inserted = await (await tx.execute(query("transfer_insert"), params)).fetchone()
        except psycopg.errors.UniqueViolation:
            return None
        except psycopg.errors.CheckViolation as exc:
            amount = Money(params["amount"], params["currency"])
            refused = _refused(exc, f"{what} ({amount})")
            if refused is None:
                raise
            raise refused from None
        if inserted is None:  # ON CONFLICT DO NOTHING: the id is taken
            return None
        transfer = Transfer.from_row(inserted)
        if self.hook is not None:
            event = TransferEvent(transfer, TransferStatus.SUCCEEDED, params["actor"])
            await self.hook(tx, event)
        return transfer

    async def wake_refunds(self, order_id: UUID) -> int:
        """Make an order's refunds that are still being sent or read due now (a notification
        hinted that one of them moved); returns how many. Leased ones are left to their step."""
        with database_errors():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(query("transfer_wake_order"), {"order_id": order_id})
                return cursor.rowcount

    # -- refund checks (a hint that a paid order's payment was refunded) -------------------

    async def mark_refund_check(self, order_id: UUID, *, quiet: timedelta) -> bool:
        """Make a paid order's refund check due: at once, or when ``quiet`` after its last check
        ends. False when one is due or running already, or the order is not paid. Nothing is
        reserved or recorded: only the worker's own read of the payment decides."""
        with database_errors():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(
                    query("refund_check_mark"), {"id": order_id, "quiet": quiet}
                )
                return cursor.rowcount > 0

    async def claim_refund_checks(
        self, limit: int, lease: timedelta, *, adapters: builtins.list[str] | None = None
    ) -> builtins.list[tuple[UUID, str]]:
        """Lease up to ``limit`` due refund checks: (order id, adapter) pairs. The lease is the
        check's due time moved on, so a check whose worker died comes back when it ends."""
        params = {"limit": limit, "lease": lease, "adapters": adapters}
        with database_errors():
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(query("refund_check_claim"), params)).fetchall()
        return [(row["id"], row["adapter"]) for row in rows]

    async def refund_checked(self, order_id: UUID) -> None:
        """The order's refund check ended: not due again until another hint (and the quiet
        interval after this one)."""
        with database_errors():
            async with self.pool.connection() as conn:
                await conn.execute(query("refund_check_done"), {"id": order_id})

    async def remember_payment(self, order: Order, psp_payment_id: str | None) -> bool:
        """Store the payment id a read of a paid order's payment showed, when the order has none
        (paid before migration 0013, or by a person's resolution): the payment system's reports
        by that id (Stripe's charge and dispute events) name the order from then on. True when
        stored; a stored id is never changed, nor one another order holds given to this one."""
        if not psp_payment_id or order.psp_payment_id is not None:
            return False
        try:
            check_text("psp_payment_id", psp_payment_id, limit=LIMITS["idempotency_key"])
        except InvalidInput:  # not an id an order can hold: reports by it name nothing
            return False
        params = {"id": order.id, "psp_payment_id": psp_payment_id}
        with database_errors():
            async with self.pool.connection() as conn:
                try:
                    cursor = await conn.execute(query("order_remember_payment"), params)
                except psycopg.errors.UniqueViolation:  # another order took it meanwhile
                    return False
                return cursor.rowcount > 0

    # -- reads -------------------------------------------------------------------------------

    async def get(self, transfer_id: UUID, *, site: str | None = None) -> Transfer:
        """The transfer, if it exists and (with ``site``) belongs to that site; else
        :class:`OrderNotFound` (the API's 404)."""
        with database_errors():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(
                    query("transfer_get"), {"id": transfer_id, "site": site}
                )
                row = await cursor.fetchone()
        if row is None:
            raise OrderNotFound(f"transfer {transfer_id} not found")
        return Transfer.from_row(row)

    async def list(
        self,
        *,
        site: str | None = None,
        order_id: UUID | None = None,
        kind: TransferKind | None = None,
        status: TransferStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TransferPage:
        """Transfers newest first; pass ``next_cursor`` back for the following page."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", f"must be between 1 and {MAX_PAGE}, got {limit}")
        after_created, after_id = _decode_cursor(cursor) if cursor else (None, None)
        params = {
            "site": site,
            "order_id": order_id,
            "kind": None if kind is None else TransferKind(kind).value,
            "status": None if status is None else TransferStatus(status).value,
            "after_created": after_created,
            "after_id": after_id,
            "limit": limit + 1,
        }
        with database_errors():
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(query("transfer_list"), params)).fetchall()
        items = [Transfer.from_row(row) for row in rows[:limit]]
        return TransferPage(items, _encode_cursor(items[-1]) if len(rows) > limit else None)

    async def events(self, transfer_id: UUID) -> builtins.list[dict[str, Any]]:
        """The transfer's status changes, oldest first (rows of ``transfer_events``)."""
        with database_errors():
            async with self.pool.connection() as conn:
                cursor = await conn.execute(query("transfer_events"), {"id": transfer_id})
                return [dict(row) for row in await cursor.fetchall()]

    # -- moves -------------------------------------------------------------------------------

    async def cancel(self, transfer_id: UUID, *, site: str | None = None, actor: str) -> Transfer:
        """Cancel a transfer that was never sent (``requested``), whoever holds its lease: a
        worker about to send it finds it moved and sends nothing. Any other status raises
        :class:`InvalidTransition`."""
        transfer = await self.get(transfer_id, site=site)
        if transfer.status is not TransferStatus.REQUESTED:
            check_transfer_transition(transfer.status, TransferStatus.CANCELLED)
        return await self.write(transfer, TransferStatus.CANCELLED, actor=actor, use_lease=False)

    async def claim(
        self, limit: int, lease: timedelta, *, adapters: builtins.list[str] | None = None
    ) -> builtins.list[Transfer]:
        """Lease up to ``limit`` due transfers; each returned one carries one ``lease_token``."""
        params = {"limit": limit, "lease": lease, "token": uuid.uuid4(), "adapters": adapters}
        with database_errors():
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(query("transfer_claim"), params)).fetchall()
        return [Transfer.from_row(row) for row in rows]

    async def write(
        self,
        transfer: Transfer,
        to: TransferStatus | None,
        *,
        actor: str = "worker",
        detail: Mapping[str, Any] | None = None,
        keep_lease: bool = False,
        next_run_at: datetime | None = None,
        use_lease: bool = True,
        conn: AsyncConnection | None = None,
        **changes: Any,
    ) -> Transfer:
        """Move ``transfer`` (as read) to ``to``, or with ``to`` None give its lease back; one
        compare-and-set on its status and, with ``use_lease``, its lease token, plus its events.

        ``next_run_at`` is when it is due again (None: not due; a final status or
        ``needs_review`` is never due). Reaching ``succeeded``, ``failed`` or ``cancelled`` runs
        the hook in the same transaction; if it raises, nothing is committed. A write that
        matches nothing raises :class:`StaleOrder` (the transfer moved, or the lease is gone).
        """
        unknown = set(changes) - SETTABLE
        if unknown:
            raise TypeError(f"a transfer write cannot set {sorted(unknown)}")
        if to is not None:
            check_transfer_transition(transfer.status, to)
            if to not in (
                TransferStatus.REQUESTED,
                TransferStatus.SUBMITTING,
                TransferStatus.PENDING,
            ):
                next_run_at = None
        params = {
            "id": transfer.id,
            "expected": transfer.status.value,
            "to": None if to is None else to.value,
            "token": transfer.lease_token if use_lease else None,
            "keep": keep_lease,
            "next_run_at": next_run_at,
            "actor": actor[:ACTOR_LIMIT],
            "detail": json.dumps(dict(detail or {})),
            "changes": json.dumps(dict(changes)),
        }
        if use_lease and transfer.lease_token is None:
            raise StaleOrder(f"transfer {transfer.id}: no lease to write under")
        async with atransaction(self.pool, conn) as tx:
            row = await (await tx.execute(query("transfer_write"), params)).fetchone()
            if row is None:
                raise StaleOrder(
                    f"transfer {transfer.id} is no longer {transfer.status}"
                    + (" under this lease" if use_lease else "")
                )
            written = Transfer.from_row(row)
            if to in TRANSFER_FINAL and self.hook is not None:
                await self.hook(tx, TransferEvent(written, transfer.status, actor))
            return written


class SyncTransfers:
    """The synchronous face of :class:`Transfers`, for the CLI, the sweeper and tests: each
    method runs the same coroutine on ``repo``'s background loop, over its pool."""

    def __init__(
        self,
        repo: OrderRepository,
        *,
        capabilities: Mapping[str, Capabilities] | None = None,
        hook: TransferHook | None = None,
    ) -> None:
        self.repo = repo
        self.capabilities = dict(capabilities or {})
        self.hook = hook

    def _call(self, work: Callable[[Transfers], Awaitable[T]]) -> T:
        async def go() -> T:
            transfers = Transfers(
                self.repo.orders.pool, capabilities=self.capabilities, hook=self.hook
            )
            return await work(transfers)

        return self.repo.run(go)

    def request_refund(
        self,
        order_id: UUID,
        money: Money | None,
        *,
        site: str | None,
        idempotency_key: str | None,
        reason: str,
        requested_by: str,
        origin: str = "site",
    ) -> tuple[Transfer, bool]:
        return self._call(
            lambda t: t.request_refund(
                order_id,
                money,
                site=site,
                idempotency_key=idempotency_key,
                reason=reason,
                requested_by=requested_by,
                origin=origin,
            )
        )

    def request_payout(
        self,
        *,
        site: str,
        user_id: str,
        adapter: str,
        money: Money,
        destination: Mapping[str, Any],
        withdrawal_id: UUID,
        requested_by: str,
    ) -> Transfer:
        return self._call(
            lambda t: t.request_payout(
                site=site,
                user_id=user_id,
                adapter=adapter,
                money=money,
                destination=destination,
                withdrawal_id=withdrawal_id,
                requested_by=requested_by,
            )
        )

    def record_reported_refund(
        self, order: Order, report: RefundReport, *, actor: str, reason: str = ""
    ) -> Transfer | None:
        return self._call(
            lambda t: t.record_reported_refund(order, report, actor=actor, reason=reason)
        )

    def record_refund(
        self,
        order_id: UUID,
        money: Money | None,
        *,
        psp_refund_id: str,
        reason: str,
        requested_by: str,
        site: str | None = None,
    ) -> tuple[Transfer, bool]:
        return self._call(
            lambda t: t.record_refund(
                order_id,
                money,
                psp_refund_id=psp_refund_id,
                reason=reason,
                requested_by=requested_by,
                site=site,
            )
        )

    def mark_refund_check(self, order_id: UUID, *, quiet: timedelta) -> bool:
        return self._call(lambda t: t.mark_refund_check(order_id, quiet=quiet))

    def claim_refund_checks(
        self, limit: int, lease: timedelta, *, adapters: builtins.list[str] | None = None
    ) -> builtins.list[tuple[UUID, str]]:
        return self._call(lambda t: t.claim_refund_checks(limit, lease, adapters=adapters))

    def get(self, transfer_id: UUID, *, site: str | None = None) -> Transfer:
        return self._call(lambda t: t.get(transfer_id, site=site))

    def list(
        self,
        *,
        site: str | None = None,
        order_id: UUID | None = None,
        kind: TransferKind | None = None,
        status: TransferStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TransferPage:
        return self._call(
            lambda t: t.list(
                site=site, order_id=order_id, kind=kind, status=status, limit=limit, cursor=cursor
            )
        )

    def events(self, transfer_id: UUID) -> builtins.list[dict[str, Any]]:
        return self._call(lambda t: t.events(transfer_id))

    def cancel(self, transfer_id: UUID, *, site: str | None = None, actor: str) -> Transfer:
        return self._call(lambda t: t.cancel(transfer_id, site=site, actor=actor))

    def claim(
        self, limit: int, lease: timedelta, *, adapters: builtins.list[str] | None = None
    ) -> builtins.list[Transfer]:
        return self._call(lambda t: t.claim(limit, lease, adapters=adapters))

    def write(
        self,
        transfer: Transfer,
        to: TransferStatus | None,
        *,
        actor: str = "worker",
        detail: Mapping[str, Any] | None = None,
        keep_lease: bool = False,
        next_run_at: datetime | None = None,
        use_lease: bool = True,
        **changes: Any,
    ) -> Transfer:
        return self._call(
            lambda t: t.write(
                transfer,
                to,
                actor=actor,
                detail=detail,
                keep_lease=keep_lease,
                next_run_at=next_run_at,
                use_lease=use_lease,
                **changes,
            )
        )

"""Requesting a refund: the one way, for the API (``POST /v1/orders/{id}/refunds``) and the
operators' CLI (``paydispatch orders refund``), so both write it and check it alike."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal
from uuid import UUID

from orders.db import atransaction
from orders.model import Order, Transfer, TransferKind
from orders.money import Money
from orders.transfers import MAX_PAGE, Transfers

# Billing's request-time check of a new refund (the refuse-overdraft policy, see
# docs/billing.md), run in the transaction that writes it on that transaction's connection: it
# holds the refund's amount in the user's wallet, or raises RefundRefused. What it returns (the
# hold's ledger entry) is not used here.
RefundCheck = Callable[[Any, Transfer], Awaitable[object]]

RefundStatus = Literal["none", "partially_refunded", "refunded"]


def refund_status(order: Order) -> RefundStatus:
    """Where an order stands with its refunds, from what its succeeded refunds gave back: a
    derived view, not an order status (a paid order stays ``paid``: docs/api.md says why)."""
    if order.refunded_amount <= 0:
        return "none"
    if order.refunded_amount >= order.money.amount:
        return "refunded"
    return "partially_refunded"


async def request_refund(
    transfers: Transfers,
    order_id: UUID,
    money: Money | None,
    *,
    site: str | None,
    idempotency_key: str | None,
    reason: str,
    requested_by: str,
    origin: str,
    check: RefundCheck | None,
) -> tuple[Transfer, bool]:
    """Write a refund of ``money`` of the order (None: all that is left) and, for a new one,
    run ``check`` in the same transaction: if it refuses, nothing is written. Returns the
    refund and whether it is new (False: the earlier one with the same key and request).

    Raises ``OrderNotFound``, ``RefundRefused`` (not paid, more than is left, a payment system
    that cannot refund, or ``check``'s refusal) and ``IdempotencyConflict``.
    """
    async with atransaction(transfers.pool) as tx:
        refund, created = await transfers.request_refund(
            order_id,
            money,
            site=site,
            idempotency_key=idempotency_key,
            reason=reason,
            requested_by=requested_by,
            origin=origin,
            conn=tx,
        )
        if created and check is not None:
            await check(tx, refund)
    return refund, created


async def order_refunds(
    transfers: Transfers, order_id: UUID, *, site: str | None
) -> list[Transfer]:
    """Every refund of the order, oldest first (an order has few: each gives back at least a
    minor unit of what is left)."""
    found: list[Transfer] = []
    cursor: str | None = None
    while True:
        page = await transfers.list(
            site=site, order_id=order_id, kind=TransferKind.REFUND, limit=MAX_PAGE, cursor=cursor
        )
        found.extend(page.items)
        if page.next_cursor is None:
            return found[::-1]  # the listing is newest first
        cursor = page.next_cursor

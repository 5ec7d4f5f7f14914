"""What a payment system's report does to an order, and the one way a move is written.

:func:`decide` and :func:`leave` are pure: an order and a report in, a :class:`Decision` (or
nothing) out. :func:`apply` writes a decision, whoever made it (the engine's steps, a verified
notification, a person resolving a review), through :meth:`orders.repository.Orders.write`: on
its own transaction with the billing hook for a move to ``paid``, coalesced with the writes
around it otherwise. :func:`record` counts and logs a move once it is committed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from adapters.base import CanonicalState, StatusReport
from dispatcher import metrics
from orders.db import AsyncConnection
from orders.model import Order, PaidEvent, PaidHook
from orders.repository import Orders, Write
from orders.status import LATE_PAYMENT_FROM, OrderStatus, can_transition

log = structlog.get_logger(__name__)
S = OrderStatus

# Runs in the transaction of a move, after the billing hook: a record that must exist exactly
# when the move does (the console's record of who resolved an order).
Also = Callable[[AsyncConnection, Order], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Decision:
    """Where an order goes: the target status, its event detail, columns to set."""

    to: OrderStatus
    detail: dict[str, Any]
    changes: dict[str, Any] = field(default_factory=dict)


def decide(
    order: Order,
    report: StatusReport,
    *,
    now: datetime,
    late_watch: timedelta,
    first_watch: timedelta = timedelta(seconds=60),
) -> Decision | None:
    """Where ``report`` sends the order; None when it changes nothing.

    A reported amount or currency other than the order's sends an active order to
    ``needs_review``, never to ``paid``; a settled order is left alone (and logged). Orders
    that leave ``awaiting_payment`` stay watched for a late payment until ``late_watch`` from
    now. An order in ``needs_review`` is left to a person (:func:`dispatcher.ops.orders.resolve`):
    a report, even a verified notification, may be older than what sent it there (a payment's
    event delivered after its refund's).
    """
    if report.money is not None and report.money != order.money:
        if not can_transition(order.status, S.NEEDS_REVIEW):
            log.error(
                "payment with a different amount on a settled order: needs a person",
                order_id=str(order.id),
                adapter=order.adapter,
                status=str(order.status),
                expected=str(order.money),
                reported=str(report.money),
            )
            return None
        return Decision(
            S.NEEDS_REVIEW,
            {
                "reason": "amount mismatch",
                "expected": str(order.money),
                "reported": str(report.money),
                "psp_status": report.raw_status,
            },
            {"last_error": f"payment system reported {report.money}, order is {order.money}"},
        )
    target = _TARGETS.get(report.state)
    if target is None or order.status is S.NEEDS_REVIEW or not can_transition(order.status, target):
        return None
    detail: dict[str, Any] = {"psp_status": report.raw_status}
    if report.reason:
        detail["reason"] = report.reason
    if target is S.PAID:
        detail["late"] = order.status in LATE_PAYMENT_FROM
        # The payment's own id, where the payment system names one: its refunds and chargebacks
        # may be reported by that id alone (Stripe's charge.* events).
        payment = {"psp_payment_id": report.psp_payment_id} if report.psp_payment_id else {}
        return Decision(S.PAID, detail, payment)
    if target is S.NEEDS_REVIEW:
        detail["reason"] = "refunded before paid was seen"
        return Decision(S.NEEDS_REVIEW, detail)
    return leave(order, target, detail, now=now, late_watch=late_watch, first_watch=first_watch)


def leave(
    order: Order,
    to: OrderStatus,
    detail: Mapping[str, Any],
    *,
    now: datetime,
    late_watch: timedelta,
    first_watch: timedelta = timedelta(seconds=60),
) -> Decision:
    """Leave awaiting_payment for good (expired, rejected), but keep watching for a late
    payment until ``late_watch`` after the deadline."""
    watch_until = max(order.expires_at, now) + late_watch
    return Decision(
        to, dict(detail), {"polls": 0, "next_run_at": min(now + first_watch, watch_until)}
    )


async def apply(
    orders: Orders,
    order: Order,
    decision: Decision,
    *,
    actor: str,
    hook: PaidHook | None,
    use_lease: bool = True,
    keep_lease: bool = False,
    also: Also | None = None,
) -> Order:
    """Write ``decision`` as one compare-and-set transition from the status ``order`` was read
    in (and on its lease unless ``use_lease`` is false); returns the order as written.

    A move to ``paid`` runs ``hook`` in its transaction, handed a :class:`PaidEvent` with the
    status it was paid from; ``also`` runs there too, after the hook. If either raises, nothing
    is written. Any other move is coalesced with the writes around it into one statement.
    Raises :class:`StaleOrder` when the order moved (or its lease did) since it was read.
    """
    write = Write.move(
        order.id,
        order.status,
        decision.to,
        actor=actor,
        detail=decision.detail,
        lease_token=order.lease_token if use_lease else None,
        keep_lease=keep_lease,
        **decision.changes,
    )
    paid_hook = hook if decision.to is S.PAID else None
    if paid_hook is None and also is None:
        moved = await orders.write(write)
    else:

        async def within(tx: AsyncConnection, moved: Order) -> None:
            if paid_hook is not None:
                await paid_hook(tx, PaidEvent(moved, previous=order.status, actor=actor))
            if also is not None:
                await also(tx, moved)

        moved = await orders.write(write, within=within)
    record(order, moved, actor)
    return moved


def record(order: Order, moved: Order, actor: str) -> None:
    """Metrics and the log line of a move that was committed (``order`` as it was before)."""
    to = moved.status
    metrics.TRANSITIONS.labels(order.adapter, str(order.status), str(to)).inc()
    log.info(
        "order moved",
        order_id=str(order.id),
        adapter=order.adapter,
        from_status=str(order.status),
        to_status=str(to),
        actor=actor,
    )
    if to is S.PAID:
        if order.status in LATE_PAYMENT_FROM:
            metrics.LATE_PAYMENTS.labels(order.adapter).inc()
            log.warning(
                "late payment",
                order_id=str(order.id),
                adapter=order.adapter,
                previous=str(order.status),
            )
        if moved.paid_at is not None:
            metrics.TIME_TO_PAID.labels(order.adapter).observe(
                (moved.paid_at - moved.created_at).total_seconds()
            )


_TARGETS = {
    CanonicalState.PAID: S.PAID,
    CanonicalState.REJECTED: S.REJECTED,
    CanonicalState.EXPIRED: S.EXPIRED,
    CanonicalState.REFUNDED: S.NEEDS_REVIEW,
}

"""Applying what a payment system said to an order: one place for polls and notifications.

Synchronous (it only talks to PostgreSQL), so the engine runs it on its database threads and the
HTTP API's callback endpoint runs it directly for verified notifications.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from adapters.base import CanonicalState, StatusReport
from dispatcher import metrics
from orders.model import Order
from orders.repository import OrderRepository
from orders.status import LATE_PAYMENT_FROM, OrderStatus, can_transition

log = structlog.get_logger(__name__)
S = OrderStatus

# Runs inside the transaction that marks an order paid (the billing hook).
PaidHook = Callable[[Any, Order], None]


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a report sends an order: the target status, its event detail, columns to set."""

    to: OrderStatus
    detail: dict[str, Any]
    changes: dict[str, Any] = field(default_factory=dict)


class Settler:
    """Decides and records order moves, with their event rows, metrics and log lines.

    :meth:`decide` and :meth:`leave` are pure; :meth:`move` and :meth:`apply` also write. The
    engine writes its decisions in batches itself and calls :meth:`record` for each one.
    """

    def __init__(self, repo: OrderRepository, paid_hook: PaidHook | None = None) -> None:
        self.repo = repo
        self.paid_hook = paid_hook

    def move(
        self,
        order: Order,
        to: OrderStatus,
        *,
        actor: str,
        detail: Mapping[str, Any] | None = None,
        use_lease: bool = True,
        keep_lease: bool = False,
        also: Callable[[Any, Order], None] | None = None,
        **changes: Any,
    ) -> Order:
        """One compare-and-set transition from the status ``order`` was read in.

        ``also`` runs in the same transaction after the move (and after the billing hook of a
        move to paid): a record that must exist exactly when the move does.
        """
        hook = self.paid_hook if to is S.PAID else None
        within = hook
        if also is not None:

            def within(conn: Any, moved: Order) -> None:
                if hook is not None:
                    hook(conn, moved)
                also(conn, moved)

        moved = self.repo.transition(
            order.id,
            order.status,
            to,
            actor=actor,
            detail=detail,
            lease_token=order.lease_token if use_lease else None,
            keep_lease=keep_lease,
            within=within,
            **changes,
        )
        self.record(order, moved, actor)
        return moved

    @staticmethod
    def record(order: Order, moved: Order, actor: str) -> None:
        """Metrics and the log line of a move that was committed."""
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

    def apply(
        self,
        order: Order,
        report: StatusReport,
        *,
        actor: str,
        now: datetime,
        late_watch: timedelta,
        first_watch: timedelta = timedelta(seconds=60),
        use_lease: bool = True,
    ) -> Order | None:
        """Move the order as ``report`` says (see :meth:`decide`); None when nothing changes."""
        decision = self.decide(
            order, report, now=now, late_watch=late_watch, first_watch=first_watch
        )
        if decision is None:
            return None
        return self.move(
            order,
            decision.to,
            actor=actor,
            detail=decision.detail,
            use_lease=use_lease,
            **decision.changes,
        )

    @classmethod
    def decide(
        cls,
        order: Order,
        report: StatusReport,
        *,
        now: datetime,
        late_watch: timedelta,
        first_watch: timedelta = timedelta(seconds=60),
    ) -> Decision | None:
        """Where ``report`` sends the order; None when it changes nothing.

        A reported amount or currency other than the order's sends an active order to
        ``needs_review``, never to ``paid``; a settled order is left alone (and logged).
        Orders that leave ``awaiting_payment`` stay watched for a late payment until
        ``late_watch`` from now. An order in ``needs_review`` is left to a person
        (:func:`dispatcher.ops.orders.resolve`): a report, even a verified notification, may be
        older than what sent it there (a payment's event delivered after its refund's).
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
        if (
            target is None
            or order.status is S.NEEDS_REVIEW
            or not can_transition(order.status, target)
        ):
            return None
        detail: dict[str, Any] = {"psp_status": report.raw_status}
        if report.reason:
            detail["reason"] = report.reason
        if target is S.PAID:
            detail["late"] = order.status in LATE_PAYMENT_FROM
            return Decision(S.PAID, detail)
        if target is S.NEEDS_REVIEW:
            detail["reason"] = "refunded before paid was seen"
            return Decision(S.NEEDS_REVIEW, detail)
        return cls.leave(
            order, target, detail, now=now, late_watch=late_watch, first_watch=first_watch
        )

    @staticmethod
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


_TARGETS = {
    CanonicalState.PAID: S.PAID,
    CanonicalState.REJECTED: S.REJECTED,
    CanonicalState.EXPIRED: S.EXPIRED,
    CanonicalState.REFUNDED: S.NEEDS_REVIEW,
}

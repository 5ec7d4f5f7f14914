"""Order statuses and the only moves between them (DESIGN.md section 3)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from orders.errors import InvalidTransition


class OrderStatus(StrEnum):
    NEW = "new"
    SUBMITTING = "submitting"
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"
    NEEDS_REVIEW = "needs_review"


S = OrderStatus

TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    # An order whose deadline passed before an invoice was made expires without one.
    S.NEW: frozenset({S.SUBMITTING, S.CANCELLED, S.EXPIRED}),
    S.SUBMITTING: frozenset({S.AWAITING_PAYMENT, S.NEW, S.FAILED, S.NEEDS_REVIEW, S.EXPIRED}),
    S.AWAITING_PAYMENT: frozenset({S.PAID, S.REJECTED, S.EXPIRED, S.CANCELLED, S.NEEDS_REVIEW}),
    S.PAID: frozenset(),
    # A payment seen after the order was given up on is a late payment: it still counts. One
    # of another amount waits for a person.
    S.REJECTED: frozenset({S.PAID, S.NEEDS_REVIEW}),
    S.EXPIRED: frozenset({S.PAID, S.NEEDS_REVIEW}),
    S.CANCELLED: frozenset({S.PAID, S.NEEDS_REVIEW}),
    S.FAILED: frozenset(),
    S.NEEDS_REVIEW: frozenset({S.PAID, S.REJECTED}),
}

# Statuses the dispatcher still works on; every other status is settled or waits for a person.
ACTIVE: frozenset[OrderStatus] = frozenset({S.NEW, S.SUBMITTING, S.AWAITING_PAYMENT})
TERMINAL: frozenset[OrderStatus] = frozenset({S.PAID, S.REJECTED, S.EXPIRED, S.CANCELLED, S.FAILED})
LATE_PAYMENT_FROM: frozenset[OrderStatus] = frozenset({S.REJECTED, S.EXPIRED, S.CANCELLED})


def can_transition(from_status: OrderStatus, to_status: OrderStatus) -> bool:
    return to_status in TRANSITIONS[from_status]


def check_transition(from_status: OrderStatus, to_status: OrderStatus) -> None:
    """Raise :class:`InvalidTransition` unless section 3 of the design allows the move."""
    if not can_transition(from_status, to_status):
        allowed = ", ".join(sorted(TRANSITIONS[from_status])) or "nothing (final)"
        raise InvalidTransition(from_status, to_status, f"from {from_status} only to {allowed}")

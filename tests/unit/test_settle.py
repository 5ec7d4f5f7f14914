"""The decision for every payment state x order status, and how a decision is applied.

``settle.decide`` and ``settle.leave`` are pure: these tests give them an order in each status
and a report of each canonical state (with our amount, another amount, another currency, or
none) and pin where the order goes. The expected table is written out here, not derived from
``orders.status``, so a change of either shows up as a failing cell. ``settle.apply`` is run
against a fake async repository that records each write and whether it ran in a transaction of
its own (``within``); the real transaction is tested in ``tests/integration/test_settle_apply.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar, cast

import pytest

from adapters.base import CanonicalState, StatusReport
from dispatcher import metrics, settle
from dispatcher.settle import Decision
from orders.errors import StaleOrder
from orders.model import Order, PaidEvent
from orders.money import Money
from orders.repository import Orders
from orders.status import LATE_PAYMENT_FROM, OrderStatus
from tests.unit.engine_fakes import NOW, PAYMENT_ID, FakeOrders, counter, leased

S = OrderStatus
C = CanonicalState
T = TypeVar("T")
OURS = Money(10000, "RUB")  # the sample order's amount
LATE_WATCH = timedelta(hours=24)
FIRST_WATCH = timedelta(seconds=60)
DEADLINE = NOW + timedelta(minutes=30)

# Where a report of our amount sends an order in each status; a status not named stays as is.
# An order in needs_review is left to a person whatever a report says: a report (even a
# verified notification) may be older than what sent the order to review.
SENDS: dict[CanonicalState, dict[OrderStatus, OrderStatus]] = {
    C.PENDING: {},
    C.PAID: {
        S.AWAITING_PAYMENT: S.PAID,
        S.REJECTED: S.PAID,
        S.EXPIRED: S.PAID,
        S.CANCELLED: S.PAID,
    },
    C.REJECTED: {S.AWAITING_PAYMENT: S.REJECTED},
    C.EXPIRED: {S.NEW: S.EXPIRED, S.SUBMITTING: S.EXPIRED, S.AWAITING_PAYMENT: S.EXPIRED},
    C.REFUNDED: {
        S.SUBMITTING: S.NEEDS_REVIEW,
        S.AWAITING_PAYMENT: S.NEEDS_REVIEW,
        S.REJECTED: S.NEEDS_REVIEW,
        S.EXPIRED: S.NEEDS_REVIEW,
        S.CANCELLED: S.NEEDS_REVIEW,
    },
}
# Statuses a report of another amount sends to needs_review; the others are settled (or
# already wait for a person) and are only logged.
REVIEWED_ON_MISMATCH = frozenset(
    {S.SUBMITTING, S.AWAITING_PAYMENT, S.REJECTED, S.EXPIRED, S.CANCELLED}
)
CELLS = [(status, state) for status in S for state in C]


def order_in(status: OrderStatus) -> Order:
    psp_id = None if status in {S.NEW, S.SUBMITTING} else PAYMENT_ID
    return leased(status=status, psp_id=psp_id, expires_at=DEADLINE)


def report(state: CanonicalState, money: Money | None = OURS, *, reason: str = "") -> StatusReport:
    return StatusReport(state, PAYMENT_ID, money, raw_status=f"psp-{state}", reason=reason)


def decide(order: Order, seen: StatusReport) -> Decision | None:
    return settle.decide(order, seen, now=NOW, late_watch=LATE_WATCH, first_watch=FIRST_WATCH)


def test_the_expected_table_names_only_statuses_and_states_that_exist() -> None:
    assert set(SENDS) == set(C)


@pytest.mark.parametrize(("status", "state"), CELLS)
def test_a_report_of_our_amount_moves_the_order_as_the_table_says(
    status: OrderStatus, state: CanonicalState
) -> None:
    decision = decide(order_in(status), report(state))

    expected = SENDS[state].get(status)
    assert (decision.to if decision else None) is expected


@pytest.mark.parametrize(("status", "state"), CELLS)
def test_a_report_without_an_amount_is_decided_by_its_state_alone(
    status: OrderStatus, state: CanonicalState
) -> None:
    decision = decide(order_in(status), report(state, None))

    assert (decision.to if decision else None) is SENDS[state].get(status)


@pytest.mark.parametrize(
    "other", [Money(9900, "RUB"), Money(10100, "RUB"), Money(10000, "USD")], ids=str
)
@pytest.mark.parametrize(("status", "state"), CELLS)
def test_invariant5_another_amount_or_currency_goes_to_review_never_to_paid(
    status: OrderStatus, state: CanonicalState, other: Money
) -> None:
    decision = decide(order_in(status), report(state, other))

    if status in REVIEWED_ON_MISMATCH:
        assert decision == Decision(
            S.NEEDS_REVIEW,
            {
                "reason": "amount mismatch",
                "expected": "100.00 RUB",
                "reported": str(other),
                "psp_status": f"psp-{state}",
            },
            {"last_error": f"payment system reported {other}, order is 100.00 RUB"},
        )
    else:  # settled, or waiting for a person already: logged, never moved
        assert decision is None


@pytest.mark.parametrize("status", [S.AWAITING_PAYMENT, *sorted(LATE_PAYMENT_FROM)])
def test_a_payment_is_marked_late_only_after_the_order_was_given_up(status: OrderStatus) -> None:
    decision = decide(order_in(status), report(C.PAID, reason="card"))

    assert decision == Decision(
        S.PAID,
        {"psp_status": "psp-paid", "reason": "card", "late": status in LATE_PAYMENT_FROM},
    )


def test_a_refund_seen_before_the_payment_goes_to_a_person() -> None:
    decision = decide(order_in(S.AWAITING_PAYMENT), report(C.REFUNDED))

    assert decision == Decision(
        S.NEEDS_REVIEW,
        {"psp_status": "psp-refunded", "reason": "refunded before paid was seen"},
    )


@pytest.mark.parametrize("state", [C.REJECTED, C.EXPIRED])
def test_leaving_awaiting_payment_schedules_the_first_late_look(state: CanonicalState) -> None:
    decision = decide(order_in(S.AWAITING_PAYMENT), report(state, reason="declined"))

    assert decision == Decision(
        S(state.value),
        {"psp_status": f"psp-{state}", "reason": "declined"},
        {"polls": 0, "next_run_at": NOW + FIRST_WATCH},
    )


@pytest.mark.parametrize(
    ("deadline", "late_watch", "first_look"),
    [
        # before the deadline: the first look comes after first_watch
        (NOW + timedelta(hours=1), LATE_WATCH, NOW + FIRST_WATCH),
        # long past the deadline: the window counts from now, not from the old deadline
        (NOW - timedelta(days=3), LATE_WATCH, NOW + FIRST_WATCH),
        # a window shorter than the first look: the look comes at the window's end
        (NOW, timedelta(seconds=10), NOW + timedelta(seconds=10)),
        (NOW + timedelta(seconds=5), timedelta(seconds=10), NOW + timedelta(seconds=15)),
    ],
)
def test_leave_watches_until_the_window_after_the_later_of_deadline_and_now(
    deadline: Any, late_watch: timedelta, first_look: Any
) -> None:
    order = replace(order_in(S.AWAITING_PAYMENT), expires_at=deadline)
    detail = {"psp_status": "final", "final_check": True}

    decision = settle.leave(
        order, S.EXPIRED, detail, now=NOW, late_watch=late_watch, first_watch=FIRST_WATCH
    )

    assert decision == Decision(S.EXPIRED, detail, {"polls": 0, "next_run_at": first_look})
    assert decision.detail is not detail  # the caller's mapping is copied, not kept


# -- applying a decision -------------------------------------------------------------------------


class Hook:
    """A billing hook that records the events it is handed (or refuses them)."""

    def __init__(self, refuse: bool = False) -> None:
        self.events: list[PaidEvent] = []
        self.refuse = refuse

    async def __call__(self, tx: Any, event: PaidEvent) -> None:
        self.events.append(event)
        if self.refuse:
            raise RuntimeError("wallet unavailable")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def apply(repo: FakeOrders, order: Order, decision: Decision, **options: Any) -> Order:
    options.setdefault("actor", "worker")
    options.setdefault("hook", None)
    return run(settle.apply(cast(Orders, repo), order, decision, **options))


@pytest.mark.parametrize("status", [S.AWAITING_PAYMENT, *sorted(LATE_PAYMENT_FROM)])
def test_a_payment_s_own_id_is_stored_when_the_order_becomes_paid(status: OrderStatus) -> None:
    # Stripe reports refunds and chargebacks by the PaymentIntent alone: the paid move keeps it.
    seen = replace(report(C.PAID), psp_payment_id="pi_123")

    decision = decide(order_in(status), seen)

    assert decision is not None
    assert (decision.to, decision.changes) == (S.PAID, {"psp_payment_id": "pi_123"})
    assert decide(order_in(status), report(C.PAID)) == Decision(S.PAID, decision.detail)


def test_a_report_that_changes_nothing_is_no_decision_so_nothing_is_written() -> None:
    order = order_in(S.AWAITING_PAYMENT)

    assert decide(order, report(C.PENDING)) is None


def test_apply_without_the_lease_moves_an_order_leased_by_a_worker() -> None:
    # A verified notification has no lease: it moves the order whoever holds it (the
    # worker's own write then misses its compare-and-set).
    order = order_in(S.AWAITING_PAYMENT)
    repo = FakeOrders(replace(order, lease_token=uuid.uuid4()))  # a worker's
    decision = decide(order, report(C.REJECTED))
    assert decision is not None

    moved = apply(repo, order, decision, actor="callback:x", use_lease=False)

    assert (moved.status, moved.polls, moved.next_run_at) == (S.REJECTED, 0, NOW + FIRST_WATCH)
    assert repo.actors == ["callback:x"]
    assert repo.withins == 0  # coalesced with the writes around it


def test_apply_on_the_lease_misses_when_the_lease_moved_on_and_counts_nothing() -> None:
    order = order_in(S.AWAITING_PAYMENT)
    repo = FakeOrders(replace(order, lease_token=uuid.uuid4()))  # claimed again meanwhile
    decision = decide(order, report(C.PAID))
    assert decision is not None
    hook = Hook()
    moved_before = counter(metrics.TRANSITIONS, "yookassa", "awaiting_payment", "paid")

    with pytest.raises(StaleOrder):
        apply(repo, order, decision, hook=hook)

    assert (repo.moves, hook.events) == ([], [])
    assert counter(metrics.TRANSITIONS, "yookassa", "awaiting_payment", "paid") == moved_before


@pytest.mark.parametrize("status", [S.AWAITING_PAYMENT, *sorted(LATE_PAYMENT_FROM)])
def test_a_paid_decision_runs_the_hook_once_in_its_transaction_with_a_paid_event(
    status: OrderStatus,
) -> None:
    order = order_in(status)
    repo = FakeOrders(order)
    hook = Hook()
    decision = decide(order, report(C.PAID))
    assert decision is not None
    late = counter(metrics.LATE_PAYMENTS, "yookassa")

    moved = apply(repo, order, decision, actor="worker", hook=hook)

    assert repo.withins == 1  # one transaction of its own: the update, its event, the hook
    assert hook.events == [PaidEvent(moved, previous=status, actor="worker")]
    assert hook.events[0].late is (status in LATE_PAYMENT_FROM)
    assert moved.status is S.PAID
    assert repo.moves == [
        (status, S.PAID, {"psp_status": "psp-paid", "late": status in LATE_PAYMENT_FROM})
    ]
    assert counter(metrics.LATE_PAYMENTS, "yookassa") == late + (status in LATE_PAYMENT_FROM)


def test_a_paid_decision_without_a_hook_is_coalesced() -> None:
    order = order_in(S.AWAITING_PAYMENT)
    repo = FakeOrders(order)
    decision = decide(order, report(C.PAID))
    assert decision is not None

    moved = apply(repo, order, decision, hook=None)

    assert (moved.status, repo.withins) == (S.PAID, 0)


@pytest.mark.parametrize("state", [C.REJECTED, C.EXPIRED, C.REFUNDED])
def test_only_a_move_to_paid_runs_the_hook(state: CanonicalState) -> None:
    order = order_in(S.AWAITING_PAYMENT)
    repo = FakeOrders(order)
    hook = Hook()
    decision = decide(order, report(state))
    assert decision is not None

    moved = apply(repo, order, decision, hook=hook)

    assert moved.status is decision.to
    assert (hook.events, repo.withins) == ([], 0)


def test_a_failing_billing_hook_leaves_the_order_unpaid() -> None:
    order = order_in(S.AWAITING_PAYMENT)
    repo = FakeOrders(order)
    hook = Hook(refuse=True)
    decision = decide(order, report(C.PAID))
    assert decision is not None
    paid = counter(metrics.TRANSITIONS, "yookassa", "awaiting_payment", "paid")

    with pytest.raises(RuntimeError, match="wallet unavailable"):
        apply(repo, order, decision, hook=hook)

    assert len(hook.events) == 1
    assert repo.orders[order.id] == order
    assert repo.moves == []
    assert counter(metrics.TRANSITIONS, "yookassa", "awaiting_payment", "paid") == paid


def test_also_runs_after_the_hook_in_the_same_transaction() -> None:
    order = order_in(S.NEEDS_REVIEW)
    repo = FakeOrders(order)
    calls: list[str] = []

    async def hook(tx: Any, event: PaidEvent) -> None:
        calls.append(f"hook:{event.previous}")

    async def also(tx: Any, moved: Order) -> None:
        calls.append(f"also:{moved.status}")

    moved = apply(
        repo, order, Decision(S.PAID, {}), actor="ops:alice", hook=hook, use_lease=False, also=also
    )

    assert moved.status is S.PAID
    assert calls == ["hook:needs_review", "also:paid"]
    assert repo.withins == 1


def test_also_without_a_paid_move_still_runs_in_the_move_s_transaction() -> None:
    order = order_in(S.NEEDS_REVIEW)
    repo = FakeOrders(order)
    hook = Hook()
    recorded: list[OrderStatus] = []

    async def also(tx: Any, moved: Order) -> None:
        recorded.append(moved.status)
        raise RuntimeError("the console's record failed")

    with pytest.raises(RuntimeError):
        apply(repo, order, Decision(S.REJECTED, {}), hook=hook, use_lease=False, also=also)

    assert (recorded, hook.events, repo.withins) == ([S.REJECTED], [], 1)
    assert repo.orders[order.id] == order  # the move went with the record


def test_keep_lease_keeps_the_step_s_lease_after_the_move() -> None:
    order = order_in(S.NEW)
    repo = FakeOrders(order)

    moved = apply(repo, order, Decision(S.SUBMITTING, {}), keep_lease=True)

    assert (moved.status, moved.lease_token) == (S.SUBMITTING, order.lease_token)


def test_only_a_paid_move_from_a_given_up_status_counts_as_a_late_payment() -> None:
    late = counter(metrics.LATE_PAYMENTS, "yookassa")
    for status in [S.AWAITING_PAYMENT, S.NEEDS_REVIEW, S.EXPIRED, S.REJECTED, S.CANCELLED]:
        order = order_in(status)
        settle.record(order, replace(order, status=S.PAID, paid_at=NOW), "worker")

    assert counter(metrics.LATE_PAYMENTS, "yookassa") == late + 3

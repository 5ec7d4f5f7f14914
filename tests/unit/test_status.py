"""The state machine of DESIGN.md section 3: every allowed move, and nothing else."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.errors import InvalidTransition
from orders.status import TERMINAL, TRANSITIONS, OrderStatus, check_transition

S = OrderStatus

# Section 3's table, written out independently of orders.status, with issue #12's moves: an
# order past its deadline before any invoice expires without one (item 12), and a late payment
# of another amount waits for a person (item 0).
DESIGN_TABLE = {
    ("new", "submitting"),
    ("new", "cancelled"),
    ("new", "expired"),
    ("submitting", "expired"),
    ("rejected", "needs_review"),
    ("expired", "needs_review"),
    ("cancelled", "needs_review"),
    ("submitting", "awaiting_payment"),
    ("submitting", "new"),
    ("submitting", "failed"),
    ("submitting", "needs_review"),
    ("awaiting_payment", "paid"),
    ("awaiting_payment", "rejected"),
    ("awaiting_payment", "expired"),
    ("awaiting_payment", "cancelled"),
    ("awaiting_payment", "needs_review"),
    ("rejected", "paid"),
    ("expired", "paid"),
    ("cancelled", "paid"),
    ("needs_review", "paid"),
    ("needs_review", "rejected"),
}
ALL_PAIRS = list(itertools.product(S, S))


@pytest.mark.parametrize(("a", "b"), sorted(DESIGN_TABLE))
def test_allowed_transition_passes(a: str, b: str) -> None:
    check_transition(S(a), S(b))


@pytest.mark.parametrize(
    ("a", "b"), [(a, b) for a, b in ALL_PAIRS if (a.value, b.value) not in DESIGN_TABLE]
)
def test_forbidden_transition_raises(a: OrderStatus, b: OrderStatus) -> None:
    with pytest.raises(InvalidTransition, match=f"from '{a}' to '{b}'"):
        check_transition(a, b)


def test_failed_and_paid_are_final() -> None:
    assert TRANSITIONS[S.FAILED] == frozenset()
    assert TRANSITIONS[S.PAID] == frozenset()


def test_every_terminal_status_except_paid_and_failed_admits_only_a_late_payment() -> None:
    # paid when the amount is the order's, needs_review when it is not
    for status in TERMINAL - {S.PAID, S.FAILED}:
        assert TRANSITIONS[status] == frozenset({S.PAID, S.NEEDS_REVIEW})


@given(st.lists(st.sampled_from(list(S)), max_size=40))
def test_random_sequences_never_leave_the_table(attempts: list[OrderStatus]) -> None:
    # Given an order that starts new and a random stream of requested moves,
    # when each move is checked before it is applied,
    # then every move that was applied is in the design's table.
    current = S.NEW
    applied: list[tuple[str, str]] = []
    for wanted in attempts:
        try:
            check_transition(current, wanted)
        except InvalidTransition:
            continue
        applied.append((current.value, wanted.value))
        current = wanted
    assert set(applied) <= DESIGN_TABLE

"""Property: whatever operations run against the database, history stays inside section 3."""

from __future__ import annotations

import itertools
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders import InvalidTransition, Money, NewOrder, OrderStatus, StaleOrder
from orders.repository import OrderRepository
from orders.status import TRANSITIONS

S = OrderStatus
ALLOWED = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}

operations = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # which order
        st.sampled_from(["move", "move_from_stale", "cancel"]),
        st.sampled_from(list(S)),  # target status
    ),
    max_size=30,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations)
def test_random_operations_never_leave_the_transition_table(
    repo: OrderRepository, ops: list[tuple[int, str, OrderStatus]]
) -> None:
    site = f"prop-{uuid.uuid4().hex[:10]}"
    ids = [
        repo.create(
            NewOrder(site=site, user_id="u", money=Money(500, "RUB"), adapter="sandbox")
        ).order.id
        for _ in range(3)
    ]
    for index, kind, target in ops:
        order = repo.get(ids[index])
        # "move_from_stale" claims a status the order may not be in: the CAS must refuse it.
        expected = order.status if kind != "move_from_stale" else S.AWAITING_PAYMENT
        try:
            if kind == "cancel":
                repo.cancel(order.id)
            else:
                repo.transition(order.id, expected, target, actor="property")
        except (InvalidTransition, StaleOrder):
            pass
    for order_id in ids:
        events = repo.events(order_id)
        assert events[0].from_status is None
        assert events[0].to_status is S.NEW
        for before, after in itertools.pairwise(events):
            assert after.from_status == before.to_status  # one unbroken chain
            assert (after.from_status, after.to_status) in ALLOWED
        assert repo.get(order_id).status is events[-1].to_status

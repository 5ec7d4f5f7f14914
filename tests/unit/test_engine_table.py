"""Every transition of the state table, made by the real engine or said to be made elsewhere.

``ROWS`` drive the real Engine (with the real transport and adapters, a fake repository, a
fake wire and a fixed clock) through each move the engine makes; ``NOT_BY_ENGINE`` names each
move it never makes and who does. :func:`test_every_allowed_transition_has_a_row_or_a_reason`
holds both to ``orders.status.TRANSITIONS``, so a new transition fails until it is given one.

Then invariants 2 (one invoice per order), 5 (amounts are checked) and 8 (transient is not
final) as unit tests: sequences of steps are run by :func:`tests.unit.engine_fakes.drive`,
which moves a fake clock to each order's ``next_run_at`` instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest

from adapters.base import Adapter
from dispatcher import metrics
from dispatcher.policy import RETRY_GRACE
from dispatcher.runtime import AdapterRuntime
from dispatcher.steps import Action, action_for
from dispatcher.worker import engine as engine_module
from orders.model import PaidEvent
from orders.status import LATE_PAYMENT_FROM, TRANSITIONS, OrderStatus
from tests.unit.engine_fakes import (
    LEASE,
    NOW,
    PAYMENT_ID,
    POLICY,
    Answer,
    Cancels,
    FakeClock,
    FakeOrders,
    NoKeys,
    NoLookup,
    Wire,
    drive,
    engine_for,
    fake_runtime,
    leased,
    plain,
    run_step,
    yk,
    yookassa_runtime,
)

S = OrderStatus
A = Action
CREATE = ("POST", "/v3/payments")
STATUS = ("GET", f"/v3/payments/{PAYMENT_ID}")
CAPTURE = ("POST", f"/v3/payments/{PAYMENT_ID}/capture")
CANCEL = ("POST", f"/v3/payments/{PAYMENT_ID}/cancel")
OTHER = {"value": "90.00", "currency": "RUB"}  # the sample order is 100.00 RUB
SOON = NOW + timedelta(minutes=30)
GONE = NOW - timedelta(minutes=1)


def manual_capture() -> AdapterRuntime:
    return yookassa_runtime(CAPTURE="manual")


def runtime_of(adapter: Adapter) -> Callable[[], AdapterRuntime]:
    return lambda: fake_runtime(adapter)


@dataclass(frozen=True)
class Row:
    """One step of the engine that makes the move ``start -> to``."""

    start: OrderStatus
    to: OrderStatus
    how: str  # what makes the engine do it: the test's id
    action: Action
    answers: tuple[tuple[str, str, Answer], ...] = ()
    # the order's columns; its status is ``start`` unless given (a step may pass through it)
    order: tuple[tuple[str, Any], ...] = ()
    runtime: Callable[[], AdapterRuntime] = yookassa_runtime
    ends: OrderStatus | None = None  # where the step leaves the order, when past ``to``

    def calls(self) -> list[str]:
        return [f"{method} {path}" for method, path, _ in self.answers]


def _late_rows() -> Iterator[Row]:
    for start in sorted(LATE_PAYMENT_FROM):
        given_up = (("psp_id", PAYMENT_ID), ("expires_at", GONE))
        yield Row(
            start,
            S.PAID,
            f"{start}: the late watch sees our amount paid",
            A.WATCH,
            ((*STATUS, yk("status_succeeded")),),
            given_up,
        )
        yield Row(
            start,
            S.NEEDS_REVIEW,
            f"{start}: the late watch sees another amount paid",
            A.WATCH,
            ((*STATUS, yk("status_succeeded", amount=OTHER)),),
            given_up,
        )


INVOICED = (("psp_id", PAYMENT_ID), ("expires_at", SOON))
AT_DEADLINE = (("psp_id", PAYMENT_ID), ("expires_at", NOW))

ROWS: list[Row] = [
    Row(
        S.NEW,
        S.SUBMITTING,
        "new: the create goes out",
        A.SUBMIT,
        ((*CREATE, yk("create_pending")),),
        ends=S.AWAITING_PAYMENT,
    ),
    Row(
        S.NEW,
        S.EXPIRED,
        "new: within the cutoff of its deadline",
        A.SUBMIT,
        order=(("expires_at", NOW + timedelta(seconds=3)),),
    ),
    Row(
        S.SUBMITTING,
        S.AWAITING_PAYMENT,
        "submitting: the resumed create is answered with the invoice",
        A.SUBMIT,
        ((*CREATE, yk("create_pending")),),
        (("attempts", 1),),
    ),
    Row(
        S.SUBMITTING,
        S.NEW,
        "new, then submitting: a refused connection sent nothing",
        A.SUBMIT,
        ((*CREATE, httpx.ConnectError),),
        (("status", S.NEW),),
        ends=S.NEW,
    ),
    Row(
        S.SUBMITTING,
        S.NEW,
        "new, then submitting: a 429 on the create sent nothing",
        A.SUBMIT,
        ((*CREATE, yk("error_too_many_requests", 429)),),
        (("status", S.NEW),),
        ends=S.NEW,
    ),
    Row(
        S.SUBMITTING,
        S.FAILED,
        "submitting: the payment system definitely refuses the create",
        A.SUBMIT,
        ((*CREATE, yk("error_invalid_request", 400)),),
    ),
    Row(
        S.SUBMITTING,
        S.FAILED,
        "submitting: the adapter cannot build the create for this order",
        A.SUBMIT,
        order=(("return_url", None),),
    ),
    Row(
        S.SUBMITTING,
        S.FAILED,
        "submitting: attempts run out with idempotency keys",
        A.SUBMIT,
        ((*CREATE, yk("error_internal_server_error", 500)),),
        (("attempts", POLICY.submit_attempts),),
    ),
    Row(
        S.SUBMITTING,
        S.NEEDS_REVIEW,
        "submitting: no keys and no lookup after an earlier create",
        A.SUBMIT,
        order=(("adapter", "nolookup"), ("attempts", 1)),
        runtime=runtime_of(NoLookup()),
    ),
    Row(
        S.SUBMITTING,
        S.NEEDS_REVIEW,
        "submitting: attempts run out after creates that may have been sent without keys",
        A.SUBMIT,
        (
            ("POST", "/check", httpx.Response(200, json={})),
            ("POST", "/init", httpx.Response(500)),
        ),
        (("adapter", "nokeys"), ("attempts", POLICY.submit_attempts)),
        runtime=runtime_of(NoKeys()),
    ),
    Row(
        S.SUBMITTING,
        S.EXPIRED,
        "submitting: at its deadline",
        A.SUBMIT,
        order=(("expires_at", NOW),),
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.PAID,
        "awaiting_payment: the poll sees our amount paid",
        A.POLL,
        ((*STATUS, yk("status_succeeded")),),
        INVOICED,
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.PAID,
        "awaiting_payment: a payment held for capture is captured",
        A.POLL,
        ((*STATUS, yk("status_waiting_for_capture")), (*CAPTURE, yk("status_succeeded"))),
        INVOICED,
        runtime=manual_capture,
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.PAID,
        "awaiting_payment: the cancel at the deadline answers that it was paid meanwhile",
        A.FINALIZE,
        (
            ("GET", f"/state/{PAYMENT_ID}", plain("pending")),
            ("POST", f"/cancel/{PAYMENT_ID}", plain("paid")),
        ),
        (("adapter", "cancels"), *AT_DEADLINE),
        runtime=runtime_of(Cancels()),
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.REJECTED,
        "awaiting_payment: the poll sees it declined",
        A.POLL,
        ((*STATUS, yk("status_canceled_insufficient_funds")),),
        INVOICED,
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.EXPIRED,
        "awaiting_payment: the poll sees it expired at the payment system",
        A.POLL,
        ((*STATUS, yk("status_canceled_expired_on_confirmation")),),
        INVOICED,
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.EXPIRED,
        "awaiting_payment: the final check at the deadline finds it unpaid",
        A.FINALIZE,
        ((*STATUS, yk("status_pending")),),
        AT_DEADLINE,
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.EXPIRED,
        "awaiting_payment: the final check cancels it where the adapter can",
        A.FINALIZE,
        (
            ("GET", f"/state/{PAYMENT_ID}", plain("pending")),
            ("POST", f"/cancel/{PAYMENT_ID}", plain("rejected")),
        ),
        (("adapter", "cancels"), *AT_DEADLINE),
        runtime=runtime_of(Cancels()),
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.NEEDS_REVIEW,
        "awaiting_payment: the cancel at the deadline answers that it was refunded",
        A.FINALIZE,
        (
            ("GET", f"/state/{PAYMENT_ID}", plain("pending")),
            ("POST", f"/cancel/{PAYMENT_ID}", plain("refunded")),
        ),
        (("adapter", "cancels"), *AT_DEADLINE),
        runtime=runtime_of(Cancels()),
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.NEEDS_REVIEW,
        "awaiting_payment: the poll sees another amount paid",
        A.POLL,
        ((*STATUS, yk("status_succeeded", amount=OTHER)),),
        INVOICED,
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.NEEDS_REVIEW,
        "awaiting_payment: the poll sees it refunded before it saw it paid",
        A.POLL,
        ((*STATUS, yk("status_refunded")),),
        INVOICED,
    ),
    Row(
        S.AWAITING_PAYMENT,
        S.NEEDS_REVIEW,
        "awaiting_payment: a payment of another amount held for capture is cancelled",
        A.POLL,
        (
            (*STATUS, yk("status_waiting_for_capture", amount=OTHER)),
            (*CANCEL, yk("status_canceled_by_merchant", amount=OTHER)),
        ),
        INVOICED,
        runtime=manual_capture,
    ),
    *_late_rows(),
]

# Moves of the table the engine never makes, and who does.
BY_THE_SITE_OR_BUYER = (
    "the site (DELETE /v1/orders/{id}) or the buyer (/pay/{id}/cancel, or a switch to another "
    "payment system) cancels it: OrderRepository.cancel"
)
BY_A_PERSON = (
    "a person settles it: `paydispatch orders resolve` or the console "
    "(dispatcher.ops.orders.resolve); settle.decide leaves needs_review alone"
)
NOT_BY_ENGINE: dict[tuple[OrderStatus, OrderStatus], str] = {
    (S.NEW, S.CANCELLED): BY_THE_SITE_OR_BUYER,
    (S.AWAITING_PAYMENT, S.CANCELLED): BY_THE_SITE_OR_BUYER,
    (S.NEEDS_REVIEW, S.PAID): BY_A_PERSON,
    (S.NEEDS_REVIEW, S.REJECTED): BY_A_PERSON,
}


def test_every_allowed_transition_has_a_row_or_a_reason() -> None:
    allowed = {(start, to) for start, targets in TRANSITIONS.items() for to in targets}
    made = {(row.start, row.to) for row in ROWS}

    assert made - allowed == set(), "rows for moves the state table forbids"
    assert set(NOT_BY_ENGINE) - allowed == set(), "reasons for moves the table forbids"
    assert made & set(NOT_BY_ENGINE) == set(), "a move both made by the engine and not"
    assert allowed - made - set(NOT_BY_ENGINE) == set(), (
        "a transition without a row in ROWS or a reason in NOT_BY_ENGINE"
    )


def test_row_ids_are_unique() -> None:
    assert len({row.how for row in ROWS}) == len(ROWS)


@pytest.fixture(autouse=True)
def _steady_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry backoffs at half their ceiling, so a sequence of steps is the same every run."""
    monkeypatch.setattr("dispatcher.policy.random.random", lambda: 0.5)


@pytest.fixture(autouse=True)
def _closed_breaker_gauges() -> Iterator[None]:
    yield
    for name in ("yookassa", "nokeys", "nolookup", "cancels"):
        metrics.BREAKER_STATE.labels(name).set(0)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.how)
def test_the_engine_makes_the_move(row: Row) -> None:
    wire = Wire()
    for method, path, answer in row.answers:
        wire.on(method, path, answer)
    order = replace(leased(status=row.start), **dict(row.order))

    after, repo, _ = run_step(row.runtime(), wire, order, row.action)

    assert (row.start, row.to) in repo.statuses()
    assert after.status is (row.ends or row.to)
    assert wire.calls == row.calls()
    assert after.lease_token is None  # every step ends by giving the lease back


# -- the paid move with a billing hook ----------------------------------------------------------


def test_a_paid_step_runs_the_billing_hook_once_with_the_paid_order() -> None:
    wire = Wire()
    wire.on(*STATUS, yk("status_succeeded"))
    credited: list[PaidEvent] = []
    order = leased(status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, expires_at=SOON)

    async def credit(tx: Any, event: PaidEvent) -> None:
        credited.append(event)

    after, repo, _ = run_step(yookassa_runtime(), wire, order, A.POLL, paid_hook=credit)

    assert [(e.order.id, e.order.status, e.previous, e.actor) for e in credited] == [
        (order.id, S.PAID, S.AWAITING_PAYMENT, "worker")
    ]
    assert credited[0].late is False
    assert (after.status, after.lease_token, after.next_run_at) == (S.PAID, None, None)
    assert repo.actors == ["worker"]
    assert repo.withins == 1  # the hook ran in the paid move's own transaction


def test_a_late_paid_step_hands_the_billing_hook_a_late_event() -> None:
    # Given an expired order under the late watch, whose payment arrives late,
    wire = Wire()
    wire.on(*STATUS, yk("status_succeeded"))
    credited: list[PaidEvent] = []
    order = leased(status=S.EXPIRED, psp_id=PAYMENT_ID, expires_at=GONE)

    async def credit(tx: Any, event: PaidEvent) -> None:
        credited.append(event)

    # when the watch sees it paid,
    after, repo, _ = run_step(yookassa_runtime(), wire, order, A.WATCH, paid_hook=credit)

    # then the hook learns from the event that it was late, without reading anything back.
    assert [(e.previous, e.late, e.order.status) for e in credited] == [(S.EXPIRED, True, S.PAID)]
    assert after.status is S.PAID
    assert repo.withins == 1


def test_a_failing_billing_hook_keeps_the_order_awaiting_payment_and_retries_it() -> None:
    async def refuse(tx: Any, event: PaidEvent) -> None:
        raise RuntimeError("wallet table locked")

    wire = Wire()
    wire.on(*STATUS, yk("status_succeeded"))
    order = leased(status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, expires_at=SOON)

    after, repo, _ = run_step(yookassa_runtime(), wire, order, A.POLL, paid_hook=refuse)

    assert (after.status, after.errors, after.paid_at) == (S.AWAITING_PAYMENT, 1, None)
    assert after.last_error is not None
    assert "wallet table locked" in after.last_error
    assert after.next_run_at is not None
    assert repo.moves == []


# -- what the engine does for each status --------------------------------------------------------

NEXT_ACTION: dict[OrderStatus, tuple[Action | None, Action | None]] = {
    # status: (before its deadline, at or past it)
    S.NEW: (A.SUBMIT, A.SUBMIT),
    S.SUBMITTING: (A.SUBMIT, A.SUBMIT),
    S.AWAITING_PAYMENT: (A.POLL, A.FINALIZE),
    S.REJECTED: (A.WATCH, A.WATCH),
    S.EXPIRED: (A.WATCH, A.WATCH),
    S.CANCELLED: (A.WATCH, A.WATCH),
    S.PAID: (None, None),
    S.FAILED: (None, None),
    S.NEEDS_REVIEW: (None, None),
}


@pytest.mark.parametrize("status", list(S))
def test_each_status_gets_the_step_it_needs(status: OrderStatus) -> None:
    before, after = NEXT_ACTION[status]
    order = leased(status=status, expires_at=NOW)

    assert action_for(order, NOW - timedelta(microseconds=1)) is before
    assert action_for(order, NOW) is after


# ``transfer`` is the step of a refund or payout, not of an order (its messages name transfers):
# tests/unit/test_transfer_steps.py holds it to the same rule. ``refund_check`` reads a PAID
# order's payment by design and moves no order (it records a refund, a transfer):
# tests/integration/test_refund_checks.py holds it.
@pytest.mark.parametrize("action", [a for a in A if a not in (A.TRANSFER, A.REFUND_CHECK)])
@pytest.mark.parametrize("status", [S.PAID, S.FAILED, S.NEEDS_REVIEW])
def test_no_step_touches_an_order_that_is_final_or_waits_for_a_person(
    status: OrderStatus, action: Action
) -> None:
    wire = Wire()  # answers nothing: any call fails the test
    order = leased(status=status, psp_id=PAYMENT_ID, expires_at=GONE)

    after, repo, _ = run_step(yookassa_runtime(), wire, order, action)

    assert (wire.calls, repo.moves, after.status) == ([], [], status)


# -- invariant 2: one invoice per order ----------------------------------------------------------


def creates(wire: Wire, path: str = "/v3/payments") -> list[httpx.Request]:
    return [r for r in wire.requests if r.method == "POST" and r.url.path == path]


@pytest.mark.parametrize(
    "fault",
    [yk("error_internal_server_error", 500), httpx.ReadTimeout, httpx.RemoteProtocolError],
    ids=["http-500", "read-timeout", "dropped-connection"],
)
def test_invariant2_a_create_retried_after_a_maybe_sent_failure_carries_the_same_key(
    fault: Answer,
) -> None:
    # Given a payment system with idempotency keys whose first create may have been accepted,
    wire = Wire()
    wire.on(*CREATE, fault, yk("create_pending"))
    order = leased(status=S.NEW, next_run_at=NOW)
    # when the engine goes on with the order,
    looks, repo = drive(
        yookassa_runtime(), wire, order, clock=FakeClock(), until=lambda o: o.psp_id is not None
    )
    # then the order stayed in submitting and the one retry carried the same key.
    sent = creates(wire)
    assert len(sent) == 2
    assert [r.headers["Idempotence-Key"] for r in sent] == [order.psp_idempotency_key] * 2
    assert repo.statuses() == [(S.NEW, S.SUBMITTING), (S.SUBMITTING, S.AWAITING_PAYMENT)]
    assert looks[1].at > looks[0].at  # the retry came after a backoff, on the fake clock


def test_invariant2_after_nothing_was_sent_the_next_create_carries_the_same_key() -> None:
    wire = Wire()
    wire.on(*CREATE, httpx.ConnectError, yk("create_pending"))
    order = leased(status=S.NEW, next_run_at=NOW)

    _, repo = drive(
        yookassa_runtime(), wire, order, clock=FakeClock(), until=lambda o: o.psp_id is not None
    )

    assert {r.headers["Idempotence-Key"] for r in creates(wire)} == {order.psp_idempotency_key}
    assert repo.statuses() == [
        (S.NEW, S.SUBMITTING),
        (S.SUBMITTING, S.NEW),
        (S.NEW, S.SUBMITTING),
        (S.SUBMITTING, S.AWAITING_PAYMENT),
    ]


@pytest.mark.parametrize(
    ("lookup", "calls", "psp_id"),
    [
        # the earlier create made the invoice: it is taken, no second create
        ({"id": "pay-7"}, ["POST /init", "POST /check"], "pay-7"),
        # the payment system surely has none: only then a second create
        ({}, ["POST /init", "POST /check", "POST /init"], "pay-8"),
    ],
    ids=["found", "none"],
)
@pytest.mark.parametrize(
    "fault", [httpx.Response(500), httpx.ReadTimeout], ids=["http-500", "read-timeout"]
)
def test_invariant2_without_keys_the_invoice_is_looked_up_before_any_second_create(
    fault: Answer, lookup: dict[str, str], calls: list[str], psp_id: str
) -> None:
    wire = Wire()
    wire.on("POST", "/init", fault, httpx.Response(200, json={"id": "pay-8"}))
    wire.on("POST", "/check", httpx.Response(200, json=lookup))
    order = replace(leased(status=S.NEW, next_run_at=NOW), adapter="nokeys")

    _, repo = drive(
        fake_runtime(NoKeys()),
        wire,
        order,
        clock=FakeClock(),
        until=lambda o: o.psp_id is not None,
    )

    assert wire.calls == calls
    assert repo.orders[order.id].psp_id == psp_id
    assert repo.statuses()[-1] == (S.SUBMITTING, S.AWAITING_PAYMENT)


def test_invariant2_without_keys_or_lookup_a_maybe_sent_create_goes_to_a_person() -> None:
    wire = Wire()
    wire.on("POST", "/init", httpx.Response(502))
    order = replace(leased(status=S.NEW, next_run_at=NOW), adapter="nolookup")

    _, repo = drive(fake_runtime(NoLookup()), wire, order, clock=FakeClock())

    assert wire.calls == ["POST /init"]  # never a second create
    assert repo.statuses() == [(S.NEW, S.SUBMITTING), (S.SUBMITTING, S.NEEDS_REVIEW)]


@pytest.mark.parametrize(
    "fault",
    [yk("error_internal_server_error", 500), httpx.ConnectError],
    ids=["maybe-sent", "not-sent"],
)
def test_invariant2_a_create_that_keeps_failing_is_sent_submit_attempts_times_then_given_up(
    fault: Answer,
) -> None:
    policy = replace(POLICY, submit_attempts=4)
    wire = Wire()
    wire.on(*CREATE, fault)
    order = leased(status=S.NEW, next_run_at=NOW, expires_at=NOW + timedelta(days=1))

    _, repo = drive(yookassa_runtime(policy), wire, order, clock=FakeClock())

    assert len(creates(wire)) == policy.submit_attempts
    assert {r.headers["Idempotence-Key"] for r in creates(wire)} == {order.psp_idempotency_key}
    assert repo.orders[order.id].status is S.FAILED


# -- invariant 5: amounts are checked ------------------------------------------------------------

OTHER_MONEY = [{"value": "90.00", "currency": "RUB"}, {"value": "100.00", "currency": "USD"}]
REPORTED = {"amount": "90.00 RUB", "currency": "100.00 USD"}


@pytest.mark.parametrize("other", OTHER_MONEY, ids=list(REPORTED))
@pytest.mark.parametrize(
    ("status", "action", "expires_at"),
    [
        (S.AWAITING_PAYMENT, A.POLL, SOON),
        (S.AWAITING_PAYMENT, A.FINALIZE, NOW),
        *[(start, A.WATCH, GONE) for start in sorted(LATE_PAYMENT_FROM)],
    ],
)
def test_invariant5_a_payment_of_another_amount_or_currency_goes_to_review_not_paid(
    status: OrderStatus, action: Action, expires_at: Any, other: dict[str, str]
) -> None:
    wire = Wire()
    wire.on(*STATUS, yk("status_succeeded", amount=other))
    order = leased(status=status, psp_id=PAYMENT_ID, expires_at=expires_at)

    after, repo, _ = run_step(yookassa_runtime(), wire, order, action)

    assert (after.status, after.paid_at) == (S.NEEDS_REVIEW, None)
    assert repo.statuses() == [(status, S.NEEDS_REVIEW)]
    assert repo.moves[0][2]["reported"] in REPORTED.values()
    assert repo.moves[0][2]["reported"] == f"{other['value']} {other['currency']}"


@pytest.mark.parametrize("other", OTHER_MONEY, ids=["amount", "currency"])
@pytest.mark.parametrize(("status", "action"), [(S.AWAITING_PAYMENT, A.POLL), (S.EXPIRED, A.WATCH)])
def test_invariant5_a_held_payment_of_another_amount_or_currency_is_never_captured(
    status: OrderStatus, action: Action, other: dict[str, str]
) -> None:
    wire = Wire()
    wire.on(*STATUS, yk("status_waiting_for_capture", amount=other))
    wire.on(*CANCEL, yk("status_canceled_by_merchant", amount=other))
    order = leased(status=status, psp_id=PAYMENT_ID, expires_at=SOON, polls=1)

    after, _, _ = run_step(manual_capture(), wire, order, action)

    assert "POST " + CAPTURE[1] not in wire.calls
    assert wire.calls == [f"GET {STATUS[1]}", f"POST {CANCEL[1]}"]
    assert after.status is S.NEEDS_REVIEW


def test_invariant5_a_cancel_answering_paid_with_another_amount_goes_to_review() -> None:
    wire = Wire()
    wire.on("GET", f"/state/{PAYMENT_ID}", plain("pending"))
    wire.on("POST", f"/cancel/{PAYMENT_ID}", plain("paid", amount=100))
    order = replace(
        leased(status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, expires_at=NOW), adapter="cancels"
    )

    after, repo, _ = run_step(fake_runtime(Cancels()), wire, order, A.FINALIZE)

    assert (after.status, after.paid_at) == (S.NEEDS_REVIEW, None)
    assert repo.moves[-1][2]["reason"] == "amount mismatch"


# -- invariant 8: transient is not final ---------------------------------------------------------

TRANSIENT: list[Answer] = [
    yk("error_internal_server_error", 500),
    httpx.Response(502, text="<html><head><title>502 Bad Gateway</title></head></html>"),
    httpx.Response(503),
    yk("error_too_many_requests", 429),
    httpx.ReadTimeout,
    httpx.ConnectTimeout,
    httpx.ConnectError,
    httpx.RemoteProtocolError,
    httpx.Response(200, text="<html><body>Back soon</body></html>"),  # unreadable
    yk("status_unknown_status"),  # a status the adapter does not know
]
TRANSIENT_IDS = [
    "http-500",
    "http-502-html",
    "http-503-empty",
    "http-429",
    "read-timeout",
    "connect-timeout",
    "connection-refused",
    "dropped-connection",
    "html-200",
    "unknown-status",
]
REFUSED_STATUS_CALLS: list[Answer] = [yk("error_not_found", 404), yk("error_invalid_request", 400)]


@pytest.mark.parametrize(
    "fault", TRANSIENT + REFUSED_STATUS_CALLS, ids=[*TRANSIENT_IDS, "http-404", "http-400"]
)
@pytest.mark.parametrize(
    ("status", "action", "expires_at", "retry_by"),
    [
        (S.AWAITING_PAYMENT, A.POLL, SOON, SOON + RETRY_GRACE),
        # past the deadline: never expired on a failed final check, retried within the grace
        (S.AWAITING_PAYMENT, A.FINALIZE, GONE, NOW + RETRY_GRACE),
        (S.EXPIRED, A.WATCH, GONE, GONE + POLICY.late_window + RETRY_GRACE),
        (S.REJECTED, A.WATCH, GONE, GONE + POLICY.late_window + RETRY_GRACE),
        (S.CANCELLED, A.WATCH, GONE, GONE + POLICY.late_window + RETRY_GRACE),
    ],
)
def test_invariant8_a_failed_status_call_only_delays_the_order(
    status: OrderStatus, action: Action, expires_at: Any, retry_by: Any, fault: Answer
) -> None:
    wire = Wire()
    wire.on(*STATUS, fault)
    order = leased(status=status, psp_id=PAYMENT_ID, expires_at=expires_at, polls=1, errors=2)

    after, repo, _ = run_step(yookassa_runtime(), wire, order, action)

    assert repo.moves == []
    assert (after.status, after.polls, after.errors) == (status, 1, 3)
    assert after.last_error
    assert after.next_run_at is not None
    assert NOW < after.next_run_at <= retry_by


@pytest.mark.parametrize("fault", TRANSIENT[:-1], ids=TRANSIENT_IDS[:-1])
@pytest.mark.parametrize("start", [S.NEW, S.SUBMITTING])
def test_invariant8_a_failed_create_is_retried_never_failed_before_attempts_run_out(
    start: OrderStatus, fault: Answer
) -> None:
    wire = Wire()
    wire.on(*CREATE, fault)
    order = leased(status=start, attempts=1, expires_at=SOON)

    after, repo, _ = run_step(yookassa_runtime(), wire, order, A.SUBMIT)

    assert after.status in {S.NEW, S.SUBMITTING}
    assert S.FAILED not in {to for _, to in repo.statuses()}
    assert after.last_error
    assert after.next_run_at is not None
    assert NOW < after.next_run_at <= SOON


def test_invariant8_an_order_paid_through_faults_on_every_call_ends_paid_with_one_invoice() -> None:
    # Given a payment system that fails creates and polls in every transient way first,
    wire = Wire()
    wire.on(*CREATE, *TRANSIENT[:-1], yk("create_pending"))
    wire.on(*STATUS, *TRANSIENT, yk("status_pending"), yk("status_succeeded"))
    order = leased(status=S.NEW, next_run_at=NOW, expires_at=NOW + timedelta(days=1))
    # when the engine works on the order step by step, the clock moved to each next run,
    looks, repo = drive(yookassa_runtime(), wire, order, clock=FakeClock())
    # then it ends paid: one invoice, every create with the same key, nothing else decided.
    after = repo.orders[order.id]
    assert (after.status, after.errors, after.next_run_at) == (S.PAID, 0, None)
    assert {r.headers["Idempotence-Key"] for r in creates(wire)} == {order.psp_idempotency_key}
    assert repo.statuses()[-2:] == [
        (S.SUBMITTING, S.AWAITING_PAYMENT),
        (S.AWAITING_PAYMENT, S.PAID),
    ]
    assert set(repo.statuses()) <= {
        (S.NEW, S.SUBMITTING),
        (S.SUBMITTING, S.NEW),
        (S.SUBMITTING, S.AWAITING_PAYMENT),
        (S.AWAITING_PAYMENT, S.PAID),
    }
    assert looks[-1].at < order.expires_at


def test_invariant8_a_final_check_through_faults_expires_only_on_an_answer() -> None:
    wire = Wire()
    wire.on(*STATUS, *TRANSIENT, yk("status_pending"))
    deadline = NOW
    order = leased(
        status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, expires_at=deadline, next_run_at=NOW
    )

    looks, repo = drive(
        yookassa_runtime(),
        wire,
        order,
        clock=FakeClock(),
        until=lambda o: o.status is not S.AWAITING_PAYMENT,
    )

    assert len(wire.requests) == len(TRANSIENT) + 1
    assert repo.moves == [
        (S.AWAITING_PAYMENT, S.EXPIRED, {"psp_status": "pending", "final_check": True})
    ]
    # every retry of the final check came within the grace of the one before
    times = [look.at for look in looks]
    assert all(b - a <= RETRY_GRACE for a, b in itertools.pairwise(times))


# -- the late watch, on the fake clock -----------------------------------------------------------

WATCH_POLICY = replace(POLICY, late_window=timedelta(hours=24), late_interval=timedelta(seconds=60))


def test_the_late_watch_looks_less_often_and_ends_with_its_window() -> None:
    wire = Wire()
    wire.on(*STATUS, yk("status_canceled_expired_on_confirmation"))
    deadline = NOW
    order = leased(
        status=S.EXPIRED,
        psp_id=PAYMENT_ID,
        expires_at=deadline,
        polls=1,
        next_run_at=NOW + timedelta(seconds=60),
    )

    looks, repo = drive(yookassa_runtime(WATCH_POLICY), wire, order, clock=FakeClock())

    after = repo.orders[order.id]
    assert (after.status, after.next_run_at) == (S.EXPIRED, None)
    assert repo.moves == []
    times = [look.at for look in looks]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(timedelta(0) < gap <= engine_module.LATE_INTERVAL_CAP for gap in gaps)
    assert gaps == sorted(gaps)  # less and less often
    assert times[-1] < deadline + WATCH_POLICY.late_window
    assert len(looks) == len(wire.requests)


def test_a_late_payment_within_the_window_is_paid_and_marked_late() -> None:
    wire = Wire()
    wire.on(*STATUS, *[yk("status_pending")] * 5, yk("status_succeeded"))
    order = leased(status=S.CANCELLED, psp_id=PAYMENT_ID, expires_at=NOW, polls=1, next_run_at=NOW)

    looks, repo = drive(yookassa_runtime(WATCH_POLICY), wire, order, clock=FakeClock())

    assert len(looks) == 6
    assert repo.moves[-1][:2] == (S.CANCELLED, S.PAID)
    assert repo.moves[-1][2]["late"] is True
    assert repo.orders[order.id].paid_at == looks[-1].at


# -- an open breaker ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "attempts"),
    [
        (S.NEW, 2),  # this step would be its third (the last) attempt
        (S.SUBMITTING, 3),  # resumed after its earlier creates may have been sent
    ],
)
def test_an_open_breaker_never_gives_up_an_order_on_its_last_attempt(
    start: OrderStatus, attempts: int
) -> None:
    # Given a payment system whose breaker the first order's refused connection opens,
    policy = replace(POLICY, breaker_failures=1, submit_attempts=3)
    wire = Wire()
    wire.on(*CREATE, httpx.ConnectError)
    first = leased(status=S.NEW)
    last_try = replace(first, id=uuid.uuid4(), number=43, status=start, attempts=attempts)
    repo = FakeOrders(first, last_try)
    # when the second order, one attempt from giving up, meets the open breaker,
    engine = engine_for(repo, yookassa_runtime(policy), wire, lambda: NOW)

    async def go() -> None:
        try:
            await engine.run(first.id, LEASE, A.SUBMIT)
            await engine.run(last_try.id, LEASE, A.SUBMIT)
        finally:
            await engine.aclose()

    asyncio.run(go())
    # then nothing was sent for it and it is not given up: the breaker spent no attempt.
    assert len(wire.requests) == 1
    after = repo.orders[last_try.id]
    assert (after.status, after.attempts) == (start, attempts)
    assert after.next_run_at is not None


# -- leases and the late watch's edges -----------------------------------------------------------


def test_a_message_with_a_lease_that_moved_on_is_dropped_without_a_call() -> None:
    wire = Wire()  # answers nothing: any call fails the test
    order = leased(status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, expires_at=SOON)
    stale = replace(order, lease_token=uuid.uuid4())  # the message's token, not the row's

    after, repo, _ = run_step(yookassa_runtime(), wire, stale, A.POLL, repo=FakeOrders(order))

    assert (wire.calls, repo.moves, after) == ([], [], order)


class Reclaimed(Wire):
    """A wire during whose call the sweeper claims the order again (the step outlived its
    lease): the step's own write must then miss."""

    def __init__(self, repo: FakeOrders, order_id: uuid.UUID) -> None:
        super().__init__()
        self.repo, self.order_id = repo, order_id

    def __call__(self, request: httpx.Request) -> httpx.Response:
        current = self.repo.orders[self.order_id]
        self.repo.orders[self.order_id] = replace(current, lease_token=uuid.uuid4())
        return super().__call__(request)


@pytest.mark.parametrize(
    "answer",
    [
        yk("status_succeeded"),
        yk("status_pending"),
        yk("error_internal_server_error", 500),  # the failed step's retry must miss too
        yk("error_invalid_credentials", 401),  # and so must the credentials' release
    ],
    ids=["paid", "pending", "http-500", "credentials-refused"],
)
def test_a_step_that_outlived_its_lease_writes_nothing(answer: httpx.Response) -> None:
    order = leased(status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, expires_at=SOON, polls=4)
    repo = FakeOrders(order)
    wire = Reclaimed(repo, order.id)
    wire.on(*STATUS, answer)

    after, _, _ = run_step(yookassa_runtime(), wire, order, A.POLL, repo=repo)

    assert repo.moves == []
    assert (after.status, after.polls, after.errors) == (S.AWAITING_PAYMENT, 4, 0)
    assert after.lease_token not in {None, LEASE}  # the newer claim holds it


def test_a_cancelled_order_that_never_had_an_invoice_is_not_watched() -> None:
    wire = Wire()  # answers nothing: any call fails the test
    order = leased(status=S.CANCELLED, psp_id=None, expires_at=SOON, next_run_at=NOW)

    after, repo, _ = run_step(yookassa_runtime(), wire, order, A.WATCH)

    assert (wire.calls, repo.moves) == ([], [])
    assert (after.status, after.next_run_at) == (S.CANCELLED, None)


def test_the_first_late_look_cancels_a_pending_invoice_where_the_adapter_can() -> None:
    wire = Wire()
    wire.on("GET", f"/state/{PAYMENT_ID}", plain("pending"))
    wire.on("POST", f"/cancel/{PAYMENT_ID}", plain("rejected"))
    order = replace(
        leased(status=S.CANCELLED, psp_id=PAYMENT_ID, expires_at=SOON, polls=0),
        adapter="cancels",
    )

    after, repo, _ = run_step(fake_runtime(Cancels()), wire, order, A.WATCH)

    assert wire.calls == [f"GET /state/{PAYMENT_ID}", f"POST /cancel/{PAYMENT_ID}"]
    assert (after.status, after.polls) == (S.CANCELLED, 1)
    assert after.next_run_at is not None  # still watched: a payment may have been under way
    assert repo.moves == []


def test_later_late_looks_send_no_cancel() -> None:
    wire = Wire()
    wire.on("GET", f"/state/{PAYMENT_ID}", plain("pending"))
    order = replace(
        leased(status=S.CANCELLED, psp_id=PAYMENT_ID, expires_at=SOON, polls=1),
        adapter="cancels",
    )

    after, _, _ = run_step(fake_runtime(Cancels()), wire, order, A.WATCH)

    assert wire.calls == [f"GET /state/{PAYMENT_ID}"]
    assert after.polls == 2

"""Engine steps against an in-memory repository and payment systems behind httpx.MockTransport.

The real engine, transport, adapters and state machine run; only PostgreSQL and the wire are
replaced, and the clock is fixed, so each step's requests and its written outcome are exact.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import cast

import httpx
import pytest

from adapters import registry, robokassa
from dispatcher import metrics
from dispatcher.policy import RETRY_GRACE
from dispatcher.runtime import AdapterRuntime
from dispatcher.steps import Action
from dispatcher.worker.breaker import BreakerState
from dispatcher.worker.engine import Engine
from orders.model import Order
from orders.repository import Orders
from orders.status import OrderStatus
from tests.unit.engine_fakes import (
    LEASE,
    NOW,
    PAYMENT_ID,
    POLICY,
    FakeOrders,
    Wire,
    counter,
    leased,
    nokeys_runtime,
    run_step,
    yk,
    yookassa_runtime,
)

S = OrderStatus


# -- our credentials refused ---------------------------------------------------------------------


def test_a_create_refused_for_our_credentials_keeps_the_order_new_and_opens_the_breaker() -> None:
    wire = Wire()
    wire.on("POST", "/v3/payments", yk("error_invalid_credentials", 401))
    order = leased(status=S.NEW, attempts=2)
    before = counter(metrics.CREDENTIALS_REJECTED, "yookassa")

    after, repo, _ = run_step(yookassa_runtime(), wire, order, Action.SUBMIT)

    assert (after.status, after.attempts, after.last_error) == (S.NEW, 2, None)
    assert after.lease_token is None
    assert after.next_run_at == NOW + timedelta(seconds=POLICY.breaker_reset)
    assert S.FAILED not in {to for _, to, _ in repo.moves}
    assert counter(metrics.CREDENTIALS_REJECTED, "yookassa") == before + 1
    assert metrics.BREAKER_STATE.labels("yookassa")._value.get() == BreakerState.OPEN


def test_a_poll_refused_for_our_credentials_changes_nothing_and_stops_further_calls() -> None:
    wire = Wire()
    wire.on("GET", f"/v3/payments/{PAYMENT_ID}", yk("error_forbidden", 403))
    first = leased(status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, polls=3)
    second = replace(first, id=uuid.uuid4(), number=43)
    repo = FakeOrders(first, second)
    runtime = yookassa_runtime()

    async def go() -> None:
        engine = Engine(
            cast(Orders, repo),
            {"yookassa": runtime},
            clock=lambda: NOW,
            http_transport=httpx.MockTransport(wire),
        )
        try:
            await engine.run(first.id, LEASE, Action.POLL)
            await engine.run(second.id, LEASE, Action.POLL)
        finally:
            await engine.aclose()

    asyncio.run(go())
    assert len(wire.requests) == 1  # the open breaker kept the second poll off the wire
    after = repo.orders[first.id]
    assert (after.status, after.polls, after.last_error) == (S.AWAITING_PAYMENT, 3, None)


def test_orders_kept_off_the_wire_by_refused_credentials_spend_no_attempt() -> None:
    wire = Wire()
    wire.on("POST", "/v3/payments", yk("error_invalid_credentials", 401))
    first = leased(status=S.NEW, attempts=0)
    second = replace(first, id=uuid.uuid4(), number=43, attempts=5)
    repo = FakeOrders(first, second)
    runtime = yookassa_runtime()

    async def go() -> None:
        engine = Engine(
            cast(Orders, repo),
            {"yookassa": runtime},
            clock=lambda: NOW,
            http_transport=httpx.MockTransport(wire),
        )
        try:
            await engine.run(first.id, LEASE, Action.SUBMIT)
            await engine.run(second.id, LEASE, Action.SUBMIT)  # the breaker is open now
        finally:
            await engine.aclose()

    asyncio.run(go())
    assert len(wire.requests) == 1
    after = repo.orders[second.id]
    assert (after.status, after.attempts) == (S.NEW, 5)


# -- cancels only where they can succeed ---------------------------------------------------------


def test_issue12_item14_a_pending_payment_at_the_deadline_expires_without_a_cancel() -> None:
    wire = Wire()
    wire.on("GET", f"/v3/payments/{PAYMENT_ID}", yk("status_pending"))
    order = leased(status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, expires_at=NOW)

    after, _, _ = run_step(yookassa_runtime(), wire, order, Action.FINALIZE)

    assert after.status is S.EXPIRED
    assert wire.calls == [f"GET /v3/payments/{PAYMENT_ID}"]


def test_issue12_item14_a_pending_payment_on_the_first_late_look_gets_no_cancel() -> None:
    wire = Wire()
    wire.on("GET", f"/v3/payments/{PAYMENT_ID}", yk("status_pending"))
    order = leased(status=S.CANCELLED, psp_id=PAYMENT_ID, polls=0, expires_at=NOW)

    after, _, _ = run_step(yookassa_runtime(), wire, order, Action.WATCH)

    assert after.status is S.CANCELLED
    assert wire.calls == [f"GET /v3/payments/{PAYMENT_ID}"]


def test_a_held_payment_of_another_amount_is_cancelled_never_captured() -> None:
    wire = Wire()
    other = {"value": "99.00", "currency": "RUB"}
    wire.on("GET", f"/v3/payments/{PAYMENT_ID}", yk("status_waiting_for_capture", amount=other))
    wire.on("POST", f"/v3/payments/{PAYMENT_ID}/cancel", yk("status_canceled_by_merchant"))
    order = leased(status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, expires_at=NOW + timedelta(1))

    after, _, _ = run_step(yookassa_runtime(CAPTURE="manual"), wire, order, Action.POLL)

    assert after.status is S.NEEDS_REVIEW
    assert wire.calls == [
        f"GET /v3/payments/{PAYMENT_ID}",
        f"POST /v3/payments/{PAYMENT_ID}/cancel",
    ]


# -- payment systems without idempotency keys ----------------------------------------------------


def test_invoice_may_exist_keeps_submitting_and_the_next_attempt_finds_it_by_lookup() -> None:
    wire = Wire()
    wire.on("POST", "/init", httpx.Response(400, json={"error": "duplicate"}))
    wire.on("POST", "/check", httpx.Response(200, json={"id": "pay-7"}))
    runtime = nokeys_runtime()
    order = replace(leased(status=S.NEW), adapter="nokeys")

    first, repo, _ = run_step(runtime, wire, order, Action.SUBMIT)
    assert first.status is S.SUBMITTING
    assert wire.calls == ["POST /init"]

    second, _, _ = run_step(
        runtime, wire, replace(first, lease_token=LEASE), Action.SUBMIT, repo=_relet(repo, first)
    )
    # the lookup found it: no second create; no pay URL, so the buyer's page shows none
    assert wire.calls == ["POST /init", "POST /check"]
    assert (second.status, second.psp_id, second.pay_url) == (S.AWAITING_PAYMENT, "pay-7", None)


def test_after_a_maybe_sent_create_a_refused_connection_never_leads_to_a_blind_create() -> None:
    # Given an order whose create may have reached a payment system without keys,
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    order = replace(leased(status=S.SUBMITTING, attempts=1), adapter="nokeys")
    repo = FakeOrders(order)

    async def go() -> None:
        engine = Engine(
            cast(Orders, repo),
            {"nokeys": nokeys_runtime()},
            clock=lambda: NOW,
            http_transport=httpx.MockTransport(refuse),
        )
        try:
            await engine.run(order.id, LEASE, Action.SUBMIT)
        finally:
            await engine.aclose()

    # when its lookup cannot even connect,
    asyncio.run(go())
    # then it stays in submitting: the next try looks the invoice up again before any create.
    after = repo.orders[order.id]
    assert (after.status, after.attempts) == (S.SUBMITTING, 1)
    assert repo.moves == []


def _relet(repo: FakeOrders, order: Order) -> FakeOrders:
    """The repository after the sweeper claimed ``order`` again."""
    repo.orders[order.id] = replace(repo.orders[order.id], lease_token=LEASE)
    return repo


@pytest.fixture(autouse=True)
def _closed_breaker_gauges() -> Iterator[None]:
    yield
    for name in ("yookassa", "nokeys"):
        metrics.BREAKER_STATE.labels(name).set(0)


# -- issue #12 -----------------------------------------------------------------------------------


def test_issue12_item0_late_capture_is_captured_and_credited() -> None:
    # Given an expired order whose buyer paid late under two-step capture,
    wire = Wire()
    payment = f"/v3/payments/{PAYMENT_ID}"
    wire.on("GET", payment, yk("status_waiting_for_capture"))
    wire.on("POST", f"{payment}/capture", yk("status_succeeded"))
    order = leased(status=S.EXPIRED, psp_id=PAYMENT_ID, polls=2, expires_at=NOW - timedelta(1))
    late = counter(metrics.LATE_PAYMENTS, "yookassa")
    # when the late watch looks at it,
    after, repo, _ = run_step(yookassa_runtime(CAPTURE="manual"), wire, order, Action.WATCH)
    # then our amount is captured within the watch, and the order is paid and counted as late.
    assert wire.calls == [f"GET {payment}", f"POST {payment}/capture"]
    assert json.loads(wire.requests[1].content) == {
        "amount": {"value": "100.00", "currency": "RUB"}
    }
    assert after.status is S.PAID
    assert repo.moves[-1][2]["late"] is True
    assert counter(metrics.LATE_PAYMENTS, "yookassa") == late + 1


def test_issue12_item0_late_held_payment_of_another_amount_is_cancelled_and_reviewed() -> None:
    wire = Wire()
    payment = f"/v3/payments/{PAYMENT_ID}"
    other = {"value": "90.00", "currency": "RUB"}
    wire.on("GET", payment, yk("status_waiting_for_capture", amount=other))
    wire.on("POST", f"{payment}/cancel", yk("status_canceled_by_merchant", amount=other))
    order = leased(status=S.EXPIRED, psp_id=PAYMENT_ID, polls=2, expires_at=NOW - timedelta(1))

    after, repo, _ = run_step(yookassa_runtime(CAPTURE="manual"), wire, order, Action.WATCH)

    assert wire.calls == [f"GET {payment}", f"POST {payment}/cancel"]  # never captured
    assert after.status is S.NEEDS_REVIEW
    assert repo.moves[-1][2]["reason"] == "amount mismatch"


@pytest.mark.parametrize("status", [S.EXPIRED, S.REJECTED, S.CANCELLED])
def test_issue12_item0_late_payment_of_another_amount_goes_to_needs_review(
    status: OrderStatus,
) -> None:
    wire = Wire()
    other = {"value": "1.00", "currency": "RUB"}
    wire.on("GET", f"/v3/payments/{PAYMENT_ID}", yk("status_succeeded", amount=other))
    order = leased(status=status, psp_id=PAYMENT_ID, polls=3, expires_at=NOW - timedelta(1))

    after, repo, _ = run_step(yookassa_runtime(), wire, order, Action.WATCH)

    # needs_review is what the PaydispatchNeedsReview alert counts
    assert after.status is S.NEEDS_REVIEW
    assert repo.moves[-1][1:] == (
        S.NEEDS_REVIEW,
        {
            "reason": "amount mismatch",
            "expected": "100.00 RUB",
            "reported": "1.00 RUB",
            "psp_status": "succeeded",
        },
    )


@pytest.fixture
def slowest_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full jitter at its longest, so a backoff is its ceiling."""
    monkeypatch.setattr("dispatcher.policy.random.random", lambda: 0.999)


@pytest.mark.usefixtures("slowest_jitter")
def test_issue12_item11_retries_back_off_by_consecutive_errors_not_polls() -> None:
    # Given an order polled thirty times without trouble, whose next poll meets a 429,
    wire = Wire()
    wire.on("GET", f"/v3/payments/{PAYMENT_ID}", yk("error_too_many_requests", 429))
    order = leased(
        status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, polls=30, expires_at=NOW + timedelta(1)
    )
    # when the step fails,
    after, _, _ = run_step(yookassa_runtime(), wire, order, Action.POLL)
    # then its first error is retried within a second or so, not after minutes.
    assert after.errors == 1
    assert after.next_run_at is not None
    assert after.next_run_at <= NOW + timedelta(seconds=1)
    assert after.last_error is not None


@pytest.mark.usefixtures("slowest_jitter")
@pytest.mark.parametrize("errors", [0, 3, 12])
def test_issue12_item11_a_retry_is_never_scheduled_past_the_deadline_and_a_grace(
    errors: int,
) -> None:
    wire = Wire()
    wire.on("GET", f"/v3/payments/{PAYMENT_ID}", yk("error_too_many_requests", 429))
    deadline = NOW + timedelta(seconds=20)
    order = leased(
        status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, polls=40, errors=errors, expires_at=deadline
    )

    after, _, _ = run_step(yookassa_runtime(), wire, order, Action.POLL)

    assert after.next_run_at is not None
    assert after.next_run_at <= deadline + RETRY_GRACE
    assert after.errors == errors + 1


@pytest.mark.usefixtures("slowest_jitter")
def test_issue12_item11_a_finalize_failing_past_the_deadline_is_retried_within_the_grace() -> None:
    wire = Wire()
    wire.on("GET", f"/v3/payments/{PAYMENT_ID}", yk("error_too_many_requests", 429))
    order = leased(
        status=S.AWAITING_PAYMENT,
        psp_id=PAYMENT_ID,
        polls=40,
        errors=8,
        expires_at=NOW - timedelta(minutes=5),
    )

    after, _, _ = run_step(yookassa_runtime(), wire, order, Action.FINALIZE)

    assert after.next_run_at is not None
    assert NOW < after.next_run_at <= NOW + RETRY_GRACE


def test_a_step_that_ends_well_resets_the_consecutive_errors() -> None:
    wire = Wire()
    wire.on("GET", f"/v3/payments/{PAYMENT_ID}", yk("status_pending"))
    order = leased(
        status=S.AWAITING_PAYMENT, psp_id=PAYMENT_ID, errors=4, expires_at=NOW + timedelta(1)
    )

    after, _, _ = run_step(yookassa_runtime(), wire, order, Action.POLL)

    assert (after.status, after.errors, after.polls) == (S.AWAITING_PAYMENT, 0, 1)


@pytest.mark.parametrize("left", [timedelta(seconds=-30), timedelta(0), timedelta(seconds=3)])
@pytest.mark.parametrize("status", [S.NEW, S.SUBMITTING])
def test_issue12_item12_no_invoice_is_created_at_or_past_the_deadline(
    left: timedelta, status: OrderStatus
) -> None:
    wire = Wire()  # answers nothing: any call fails the test
    order = leased(status=status, expires_at=NOW + left)

    after, repo, _ = run_step(yookassa_runtime(), wire, order, Action.SUBMIT)

    assert wire.requests == []
    assert after.status is S.EXPIRED
    assert after.next_run_at is None
    assert repo.moves == [
        (status, S.EXPIRED, {"reason": "deadline passed before an invoice was made"})
    ]


def test_issue12_item12_an_order_with_time_left_is_still_submitted() -> None:
    wire = Wire()
    wire.on("POST", "/v3/payments", yk("create_pending"))
    order = leased(status=S.NEW, expires_at=NOW + timedelta(minutes=1))

    after, _, _ = run_step(yookassa_runtime(), wire, order, Action.SUBMIT)

    assert wire.calls == ["POST /v3/payments"]
    assert (after.status, after.psp_id) == (S.AWAITING_PAYMENT, PAYMENT_ID)


def test_a_local_invoice_found_in_submitting_is_rebuilt_without_lookup_or_review() -> None:
    # Given a Robokassa order left in submitting (a worker died after the move), which has
    # no idempotency key, no lookup, and no create call: its pay URL is signed locally,

    settings = registry.resolve_settings(
        robokassa.adapter,
        {
            "MERCHANT_LOGIN": "shop-login",
            "PASSWORD1": "password-one-1234",
            "PASSWORD2": "pw-2-5678",
        },
        environ={},
    )
    runtime = AdapterRuntime(robokassa.adapter, settings, POLICY)
    order = replace(leased(status=S.SUBMITTING, attempts=1), adapter="robokassa")
    wire = Wire()

    # when the step runs again,
    after, repo, _ = run_step(runtime, wire, order, Action.SUBMIT)

    # then the same signed invoice is used: no request, not sent to a person.
    assert wire.calls == []
    assert after.status is S.AWAITING_PAYMENT
    assert after.pay_url is not None
    assert "SignatureValue=" in after.pay_url
    assert [to for _, to, _ in repo.moves] == [S.AWAITING_PAYMENT]

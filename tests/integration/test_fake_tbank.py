"""The T-Bank fake over HTTP, driven by the T-Bank adapter: each checks the other's reading of
the reference (tokens, statuses, errors, lookup, notifications)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from adapters import tbank
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    FollowUp,
    InvoiceMayExist,
    Notification,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
    StatusReport,
)
from adapters.fakes import tbank as fake
from adapters.fakes.common import FakeControl, PaymentRef, running_fake
from adapters.registry import resolve_settings
from adapters.testing import sample_order
from orders.model import Order
from orders.money import Money
from tests.dispatch_support import wait_until

ADAPTER = tbank.adapter


@dataclass
class Harness:
    url: str
    notify_url: str
    received: list[bytes]
    control: FakeControl
    client: httpx.Client
    app: Starlette

    def settings(self, **overrides: str) -> AdapterSettings:
        configured = {**fake.adapter_settings(self.url), **overrides}
        return resolve_settings(ADAPTER, configured=configured, environ={})

    def send(self, request: PspRequest, timeout: float = 10.0) -> PspResponse:
        answer = self.client.request(
            request.method,
            request.url,
            json=request.json,
            headers=dict(request.headers),
            timeout=timeout,
        )
        return PspResponse(answer.status_code, answer.content, dict(answer.headers))

    def create(self, order: Order, settings: AdapterSettings) -> Order:
        invoice = ADAPTER.parse_create(order, self.send(ADAPTER.build_create(order, settings)))
        return replace(order, psp_id=invoice.psp_id, pay_url=invoice.pay_url)

    def status(
        self, order: Order, settings: AdapterSettings, operation: str = "status"
    ) -> CanonicalState:
        return self.report(order, settings, operation).state

    def report(
        self, order: Order, settings: AdapterSettings, operation: str = "status"
    ) -> StatusReport:
        build = {
            "status": ADAPTER.build_status,
            "capture": ADAPTER.build_capture,
            "cancel": ADAPTER.build_cancel,
        }[operation]
        return ADAPTER.parse_status(order, self.send(build(order, settings)), settings, operation)


@pytest.fixture
def harness() -> Iterator[Harness]:
    received: list[bytes] = []

    async def receive(request: Request) -> Response:
        received.append(await request.body())
        return PlainTextResponse("OK")

    receiver = Starlette(routes=[Route("/v1/callbacks/tbank", receive, methods=["POST"])])
    with running_fake(receiver) as receiver_url:
        notify_url = f"{receiver_url}/v1/callbacks/tbank"
        app = fake.create_app(notify_url=notify_url)
        app.state.fake.hold_seconds = 5.0
        with running_fake(app) as url, httpx.Client() as client:
            control = FakeControl(url)
            try:
                yield Harness(url, notify_url, received, control, client, app)
            finally:
                control.close()


def new_order(minutes: float = 10) -> Order:
    now = datetime.now(UTC)
    return sample_order(
        id=uuid.uuid4(),
        adapter="tbank",
        money=Money(12_345, "RUB"),
        created_at=now,
        expires_at=now + timedelta(minutes=minutes),
    )


def ref(order: Order) -> PaymentRef:
    return PaymentRef(order_id=str(order.id), psp_id=order.psp_id, pay_url=order.pay_url)


def test_adapter_creates_pays_and_reads_a_signed_notification_from_the_fake(
    harness: Harness,
) -> None:
    settings = harness.settings()
    order = harness.create(new_order(), settings)
    assert order.pay_url is not None
    assert order.pay_url.startswith(harness.url)
    assert harness.status(order, settings) is CanonicalState.PENDING

    harness.control.pay(ref(order))

    assert harness.status(order, settings) is CanonicalState.PAID
    # One-stage: AUTHORIZED, then CONFIRMED, each signed with the terminal's password.
    results = [
        ADAPTER.parse_notification(Notification(headers={}, body=body), settings)
        for body in harness.received
    ]
    assert [r.report.raw_status for r in results if r.report] == ["AUTHORIZED", "CONFIRMED"]
    assert all(r.verified and r.reply.body == b"OK" for r in results)
    assert results[-1].ref.order_id == str(order.id)
    assert results[-1].ref.psp_id == order.psp_id
    assert results[-1].report is not None
    assert results[-1].report.money == order.money
    assert harness.control.stats()["invoices"] == {str(order.id): 1}


def test_second_init_for_an_order_is_refused_and_makes_no_invoice(harness: Harness) -> None:
    settings = harness.settings()
    first = harness.create(new_order(), settings)
    again = harness.send(ADAPTER.build_create(first, settings))
    with pytest.raises(InvoiceMayExist):
        ADAPTER.parse_create(first, again)
    found = ADAPTER.parse_lookup(
        first, harness.send(ADAPTER.build_lookup(first, settings)), settings
    )
    assert found is not None
    assert found.psp_id == first.psp_id
    assert harness.control.stats()["invoices"] == {str(first.id): 1}


def test_timed_out_init_is_found_by_check_order(harness: Harness) -> None:
    settings, order = harness.settings(), new_order()
    missing = harness.send(ADAPTER.build_lookup(order, settings))
    assert ADAPTER.parse_lookup(order, missing, settings) is None
    harness.control.accept_then_timeout(1)
    with pytest.raises(httpx.TimeoutException):
        harness.send(ADAPTER.build_create(order, settings), timeout=0.5)

    found = ADAPTER.parse_lookup(
        order, harness.send(ADAPTER.build_lookup(order, settings)), settings
    )

    assert found is not None
    assert found.pay_url is None
    stats = harness.control.stats()
    assert stats["invoices"] == {str(order.id): 1}
    assert (stats["calls"]["create"], stats["calls"]["lookup"]) == (1, 2)


def test_two_stage_payment_is_held_then_confirmed_for_our_amount(harness: Harness) -> None:
    settings = harness.settings(two_stage="true")
    order = harness.create(new_order(), settings)
    harness.control.pay(ref(order))
    held = harness.report(order, settings)
    assert held.follow_up is FollowUp.CAPTURE
    assert ADAPTER.can_cancel(order, held)

    assert harness.status(order, settings, "capture") is CanonicalState.PAID
    assert harness.status(order, settings) is CanonicalState.PAID


def test_cancelled_hold_reads_rejected(harness: Harness) -> None:
    settings = harness.settings(two_stage="true")
    order = harness.create(new_order(), settings)
    harness.control.pay(ref(order))
    assert harness.status(order, settings, "cancel") is CanonicalState.REJECTED
    assert harness.status(order, settings) is CanonicalState.REJECTED


def test_cancelled_link_paid_late_reads_paid_and_a_decline_rejected(harness: Harness) -> None:
    settings = harness.settings()
    order = harness.create(new_order(), settings)
    assert harness.status(order, settings, "cancel") is CanonicalState.REJECTED  # CANCELED
    harness.control.pay(ref(order))  # the buyer's payment raced the cancel
    assert harness.status(order, settings) is CanonicalState.PAID
    declined = harness.create(new_order(), settings)
    harness.control.decline(ref(declined))
    assert harness.status(declined, settings) is CanonicalState.REJECTED


def test_link_expires_at_the_redirect_due_date_and_a_late_payment_is_seen(
    harness: Harness,
) -> None:
    settings = harness.settings()
    order = harness.create(new_order(minutes=0.05), settings)

    wait_until(
        lambda: harness.status(order, settings) is CanonicalState.EXPIRED,
        timeout=15,
        what="DEADLINE_EXPIRED after RedirectDueDate",
    )
    harness.control.pay(ref(order))
    assert harness.status(order, settings) is CanonicalState.PAID


def test_wrong_password_is_refused_as_t_bank_does(harness: Harness) -> None:
    settings = harness.settings(password="not-the-terminal-password")
    response = harness.send(ADAPTER.build_create(new_order(), settings))
    with pytest.raises(CredentialsRejected, match="204"):
        ADAPTER.parse_create(new_order(), response)
    assert harness.control.stats()["invoices"] == {}


def test_forged_callback_fails_the_token_check(harness: Harness) -> None:
    order = harness.create(new_order(), harness.settings())
    headers, body = fake.forged_callback(order)
    result = ADAPTER.parse_notification(
        Notification(headers=headers, body=body), harness.settings()
    )
    assert not result.verified
    assert result.reply.status_code == 403


def test_pay_page_shows_the_form_and_its_pay_button_pays(harness: Harness) -> None:
    settings = harness.settings()
    order = harness.create(new_order(), settings)
    assert order.pay_url is not None
    page = harness.client.get(order.pay_url)
    assert page.status_code == 200
    assert "FORM_SHOWED" in page.text
    assert harness.status(order, settings) is CanonicalState.PENDING

    clicked = harness.client.post(f"{order.pay_url}/pay")

    assert "CONFIRMED" in clicked.text
    assert harness.status(order, settings) is CanonicalState.PAID


# -- refunds (issue #14) --------------------------------------------------------------------------


def _paid(harness: Harness, settings: AdapterSettings) -> Order:
    order = harness.create(new_order(), settings)
    harness.control.pay(ref(order))
    return order


def _refund(order: Order, kopecks: int) -> RefundRequest:
    return RefundRequest(id=uuid.uuid4(), order=order, money=Money(kopecks, "RUB"))


def _send_refund(
    harness: Harness, refund: RefundRequest, settings: AdapterSettings, timeout: float = 10.0
) -> RefundReport:
    response = harness.send(ADAPTER.build_refund(refund, settings), timeout)
    return ADAPTER.parse_refund(refund, response, settings)


def test_partial_refunds_then_the_rest_refund_the_payment(harness: Harness) -> None:
    settings = harness.settings()
    order = _paid(harness, settings)
    first = _refund(order, 2_345)
    made = _send_refund(harness, first, settings)
    assert (made.state, made.money, made.raw_status) == (
        RefundState.SUCCEEDED,
        Money(2_345, "RUB"),
        "PARTIAL_REFUNDED",
    )
    known = replace(first, psp_refund_id=made.psp_refund_id)
    read = harness.send(ADAPTER.build_refund_status(known, settings))
    assert ADAPTER.parse_refund_status(known, read, settings).state is RefundState.SUCCEEDED
    assert harness.report(order, settings).state is CanonicalState.PAID  # partly refunded
    rest = _send_refund(harness, _refund(order, 10_000), settings)
    assert (rest.raw_status, rest.money) == ("REFUNDED", Money(10_000, "RUB"))
    refunded = harness.report(order, settings)
    assert (refunded.state, refunded.refunded) == (CanonicalState.REFUNDED, Money(12_345, "RUB"))
    assert sorted(harness.control.stats()["refunds"].values()) == [1, 1]
    wait_until(lambda: len(harness.received) >= 4, timeout=10, what="the refund notifications")
    refunds = [
        ADAPTER.parse_notification(Notification(headers={}, body=body), settings).refund
        for body in harness.received
    ]
    assert sorted(r.raw_status for r in refunds if r) == ["PARTIAL_REFUNDED", "REFUNDED"]


def test_refund_above_what_is_left_is_refused_and_refunds_nothing(harness: Harness) -> None:
    settings = harness.settings()
    order = _paid(harness, settings)
    with pytest.raises(PspRejected, match="error 330"):
        _send_refund(harness, _refund(order, 12_346), settings)
    assert harness.control.stats()["refunds"] == {}
    assert harness.status(order, settings) is CanonicalState.PAID


def test_refund_timed_out_after_refunding_is_answered_by_its_external_request_id_once(
    harness: Harness,
) -> None:
    settings = harness.settings()
    order = _paid(harness, settings)
    harness.control.refund_faults(accept_then_timeout=1)
    refund = _refund(order, 5_000)
    with pytest.raises(httpx.ReadTimeout):
        _send_refund(harness, refund, settings, timeout=0.5)
    again = _send_refund(harness, refund, settings)  # the same ExternalRequestId
    assert (again.state, again.raw_status) == (RefundState.SUCCEEDED, "PARTIAL_REFUNDED")
    assert harness.control.stats()["refunds"] == {str(refund.id): 1}
    # Only 5000 of 12345 went back: a further 7345 is still possible, 7346 is not.
    with pytest.raises(PspRejected):
        _send_refund(harness, _refund(order, 7_346), settings)


def test_refused_refund_fault_is_a_rejection(harness: Harness) -> None:
    settings = harness.settings()
    order = _paid(harness, settings)
    harness.control.refund_faults(refuse=1)
    with pytest.raises(PspRejected, match="error 100"):
        _send_refund(harness, _refund(order, 100), settings)
    assert harness.control.stats()["refunds"] == {}

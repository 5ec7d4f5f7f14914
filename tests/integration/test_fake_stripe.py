"""The Stripe fake over HTTP, driven by the Stripe adapter: each checks the other's reading of
the reference (sessions, idempotency, expiry, errors, signed events)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters import stripe
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    Invoice,
    Notification,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundRequest,
    RefundState,
    StatusReport,
)
from adapters.fakes import stripe as fake
from adapters.fakes.common import FakeControl, PaymentRef, running_fake
from adapters.registry import resolve_settings
from adapters.testing import sample_order
from orders.errors import OutcomeUnknown, TransientError
from orders.model import Order
from orders.money import Money
from tests.dispatch_support import wait_until

ADAPTER = stripe.adapter


@dataclass
class Harness:
    url: str
    received: list[tuple[dict[str, str], bytes]]
    control: FakeControl
    client: httpx.Client

    def settings(self, **overrides: str) -> AdapterSettings:
        configured = {**fake.adapter_settings(self.url), **overrides}
        return resolve_settings(ADAPTER, configured=configured, environ={})

    def send(self, request: PspRequest, timeout: float = 10.0) -> PspResponse:
        """What the transport does: the form url-encoded in order, the query from pairs."""
        headers = dict(request.headers)
        content = None
        if request.form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            content = urlencode(list(dict(request.form).items())).encode()
        answer = self.client.request(
            request.method,
            request.url,
            params=dict(request.params),
            content=content,
            headers=headers,
            timeout=timeout,
        )
        return PspResponse(answer.status_code, answer.content, dict(answer.headers))

    def create(self, order: Order) -> Invoice:
        return ADAPTER.parse_create(order, self.send(ADAPTER.build_create(order, self.settings())))

    def status(self, order: Order) -> StatusReport:
        response = self.send(ADAPTER.build_status(order, self.settings()))
        return ADAPTER.parse_status(order, response, self.settings())

    def events(self) -> list[str]:
        """The types of the events received so far, each verified by the adapter first."""
        kinds = []
        for headers, body in list(self.received):
            note = Notification(
                headers={k.lower(): v for k, v in headers.items()},
                body=body,
                received_at=datetime.now(UTC),
            )
            result = ADAPTER.parse_notification(note, self.settings())
            assert result.verified, "the fake's event must verify with the adapter"
            kinds.append(httpx.Response(200, content=body).json()["type"])
        return kinds


def new_order(**changes: object) -> Order:
    now = datetime.now(UTC)
    order = sample_order(
        id=uuid.uuid4(),
        adapter="stripe",
        money=Money(12_345, "USD"),
        created_at=now,
        updated_at=now,
        expires_at=now + timedelta(minutes=10),
    )
    return replace(order, **changes)  # type: ignore[arg-type]


@pytest.fixture
def harness() -> Iterator[Harness]:
    received: list[tuple[dict[str, str], bytes]] = []

    async def callback(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(b"", 200)

    receiver = Starlette(routes=[Route("/v1/callbacks/stripe", callback, methods=["POST"])])
    with running_fake(receiver) as receiver_url:
        app = fake.create_app(notify_url=f"{receiver_url}/v1/callbacks/stripe")
        with running_fake(app) as url, httpx.Client() as client:
            control = FakeControl(url)
            try:
                yield Harness(url, received, control, client)
            finally:
                control.close()


def test_created_session_is_paid_and_the_signed_event_verifies(harness: Harness) -> None:
    order = new_order()
    invoice = harness.create(order)
    invoiced = replace(order, psp_id=invoice.psp_id, pay_url=invoice.pay_url)
    assert invoice.pay_url is not None
    assert invoice.pay_url.startswith(f"{harness.url}/c/pay/cs_test_")
    assert harness.status(invoiced).state is CanonicalState.PENDING

    harness.control.pay(PaymentRef(order_id=str(order.id), psp_id=invoice.psp_id))

    report = harness.status(invoiced)
    assert (report.state, report.money) == (CanonicalState.PAID, order.money)
    wait_until(lambda: len(harness.received) == 1, timeout=10, what="the completed event")
    assert harness.events() == ["checkout.session.completed"]
    assert harness.control.stats()["invoices"] == {str(order.id): 1}


def test_replayed_create_returns_the_same_session_and_makes_no_new_one(harness: Harness) -> None:
    order = new_order()
    first, again = harness.create(order), harness.create(order)
    assert first.psp_id == again.psp_id
    stats = harness.control.stats()
    assert stats["invoices"] == {str(order.id): 1}
    assert stats["calls"]["create"] == 2


def test_same_key_with_other_parameters_is_an_idempotency_error(harness: Harness) -> None:
    order = new_order()
    harness.create(order)
    with pytest.raises(OutcomeUnknown):
        harness.create(replace(order, description="another product name"))


def test_create_that_timed_out_after_being_accepted_is_found_by_the_retry(
    harness: Harness,
) -> None:
    harness.control.accept_then_timeout(1)
    order = new_order()
    request = ADAPTER.build_create(order, harness.settings())
    with pytest.raises(httpx.ReadTimeout):
        harness.send(request, timeout=0.5)
    invoice = ADAPTER.parse_create(order, harness.send(request))  # the transport's retry
    assert invoice.pay_url is not None
    assert harness.control.stats()["invoices"] == {str(order.id): 1}


def test_declined_delayed_payment_reads_as_rejected_and_sends_the_failure(
    harness: Harness,
) -> None:
    order = new_order()
    invoice = harness.create(order)
    harness.control.decline(PaymentRef(psp_id=invoice.psp_id))
    report = harness.status(replace(order, psp_id=invoice.psp_id))
    assert report.state is CanonicalState.REJECTED
    wait_until(lambda: len(harness.received) == 2, timeout=10, what="two events")
    assert sorted(harness.events()) == [
        "checkout.session.async_payment_failed",
        "checkout.session.completed",
    ]


def test_expired_session_can_still_be_paid_late(harness: Harness) -> None:
    order = new_order()
    invoice = harness.create(order)
    invoiced = replace(order, psp_id=invoice.psp_id)
    expired = harness.send(ADAPTER.build_cancel(invoiced, harness.settings()))
    assert ADAPTER.parse_status(invoiced, expired, harness.settings(), "cancel").state is (
        CanonicalState.EXPIRED
    )
    assert not ADAPTER.can_cancel(invoiced, harness.status(invoiced))
    harness.control.pay(PaymentRef(psp_id=invoice.psp_id))
    assert harness.status(invoiced).state is CanonicalState.PAID
    wait_until(lambda: len(harness.received) == 2, timeout=10, what="two events")
    assert sorted(harness.events()) == ["checkout.session.completed", "checkout.session.expired"]


def test_expiring_a_completed_session_is_refused_without_ending_the_order(
    harness: Harness,
) -> None:
    order = new_order()
    invoice = harness.create(order)
    invoiced = replace(order, psp_id=invoice.psp_id)
    harness.control.pay(PaymentRef(psp_id=invoice.psp_id))
    response = harness.send(ADAPTER.build_cancel(invoiced, harness.settings()))
    assert response.status_code == 400
    with pytest.raises(TransientError):
        ADAPTER.parse_status(invoiced, response, harness.settings(), "cancel")


def test_wrong_secret_key_is_credentials_rejected(harness: Harness) -> None:
    request = ADAPTER.build_create(
        new_order(), harness.settings(secret_key="sk_test_someoneElsesKey000000000000")
    )
    response = harness.send(request)
    assert response.status_code == 401
    with pytest.raises(CredentialsRejected):
        ADAPTER.parse_create(new_order(), response)


def test_deadline_out_of_reach_for_a_late_submission_is_refused(harness: Harness) -> None:
    # Created two hours ago, due in a minute: Stripe cannot take expires_at in the past.
    now = datetime.now(UTC)
    order = new_order(created_at=now - timedelta(hours=2), expires_at=now + timedelta(minutes=1))
    with pytest.raises(PspRejected, match="expires_at"):
        harness.create(order)
    assert harness.control.stats()["invoices"] == {}


def test_forged_callback_does_not_verify(harness: Harness) -> None:
    order = new_order()
    invoice = harness.create(order)
    headers, body = fake.forged_callback(replace(order, psp_id=invoice.psp_id))
    note = Notification(
        headers={k.lower(): v for k, v in headers.items()},
        body=body,
        received_at=datetime.now(UTC),
    )
    result = ADAPTER.parse_notification(note, harness.settings())
    assert not result.verified
    assert result.report is None


def test_buyer_pays_on_the_hosted_page_and_returns_to_the_success_url(harness: Harness) -> None:
    order = new_order()
    invoice = harness.create(order)
    assert invoice.pay_url is not None
    page = harness.client.get(invoice.pay_url)
    assert page.status_code == 200
    assert "id=pay" in page.text
    paid = harness.client.post(f"{invoice.pay_url}/pay")
    assert (paid.status_code, paid.headers["location"]) == (303, order.return_url)
    assert harness.status(replace(order, psp_id=invoice.psp_id)).state is CanonicalState.PAID


# -- refunds (issue #14) --------------------------------------------------------------------------


def _paid(harness: Harness, amount: int = 12_345) -> tuple[Order, StatusReport]:
    """An order paid at the fake, with the status read a refund starts from."""
    order = new_order(money=Money(amount, "USD"))
    invoice = harness.create(order)
    harness.control.pay(PaymentRef(psp_id=invoice.psp_id))
    paid = replace(order, psp_id=invoice.psp_id)
    return paid, harness.status(paid)


def _refund(order: Order, report: StatusReport, amount: int) -> RefundRequest:
    return RefundRequest(
        id=uuid.uuid4(),
        order=order,
        money=Money(amount, "USD"),
        reason="Returned by the buyer",
        psp_payment_id=report.psp_payment_id,
    )


def test_partial_refunds_are_pending_then_succeeded_and_show_on_the_payment(
    harness: Harness,
) -> None:
    order, paid = _paid(harness)
    assert paid.refunded == Money(0, "USD")
    first = _refund(order, paid, 2_345)
    made = ADAPTER.parse_refund(
        first, harness.send(ADAPTER.build_refund(first, harness.settings())), harness.settings()
    )
    assert (made.state, made.money) == (RefundState.PENDING, Money(2_345, "USD"))
    known = replace(first, psp_refund_id=made.psp_refund_id)
    read = ADAPTER.parse_refund_status(
        known,
        harness.send(ADAPTER.build_refund_status(known, harness.settings())),
        harness.settings(),
    )
    assert read.state is RefundState.SUCCEEDED
    second = _refund(order, paid, 10_000)
    ADAPTER.parse_refund(
        second, harness.send(ADAPTER.build_refund(second, harness.settings())), harness.settings()
    )
    after = harness.status(order)
    assert (after.state, after.refunded) == (CanonicalState.REFUNDED, Money(12_345, "USD"))
    assert harness.control.stats()["refunds"] == {
        f"pd-refund-{first.id}": 1,
        f"pd-refund-{second.id}": 1,
    }


def test_refund_above_what_is_left_is_refused_and_refunds_nothing(harness: Harness) -> None:
    order, paid = _paid(harness, 1_000)
    too_much = _refund(order, paid, 1_001)
    response = harness.send(ADAPTER.build_refund(too_much, harness.settings()))
    with pytest.raises(PspRejected, match="greater than unrefunded"):
        ADAPTER.parse_refund(too_much, response, harness.settings())
    assert harness.control.stats()["refunds"] == {}
    assert harness.status(order).refunded == Money(0, "USD")


def test_refund_that_timed_out_after_being_made_is_answered_by_the_retry_not_made_twice(
    harness: Harness,
) -> None:
    order, paid = _paid(harness)
    harness.control.refund_faults(accept_then_timeout=1)
    refund = _refund(order, paid, 5_000)
    request = ADAPTER.build_refund(refund, harness.settings())
    with pytest.raises(httpx.ReadTimeout):
        harness.send(request, timeout=0.5)
    again = ADAPTER.parse_refund(refund, harness.send(request), harness.settings())  # same key
    assert again.money == Money(5_000, "USD")
    assert harness.control.stats()["refunds"] == {f"pd-refund-{refund.id}": 1}
    assert harness.status(order).refunded == Money(5_000, "USD")


def test_refused_refund_fault_is_a_rejection(harness: Harness) -> None:
    order, paid = _paid(harness)
    harness.control.refund_faults(refuse=1)
    refund = _refund(order, paid, 100)
    with pytest.raises(PspRejected):
        ADAPTER.parse_refund(
            refund,
            harness.send(ADAPTER.build_refund(refund, harness.settings())),
            harness.settings(),
        )
    assert harness.control.stats()["refunds"] == {}


def test_refund_events_verify_and_name_the_order_and_refund(harness: Harness) -> None:
    order, paid = _paid(harness)
    refund = _refund(order, paid, 345)
    made = ADAPTER.parse_refund(
        refund, harness.send(ADAPTER.build_refund(refund, harness.settings())), harness.settings()
    )
    known = replace(refund, psp_refund_id=made.psp_refund_id)
    harness.send(ADAPTER.build_refund_status(known, harness.settings()))
    wait_until(lambda: len(harness.received) == 4, timeout=10, what="four events")
    assert sorted(harness.events()) == [
        "charge.refunded",
        "checkout.session.completed",
        "refund.created",
        "refund.updated",
    ]
    results = [
        ADAPTER.parse_notification(
            Notification(
                headers={k.lower(): v for k, v in headers.items()},
                body=body,
                received_at=datetime.now(UTC),
            ),
            harness.settings(),
        )
        for headers, body in harness.received
    ]
    updated = [r for r in results if r.refund is not None and r.refund.raw_status == "succeeded"]
    assert [r.ref.order_id for r in updated] == [str(order.id)]
    assert updated[0].refund is not None
    assert updated[0].refund.psp_refund_id == made.psp_refund_id
    charge = [r for r in results if r.report is not None and r.report.refunded is not None]
    assert [r.report.refunded for r in charge if r.report] == [Money(345, "USD")]

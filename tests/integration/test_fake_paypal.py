"""The local PayPal fake over HTTP, driven by the real PayPal adapter's requests.

Each request is built by ``adapters.paypal`` and sent with httpx, as the transport would (token
first, then the bearer token on every call); each answer is parsed by the adapter. No database.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters import paypal
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    FollowUp,
    Notification,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
    StatusReport,
    Token,
    pairs,
)
from adapters.fakes import paypal as fake
from adapters.fakes.common import FakeControl, PaymentRef, running_fake
from adapters.registry import resolve_settings
from adapters.testing import sample_order
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus
from tests.dispatch_support import wait_until

ADAPTER = paypal.adapter


class Inbox:
    """A webhook receiver: keeps what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append(({k.lower(): v for k, v in request.headers.items()}, body))
        return Response(status_code=200)

    def events(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.received)

    def event_types(self) -> list[str]:
        return [json.loads(body)["event_type"] for _, body in self.events()]


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, str]]:
    box = Inbox()
    app = Starlette(routes=[Route("/hook", box.receive, methods=["POST"])])
    with running_fake(app) as url:
        yield box, f"{url}/hook"


@pytest.fixture
def app(inbox: tuple[Inbox, str]) -> Starlette:
    return fake.create_app(notify_url=inbox[1])


@pytest.fixture
def fake_url(app: Starlette) -> Iterator[str]:
    with running_fake(app) as url:
        yield url


@pytest.fixture
def settings(fake_url: str) -> AdapterSettings:
    return resolve_settings(ADAPTER, configured=fake.adapter_settings(fake_url), environ={})


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as http:
        yield http


@pytest.fixture
def control(fake_url: str) -> Iterator[FakeControl]:
    ctl = FakeControl(fake_url)
    yield ctl
    ctl.close()


def send(client: httpx.Client, request: PspRequest, timeout: float = 10.0) -> PspResponse:
    """What the transport does with a request, minus retries."""
    headers = dict(request.headers)
    content = request.content
    if request.form is not None:
        content = urlencode(pairs(request.form)).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    query = urlencode(pairs(request.params))
    answer = client.request(
        request.method,
        f"{request.url}?{query}" if query else request.url,
        headers=headers,
        json=request.json,
        content=content,
        timeout=timeout,
    )
    return PspResponse(answer.status_code, answer.content, dict(answer.headers))


def token(client: httpx.Client, settings: AdapterSettings) -> Token:
    return ADAPTER.parse_token(send(client, ADAPTER.build_token(settings)), settings)


def new_order() -> Order:
    return replace(sample_order(adapter="paypal", money=Money(12_345, "USD")), id=uuid4())


class Session:
    """The adapter's calls for one order over HTTP, as the engine makes them."""

    def __init__(self, client: httpx.Client, settings: AdapterSettings) -> None:
        self.client, self.settings = client, settings
        self.token = token(client, settings)

    def call(self, request: PspRequest, timeout: float = 10.0) -> PspResponse:
        return send(self.client, ADAPTER.apply_token(request, self.token), timeout)

    def submit(self, order: Order) -> Order:
        invoice = ADAPTER.parse_create(order, self.call(ADAPTER.build_create(order, self.settings)))
        return replace(
            order,
            status=OrderStatus.AWAITING_PAYMENT,
            psp_id=invoice.psp_id,
            pay_url=invoice.pay_url,
        )

    def status(self, order: Order) -> Any:
        response = self.call(ADAPTER.build_status(order, self.settings))
        return ADAPTER.parse_status(order, response, self.settings)

    def capture(self, order: Order) -> Any:
        response = self.call(ADAPTER.build_capture(order, self.settings))
        return ADAPTER.parse_status(order, response, self.settings, "capture")


def ref(order: Order) -> PaymentRef:
    return PaymentRef(order_id=str(order.id), psp_id=order.psp_id, pay_url=order.pay_url)


def test_approved_order_is_captured_and_paid_over_http(
    client: httpx.Client, settings: AdapterSettings, control: FakeControl, fake_url: str
) -> None:
    session = Session(client, settings)
    order = session.submit(new_order())
    assert order.pay_url == f"{fake_url}/checkoutnow?token={order.psp_id}"
    waiting = session.status(order)
    assert (waiting.state, waiting.raw_status) == (CanonicalState.PENDING, "PAYER_ACTION_REQUIRED")
    assert session.capture(order).raw_status == "ORDER_NOT_APPROVED"

    control.pay(ref(order))
    approved = session.status(order)
    assert (approved.state, approved.follow_up) == (CanonicalState.PENDING, FollowUp.CAPTURE)
    assert approved.money == order.money
    captured = session.capture(order)
    assert (captured.state, captured.money) == (CanonicalState.PAID, order.money)
    # A retried capture with the same request id gets the same answer; the poll reads it paid.
    assert session.capture(order).state is CanonicalState.PAID
    assert session.status(order).state is CanonicalState.PAID
    assert control.stats()["calls"]["capture"] == 3


def test_declined_order_is_rejected_at_capture(
    client: httpx.Client, settings: AdapterSettings, control: FakeControl
) -> None:
    session = Session(client, settings)
    order = session.submit(new_order())
    control.decline(ref(order))
    assert session.status(order).follow_up is FollowUp.CAPTURE
    report = session.capture(order)
    assert (report.state, report.raw_status) == (CanonicalState.REJECTED, "COMPLETED/DECLINED")
    # A late payment: the buyer approves again with another funding source. The declined
    # attempt's request id keeps its answer, as PayPal's do; the late watch's attempt has its own.
    control.pay(ref(order))
    assert session.capture(order).raw_status == "COMPLETED/DECLINED"
    late = replace(order, status=OrderStatus.REJECTED)
    assert session.capture(late).state is CanonicalState.PAID


def test_replayed_create_returns_the_same_order_and_makes_no_new_invoice(
    client: httpx.Client, settings: AdapterSettings, control: FakeControl
) -> None:
    session = Session(client, settings)
    order = new_order()
    first = session.submit(order)
    again = session.submit(order)
    assert again.psp_id == first.psp_id
    other = session.submit(new_order())
    assert other.psp_id != first.psp_id
    stats = control.stats()
    assert stats["invoices"][str(order.id)] == 1
    assert stats["calls"]["create"] == 3


def test_create_accepted_then_timed_out_is_found_again_by_its_request_id(
    client: httpx.Client, settings: AdapterSettings, control: FakeControl
) -> None:
    session = Session(client, settings)
    order = new_order()
    control.accept_then_timeout(1)
    with pytest.raises(httpx.ReadTimeout):
        session.call(ADAPTER.build_create(order, settings), timeout=0.5)
    submitted = session.submit(order)
    assert submitted.psp_id is not None
    assert control.stats()["invoices"] == {str(order.id): 1}


def test_fake_refuses_what_paypal_refuses(
    client: httpx.Client, settings: AdapterSettings, fake_url: str
) -> None:
    wrong = resolve_settings(
        ADAPTER,
        configured={**fake.adapter_settings(fake_url), "CLIENT_SECRET": "not-the-app-secret"},
        environ={},
    )
    with pytest.raises(CredentialsRejected, match="invalid_client"):
        token(client, wrong)
    order = replace(new_order(), psp_id="5O190127TN364715T")
    unauthenticated = send(client, ADAPTER.build_status(order, settings))
    assert unauthenticated.status_code == 401
    with pytest.raises(CredentialsRejected):
        ADAPTER.parse_status(order, unauthenticated, settings)
    session = Session(client, settings)
    assert session.status(order).state is CanonicalState.EXPIRED  # unknown to PayPal: 404
    create = ADAPTER.build_create(new_order(), settings)
    body = json.loads(json.dumps(create.json))
    body["purchase_units"][0]["amount"] = {"currency_code": "HUF", "value": "1500.50"}
    refused = session.call(replace(create, json=body, headers={}))
    assert refused.status_code == 422
    assert json.loads(refused.content)["details"][0]["issue"] == "DECIMAL_PRECISION"


def test_expired_token_is_answered_401_and_a_new_one_works(
    client: httpx.Client, settings: AdapterSettings, app: Starlette
) -> None:
    session = Session(client, settings)
    app.state.paypal.expire_tokens()
    order = new_order()
    response = session.call(ADAPTER.build_create(order, settings))
    assert response.status_code == 401
    assert json.loads(response.content)["name"] == "AUTHENTICATION_FAILURE"
    session.token = token(client, settings)
    assert session.submit(order).psp_id is not None


def test_webhooks_name_the_order_and_verify_only_when_genuine(
    client: httpx.Client,
    settings: AdapterSettings,
    control: FakeControl,
    inbox: tuple[Inbox, str],
    fake_url: str,
) -> None:
    box, _ = inbox
    session = Session(client, settings)
    order = session.submit(new_order())
    control.pay(ref(order))
    session.capture(order)
    wait_until(lambda: len(box.events()) >= 2, timeout=10, what="two webhooks")
    assert sorted(box.event_types()) == ["CHECKOUT.ORDER.APPROVED", "PAYMENT.CAPTURE.COMPLETED"]

    def verify(headers: dict[str, str], body: bytes) -> str:
        request = {
            "auth_algo": headers["paypal-auth-algo"],
            "cert_url": headers["paypal-cert-url"],
            "transmission_id": headers["paypal-transmission-id"],
            "transmission_sig": headers["paypal-transmission-sig"],
            "transmission_time": headers["paypal-transmission-time"],
            "webhook_id": fake.WEBHOOK_ID,
            "webhook_event": json.loads(body),
        }
        answer = client.post(
            f"{fake_url}/v1/notifications/verify-webhook-signature",
            json=request,
            headers={"Authorization": f"Bearer {session.token.value.reveal()}"},
        )
        answer.raise_for_status()
        status: str = answer.json()["verification_status"]
        return status

    for headers, body in box.events():
        assert verify(headers, body) == "SUCCESS"
        result = ADAPTER.parse_notification(Notification(headers=headers, body=body), settings)
        assert (result.ref.order_id, result.ref.psp_id) == (str(order.id), order.psp_id)
        assert result.verified is False
    headers, body = box.events()[0]
    tampered = json.loads(body)
    tampered["resource"]["status"] = "VOIDED"
    assert verify(headers, json.dumps(tampered).encode()) == "FAILURE"
    forged_headers, forged_body = fake.forged_callback(order)
    lowered = {k.lower(): v for k, v in forged_headers.items()}
    assert verify(lowered, forged_body) == "FAILURE"
    forged = ADAPTER.parse_notification(Notification(headers=lowered, body=forged_body), settings)
    assert forged.verified is False
    assert forged.report is None


def test_no_webhooks_when_notifications_are_off(
    client: httpx.Client, settings: AdapterSettings, control: FakeControl, inbox: tuple[Inbox, str]
) -> None:
    session = Session(client, settings)
    control.notifications(False)
    order = session.submit(new_order())
    control.pay(ref(order))
    assert session.capture(order).state is CanonicalState.PAID
    control.notifications(True)
    second = session.submit(new_order())
    control.pay(ref(second))
    wait_until(lambda: len(inbox[0].events()) >= 1, timeout=10, what="a webhook")
    assert [json.loads(body)["resource"]["id"] for _, body in inbox[0].events()] == [second.psp_id]


def test_buyer_page_approves_and_returns_to_the_shop(
    client: httpx.Client, settings: AdapterSettings
) -> None:
    session = Session(client, settings)
    order = session.submit(new_order())
    assert order.pay_url is not None
    page = client.get(order.pay_url)
    assert page.status_code == 200
    assert "Pay Now" in page.text
    approved = client.post(
        order.pay_url.split("?")[0] + "/approve", data={"token": str(order.psp_id)}
    )
    assert approved.status_code == 303
    assert approved.headers["location"].startswith(f"{order.return_url}?token={order.psp_id}")
    assert session.status(order).follow_up is FollowUp.CAPTURE


# -- refunds (issue #14) --------------------------------------------------------------------------


def _paid(session: Session, control: FakeControl) -> tuple[Order, StatusReport]:
    order = session.submit(new_order())
    control.pay(ref(order))
    session.capture(order)
    paid = replace(order, status=OrderStatus.PAID)
    return paid, session.status(paid)


def _refund(order: Order, report: StatusReport, amount: int) -> RefundRequest:
    return RefundRequest(
        id=uuid4(),
        order=order,
        money=Money(amount, "USD"),
        reason="Returned by the buyer",
        psp_payment_id=report.psp_payment_id,
    )


def _send_refund(session: Session, refund: RefundRequest, timeout: float = 10.0) -> RefundReport:
    response = session.call(ADAPTER.build_refund(refund, session.settings), timeout)
    return ADAPTER.parse_refund(refund, response, session.settings)


def test_partial_refunds_complete_and_show_on_the_order(
    client: httpx.Client, settings: AdapterSettings, control: FakeControl, inbox: tuple[Inbox, str]
) -> None:
    session = Session(client, settings)
    order, paid = _paid(session, control)
    assert (paid.psp_payment_id, paid.refunded) == (paid.psp_payment_id, Money(0, "USD"))
    first = _refund(order, paid, 2_345)
    made = _send_refund(session, first)
    assert (made.state, made.money) == (RefundState.SUCCEEDED, Money(2_345, "USD"))
    known = replace(first, psp_refund_id=made.psp_refund_id)
    response = session.call(ADAPTER.build_refund_status(known, settings))
    assert ADAPTER.parse_refund_status(known, response, settings).state is RefundState.SUCCEEDED
    partly = session.status(order)
    assert (partly.state, partly.refunded) == (CanonicalState.PAID, Money(2_345, "USD"))
    second = _refund(order, paid, 10_000)
    rest = _send_refund(session, second)
    whole = session.status(order)
    assert (whole.state, whole.refunded) == (CanonicalState.REFUNDED, Money(12_345, "USD"))
    assert control.stats()["refunds"] == {
        f"pd-refund-{first.id}": 1,
        f"pd-refund-{second.id}": 1,
    }
    box = inbox[0]
    wait_until(
        lambda: box.event_types().count("PAYMENT.CAPTURE.REFUNDED") == 2,
        timeout=10,
        what="two refund webhooks",
    )
    hints = [
        ADAPTER.parse_notification(Notification(headers=h, body=b), settings)
        for h, b in box.events()
        if json.loads(b)["event_type"] == "PAYMENT.CAPTURE.REFUNDED"
    ]
    assert {h.refund.psp_refund_id for h in hints if h.refund} == {
        made.psp_refund_id,
        rest.psp_refund_id,
    }
    assert all(h.ref.order_id == str(order.id) and not h.verified for h in hints)


def test_refund_above_what_is_left_is_refused_and_refunds_nothing(
    client: httpx.Client, settings: AdapterSettings, control: FakeControl
) -> None:
    session = Session(client, settings)
    order, paid = _paid(session, control)
    with pytest.raises(PspRejected, match="REFUND_AMOUNT_EXCEEDED"):
        _send_refund(session, _refund(order, paid, 12_346))
    _send_refund(session, _refund(order, paid, 12_345))
    with pytest.raises(PspRejected, match="CAPTURE_FULLY_REFUNDED"):
        _send_refund(session, _refund(order, paid, 1))
    assert sum(control.stats()["refunds"].values()) == 1


def test_refund_accepted_then_timed_out_is_answered_by_its_request_id_once(
    client: httpx.Client, settings: AdapterSettings, control: FakeControl
) -> None:
    session = Session(client, settings)
    order, paid = _paid(session, control)
    control.refund_faults(accept_then_timeout=1)
    refund = _refund(order, paid, 5_000)
    with pytest.raises(httpx.ReadTimeout):
        _send_refund(session, refund, timeout=0.5)
    again = _send_refund(session, refund)  # the transport's retry, same PayPal-Request-Id
    assert again.money == Money(5_000, "USD")
    assert control.stats()["refunds"] == {f"pd-refund-{refund.id}": 1}
    assert session.status(order).refunded == Money(5_000, "USD")


def test_refused_refund_fault_is_a_rejection(
    client: httpx.Client, settings: AdapterSettings, control: FakeControl
) -> None:
    session = Session(client, settings)
    order, paid = _paid(session, control)
    control.refund_faults(refuse=1)
    with pytest.raises(PspRejected, match="REFUND_NOT_ALLOWED"):
        _send_refund(session, _refund(order, paid, 100))
    assert control.stats()["refunds"] == {}

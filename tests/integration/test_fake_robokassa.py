"""The Robokassa fake over HTTP, driven by the real adapter: pay page, OpStateExt, Result URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters import robokassa
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    Notification,
    NotificationResult,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
    StatusReport,
    pairs,
)
from adapters.fakes import robokassa as fake
from adapters.fakes.common import FakeControl, PaymentRef, running_fake
from adapters.registry import resolve_settings
from adapters.testing import sample_order
from orders.model import Order
from orders.money import Money

ADAPTER = robokassa.adapter
ORDER = sample_order(adapter="robokassa", number=7001, money=Money(12301, "RUB"))


class Shop:
    """The shop's Result URL: reads each callback with the adapter and answers its reply."""

    def __init__(self) -> None:
        self.results: list[NotificationResult] = []
        self.settings: AdapterSettings | None = None

    async def result_url(self, request: Request) -> Response:
        assert self.settings is not None
        notification = Notification(
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
            query=dict(request.query_params),
        )
        result = ADAPTER.parse_notification(notification, self.settings)
        self.results.append(result)
        reply = result.reply
        return Response(reply.body, reply.status_code, media_type=reply.content_type)


@dataclass
class Served:
    url: str
    settings: AdapterSettings
    shop: Shop
    state: fake.RobokassaState
    control: FakeControl

    def poll(self, order: Order, settings: AdapterSettings | None = None) -> StatusReport:
        settings = settings or self.settings
        response = send(ADAPTER.build_status(order, settings))
        return ADAPTER.parse_status(order, response, settings)

    def invoiced(self, order: Order = ORDER) -> Order:
        invoice = ADAPTER.build_create(order, self.settings)
        return replace(order, psp_id=invoice.psp_id, pay_url=invoice.pay_url)


@pytest.fixture
def served() -> Iterator[Served]:
    shop = Shop()
    receiver = Starlette(routes=[Route("/result", shop.result_url, methods=["POST"])])
    with running_fake(receiver) as shop_url:
        app = fake.create_app(notify_url=f"{shop_url}/result")
        with running_fake(app) as url:
            settings = resolve_settings(ADAPTER, configured=fake.adapter_settings(url), environ={})
            shop.settings = settings
            control = FakeControl(url)
            try:
                yield Served(url, settings, shop, app.state.fake, control)
            finally:
                control.close()


def send(request: PspRequest) -> PspResponse:
    url = f"{request.url}?{urlencode(pairs(request.params))}"
    answer = httpx.request(request.method, url, timeout=10)
    return PspResponse(answer.status_code, answer.content, dict(answer.headers))


def ref(order: Order) -> PaymentRef:
    return PaymentRef(
        order_id=str(order.id), number=order.number, psp_id=order.psp_id, pay_url=order.pay_url
    )


def test_adapter_settles_a_payment_at_the_fake_over_http(served: Served) -> None:
    order = served.invoiced()
    assert order.pay_url is not None
    # Given the invoice exists only as a signed URL: Robokassa knows nothing of it yet.
    assert served.poll(order).raw_status == "result 3"
    assert served.control.stats()["invoices"] == {}

    # When the buyer opens the pay page, then pays...
    page = httpx.get(order.pay_url, timeout=10)
    assert page.status_code == 200, page.text
    opened = served.poll(order)
    assert (opened.state, opened.raw_status) == (CanonicalState.PENDING, "5")
    served.control.pay(ref(order))

    # ...then OpStateExt reports it paid with the order's money, and the shop got a genuine
    # Result URL callback that it acknowledged with OK{InvId}.
    paid = served.poll(order)
    assert (paid.state, paid.money) == (CanonicalState.PAID, Money(12301, "RUB"))
    [result] = served.shop.results
    assert result.verified
    assert result.report is not None
    assert result.report.money == Money(12301, "RUB")
    assert (result.ref.order_id, result.ref.number) == (str(ORDER.id), ORDER.number)
    assert served.state.deliveries == [("7001", 200, "OK7001")]
    stats = served.control.stats()
    assert stats["invoices"] == {str(ORDER.id): 1}
    assert stats["calls"] == {"status": 3, "pay_page": 1}


def test_reopening_and_repaying_the_same_pay_url_makes_one_invoice(served: Served) -> None:
    order = served.invoiced()
    assert order.pay_url is not None
    for _ in range(2):
        assert httpx.get(order.pay_url, timeout=10).status_code == 200
    served.control.pay(ref(order))
    served.control.pay(ref(order))
    assert served.control.stats()["invoices"] == {str(ORDER.id): 1}
    assert served.poll(order).state is CanonicalState.PAID


def test_control_pay_of_an_unopened_pay_url_registers_it_from_the_url(served: Served) -> None:
    order = served.invoiced()
    served.control.pay(ref(order))
    assert served.poll(order).state is CanonicalState.PAID
    assert served.control.stats()["invoices"] == {str(ORDER.id): 1}


def test_decline_then_late_payment(served: Served) -> None:
    order = served.invoiced()
    served.control.decline(ref(order))
    declined = served.poll(order)
    assert (declined.state, declined.raw_status) == (CanonicalState.REJECTED, "10")
    assert served.shop.results == []
    served.control.pay(ref(order))  # the buyer pays after all
    assert served.poll(order).state is CanonicalState.PAID
    assert [r.verified for r in served.shop.results] == [True]


def test_pay_page_refuses_a_url_changed_after_signing(served: Served) -> None:
    order = served.invoiced()
    assert order.pay_url is not None
    parts = urlsplit(order.pay_url)
    params = dict(parse_qsl(parts.query))
    params["OutSum"] = "1.00"
    page = httpx.get(parts._replace(query=urlencode(params)).geturl(), timeout=10)
    assert page.status_code == 400
    assert "SignatureValue" in page.text
    assert served.control.stats()["invoices"] == {}


def test_opstate_with_a_wrong_password_is_credentials_rejected(served: Served) -> None:
    order = served.invoiced()
    wrong = resolve_settings(
        ADAPTER,
        configured={**fake.adapter_settings(served.url), "PASSWORD2": "not-the-fake-password-2"},
        environ={},
    )
    with pytest.raises(CredentialsRejected):
        served.poll(order, wrong)


def test_notifications_off_sends_no_result_callback(served: Served) -> None:
    served.control.notifications(False)
    order = served.invoiced()
    served.control.pay(ref(order))
    assert served.poll(order).state is CanonicalState.PAID
    assert served.state.deliveries == []


def test_forged_callback_does_not_verify(served: Served) -> None:
    headers, body = fake.forged_callback(served.invoiced())
    result = ADAPTER.parse_notification(Notification(headers=headers, body=body), served.settings)
    assert not result.verified
    assert result.reply.status_code == 400


def test_control_pay_of_an_unknown_payment_is_404(served: Served) -> None:
    answer = served.control.client.post("/_control/pay", json={"psp_id": "999999"})
    assert answer.status_code == 404


# -- refunds (issue #14) --------------------------------------------------------------------------


def call(request: PspRequest, timeout: float = 10.0) -> PspResponse:
    """What the transport does with a request that may carry a body."""
    query = urlencode(pairs(request.params))
    answer = httpx.request(
        request.method,
        f"{request.url}?{query}" if query else request.url,
        content=request.content,
        headers=dict(request.headers),
        timeout=timeout,
    )
    return PspResponse(answer.status_code, answer.content, dict(answer.headers))


def _paid(served: Served, number: int) -> tuple[Order, StatusReport]:
    order = served.invoiced(replace(ORDER, id=uuid.uuid4(), number=number))
    served.control.pay(ref(order))
    report = served.poll(order)
    assert report.state is CanonicalState.PAID
    return order, report


def _refund(order: Order, report: StatusReport, kopecks: int) -> RefundRequest:
    return RefundRequest(
        id=uuid.uuid4(),
        order=order,
        money=Money(kopecks, "RUB"),
        psp_payment_id=report.psp_payment_id,
    )


def _send(served: Served, refund: RefundRequest, timeout: float = 10.0) -> RefundReport:
    response = call(ADAPTER.build_refund(refund, served.settings), timeout)
    return ADAPTER.parse_refund(refund, response, served.settings)


def _read(served: Served, refund: RefundRequest) -> RefundReport:
    response = call(ADAPTER.build_refund_status(refund, served.settings))
    return ADAPTER.parse_refund_status(refund, response, served.settings)


def test_partial_refunds_are_processing_then_finished(served: Served) -> None:
    order, paid = _paid(served, 7101)
    assert paid.psp_payment_id == "fake-op-7101"
    first = _refund(order, paid, 2_301)
    made = _send(served, first)
    assert made.state is RefundState.PENDING
    known = replace(first, psp_refund_id=made.psp_refund_id)
    assert (_read(served, known).state, _read(served, known).state) == (
        RefundState.PENDING,
        RefundState.SUCCEEDED,
    )
    assert _read(served, known).money == Money(2_301, "RUB")
    _send(served, _refund(order, paid, 10_000))
    assert served.control.stats()["refunds"] == {"fake-op-7101": 2}


def test_refund_above_what_is_left_is_refused_and_refunds_nothing(served: Served) -> None:
    order, paid = _paid(served, 7102)
    with pytest.raises(PspRejected, match="NotEnoughOperationFunds"):
        _send(served, _refund(order, paid, 12_302))
    assert served.control.stats()["refunds"] == {}


def test_refund_of_an_unpaid_operation_is_refused(served: Served) -> None:
    order = served.invoiced(replace(ORDER, id=uuid.uuid4(), number=7103))
    httpx.get(order.pay_url or "", timeout=10)
    refund = RefundRequest(
        id=uuid.uuid4(), order=order, money=Money(100, "RUB"), psp_payment_id="fake-op-7103"
    )
    with pytest.raises(PspRejected, match="OperationNotFound"):
        _send(served, refund)


def test_refund_signed_with_another_password3_is_credentials_rejected(served: Served) -> None:
    order, paid = _paid(served, 7104)
    refund = _refund(order, paid, 100)
    wrong = resolve_settings(
        ADAPTER,
        configured={**fake.adapter_settings(served.url), "PASSWORD3": "not-the-fake-password-3"},
        environ={},
    )
    response = call(ADAPTER.build_refund(refund, wrong))
    with pytest.raises(CredentialsRejected, match="PASSWORD3"):
        ADAPTER.parse_refund(refund, response, wrong)
    assert served.control.stats()["refunds"] == {}


def test_refund_timed_out_after_refunding_is_counted_once_and_never_resent(
    served: Served,
) -> None:
    # Robokassa takes no key: a refund whose answer was lost is never sent again (the
    # dispatcher asks a person); the fake's count shows the one refund it made.
    order, paid = _paid(served, 7105)
    served.state.hold_seconds = 3.0
    served.control.refund_faults(accept_then_timeout=1)
    with pytest.raises(httpx.ReadTimeout):
        _send(served, _refund(order, paid, 1_000), timeout=0.5)
    assert served.control.stats()["refunds"] == {"fake-op-7105": 1}


def test_refused_refund_fault_is_a_rejection(served: Served) -> None:
    order, paid = _paid(served, 7106)
    served.control.refund_faults(refuse=1)
    with pytest.raises(PspRejected, match="RefundIsRestricted"):
        _send(served, _refund(order, paid, 100))
    assert served.control.stats()["refunds"] == {}

"""The Robokassa fake over HTTP, driven by the real adapter: pay page, OpStateExt, Result URL."""

from __future__ import annotations

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
    PspRequest,
    PspResponse,
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

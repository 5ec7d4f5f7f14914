"""The sandbox's refunds and payouts over real HTTP, through the adapter (issue #14).

Refunds and payouts settle only when a test says so (``*_settle_seconds=None``), except in the
one test of the timer; waits are on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from adapters.base import (
    AdapterSettings,
    CanonicalState,
    Notification,
    PayoutRequest,
    PayoutState,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
)
from adapters.registry import resolve_settings
from adapters.sandbox import SandboxConfig, adapter
from adapters.sandbox.runner import SandboxHandle, running_sandbox, serve_in_thread
from orders.errors import TransientError
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus

pytestmark = pytest.mark.integration

API_KEY = "it-money-out-key"
WEBHOOK_SECRET = "it-money-out-webhook-secret"
CONFIG = SandboxConfig(
    api_key=API_KEY,
    webhook_secret=WEBHOOK_SECRET,
    hang_seconds=5,
    webhook_backoff=0.05,
    refund_settle_seconds=None,
    payout_settle_seconds=None,
)
WAIT = 5.0  # seconds any awaited condition gets before the test fails


@dataclass(frozen=True, slots=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    received_at: datetime

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)
        return payload

    def notification(self) -> Notification:
        return Notification(headers=self.headers, body=self.body, received_at=self.received_at)


class Receiver:
    """Collects webhooks."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.url = ""
        self._changed = threading.Condition()

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        with self._changed:
            self.deliveries.append(Delivery(dict(request.headers), body, datetime.now(UTC)))
            self._changed.notify_all()
        return PlainTextResponse("ok")

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], count: int) -> list[Delivery]:
        """The first ``count`` webhooks whose payload ``matches``, waiting up to WAIT."""

        def mine() -> list[Delivery]:
            return [d for d in self.deliveries if matches(d.payload)]

        with self._changed:
            arrived = self._changed.wait_for(lambda: len(mine()) >= count, WAIT)
            assert arrived, f"expected {count} matching webhooks, got {len(mine())}"
            return mine()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(CONFIG) as handle:
        yield handle


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    app = Starlette(routes=[Route("/hooks", receiver.endpoint, methods=["POST"])])
    with serve_in_thread(app) as url:
        receiver.url = f"{url}/hooks"
        yield receiver


@pytest.fixture
def client(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sandbox.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=WAIT
    ) as client:
        client.post("/_control/reset").raise_for_status()
        yield client


def settings_for(sandbox: SandboxHandle, **extra: str) -> AdapterSettings:
    configured = {"API_URL": sandbox.url, "API_KEY": API_KEY, "WEBHOOK_SECRET": WEBHOOK_SECRET}
    return resolve_settings(adapter, configured={**configured, **extra}, environ={})


def send(request: PspRequest, timeout: float = WAIT) -> PspResponse:
    """What the dispatcher's transport does with an adapter's request, minus retries."""
    response = httpx.request(
        request.method,
        request.url,
        headers=dict(request.headers),
        params=dict(request.params),
        json=request.json,
        timeout=timeout,
    )
    return PspResponse(response.status_code, response.content, dict(response.headers))


def stats(client: httpx.Client) -> dict[str, Any]:
    result: dict[str, Any] = client.get("/_control/stats").json()
    return result


def add_faults(client: httpx.Client, operation: str, *faults: dict[str, Any] | str) -> None:
    client.post(f"/_control/faults/{operation}", json={"queue": list(faults)}).raise_for_status()


def paid_order(client: httpx.Client, notify_url: str | None = None, pay: bool = True) -> Order:
    """An invoice of 19.99 EUR, paid through the control API, as the order a refund names."""
    now = datetime.now(UTC)
    order_id = uuid4()
    body = {
        "order_id": str(order_id),
        "number": 7,
        "amount": 1999,
        "currency": "EUR",
        "description": "Gift card",
        "expires_at": (now + timedelta(minutes=5)).isoformat(),
        "notify_url": notify_url,
    }
    created = client.post("/api/v1/invoices", json=body, headers={"Idempotency-Key": str(order_id)})
    assert created.status_code == 201, created.text
    invoice_id = created.json()["id"]
    if pay:
        client.post(f"/_control/invoices/{invoice_id}/pay").raise_for_status()
    return Order(
        id=order_id,
        number=7,
        site="shop",
        site_ref=None,
        user_id="u1",
        money=Money(1999, "EUR"),
        adapter="sandbox",
        description="Gift card",
        return_url=None,
        metadata={},
        status=OrderStatus.PAID if pay else OrderStatus.AWAITING_PAYMENT,
        psp_id=invoice_id,
        pay_url=None,
        attempts=1,
        polls=0,
        next_run_at=None,
        lease_until=None,
        lease_token=None,
        expires_at=now + timedelta(minutes=5),
        last_error=None,
        idempotency_key=None,
        created_at=now,
        updated_at=now,
        paid_at=now if pay else None,
    )


def refund_of(order: Order, amount: int, currency: str = "EUR") -> RefundRequest:
    return RefundRequest(id=uuid4(), order=order, money=Money(amount, currency), reason="test")


def refund(sandbox: SandboxHandle, request: RefundRequest) -> RefundReport:
    settings = settings_for(sandbox)
    return adapter.parse_refund(request, send(adapter.build_refund(request, settings)), settings)


def payout_of(amount: int = 1000) -> PayoutRequest:
    return PayoutRequest(
        id=uuid4(), money=Money(amount, "EUR"), destination={"account": "acct-7"}, description="w"
    )


def invoice_status(sandbox: SandboxHandle, order: Order) -> Any:
    settings = settings_for(sandbox)
    return adapter.parse_status(order, send(adapter.build_status(order, settings)), settings)


# -- refunds -----------------------------------------------------------------------------------


def test_partial_refunds_never_exceed_what_was_paid(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    # Given a paid invoice of 19.99 and two pending refunds that hold all of it
    order = paid_order(client)
    first = refund(sandbox, refund_of(order, 1000))
    second = refund(sandbox, refund_of(order, 999))
    assert (first.state, second.state) == (RefundState.PENDING, RefundState.PENDING)
    # Then one more cent is refused: pending refunds count against what is left
    with pytest.raises(PspRejected, match="amount_exceeds"):
        refund(sandbox, refund_of(order, 1))
    # When the second fails, its amount is free again
    client.post(f"/_control/refunds/{second.psp_refund_id}/fail").raise_for_status()
    third = refund(sandbox, refund_of(order, 999))
    for done in (first, third):
        client.post(f"/_control/refunds/{done.psp_refund_id}/succeed").raise_for_status()
    # Then the invoice reports what was refunded, refunded in full
    report = invoice_status(sandbox, order)
    assert (report.state, report.refunded) == (CanonicalState.REFUNDED, Money(1999, "EUR"))
    assert stats(client)["refund_statuses"] == {"succeeded": 2, "failed": 1}


def test_partly_refunded_invoice_stays_paid_and_says_how_much(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    order = paid_order(client)
    done = refund(sandbox, refund_of(order, 500))
    client.post(f"/_control/refunds/{done.psp_refund_id}/succeed").raise_for_status()
    report = invoice_status(sandbox, order)
    assert (report.state, report.refunded) == (CanonicalState.PAID, Money(500, "EUR"))


@pytest.mark.parametrize(
    ("pay", "currency", "amount", "code"),
    [
        (False, "EUR", 100, "not_refundable"),
        (True, "USD", 100, "currency_mismatch"),
        (True, "EUR", 2000, "amount_exceeds"),
    ],
)
def test_refunds_the_sandbox_cannot_make_are_rejected(
    sandbox: SandboxHandle,
    client: httpx.Client,
    *,
    pay: bool,
    currency: str,
    amount: int,
    code: str,
) -> None:
    order = paid_order(client, pay=pay)
    with pytest.raises(PspRejected, match=code):
        refund(sandbox, refund_of(order, amount, currency))
    assert stats(client)["refunds"] == 0


def test_refund_of_an_unknown_invoice_is_rejected(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    order = replace(paid_order(client), psp_id="inv_none")
    with pytest.raises(PspRejected, match="not_found"):
        refund(sandbox, refund_of(order, 100))


def test_same_key_answers_the_same_refund_and_another_body_is_refused(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    order = paid_order(client)
    request = refund_of(order, 300)
    first = refund(sandbox, request)
    again = refund(sandbox, request)
    assert again.psp_refund_id == first.psp_refund_id
    other = client.post(
        "/api/v1/refunds",
        json={"invoice_id": order.psp_id, "amount": 301, "currency": "EUR", "reference": "x"},
        headers={"Idempotency-Key": f"pd-refund-{request.id}"},
    )
    assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_key_reused")
    numbers = stats(client)
    assert numbers["refunds_per_key"] == {f"pd-refund-{request.id}": 1}
    assert numbers["refunds_per_reference"] == {str(request.id): 1}


def test_accept_then_timeout_makes_one_refund_for_the_resend(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    # Given the next refund is made and its answer lost
    order = paid_order(client)
    add_faults(client, "refund", {"kind": "accept_then_timeout", "seconds": 3})
    request = refund_of(order, 700)
    settings = settings_for(sandbox)
    with pytest.raises(httpx.ReadTimeout):
        send(adapter.build_refund(request, settings), timeout=0.3)
    # When the dispatcher reads it by our id alone, then re-sends it with the same key
    found = adapter.parse_refund_status(
        request, send(adapter.build_refund_status(request, settings)), settings
    )
    resent = refund(sandbox, request)
    # Then both name the one refund the first call made
    assert found.psp_refund_id == resent.psp_refund_id
    assert resent.state is RefundState.PENDING
    numbers = stats(client)
    assert (numbers["refunds"], numbers["max_refunds_per_reference"]) == (1, 1)
    assert numbers["refund_calls"] == 2
    assert numbers["faults_served"] == {"refund": {"accept_then_timeout": 1}}


def test_refund_lookup_before_any_send_is_transient(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    order = paid_order(client)
    request = refund_of(order, 100)
    settings = settings_for(sandbox)
    answer = send(adapter.build_refund_status(request, settings))
    with pytest.raises(TransientError, match="no refund"):
        adapter.parse_refund_status(request, answer, settings)


def test_refuse_fault_rejects_the_refund_and_makes_none(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    order = paid_order(client)
    add_faults(client, "refund", "refuse")
    with pytest.raises(PspRejected, match="refused"):
        refund(sandbox, refund_of(order, 100))
    assert stats(client)["refunds"] == 0


@pytest.mark.parametrize("fault", ["http_500", "http_429", {"kind": "malformed", "style": "html"}])
def test_errors_on_refund_status_reads_are_transient(
    sandbox: SandboxHandle, client: httpx.Client, fault: Any
) -> None:
    order = paid_order(client)
    request = refund_of(order, 100)
    made = refund(sandbox, request)
    add_faults(client, "refund_status", fault)
    known = RefundRequest(request.id, order, request.money, psp_refund_id=made.psp_refund_id)
    settings = settings_for(sandbox)
    with pytest.raises(TransientError):
        adapter.parse_refund_status(
            known, send(adapter.build_refund_status(known, settings)), settings
        )


def test_settled_refund_is_notified_signed_with_its_invoice(
    sandbox: SandboxHandle, client: httpx.Client, receiver: Receiver
) -> None:
    order = paid_order(client, notify_url=receiver.url)
    made = refund(sandbox, refund_of(order, 1999))
    client.post(f"/_control/refunds/{made.psp_refund_id}/succeed").raise_for_status()

    def about_it(payload: dict[str, Any]) -> bool:
        return bool(payload.get("refund", {}).get("id") == made.psp_refund_id)

    (delivery,) = receiver.wait_for(about_it, 1)
    result = adapter.parse_notification(delivery.notification(), settings_for(sandbox))
    assert delivery.payload["type"] == "refund.updated"
    assert result.verified
    assert result.ref.psp_id == order.psp_id
    assert result.report is not None
    assert result.report.state is CanonicalState.REFUNDED
    assert result.refund is not None
    assert (result.refund.state, result.refund.money) == (RefundState.SUCCEEDED, order.money)


def test_refund_succeeds_by_itself_after_the_settle_time(receiver: Receiver) -> None:
    config = SandboxConfig(api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, refund_settle_seconds=0)
    with (
        running_sandbox(config) as timed,
        httpx.Client(
            base_url=timed.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=WAIT
        ) as client,
    ):
        order = paid_order(client, notify_url=receiver.url)
        made = refund(timed, refund_of(order, 250))
        (delivery,) = receiver.wait_for(
            lambda p: p.get("refund", {}).get("id") == made.psp_refund_id, 1
        )
        assert delivery.payload["refund"]["status"] == "succeeded"
        assert invoice_status(timed, order).refunded == Money(250, "EUR")


# -- payouts -----------------------------------------------------------------------------------


def test_payout_page_completes_a_payout_once(sandbox: SandboxHandle, client: httpx.Client) -> None:
    settings = settings_for(sandbox)
    request = payout_of()
    made = adapter.parse_payout(request, send(adapter.build_payout(request, settings)), settings)
    assert made.state is PayoutState.PENDING
    page = client.get(f"/payouts/{made.psp_payout_id}")
    assert "id=complete" in page.text
    assert "id=fail" in page.text
    done = client.post(f"/payouts/{made.psp_payout_id}/complete")
    assert "id=status>succeeded<" in done.text
    # Failing what already succeeded is refused; the payout stays succeeded
    assert client.post(f"/payouts/{made.psp_payout_id}/fail").status_code == 409
    read = adapter.parse_payout_status(
        request, send(adapter.build_payout_status(request, settings)), settings
    )
    assert (read.state, read.psp_payout_id, read.money) == (
        PayoutState.SUCCEEDED,
        made.psp_payout_id,
        Money(1000, "EUR"),
    )


def test_failed_payout_is_notified_signed(
    sandbox: SandboxHandle, client: httpx.Client, receiver: Receiver
) -> None:
    settings = settings_for(sandbox, NOTIFY_URL=receiver.url)
    request = payout_of()
    made = adapter.parse_payout(request, send(adapter.build_payout(request, settings)), settings)
    failed = client.post(
        f"/_control/payouts/{made.psp_payout_id}/fail", json={"reason": "account closed"}
    )
    assert failed.json()["status"] == "failed"
    (delivery,) = receiver.wait_for(
        lambda p: p.get("payout", {}).get("id") == made.psp_payout_id, 1
    )
    result = adapter.parse_notification(delivery.notification(), settings)
    assert result.verified
    assert result.payout is not None
    assert (result.payout.state, result.payout.reason) == (PayoutState.FAILED, "account closed")


def test_accept_then_timeout_makes_one_payout_for_the_resend(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    add_faults(client, "payout", {"kind": "accept_then_timeout", "seconds": 3})
    settings = settings_for(sandbox)
    request = payout_of()
    with pytest.raises(httpx.ReadTimeout):
        send(adapter.build_payout(request, settings), timeout=0.3)
    resent = adapter.parse_payout(request, send(adapter.build_payout(request, settings)), settings)
    assert resent.state is PayoutState.PENDING
    numbers = stats(client)
    assert numbers["payouts_per_key"] == {f"pd-payout-{request.id}": 1}
    assert (numbers["payouts"], numbers["max_payouts_per_reference"]) == (1, 1)
    assert numbers["payout_calls"] == 2


def test_refuse_fault_rejects_the_payout_and_makes_none(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    add_faults(client, "payout", "refuse")
    settings = settings_for(sandbox)
    request = payout_of()
    with pytest.raises(PspRejected, match="refused"):
        adapter.parse_payout(request, send(adapter.build_payout(request, settings)), settings)
    assert stats(client)["payouts"] == 0


def test_payout_in_an_unsupported_currency_is_rejected(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    settings = settings_for(sandbox)
    request = PayoutRequest(id=uuid4(), money=Money(1000, "CHF"), destination={"account": "acct-7"})
    with pytest.raises(PspRejected, match="unsupported_currency"):
        adapter.parse_payout(request, send(adapter.build_payout(request, settings)), settings)


def test_reset_forgets_refunds_and_payouts(sandbox: SandboxHandle, client: httpx.Client) -> None:
    order = paid_order(client)
    refund(sandbox, refund_of(order, 100))
    settings = settings_for(sandbox)
    request = payout_of()
    adapter.parse_payout(request, send(adapter.build_payout(request, settings)), settings)
    client.post("/_control/reset").raise_for_status()
    numbers = stats(client)
    assert (numbers["refunds"], numbers["payouts"]) == (0, 0)

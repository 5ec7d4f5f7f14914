"""The sandbox payment system over real HTTP: invoices, pay page, outcomes, faults, webhooks.

One sandbox and one webhook receiver serve the module (reset before each test); waits are on
conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from adapters.base import CanonicalState, MalformedResponse, Notification, PspRequest, PspResponse
from adapters.registry import resolve_settings
from adapters.sandbox import SCENARIO_METADATA_KEY, SandboxConfig, adapter
from adapters.sandbox.faults import Fault, FaultKind, FaultPlan, Operation, OperationFaults
from adapters.sandbox.runner import SandboxHandle, running_sandbox, serve_in_thread
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus

pytestmark = pytest.mark.integration

API_KEY = "it-api-key"
WEBHOOK_SECRET = "it-webhook-secret"
CONFIG = SandboxConfig(
    api_key=API_KEY,
    webhook_secret=WEBHOOK_SECRET,
    hang_seconds=5,
    webhook_backoff=0.05,
    reorder_window=2,
)
WAIT = 5.0  # seconds any awaited condition gets before the test fails


# -- a webhook receiver ------------------------------------------------------------------------


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
    """Collects webhooks; ``fail_next`` answers that many with HTTP 500 first."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.fail_next = 0
        self.url = ""
        self._changed = threading.Condition()

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        with self._changed:
            if self.fail_next:
                self.fail_next -= 1
                return PlainTextResponse("try again", 500)
            self.deliveries.append(Delivery(dict(request.headers), body, datetime.now(UTC)))
            self._changed.notify_all()
        return PlainTextResponse("ok")

    def wait_for(self, invoice_id: str, count: int) -> list[Delivery]:
        """The first ``count`` webhooks about one invoice, waiting up to WAIT for them."""

        def mine() -> list[Delivery]:
            return [d for d in self.deliveries if d.payload["invoice"]["id"] == invoice_id]

        with self._changed:
            arrived = self._changed.wait_for(lambda: len(mine()) >= count, WAIT)
            assert arrived, f"expected {count} webhooks for {invoice_id}, got {len(mine())}"
            return mine()


# -- fixtures and helpers ----------------------------------------------------------------------


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


def invoice_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": str(uuid4()),
        "number": 7,
        "amount": 1999,
        "currency": "EUR",
        "description": "Gift card",
        "return_url": None,
        "expires_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
    }
    body.update(changes)
    return body


def create(client: httpx.Client, key: str | None = None, **changes: Any) -> dict[str, Any]:
    response = client.post(
        "/api/v1/invoices",
        json=invoice_body(**changes),
        headers={"Idempotency-Key": key or f"key-{uuid4()}"},
    )
    assert response.status_code == 201, response.text
    invoice: dict[str, Any] = response.json()
    return invoice


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def stats(client: httpx.Client) -> dict[str, Any]:
    result: dict[str, Any] = client.get("/_control/stats").json()
    return result


def add_faults(client: httpx.Client, operation: str, *faults: dict[str, Any] | str) -> None:
    client.post(f"/_control/faults/{operation}", json={"queue": list(faults)}).raise_for_status()


def make_order(sandbox: SandboxHandle, psp_id: str | None = None, **changes: Any) -> Order:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": uuid4(),
        "number": 7,
        "site": "shop",
        "site_ref": None,
        "user_id": "u1",
        "money": Money(1999, "EUR"),
        "adapter": "sandbox",
        "description": "Gift card",
        "return_url": None,
        "metadata": {},
        "status": OrderStatus.SUBMITTING,
        "psp_id": psp_id,
        "pay_url": None,
        "attempts": 1,
        "polls": 0,
        "next_run_at": None,
        "lease_until": None,
        "lease_token": None,
        "expires_at": now + timedelta(minutes=5),
        "last_error": None,
        "idempotency_key": None,
        "created_at": now,
        "updated_at": now,
        "paid_at": None,
    }
    fields.update(changes)
    return Order(**fields)


def settings_for(sandbox: SandboxHandle, **extra: str) -> Any:
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


# -- merchant API ------------------------------------------------------------------------------


def test_same_idempotency_key_returns_the_same_invoice(client: httpx.Client) -> None:
    body = invoice_body()
    headers = {"Idempotency-Key": "order-1"}

    first = client.post("/api/v1/invoices", json=body, headers=headers)
    second = client.post("/api/v1/invoices", json=body, headers=headers)

    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json()
    assert first.json()["status"] == "pending"
    assert first.json()["pay_url"].endswith(f"/pay/{first.json()['id']}")
    numbers = stats(client)
    assert numbers["invoices_per_key"] == {"order-1": 1}
    assert numbers["invoices"] == 1
    assert numbers["create_calls"] == 2


def test_same_key_with_another_body_is_refused(client: httpx.Client) -> None:
    create(client, key="order-2", order_id="o-2")
    response = client.post(
        "/api/v1/invoices",
        json=invoice_body(order_id="o-2", amount=1),
        headers={"Idempotency-Key": "order-2"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert stats(client)["invoices"] == 1


@pytest.mark.parametrize(
    ("changes", "status_code", "code"),
    [
        ({"amount": 0}, 400, "invalid_field"),
        ({"amount": "19.99"}, 400, "invalid_field"),
        ({"order_id": ""}, 400, "invalid_field"),
        ({"expires_at": "next week"}, 400, "invalid_field"),
        ({"expires_at": "2030-01-01T00:00:00"}, 400, "invalid_field"),
        ({"return_url": "ftp://x"}, 400, "invalid_field"),
        ({"scenario": "pay_whenever"}, 400, "invalid_scenario"),
        ({"currency": "CHF"}, 422, "unsupported_currency"),
        ({"expires_at": "2020-01-01T00:00:00+00:00"}, 422, "already_expired"),
    ],
)
def test_invalid_create_bodies_get_json_errors(
    client: httpx.Client, changes: dict[str, Any], status_code: int, code: str
) -> None:
    response = client.post(
        "/api/v1/invoices", json=invoice_body(**changes), headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == status_code
    assert response.json()["error"]["code"] == code
    assert stats(client)["invoices"] == 0


def test_create_needs_an_idempotency_key_and_json(client: httpx.Client) -> None:
    missing = client.post("/api/v1/invoices", json=invoice_body())
    garbage = client.post("/api/v1/invoices", content=b"{", headers={"Idempotency-Key": "k"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (
        400,
        "missing_idempotency_key",
    )
    assert (garbage.status_code, garbage.json()["error"]["code"]) == (400, "invalid_json")


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {API_KEY}"])
def test_merchant_api_needs_the_api_key(sandbox: SandboxHandle, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.get(f"{sandbox.url}/api/v1/invoices/inv_x", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_unknown_invoice_is_a_json_404(client: httpx.Client) -> None:
    response = client.get("/api/v1/invoices/inv_missing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_lookup_by_our_order_number(client: httpx.Client) -> None:
    mine = create(client, number=1001)
    create(client, number=1002)

    found = client.get("/api/v1/invoices", params={"number": 1001}).json()["items"]
    none = client.get("/api/v1/invoices", params={"number": 999}).json()["items"]

    assert [item["id"] for item in found] == [mine["id"]]
    assert none == []
    assert client.get("/api/v1/invoices", params={"number": "x"}).status_code == 400


def test_calls_counts_each_operation_as_stats_does_without_the_records(
    client: httpx.Client,
) -> None:
    invoice = create(client)
    client.get(f"/api/v1/invoices/{invoice['id']}")
    client.get(f"/api/v1/invoices/{invoice['id']}")
    client.get("/api/v1/invoices/inv_missing")

    calls = client.get("/_control/calls").json()

    assert calls == stats(client)["calls"]
    assert (calls["create"], calls["status"], calls["cancel"]) == (1, 3, 0)


def test_adapter_round_trip_against_the_real_server(sandbox: SandboxHandle) -> None:
    # Given an order submitted through the adapter's own requests
    settings = settings_for(sandbox)
    order = make_order(sandbox)
    invoice = adapter.parse_create(order, send(adapter.build_create(order, settings)))
    order = make_order(sandbox, psp_id=invoice.psp_id, id=order.id, expires_at=order.expires_at)
    # When the lookup and status requests go out
    found = adapter.parse_lookup(order, send(adapter.build_lookup(order, settings)), settings)
    report = adapter.parse_status(order, send(adapter.build_status(order, settings)), settings)
    # Then they find the same invoice, pending with the order's amount
    assert found is not None
    assert found.psp_id == invoice.psp_id
    assert report.state is CanonicalState.PENDING
    assert report.money == order.money
    # And a retry of the create gives the same invoice back
    again = adapter.parse_create(order, send(adapter.build_create(order, settings)))
    assert again == invoice


# -- pay page and status moves -----------------------------------------------------------------


def test_pay_page_shows_the_invoice_and_both_buttons(client: httpx.Client) -> None:
    invoice = create(client, description="Gift <card>")
    page = client.get(f"/pay/{invoice['id']}")
    assert page.status_code == 200
    assert "19.99 EUR" in page.text
    assert "Gift &lt;card&gt;" in page.text
    assert "<button type=submit id=pay>" in page.text
    assert "<button type=submit id=decline>" in page.text
    assert f'action="/pay/{invoice["id"]}/pay"' in page.text


def test_paying_on_the_page_redirects_to_the_return_url(client: httpx.Client) -> None:
    invoice = create(client, return_url="https://shop.example/thanks?order=7")

    response = client.post(f"/pay/{invoice['id']}/pay")

    assert response.status_code == 303
    assert response.headers["location"] == "https://shop.example/thanks?order=7"
    paid = client.get(f"/api/v1/invoices/{invoice['id']}").json()
    assert paid["status"] == "paid"
    assert paid["paid_at"] is not None


def test_paying_without_return_url_shows_the_result(client: httpx.Client) -> None:
    invoice = create(client)
    response = client.post(f"/pay/{invoice['id']}/pay")
    assert response.status_code == 200
    assert "data-status=paid" in response.text
    assert "<button type=submit id=pay>" not in client.get(f"/pay/{invoice['id']}").text


def test_declining_on_the_page_reads_as_rejected(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    invoice = create(client)
    assert client.post(f"/pay/{invoice['id']}/decline").status_code == 200
    response = client.get(f"/api/v1/invoices/{invoice['id']}")
    order = make_order(sandbox, psp_id=invoice["id"])
    report = adapter.parse_status(
        order, PspResponse(response.status_code, response.content), settings_for(sandbox)
    )
    assert report.state is CanonicalState.REJECTED
    assert report.raw_status == "declined"
    assert client.post(f"/pay/{invoice['id']}/pay").status_code == 409


def test_cancel_is_idempotent_and_refused_once_paid(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    pending = create(client)
    first = client.post(f"/api/v1/invoices/{pending['id']}/cancel")
    second = client.post(f"/api/v1/invoices/{pending['id']}/cancel")
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["status"] == second.json()["status"] == "cancelled"

    paid = create(client)
    client.post(f"/pay/{paid['id']}/pay").raise_for_status()
    refused = client.post(f"/api/v1/invoices/{paid['id']}/cancel")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "already_paid"
    # The dispatcher's cancel-at-deadline learns from the refusal that the buyer paid
    order = make_order(sandbox, psp_id=paid["id"])
    report = adapter.parse_status(
        order, PspResponse(409, refused.content), settings_for(sandbox), "cancel"
    )
    assert report.state is CanonicalState.PAID


def test_expired_invoice_refuses_the_page_but_takes_a_late_payment(
    client: httpx.Client, receiver: Receiver
) -> None:
    # Given an invoice whose deadline passes (its expiry webhook tells us when)
    invoice = create(client, expires_at=in_seconds(0.3), notify_url=receiver.url)
    (expired,) = receiver.wait_for(invoice["id"], 1)
    assert expired.payload["invoice"]["status"] == "expired"
    assert client.get(f"/api/v1/invoices/{invoice['id']}").json()["status"] == "expired"
    # When the buyer clicks Pay too late, the page refuses
    refused = client.post(f"/pay/{invoice['id']}/pay")
    assert refused.status_code == 409
    assert "expired" in refused.text
    # But a payment pushed through the control API still lands: a late payment
    late = client.post(f"/_control/invoices/{invoice['id']}/pay")
    assert late.status_code == 200
    assert late.json()["status"] == "paid"
    assert late.json()["paid_at"] > late.json()["expires_at"]
    assert receiver.wait_for(invoice["id"], 2)[1].payload["invoice"]["status"] == "paid"


def test_pending_invoice_past_its_deadline_reads_as_expired(
    client: httpx.Client, receiver: Receiver
) -> None:
    deadline = in_seconds(0.3)
    silent = create(client, expires_at=deadline)
    witness = create(client, expires_at=deadline, notify_url=receiver.url)
    receiver.wait_for(witness["id"], 1)
    assert client.get(f"/api/v1/invoices/{silent['id']}").json()["status"] == "expired"


def test_control_refund_reads_as_refunded(sandbox: SandboxHandle, client: httpx.Client) -> None:
    invoice = create(client)
    client.post(f"/_control/invoices/{invoice['id']}/pay").raise_for_status()
    refunded = client.post(f"/_control/invoices/{invoice['id']}/refund")
    assert refunded.json()["status"] == "refunded"
    response = client.get(f"/api/v1/invoices/{invoice['id']}")
    report = adapter.parse_status(
        make_order(sandbox, psp_id=invoice["id"]),
        PspResponse(200, response.content),
        settings_for(sandbox),
    )
    assert report.state is CanonicalState.REFUNDED


# -- automatic outcomes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "expires_in", "statuses"),
    [
        ("pay_after:0.1", 60, ["paid"]),
        ("decline_after:0.1", 60, ["declined"]),
        ("never", 0.3, ["expired"]),
        ("pay_late:0.1", 0.3, ["expired", "paid"]),
    ],
)
def test_scenarios_settle_invoices_without_a_person(
    sandbox: SandboxHandle,
    client: httpx.Client,
    receiver: Receiver,
    *,
    scenario: str,
    expires_in: float,
    statuses: list[str],
) -> None:
    # Given an order asking the sandbox for an automatic outcome through its metadata
    settings = settings_for(sandbox, NOTIFY_URL=receiver.url)
    order = make_order(
        sandbox,
        metadata={SCENARIO_METADATA_KEY: scenario},
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
    )
    invoice = adapter.parse_create(order, send(adapter.build_create(order, settings)))
    # Then the webhooks tell the outcome, in order, each verified by the adapter
    deliveries = receiver.wait_for(invoice.psp_id, len(statuses))
    assert [d.payload["invoice"]["status"] for d in deliveries] == statuses
    for delivery in deliveries:
        assert adapter.parse_notification(delivery.notification(), settings).verified


# -- faults ------------------------------------------------------------------------------------


def test_accept_then_timeout_creates_one_invoice_for_the_retry(client: httpx.Client) -> None:
    # Given the next create is performed and then never answered
    add_faults(client, "create", {"kind": "accept_then_timeout", "seconds": 3})
    body = invoice_body()
    headers = {"Idempotency-Key": "pd-timeout"}
    # When the client gives up and retries with the same key
    with pytest.raises(httpx.ReadTimeout):
        client.post("/api/v1/invoices", json=body, headers=headers, timeout=0.3)
    retry = client.post("/api/v1/invoices", json=body, headers=headers)
    # Then the retry gets the invoice the first call made, and there is only one
    assert retry.status_code == 200
    numbers = stats(client)
    assert numbers["invoices_per_key"] == {"pd-timeout": 1}
    assert numbers["max_invoices_per_order"] == 1
    assert numbers["create_calls"] == 2
    assert numbers["faults_served"] == {"create": {"accept_then_timeout": 1}}


def test_timeout_before_create_makes_nothing_until_the_retry(client: httpx.Client) -> None:
    add_faults(client, "create", {"kind": "timeout", "seconds": 3})
    body, headers = invoice_body(), {"Idempotency-Key": "pd-hang"}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/api/v1/invoices", json=body, headers=headers, timeout=0.3)
    assert stats(client)["invoices"] == 0
    assert client.post("/api/v1/invoices", json=body, headers=headers).status_code == 201


def test_http_500_and_429_come_back_as_answers(client: httpx.Client) -> None:
    invoice = create(client)
    add_faults(client, "status", "http_500", {"kind": "http_429", "retry_after": 7})
    url = f"/api/v1/invoices/{invoice['id']}"

    first, second, third = client.get(url), client.get(url), client.get(url)

    assert first.status_code == 500
    assert (second.status_code, second.headers["retry-after"]) == (429, "7")
    assert third.status_code == 200
    assert stats(client)["faults_served"] == {"status": {"http_429": 1, "http_500": 1}}


@pytest.mark.parametrize("style", ["html", "truncated"])
def test_malformed_create_answer_still_made_the_invoice(
    sandbox: SandboxHandle, client: httpx.Client, style: str
) -> None:
    add_faults(client, "create", {"kind": "malformed", "style": style})
    settings, order = settings_for(sandbox), make_order(sandbox)
    request = adapter.build_create(order, settings)

    garbled = send(request)
    assert garbled.status_code == 200
    with pytest.raises(MalformedResponse):
        adapter.parse_create(order, garbled)
    invoice = adapter.parse_create(order, send(request))

    assert stats(client)["invoices_per_order"] == {str(order.id): 1}
    assert invoice.pay_url is not None


def test_amount_mismatch_reports_another_amount(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    invoice = create(client)
    add_faults(client, "status", {"kind": "amount_mismatch", "delta": 500})
    order = make_order(sandbox, psp_id=invoice["id"])

    settings = settings_for(sandbox)
    report = adapter.parse_status(order, send(adapter.build_status(order, settings)), settings)

    assert report.money == Money(2499, "EUR")
    assert report.money != order.money


def test_latency_delays_but_answers(client: httpx.Client) -> None:
    add_faults(client, "lookup", {"kind": "latency", "ms": 300})
    response = client.get("/api/v1/invoices", params={"number": 1})
    assert response.status_code == 200
    assert response.elapsed >= timedelta(milliseconds=300)


def test_fault_rate_applies_to_every_call_at_rate_one(client: httpx.Client) -> None:
    client.post(
        "/_control/faults/cancel", json={"rate": 1.0, "choices": ["http_500"]}
    ).raise_for_status()
    invoice = create(client)
    codes = [client.post(f"/api/v1/invoices/{invoice['id']}/cancel").status_code for _ in range(3)]
    assert codes == [500, 500, 500]
    client.delete("/_control/faults").raise_for_status()
    assert client.post(f"/api/v1/invoices/{invoice['id']}/cancel").status_code == 200
    assert stats(client)["faults_served_total"] == 3


def test_bad_fault_requests_are_refused(client: httpx.Client) -> None:
    assert client.post("/_control/faults/create", json={"queue": ["meteor"]}).status_code == 400
    # "refund" became an operation (issue #14); an unknown one is still refused
    assert client.post("/_control/faults/teleport", json={"queue": []}).status_code == 400
    assert client.post("/_control/faults/create", json={"rate": 0.5}).status_code == 400


def test_faults_from_the_config_return_after_reset() -> None:
    plan = FaultPlan(
        operations={Operation.CREATE: OperationFaults(queue=(Fault(FaultKind.HTTP_500),))}
    )
    config = SandboxConfig(api_key=API_KEY, faults=plan)
    with (
        running_sandbox(config) as sandbox,
        httpx.Client(
            base_url=sandbox.url, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as client,
    ):
        body, headers = invoice_body(), {"Idempotency-Key": "k"}
        codes = [client.post("/api/v1/invoices", json=body, headers=headers).status_code]
        codes.append(client.post("/api/v1/invoices", json=body, headers=headers).status_code)
        client.post("/_control/reset").raise_for_status()
        codes.append(client.post("/api/v1/invoices", json=body, headers=headers).status_code)
    assert codes == [500, 201, 500]


# -- webhooks ----------------------------------------------------------------------------------


def test_webhook_is_signed_and_verified_by_the_adapter(
    sandbox: SandboxHandle, client: httpx.Client, receiver: Receiver
) -> None:
    invoice = create(client, notify_url=receiver.url)
    client.post(f"/pay/{invoice['id']}/pay").raise_for_status()

    (delivery,) = receiver.wait_for(invoice["id"], 1)
    result = adapter.parse_notification(delivery.notification(), settings_for(sandbox))

    assert delivery.headers["sandbox-signature"].startswith("t=")
    assert delivery.payload["type"] == "invoice.updated"
    assert result.verified
    assert result.report is not None
    assert result.report.state is CanonicalState.PAID
    assert result.ref.psp_id == invoice["id"]
    assert UUID(result.ref.order_id or "") == UUID(invoice["order_id"])
    wrong = settings_for(sandbox, WEBHOOK_SECRET="not-the-secret")
    assert not adapter.parse_notification(delivery.notification(), wrong).verified


def test_webhook_is_retried_after_a_failed_delivery(
    client: httpx.Client, receiver: Receiver
) -> None:
    receiver.fail_next = 2
    invoice = create(client, notify_url=receiver.url)
    client.post(f"/pay/{invoice['id']}/pay").raise_for_status()
    (delivery,) = receiver.wait_for(invoice["id"], 1)
    assert delivery.payload["invoice"]["status"] == "paid"
    assert stats(client)["webhooks"]["attempts"] == 3


def test_duplicate_webhooks_share_the_event_id(client: httpx.Client, receiver: Receiver) -> None:
    client.post("/_control/webhooks", json={"duplicate": True}).raise_for_status()
    invoice = create(client, notify_url=receiver.url)
    client.post(f"/pay/{invoice['id']}/pay").raise_for_status()

    first, second = receiver.wait_for(invoice["id"], 2)

    assert first.payload["event_id"] == second.payload["event_id"]
    assert first.body == second.body


def test_reordered_webhooks_arrive_newest_first(client: httpx.Client, receiver: Receiver) -> None:
    client.post("/_control/webhooks", json={"reorder": True}).raise_for_status()
    invoice = create(client, notify_url=receiver.url)
    client.post(f"/pay/{invoice['id']}/pay").raise_for_status()
    client.post(f"/_control/invoices/{invoice['id']}/refund").raise_for_status()

    deliveries = receiver.wait_for(invoice["id"], 2)

    assert [d.payload["invoice"]["status"] for d in deliveries] == ["refunded", "paid"]

"""POST /v1/callbacks/{adapter}: verified notifications are applied, anything else only makes
the order due for a poll, and the payment system gets exactly the reply it expects."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from adapters.base import AdapterSettings, Notification, NotificationResult, Reply
from adapters.sandbox.adapter import Sandbox
from adapters.sandbox.protocol import DEFAULT_WEBHOOK_SECRET, signature_header
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool
from orders.model import Order
from tests.integration.test_api import Api, api_runtimes, running_api

S = OrderStatus


@pytest.fixture(scope="module")
def api(pool: Pool) -> Iterator[Api]:
    with running_api(pool) as running:
        yield running


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


def awaiting(api: Api, site: str, *, amount: int = 1500) -> Order:
    """An order with an invoice, last looked at a minute ago, next in five minutes."""
    order = api.repo.create(
        NewOrder(site=site, user_id="u1", money=Money(amount, "USD"), adapter="sandbox")
    ).order
    api.repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test")
    api.repo.transition(
        order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=f"inv_{order.id.hex}",
        pay_url="https://sandbox.example/pay/x",
        next_run_at=datetime.now(UTC) + timedelta(minutes=5),
    )  # fmt: skip
    return looked_at(api, order, minutes_ago=1)


def looked_at(api: Api, order: Order, *, minutes_ago: float) -> Order:
    """The order as if the dispatcher last released it ``minutes_ago``, due in five minutes."""
    with api.repo.pool.connection() as conn:
        conn.execute(
            "UPDATE orders SET updated_at = now() - make_interval(secs => %s),"
            " next_run_at = now() + interval '5 minutes' WHERE id = %s",
            (minutes_ago * 60, order.id),
        )
    return api.repo.get(order.id)


def pulled_forward(api: Api, order: Order) -> bool:
    next_run_at = api.repo.get(order.id).next_run_at
    return next_run_at is not None and next_run_at <= datetime.now(UTC)


def webhook(order: Order, status: str, *, amount: int | None = None) -> bytes:
    invoice: dict[str, Any] = {
        "id": order.psp_id,
        "order_id": str(order.id),
        "number": order.number,
        "status": status,
        "amount": order.money.amount if amount is None else amount,
        "currency": order.money.currency,
    }
    return json.dumps({"event_id": "evt_1", "type": "invoice.updated", "invoice": invoice}).encode()


def signed(body: bytes, *, secret: str = DEFAULT_WEBHOOK_SECRET, age: int = 0) -> dict[str, str]:
    stamp = int(time.time()) - age
    return {"Sandbox-Signature": signature_header(secret, stamp, body)}


def test_a_signed_notification_marks_the_order_paid_and_gets_the_expected_reply(
    api: Api, http: httpx.Client, site: str
) -> None:
    order = awaiting(api, site)
    body = webhook(order, "paid")
    response = http.post("/v1/callbacks/sandbox", content=body, headers=signed(body))
    assert (response.status_code, response.text) == (200, "ok")
    paid = api.repo.get(order.id)
    assert paid.status is S.PAID
    assert api.repo.events(order.id)[-1].actor == "callback:sandbox"
    # The same notification again changes nothing and is still acknowledged.
    again = http.post("/v1/callbacks/sandbox", content=body, headers=signed(body))
    assert again.status_code == 200
    assert len(api.repo.events(order.id)) == len(api.repo.events(paid.id))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Sandbox-Signature": "t=1,v1=" + "0" * 64},
        "wrong secret",
        "stale",
    ],
)
def test_an_unverified_notification_only_schedules_a_poll(
    api: Api, http: httpx.Client, site: str, headers: Any
) -> None:
    order = awaiting(api, site)
    body = webhook(order, "paid")
    if headers == "wrong secret":
        headers = signed(body, secret="not-the-secret")
    elif headers == "stale":
        headers = signed(body, age=3600)
    response = http.post("/v1/callbacks/sandbox", content=body, headers=headers)
    assert (response.status_code, response.text) == (200, "ok")
    after = api.repo.get(order.id)
    assert after.status is S.AWAITING_PAYMENT
    assert after.next_run_at is not None
    assert after.next_run_at <= datetime.now(UTC)


def test_a_signed_notification_with_another_amount_goes_to_review_not_paid(
    api: Api, http: httpx.Client, site: str
) -> None:
    order = awaiting(api, site, amount=1500)
    body = webhook(order, "paid", amount=1)
    http.post("/v1/callbacks/sandbox", content=body, headers=signed(body))
    assert api.repo.get(order.id).status is S.NEEDS_REVIEW


def test_a_signed_notification_for_another_invoice_is_only_a_hint(
    api: Api, http: httpx.Client, site: str
) -> None:
    order = awaiting(api, site)
    body = webhook(order, "paid").replace(str(order.psp_id).encode(), b"inv_someone_else")
    http.post("/v1/callbacks/sandbox", content=body, headers=signed(body))
    after = api.repo.get(order.id)
    assert after.status is S.AWAITING_PAYMENT
    assert after.next_run_at is not None
    assert after.next_run_at <= datetime.now(UTC)


def test_unreadable_notifications_are_400_and_unknown_adapters_404(
    http: httpx.Client,
) -> None:
    for body in (b"", b"not json", b"[]", b'{"invoice": 5}'):
        response = http.post("/v1/callbacks/sandbox", content=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == "malformed_notification"
    missing = http.post("/v1/callbacks/nowhere", content=b"{}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_adapter"


def test_a_notification_naming_no_known_order_is_acknowledged(http: httpx.Client) -> None:
    body = json.dumps(
        {"type": "invoice.updated", "invoice": {"id": "inv_nobody", "order_id": "nope"}}
    ).encode()
    response = http.post("/v1/callbacks/sandbox", content=body, headers=signed(body))
    assert (response.status_code, response.text) == (200, "ok")


def test_yookassa_notifications_from_outside_its_networks_are_refused(
    api: Api, http: httpx.Client
) -> None:
    body = {"type": "notification", "event": "payment.succeeded", "object": {"id": "p-1"}}
    response = http.post("/v1/callbacks/yookassa", json=body)
    assert response.status_code == 403


def test_an_unsigned_yookassa_notification_is_a_hint_for_its_order(pool: Pool, site: str) -> None:
    # Given a YooKassa set-up that does not check sender addresses (we send from loopback),
    runtimes = api_runtimes()
    yk = runtimes["yookassa"]
    values = dict(yk.settings.values) | {"NOTIFY_IP_CHECK": "false"}
    runtimes["yookassa"] = replace(yk, settings=replace(yk.settings, values=values))
    with running_api(pool, runtimes=runtimes) as api:
        order = api.repo.create(
            NewOrder(site=site, user_id="u1", money=Money(100, "RUB"), adapter="yookassa",
                     return_url="https://shop.example/")
        ).order  # fmt: skip
        api.repo.transition(order.id, S.NEW, S.SUBMITTING, actor="test")
        api.repo.transition(
            order.id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id="2d0b-yk",
            pay_url="https://yoomoney.example/x",
            next_run_at=datetime.now(UTC) + timedelta(minutes=5),
        )  # fmt: skip
        looked_at(api, order, minutes_ago=1)
        # when it says "succeeded" without any proof,
        body = {
            "type": "notification",
            "event": "payment.succeeded",
            "object": {"id": "2d0b-yk", "status": "succeeded", "metadata": {}},
        }
        response = httpx.post(f"{api.url}/v1/callbacks/yookassa", json=body, timeout=10)
        # then the order is polled at once, never marked paid on its word.
        assert response.status_code == 200
        after = api.repo.get(order.id)
        assert after.status is S.AWAITING_PAYMENT
        assert after.next_run_at is not None
        assert after.next_run_at <= datetime.now(UTC)


def test_issue12_item4_an_unsigned_hint_naming_only_our_number_or_id_polls_nothing(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given an order whose number and id a forger knows, but not the payment system's id
    order = awaiting(api, site)
    body = webhook(order, "paid").replace(str(order.psp_id).encode(), b"inv_guessed")
    # when an unsigned notification names it by those alone
    response = http.post("/v1/callbacks/sandbox", content=body)
    # then it is acknowledged as the adapter says, and no poll is made for it.
    assert (response.status_code, response.text) == (200, "ok")
    assert not pulled_forward(api, order)
    assert api.repo.get(order.id).status is S.AWAITING_PAYMENT


def test_issue12_item4_a_flood_of_hints_costs_at_most_one_poll_per_order_per_interval(
    api: Api, http: httpx.Client, site: str
) -> None:
    # Given an order the first unsigned hint pulls forward,
    order = awaiting(api, site)
    body = webhook(order, "paid")
    http.post("/v1/callbacks/sandbox", content=body)
    assert pulled_forward(api, order)
    # which the dispatcher then polls and releases (just now, due again in five minutes),
    looked_at(api, order, minutes_ago=0)
    # when a flood of the same hint follows within the debounce interval,
    for _ in range(20):
        assert http.post("/v1/callbacks/sandbox", content=body).status_code == 200
    # then it pulls the order forward no more.
    assert not pulled_forward(api, order)


class _ReplayableSandbox(Sandbox):
    """The sandbox as if its signatures carried no timestamp (T-Bank, Robokassa)."""

    capabilities = replace(Sandbox.capabilities, replayable_notifications=True)


class _RefusingSandbox(Sandbox):
    """The sandbox as if its payment system wanted its own answer to a forged notification."""

    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        result = super().parse_notification(notification, settings)
        if result.verified:
            return replace(result, reply=Reply(200, b"OK42", "text/plain"))
        return replace(result, reply=Reply(400, b"bad sign", "text/x-robokassa"))


def test_a_verified_but_replayable_notification_is_only_a_hint(pool: Pool, site: str) -> None:
    runtimes = api_runtimes()
    runtimes["sandbox"] = replace(runtimes["sandbox"], adapter=_ReplayableSandbox())
    with running_api(pool, runtimes=runtimes) as api:
        order = awaiting(api, site)
        # Signed, so it may name the order by our id and number; the invoice id is not needed.
        body = webhook(order, "paid").replace(str(order.psp_id).encode(), b"inv_other")
        response = httpx.post(
            f"{api.url}/v1/callbacks/sandbox", content=body, headers=signed(body), timeout=10
        )
        assert (response.status_code, response.text) == (200, "ok")
        assert api.repo.get(order.id).status is S.AWAITING_PAYMENT
        assert pulled_forward(api, order)


def test_the_adapters_reply_is_answered_for_verified_and_forged_notifications(
    pool: Pool, site: str
) -> None:
    runtimes = api_runtimes()
    runtimes["sandbox"] = replace(runtimes["sandbox"], adapter=_RefusingSandbox())
    with running_api(pool, runtimes=runtimes) as api:
        order = awaiting(api, site)
        body = webhook(order, "paid")
        url = f"{api.url}/v1/callbacks/sandbox"
        forged = httpx.post(url, content=body, headers=signed(body, secret="x"), timeout=10)
        assert (forged.status_code, forged.content) == (400, b"bad sign")
        assert forged.headers["content-type"].startswith("text/x-robokassa")
        assert api.repo.get(order.id).status is S.AWAITING_PAYMENT
        genuine = httpx.post(url, content=body, headers=signed(body), timeout=10)
        assert (genuine.status_code, genuine.content) == (200, b"OK42")
        assert api.repo.get(order.id).status is S.PAID

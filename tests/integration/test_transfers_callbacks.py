"""Refunds the payment system reports on its own, through POST /v1/callbacks/{adapter}
(issue #14): recorded once, counted, and never on an unverified notification's word."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from adapters.sandbox.protocol import REFUND_EVENT_TYPE
from orders import Money, OrderStatus
from orders.db import Pool
from orders.model import Order, TransferStatus
from tests.integration.test_api import Api, running_api
from tests.integration.test_api_callbacks import awaiting, signed

S = OrderStatus


@pytest.fixture(scope="module")
def api(pool: Pool) -> Iterator[Api]:
    with running_api(pool) as running:
        yield running


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


def paid(api: Api) -> Order:
    order = awaiting(api, f"site-{uuid.uuid4().hex[:8]}")
    api.repo.transition(order.id, S.AWAITING_PAYMENT, S.PAID, actor="test")
    return api.repo.get(order.id)


def refund_webhook(
    order: Order,
    *,
    refund_id: str,
    amount: int,
    status: str = "succeeded",
    refunded: int | None = None,
) -> bytes:
    invoice: dict[str, Any] = {
        "id": order.psp_id,
        "order_id": str(order.id),
        "number": order.number,
        "status": "paid",
        "amount": order.money.amount,
        "currency": order.money.currency,
        "refunded": amount if refunded is None else refunded,
    }
    refund = {
        "id": refund_id,
        "status": status,
        "amount": amount,
        "currency": order.money.currency,
        "reference": None,
    }
    body = {"event_id": f"evt_{refund_id}", "type": REFUND_EVENT_TYPE, "invoice": invoice}
    return json.dumps(body | {"refund": refund}).encode()


def refunds_counted() -> float:
    labels = {"adapter": "sandbox", "origin": "psp", "status": "succeeded"}
    return REGISTRY.get_sample_value("paydispatch_refunds_total", labels) or 0.0


def test_a_reported_refund_is_recorded_once_when_the_notification_comes_twice(
    api: Api, http: httpx.Client
) -> None:
    order = paid(api)
    body = refund_webhook(order, refund_id="re_psp_1", amount=400)
    before = refunds_counted()
    for _ in range(2):
        answer = http.post("/v1/callbacks/sandbox", content=body, headers=signed(body))
        assert answer.status_code == 200
    refunds = api.repo.run(api.ctx.transfers.list(order_id=order.id)).items
    assert len(refunds) == 1
    (refund,) = refunds
    assert refund.status is TransferStatus.SUCCEEDED
    assert refund.origin == "psp"
    assert refund.psp_transfer_id == "re_psp_1"
    assert refund.money == Money(400, "USD")
    current = api.repo.get(order.id)
    assert (current.refunded_amount, current.refund_reserved) == (400, 400)
    assert current.status is S.PAID
    assert refunds_counted() == before + 1


def test_an_unverified_refund_notification_records_nothing(api: Api, http: httpx.Client) -> None:
    order = paid(api)
    body = refund_webhook(order, refund_id="re_forged", amount=1500)
    answer = http.post("/v1/callbacks/sandbox", content=body, headers=signed(body, secret="no"))
    assert answer.status_code == 200
    assert api.repo.run(api.ctx.transfers.list(order_id=order.id)).items == []
    assert api.repo.get(order.id).refunded_amount == 0


def test_a_refunded_total_above_what_our_refunds_account_for_is_recorded_once(
    api: Api, http: httpx.Client
) -> None:
    order = paid(api)
    invoice = {
        "id": order.psp_id,
        "order_id": str(order.id),
        "number": order.number,
        "status": "paid",
        "amount": order.money.amount,
        "currency": order.money.currency,
        "refunded": 300,
    }
    body = json.dumps(
        {"event_id": "evt_total", "type": "invoice.updated", "invoice": invoice}
    ).encode()
    for _ in range(2):
        assert http.post("/v1/callbacks/sandbox", content=body, headers=signed(body)).is_success
    (refund,) = api.repo.run(api.ctx.transfers.list(order_id=order.id)).items
    assert refund.money == Money(300, "USD")
    assert api.repo.get(order.id).refunded_amount == 300

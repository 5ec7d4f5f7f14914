"""The small client without a server: retries reuse one idempotency key, errors map from codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from orders import IdempotencyConflict, InvalidInput, Money, OrderNotFound, OrderStatus
from orders.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    InvalidRequest,
    KeyConflict,
    NotFound,
    Unauthorized,
    Unavailable,
)
from orders.errors import TransientError
from orders.model import TransferStatus

ORDER_JSON: dict[str, Any] = {
    "id": "7b0b8a5e-5d3c-4d7e-9a51-0c1b2f3e4d5a",
    "number": 7,
    "site_ref": None,
    "user_id": "42",
    "amount": 1999,
    "currency": "USD",
    "adapter": "sandbox",
    "description": "",
    "return_url": None,
    "metadata": {},
    "status": "new",
    "psp_id": None,
    "pay_url": None,
    "status_url": "http://api.test/pay/7b0b8a5e-5d3c-4d7e-9a51-0c1b2f3e4d5a",
    "expires_at": "2030-01-01T00:15:00Z",
    "created_at": "2030-01-01T00:00:00Z",
    "updated_at": "2030-01-01T00:00:00Z",
    "paid_at": None,
    "last_error": None,
    "events": None,
}


def failing_then(
    failures: list[httpx.Response | Exception], final: httpx.Response, seen: list[httpx.Request]
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= len(failures):
            outcome = failures[len(seen) - 1]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return final

    return handler


def err(status: int, code: str, field: str | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": f"{code} happened", "field": field}}
    )


def client(handler: Callable[[httpx.Request], httpx.Response], retries: int = 3) -> Client:
    return Client(
        "http://api.test", "pd_key", retries=retries, backoff=0.0, max_backoff=0.0,
        transport=httpx.MockTransport(handler),
    )  # fmt: skip


def test_a_create_whose_answer_was_lost_is_retried_with_the_same_key() -> None:
    # Given an API that times out, then answers 503, then creates the order,
    seen: list[httpx.Request] = []
    handler = failing_then(
        [httpx.ReadTimeout("lost"), err(503, "unavailable")],
        httpx.Response(201, json=ORDER_JSON),
        seen,
    )
    with client(handler) as pd:
        # when the site creates one order,
        created = pd.create_order(user_id="42", money=Money(1999, "USD"), adapter="sandbox")
    # then every try carried the same idempotency key and one order comes back.
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 3
    assert keys == {created.idempotency_key}
    assert created.created is True
    assert created.order.status is OrderStatus.NEW
    assert created.order.money == Money(1999, "USD")
    assert json.loads(seen[0].content) == {
        "user_id": "42", "amount": 1999, "currency": "USD", "adapter": "sandbox",
        "description": "", "metadata": {},
    }  # fmt: skip
    assert seen[0].headers["authorization"] == "Bearer pd_key"


def test_two_creates_get_two_keys_and_a_replay_says_so() -> None:
    seen: list[httpx.Request] = []
    with client(failing_then([], httpx.Response(200, json=ORDER_JSON), seen)) as pd:
        first = pd.create_order(user_id="42", amount=1999, currency="USD", adapter="sandbox")
        pd.create_order(user_id="42", amount=1999, currency="USD", adapter="sandbox")
    assert seen[0].headers["idempotency-key"] != seen[1].headers["idempotency-key"]
    assert first.created is False


def test_retries_give_up_as_unavailable_which_is_transient() -> None:
    seen: list[httpx.Request] = []
    pd = client(failing_then([], err(503, "unavailable"), seen), retries=2)
    with pd, pytest.raises(Unavailable) as caught:
        pd.get_order("7b0b8a5e-5d3c-4d7e-9a51-0c1b2f3e4d5a")
    assert len(seen) == 3
    assert isinstance(caught.value, TransientError)
    assert caught.value.code == "unavailable"


def test_network_errors_after_the_last_retry_are_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with client(handler, retries=1) as pd, pytest.raises(Unavailable) as caught:
        pd.adapters()
    assert caught.value.code == "network_error"


@pytest.mark.parametrize(
    ("response", "kind", "also"),
    [
        (err(422, "unknown_currency", "currency"), InvalidRequest, InvalidInput),
        (err(401, "unauthorized"), Unauthorized, Unauthorized),
        (err(404, "order_not_found"), NotFound, OrderNotFound),
        (err(409, "idempotency_conflict"), KeyConflict, IdempotencyConflict),
        (err(409, "not_cancellable"), Conflict, Conflict),
        (err(413, "body_too_large"), BadRequest, BadRequest),
        (httpx.Response(400, text="<html>proxy says no</html>"), BadRequest, BadRequest),
    ],
)
def test_error_answers_become_exceptions_of_the_one_tree(
    response: httpx.Response, kind: type[Exception], also: type[Exception]
) -> None:
    seen: list[httpx.Request] = []
    with client(failing_then([], response, seen)) as pd, pytest.raises(kind) as caught:
        pd.cancel_order("7b0b8a5e-5d3c-4d7e-9a51-0c1b2f3e4d5a")
    assert isinstance(caught.value, also)
    assert len(seen) == 1  # a definite answer is never retried
    if isinstance(caught.value, InvalidRequest):
        assert caught.value.field == "currency"
        assert caught.value.code == "unknown_currency"


def test_429_waits_and_retries() -> None:
    seen: list[httpx.Request] = []
    limited = httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {}})
    with client(failing_then([limited], httpx.Response(200, json={"items": []}), seen)) as pd:
        assert pd.adapters() == []
    assert len(seen) == 2


def test_the_async_client_reuses_the_key_too() -> None:
    seen: list[httpx.Request] = []
    handler = failing_then(
        [httpx.ConnectError("down"), err(502, "bad_gateway")],
        httpx.Response(201, json=ORDER_JSON),
        seen,
    )

    async def main() -> None:
        async with AsyncClient(
            "http://api.test", "pd_key", backoff=0.0, max_backoff=0.0,
            transport=httpx.MockTransport(handler),
        ) as pd:  # fmt: skip
            created = await pd.create_order(
                user_id="42", money=Money(1999, "USD"), adapter="sandbox", idempotency_key="k-1"
            )
            assert created.idempotency_key == "k-1"

    asyncio.run(main())
    assert [r.headers["idempotency-key"] for r in seen] == ["k-1", "k-1", "k-1"]


def test_money_must_be_given_one_way() -> None:
    with client(lambda r: httpx.Response(201, json=ORDER_JSON)) as pd, pytest.raises(TypeError):
        pd.create_order(user_id="42", adapter="sandbox", amount=5)


REFUND_JSON: dict[str, Any] = {
    "id": "0d7c2a9e-1f3b-4c5d-8e6f-7a8b9c0d1e2f",
    "order_id": ORDER_JSON["id"],
    "amount": 1250,
    "currency": "USD",
    "status": "requested",
    "origin": "site",
    "reason": "returned",
    "requested_by": "site:shop",
    "psp_refund_id": None,
    "last_error": None,
    "created_at": "2030-01-02T00:00:00Z",
    "updated_at": "2030-01-02T00:00:00Z",
    "settled_at": None,
}


def test_a_refund_whose_answer_was_lost_is_retried_with_the_same_key() -> None:
    # Given an API that times out once, then makes the refund,
    seen: list[httpx.Request] = []
    handler = failing_then([httpx.ReadTimeout("lost")], httpx.Response(201, json=REFUND_JSON), seen)
    with client(handler) as pd:
        # when the site refunds 12.50 USD of an order,
        made = pd.create_refund(ORDER_JSON["id"], reason="returned", money=Money(1250, "USD"))
    # then both tries carried one key and the amount in major units, as the API takes it.
    assert [r.headers["idempotency-key"] for r in seen] == [made.idempotency_key] * 2
    assert seen[0].url.path == f"/v1/orders/{ORDER_JSON['id']}/refunds"
    assert json.loads(seen[0].content) == {"amount": "12.50", "reason": "returned"}
    assert made.created is True
    assert made.refund.money == Money(1250, "USD")
    assert made.refund.status is TransferStatus.REQUESTED
    assert str(made.refund.order_id) == ORDER_JSON["id"]


def test_a_refund_of_everything_left_sends_no_amount_and_a_replay_says_so() -> None:
    seen: list[httpx.Request] = []
    with client(failing_then([], httpx.Response(200, json=REFUND_JSON), seen)) as pd:
        made = pd.create_refund(ORDER_JSON["id"], reason="all", idempotency_key="r-1")
        pd.create_refund(ORDER_JSON["id"], reason="all", money=Money(5, "JPY"))
    assert json.loads(seen[0].content) == {"reason": "all"}
    assert seen[0].headers["idempotency-key"] == "r-1"
    assert json.loads(seen[1].content)["amount"] == "5"  # JPY has no decimals
    assert seen[1].headers["idempotency-key"] != "r-1"
    assert made.created is False


def test_a_refused_refund_is_a_conflict_with_its_reason() -> None:
    handler = failing_then([], err(409, "refund_refused"), [])
    with client(handler) as pd, pytest.raises(Conflict) as caught:
        pd.create_refund(ORDER_JSON["id"], reason="r")
    assert caught.value.code == "refund_refused"
    assert not isinstance(caught.value, KeyConflict)


def test_refunds_are_listed_and_an_order_shows_its_refund_status() -> None:
    refunded = ORDER_JSON | {"status": "paid", "refunded_amount": 1250,
                             "refund_status": "partially_refunded"}  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/refunds"):
            return httpx.Response(200, json={"items": [REFUND_JSON]})
        return httpx.Response(200, json=refunded)

    with client(handler) as pd:
        assert [r.money for r in pd.list_refunds(ORDER_JSON["id"])] == [Money(1250, "USD")]
        order = pd.get_order(ORDER_JSON["id"])
    assert (order.refunded_amount, order.refund_status) == (1250, "partially_refunded")


def test_the_async_client_refunds_with_one_key_too() -> None:
    seen: list[httpx.Request] = []
    create = failing_then([httpx.ConnectError("down")], httpx.Response(201, json=REFUND_JSON), seen)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"items": [REFUND_JSON]})
        return create(request)

    async def main() -> None:
        async with AsyncClient(
            "http://api.test", "pd_key", backoff=0.0, max_backoff=0.0,
            transport=httpx.MockTransport(handler),
        ) as pd:  # fmt: skip
            made = await pd.create_refund(
                ORDER_JSON["id"], reason="r", money=Money(1250, "USD"), idempotency_key="k-9"
            )
            assert made.refund.money == Money(1250, "USD")
            listed = await pd.list_refunds(ORDER_JSON["id"])
            assert [r.id for r in listed] == [made.refund.id]

    asyncio.run(main())
    assert [r.headers["idempotency-key"] for r in seen] == ["k-9", "k-9"]

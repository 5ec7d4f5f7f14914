"""Pieces of the API that need no database: the body limit, the page, keys, error mapping."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from dispatcher.api.errors import from_domain
from dispatcher.api.keys import split_key
from dispatcher.api.middleware import BodyLimit
from dispatcher.api.pages import status_page
from dispatcher.api.schemas import OrderOut, PayStatus
from orders import errors
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus


def run_limit(body_chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Send a request through BodyLimit around an app that echoes the body size it saw."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen["body"] = message["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(body_chunks) - 1}
        for i, chunk in enumerate(body_chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": headers}
    asyncio.run(BodyLimit(app, limit=10)(scope, receive, send))
    seen["status"] = sent[0]["status"]
    return seen


def test_a_streamed_body_over_the_limit_never_reaches_the_app() -> None:
    result = run_limit([b"12345", b"678901"], [])
    assert result == {"status": 413}


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    assert run_limit([b""], [(b"content-length", b"11")]) == {"status": 413}


def test_a_body_within_the_limit_arrives_whole() -> None:
    assert run_limit([b"12345", b"67890"], []) == {"status": 200, "body": b"1234567890"}


def test_a_declared_length_within_the_limit_goes_on_unread() -> None:
    # Given a request that declares its length once, within the limit,
    # when it passes the limit, then its route reads the server's own messages: nothing was
    # read ahead (the server frames the body by that length).
    declared = [(b"content-length", b"10")]
    assert run_limit([b"12345", b"67890"], declared) == {"status": 200, "body": b"12345"}


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [(b"content-length", b"5"), (b"content-length", b"5")],
        [(b"content-length", b"5x")],
    ],
    ids=["with-transfer-encoding", "declared-twice", "unreadable"],
)
def test_a_length_the_server_may_not_frame_by_is_counted_as_it_streams(
    headers: list[tuple[bytes, bytes]],
) -> None:
    # Given a declared length the server may not frame the body by,
    # when more than the limit streams in, then the app never runs (413);
    assert run_limit([b"12345", b"678901"], headers) == {"status": 413}
    # and a body within it arrives whole.
    assert run_limit([b"12", b"345"], headers) == {"status": 200, "body": b"12345"}


def test_the_page_escapes_what_the_site_wrote_and_only_links_http_urls() -> None:
    status = PayStatus(
        state="paid", amount="1.00 USD", description='<script>alert("x")</script>',
        pay_url=None, return_url='https://shop.example/?a="b"', final=True, retry_after_ms=1,
    )  # fmt: skip
    html = status_page("id-1", status, alternatives=[], can_cancel=False, send_now=False)
    assert "<script>alert" not in html
    assert 'href="https://shop.example/?a=&quot;b&quot;"' in html
    assert "<script>" not in html  # a final page needs no script


def test_keys_have_a_public_prefix() -> None:
    assert split_key("pd_0123456789ab_" + "x_y-" * 10) == "0123456789ab"
    assert split_key("pd_short_" + "x" * 40) is None
    assert split_key("garbage") is None


def test_domain_errors_keep_their_stable_codes() -> None:
    cases = [
        (errors.UnknownCurrency("currency", "no"), 422, "unknown_currency"),
        (errors.IdempotencyConflict("again"), 409, "idempotency_conflict"),
        (errors.OrderNotFound("gone"), 404, "order_not_found"),
        (errors.DatabaseUnavailable("down"), 503, "unavailable"),
        (errors.InvalidInput("cursor", "bad"), 422, "invalid_cursor"),
    ]
    for exc, status, code in cases:
        mapped = from_domain(exc)
        assert (mapped.status_code, mapped.code) == (status, code)


def _order(**changes: Any) -> Order:
    at = datetime(2026, 12, 1, 17, 30, 0, 123456, tzinfo=UTC)
    base: dict[str, Any] = {
        "id": UUID("11111111-2222-4333-8444-555555555555"), "number": 7, "site": "shop",
        "site_ref": None, "user_id": "u1", "money": Money(1999, "USD"), "adapter": "sandbox",
        "description": "", "return_url": None, "metadata": {}, "status": OrderStatus.NEW,
        "psp_id": None, "pay_url": None, "attempts": 0, "polls": 0, "next_run_at": at,
        "lease_until": None, "lease_token": None, "expires_at": at, "last_error": None,
        "idempotency_key": None, "created_at": at, "updated_at": at, "paid_at": None,
        "replaces": None, "switch_depth": 0, "errors": 0,
    }  # fmt: skip
    return Order(**(base | changes))


def test_a_created_order_renders_as_the_model_renders_it() -> None:
    # The create renders its answer without building OrderOut: byte for byte the same JSON.
    at = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
    for order in [
        _order(),
        _order(
            site_ref="A-1", description="Gold «pack» \u2028", return_url="https://shop.example/",
            metadata={"cart": [1, 2.5, None, True, "é"], "deep": {"x": {"y": [{}]}}, "n": 2**70},
            status=OrderStatus.PAID, psp_id="inv-1", pay_url="https://psp.example/pay",
            paid_at=at, last_error="timeout", money=Money(500, "JPY"),
        ),
    ]:  # fmt: skip
        expected = OrderOut.of(order, "http://api.example").model_dump_json().encode()
        assert OrderOut.json_of(order, "http://api.example") == expected

"""Pieces of the API that need no database: the body limit, the page, keys, error mapping."""

from __future__ import annotations

import asyncio
from typing import Any

from dispatcher.api.errors import from_domain
from dispatcher.api.keys import split_key
from dispatcher.api.middleware import BodyLimit
from dispatcher.api.pages import status_page
from dispatcher.api.schemas import PayStatus
from orders import errors


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

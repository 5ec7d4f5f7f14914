"""The PSP transport carries the adapter contract: pairs in order, access tokens, one create
only for payment systems without idempotency keys. The wire is an httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import ClassVar
from urllib.parse import parse_qsl

import httpx
import pytest

from adapters.base import (
    Adapter,
    AdapterSettings,
    Capabilities,
    CredentialsRejected,
    Invoice,
    MalformedResponse,
    PspRequest,
    PspResponse,
    Secret,
    SettingSpec,
    StatusReport,
    Token,
)
from adapters.testing import sample_order
from dispatcher import metrics
from dispatcher.worker.transport import PspUnavailable, Transport
from orders.model import Order
from tests.dispatch_support import FAST

POLICY = replace(FAST, retries=2, breaker_failures=1000)


class OAuthPsp(Adapter):
    """A payment system with OAuth2 client-credentials tokens (PayPal's shape)."""

    name: ClassVar[str] = "oauthpsp"
    capabilities: ClassVar[Capabilities] = Capabilities(idempotent_create=False)
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default="https://psp.test"),
    )

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest("POST", f"{settings.api_url}/orders", "create", json={})

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        raise MalformedResponse("not used here")

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest("GET", f"{settings.api_url}/orders/1", "status")

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        raise MalformedResponse("not used here")

    def build_token(self, settings: AdapterSettings) -> PspRequest | None:
        return PspRequest(
            "POST",
            f"{settings.api_url}/oauth2/token",
            "token",
            headers={"Authorization": "Basic Y2xpZW50OnNlY3JldA=="},
            form=[("grant_type", "client_credentials")],
        )

    def parse_token(self, response: PspResponse, settings: AdapterSettings) -> Token:
        if response.status_code == 401:
            raise CredentialsRejected("client id or secret refused")
        body = response.json()
        return Token(Secret(body["access_token"]), timedelta(seconds=body["expires_in"]))


class PlainPsp(OAuthPsp):
    """The same without tokens, and with idempotency keys."""

    name: ClassVar[str] = "plainpsp"
    capabilities: ClassVar[Capabilities] = Capabilities(idempotent_create=True)

    def build_token(self, settings: AdapterSettings) -> PspRequest | None:
        return None


@dataclass
class TokenServer:
    """A token endpoint and an API that accepts only the newest token."""

    lifetime: int = 3600
    issued: int = 0
    revoked: set[str] = field(default_factory=set)
    requests: list[httpx.Request] = field(default_factory=list)
    api_status: int = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/oauth2/token":
            self.issued += 1
            body = {"access_token": f"tok-{self.issued}", "expires_in": self.lifetime}
            return httpx.Response(200, json=body)
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer tok-{self.issued}" or auth.removeprefix("Bearer ") in self.revoked:
            return httpx.Response(401, json={"error": "invalid_token"})
        return httpx.Response(self.api_status, json={"ok": True})

    @property
    def token_calls(self) -> int:
        return sum(r.url.path == "/oauth2/token" for r in self.requests)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def transport_for(
    adapter: Adapter,
    handler: Callable[[httpx.Request], httpx.Response],
    clock: Callable[[], float] | None = None,
) -> Transport:
    settings = AdapterSettings(adapter.name, {"API_URL": "https://psp.test"})
    extra = {} if clock is None else {"clock": clock}
    return Transport(
        adapter, settings, POLICY, http_transport=httpx.MockTransport(handler), **extra
    )


def status_request() -> PspRequest:
    return PspRequest("GET", "https://psp.test/orders/1", "status")


def test_query_and_form_pairs_are_sent_in_order_with_repeated_keys() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    form = [
        ("line_items[0][price_data][unit_amount]", "1000"),
        ("expand[]", "a"),
        ("expand[]", "b"),
    ]
    request = PspRequest(
        "POST",
        "https://psp.test/v1/checkout/sessions",
        "create",
        params=[("expand[]", "x"), ("expand[]", "y")],
        form=form,
    )

    async def go() -> None:
        transport = transport_for(PlainPsp(), handler)
        try:
            await transport.send(request)
        finally:
            await transport.aclose()

    asyncio.run(go())
    (sent,) = seen
    assert sent.url.params.multi_items() == [("expand[]", "x"), ("expand[]", "y")]
    assert parse_qsl(sent.content.decode()) == form
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"


def test_a_token_is_fetched_once_cached_and_put_on_every_request() -> None:
    server = TokenServer()
    before = metrics.PSP_REQUESTS.labels("oauthpsp", "token", "ok")._value.get()

    async def go() -> list[int]:
        transport = transport_for(OAuthPsp(), server)
        try:
            answers = await asyncio.gather(*(transport.send(status_request()) for _ in range(5)))
        finally:
            await transport.aclose()
        return [a.status_code for a in answers]

    assert asyncio.run(go()) == [200] * 5
    assert server.token_calls == 1  # one fetch at a time; the others waited for it
    token_request = next(r for r in server.requests if r.url.path == "/oauth2/token")
    assert token_request.content == b"grant_type=client_credentials"
    assert metrics.PSP_REQUESTS.labels("oauthpsp", "token", "ok")._value.get() == before + 1


def test_a_token_is_refreshed_shortly_before_it_expires() -> None:
    server = TokenServer(lifetime=300)  # a tenth of it (30 s) is less than a minute
    clock = Clock()

    async def go() -> None:
        transport = transport_for(OAuthPsp(), server, clock)
        try:
            await transport.send(status_request())
            clock.now += 300 - 31
            await transport.send(status_request())
            assert server.token_calls == 1
            clock.now += 2  # now within 30 s of its expiry
            await transport.send(status_request())
            assert server.token_calls == 2
        finally:
            await transport.aclose()

    asyncio.run(go())


def test_a_401_refreshes_the_token_once_and_sends_the_request_again() -> None:
    server = TokenServer()

    async def go() -> int:
        transport = transport_for(OAuthPsp(), server)
        try:
            await transport.send(status_request())
            server.revoked.add("tok-1")  # revoked before its time
            return (await transport.send(status_request())).status_code
        finally:
            await transport.aclose()

    assert asyncio.run(go()) == 200
    assert server.token_calls == 2
    api_calls = [
        r.headers["authorization"] for r in server.requests if r.url.path != "/oauth2/token"
    ]
    assert api_calls == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


def test_a_second_401_is_returned_for_the_adapter_to_read() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(401, json={"error": "invalid_token"})

    async def go() -> int:
        transport = transport_for(OAuthPsp(), handler)
        try:
            return (await transport.send(status_request())).status_code
        finally:
            await transport.aclose()

    assert asyncio.run(go()) == 401


def test_a_refused_token_request_raises_credentials_rejected() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_client"})

    async def go() -> None:
        transport = transport_for(OAuthPsp(), handler)
        try:
            await transport.send(status_request())
        finally:
            await transport.aclose()

    with pytest.raises(CredentialsRejected):
        asyncio.run(go())


@pytest.mark.parametrize(("adapter", "sent"), [(OAuthPsp(), 1), (PlainPsp(), 3)])
def test_a_create_without_idempotency_keys_is_never_sent_twice(adapter: Adapter, sent: int) -> None:
    creates: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        creates.append(request)
        return httpx.Response(502, content=b"bad gateway")

    request = adapter.build_create(
        sample_order(), AdapterSettings(adapter.name, {"API_URL": "https://psp.test"})
    )
    assert isinstance(request, PspRequest)

    async def go() -> None:
        transport = transport_for(adapter, handler)
        try:
            await transport.send(request)
        finally:
            await transport.aclose()

    with pytest.raises(PspUnavailable) as caught:
        asyncio.run(go())
    assert caught.value.maybe_sent
    assert len(creates) == sent  # with keys, the retries re-send it (same key)


def test_a_create_that_surely_was_not_sent_is_retried_even_without_keys() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(201, content=json.dumps({"id": "o-1"}).encode())

    request = PspRequest("POST", "https://psp.test/orders", "create", json={})

    async def go() -> int:
        transport = transport_for(OAuthPsp(), handler)
        try:
            return (await transport.send(request)).status_code
        finally:
            await transport.aclose()

    assert asyncio.run(go()) == 201
    assert calls == ["/orders", "/orders"]

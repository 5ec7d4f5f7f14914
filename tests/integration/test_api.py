"""The HTTP API over real PostgreSQL, served by uvicorn on a free port: auth, tenant isolation,
idempotency, pagination, the status page, health, and every error path of bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from adapters import registry
from adapters.sandbox import adapter as sandbox_adapter
from adapters.sandbox.runner import serve_in_thread
from adapters.yookassa import adapter as yookassa_adapter
from dispatcher.api.app import create_app
from dispatcher.api.context import ApiContext
from dispatcher.billing.sites import SyncSiteWebhooks
from dispatcher.billing.wallet import SyncWallets
from dispatcher.runtime import AdapterRuntime
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool
from orders.errors import InvalidInput
from orders.repository import OrderRepository
from tests.dispatch_support import FAST

S = OrderStatus
ORDER = {"user_id": "u1", "amount": 1999, "currency": "USD", "adapter": "sandbox"}


def api_runtimes(sandbox_url: str = "http://127.0.0.1:9") -> dict[str, AdapterRuntime]:
    sandbox = registry.resolve_settings(sandbox_adapter, {"API_URL": sandbox_url}, environ={})
    yookassa = registry.resolve_settings(
        yookassa_adapter, {"SHOP_ID": "123456", "SECRET_KEY": "test_secret_key_123"}, environ={}
    )
    return {
        "sandbox": AdapterRuntime(sandbox_adapter, sandbox, FAST),
        "yookassa": AdapterRuntime(yookassa_adapter, yookassa, FAST),
    }


@dataclass
class Api:
    url: str
    ctx: ApiContext

    @property
    def repo(self) -> OrderRepository:
        return self.ctx.repo

    def site_key(self, site: str) -> dict[str, str]:
        """Authorization headers with a new key of ``site``."""
        _, key = self.ctx.keys.create(site, "test")
        return {"Authorization": f"Bearer {key}"}


@contextmanager
def running_api(
    pool: Pool,
    *,
    runtimes: dict[str, AdapterRuntime] | None = None,
    broker_url: str | None = None,
    body_limit: int = 64 * 1024,
    docs: bool = True,
    middleware: Sequence[type[Any]] = (),
) -> Iterator[Api]:
    """The real app over ``pool``, served by uvicorn in a thread; its status pages link to it.
    ``middleware`` is added to the app, as a deployment would add its own."""
    runtimes = runtimes or api_runtimes()
    with OrderRepository(
        pool, {n: rt.adapter.capabilities.default_expiry for n, rt in runtimes.items()}
    ) as repo:
        ctx = ApiContext(
            repo=repo, runtimes=runtimes, broker_url=broker_url, body_limit=body_limit, docs=docs
        )
        app = create_app(ctx)
        for cls in middleware:
            app.add_middleware(cls)
        with serve_in_thread(app) as url:
            ctx.public_url = url
            yield Api(url, ctx)


@pytest.fixture(scope="module")
def api(pool: Pool, found_services: Any) -> Iterator[Api]:
    with running_api(pool, broker_url=found_services.broker_url) as running:
        yield running


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


@pytest.fixture(params=["cold", "warm"])
def auth(request: pytest.FixtureRequest, api: Api, http: httpx.Client, site: str) -> dict[str, str]:
    """A new key of ``site``: "cold" (first use: checked against the database) or "warm"
    (verified once already: answered from the key cache)."""
    headers = api.site_key(site)
    if request.param == "warm":
        assert http.get("/v1/adapters", headers=headers).status_code == 200
    return headers


def site_orders(api: Api, site: str) -> int:
    return len(api.repo.list_orders(site=site, limit=500).items)


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "field"} <= set(body["error"]), body
    assert body["error"]["message"]
    detail: dict[str, Any] = body["error"]
    return detail


def make_paid(repo: OrderRepository, order_id: UUID) -> None:
    repo.transition(order_id, S.NEW, S.SUBMITTING, actor="test")
    repo.transition(
        order_id, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test",
        psp_id=f"inv-{order_id}", pay_url="https://psp.example/pay/1",
    )  # fmt: skip
    repo.transition(order_id, S.AWAITING_PAYMENT, S.PAID, actor="test")


# -- create and idempotency -------------------------------------------------------------------


def test_create_is_201_then_200_for_a_replay_and_409_for_the_same_key_with_another_body(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    headers = auth | {"Idempotency-Key": "key-1"}
    first = http.post("/v1/orders", json=ORDER, headers=headers)
    assert first.status_code == 201, first.text
    order = first.json()
    assert order["status"] == "new"
    assert order["amount"] == 1999
    assert order["status_url"] == f"{api.url}/pay/{order['id']}"
    assert first.headers["location"] == f"/v1/orders/{order['id']}"

    replay = http.post("/v1/orders", json=ORDER, headers=headers)
    assert replay.status_code == 200
    assert replay.json()["id"] == order["id"]

    other = http.post("/v1/orders", json=ORDER | {"amount": 2000}, headers=headers)
    assert other.status_code == 409
    assert error(other)["code"] == "idempotency_conflict"
    assert site_orders(api, site) == 1


def test_site_ref_makes_a_create_idempotent_without_a_key(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    body = ORDER | {"site_ref": "A-1001"}
    assert http.post("/v1/orders", json=body, headers=auth).status_code == 201
    assert http.post("/v1/orders", json=body, headers=auth).status_code == 200
    conflict = http.post("/v1/orders", json=body | {"user_id": "u2"}, headers=auth)
    assert conflict.status_code == 409
    assert error(conflict)["code"] == "idempotency_conflict"
    assert site_orders(api, site) == 1


def test_without_return_url_the_status_page_is_the_return_url_which_yookassa_needs(
    api: Api, http: httpx.Client, auth: dict[str, str]
) -> None:
    body = ORDER | {"adapter": "yookassa", "currency": "RUB"}
    created = http.post("/v1/orders", json=body, headers=auth)
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["return_url"] == f"{api.url}/pay/{order['id']}"
    # The site's own return_url is kept, and a replay still matches the first request.
    given = body | {"return_url": "https://shop.example/back", "site_ref": "R-1"}
    first = http.post("/v1/orders", json=given, headers=auth)
    assert first.json()["return_url"] == "https://shop.example/back"
    again = http.post("/v1/orders", json=body | {"site_ref": "R-2"}, headers=auth)
    replay = http.post("/v1/orders", json=body | {"site_ref": "R-2"}, headers=auth)
    assert (again.status_code, replay.status_code) == (201, 200)
    assert replay.json()["return_url"] == f"{api.url}/pay/{again.json()['id']}"


# -- auth and tenants -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer pd_000000000000_notarealkeynotarealkeynotarealkey000",
        "Bearer garbage",
    ],
)
def test_missing_or_wrong_keys_are_401(http: httpx.Client, site: str, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in [("POST", "/v1/orders"), ("GET", "/v1/orders"), ("GET", "/v1/adapters")]:
        response = http.request(method, path, json=ORDER, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert error(response)["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_revoked_key_stops_working(api: Api, http: httpx.Client, site: str) -> None:
    record, key = api.ctx.keys.create(site)
    headers = {"Authorization": f"Bearer {key}"}
    assert http.get("/v1/orders", headers=headers).status_code == 200
    api.ctx.keys.revoke(record.prefix)
    assert http.get("/v1/orders", headers=headers).status_code == 401
    stored = [k for k in api.ctx.keys.list(site) if k.prefix == record.prefix]
    assert stored[0].revoked_at is not None
    # Only the hash is stored.
    with api.ctx.pool.connection() as conn:
        row = conn.execute("SELECT * FROM api_keys WHERE prefix = %s", (record.prefix,)).fetchone()
    assert row is not None
    assert key not in json.dumps(row, default=str)


@pytest.mark.parametrize("name", [" shop", "shop ", "sh\nop", "sh\x00op", "", "s" * 65])
def test_a_key_is_made_only_for_a_site_whose_webhook_can_be_set(api: Api, name: str) -> None:
    """`paydispatch sites` refuses these names; a key for one would make orders whose events
    could never be delivered."""
    with pytest.raises(InvalidInput):
        api.ctx.keys.create(name)
    with SyncSiteWebhooks(api.ctx.pool) as sites, pytest.raises(InvalidInput):
        sites.set(name, "https://shop.example/hook")


def test_another_sites_order_is_404_exactly_like_a_missing_one(
    api: Api, http: httpx.Client, auth: dict[str, str]
) -> None:
    order_id = http.post("/v1/orders", json=ORDER, headers=auth).json()["id"]
    other = api.site_key(f"other-{uuid4().hex[:8]}")
    missing = str(uuid4())
    for path in (f"/v1/orders/{order_id}", f"/v1/orders/{missing}"):
        got = http.get(path, headers=other)
        cancelled = http.delete(path, headers=other)
        assert (got.status_code, cancelled.status_code) == (404, 404)
        assert got.json() == http.get(f"/v1/orders/{missing}", headers=other).json()
    assert http.get("/v1/orders", headers=other).json()["items"] == []
    assert http.get(f"/v1/orders/{order_id}", headers=auth).json()["status"] == "new"


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"amount": 19.99}, "invalid_field", "amount"),
        ({"amount": float(2**53 + 2)}, "invalid_field", "amount"),  # no longer exact as a float
        ({"amount": "1999"}, "invalid_field", "amount"),
        ({"amount": True}, "invalid_field", "amount"),
        ({"amount": 0}, "invalid_field", "amount"),
        ({"amount": -5}, "invalid_field", "amount"),
        ({"amount": 2**63}, "invalid_field", "amount"),
        ({"currency": "XYZ"}, "unknown_currency", "currency"),
        ({"currency": "usd"}, "invalid_field", "currency"),
        ({"currency": "CHF"}, "unsupported_currency", "currency"),
        ({"adapter": "nowhere"}, "unknown_adapter", "adapter"),
        ({"user_id": ""}, "invalid_field", "user_id"),
        ({"user_id": 42}, "invalid_field", "user_id"),
        ({"user_id": "a\x00b"}, "invalid_field", "user_id"),
        ({"description": "x" * 1001}, "invalid_field", "description"),
        ({"return_url": "javascript:alert(1)"}, "invalid_field", "return_url"),
        ({"metadata": []}, "invalid_field", "metadata"),
        ({"metadata": {"k": "v" * 17_000}}, "field_too_long", "metadata"),
        ({"metadata": {"k": "\x00"}}, "invalid_field", "metadata"),
        ({"expires_in": 1}, "invalid_field", "expires_in"),
        ({"expires_in": 60.5}, "invalid_field", "expires_in"),
        ({"site_ref": ""}, "invalid_field", "site_ref"),
        ({"colour": "red"}, "unknown_field", "colour"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_writes_nothing(  # noqa: PLR0917
    api: Api,
    http: httpx.Client,
    auth: dict[str, str],
    site: str,
    change: dict[str, Any],
    code: str,
    field: str,
) -> None:
    response = http.post("/v1/orders", json=ORDER | change, headers=auth)
    assert response.status_code == 422, response.text
    detail = error(response)
    assert (detail["code"], detail["field"]) == (code, field)
    assert site_orders(api, site) == 0


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "malformed_json"),
        (b'{"amount": 1', "application/json", 400, "malformed_json"),
        (b"[1, 2]", "application/json", 422, "invalid_field"),
        (b'"text"', "application/json", 422, "invalid_field"),
        (b"", "application/json", 422, "missing_body"),
        (json.dumps(ORDER).encode(), "text/plain", 422, "invalid_field"),
        (b'{"user_id": "\\ud800", "amount": 1, "currency": "USD", "adapter": "sandbox"}',
         "application/json", 422, "invalid_field"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400, "bad_request"),
    ],
)  # fmt: skip
def test_unreadable_bodies_are_4xx_with_a_code(  # noqa: PLR0917
    api: Api,
    http: httpx.Client,
    auth: dict[str, str],
    site: str,
    content: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    response = http.post(
        "/v1/orders", content=content, headers=auth | {"Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert error(response)["code"] == code
    assert site_orders(api, site) == 0


def test_a_body_over_the_limit_is_413_before_it_is_read_whole(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    big = json.dumps(ORDER | {"description": "x" * 70_000}).encode()
    response = http.post(
        "/v1/orders", content=big, headers=auth | {"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert error(response)["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as it streams
        for _ in range(100):
            yield b" " * 1024

    streamed = http.post(
        "/v1/orders", content=chunks(), headers=auth | {"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert site_orders(api, site) == 0


def test_a_create_body_of_undeclared_length_within_the_limit_makes_the_order(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    # Given a create whose body streams in without a Content-Length (read by the body limit
    # first, then handed to the create), and one declaring its length (read by the create),
    body = json.dumps(ORDER).encode()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    headers = auth | {"Content-Type": "application/json"}
    streamed = http.post("/v1/orders", content=chunks(), headers=headers)
    declared = http.post("/v1/orders", content=body, headers=headers)
    # when they are sent, then each makes its order.
    assert (streamed.status_code, declared.status_code) == (201, 201), streamed.text
    assert streamed.json()["amount"] == declared.json()["amount"] == ORDER["amount"]
    assert streamed.headers["location"] == f"/v1/orders/{streamed.json()['id']}"
    assert site_orders(api, site) == 2


def test_bad_idempotency_keys_are_422(
    http: httpx.Client, auth: dict[str, str], api: Api, site: str
) -> None:
    for key in ("", "k" * 256):
        response = http.post("/v1/orders", json=ORDER, headers=auth | {"Idempotency-Key": key})
        assert response.status_code == 422, key
        assert error(response)["field"] == "Idempotency-Key"
    assert site_orders(api, site) == 0


def test_path_ids_that_are_not_uuids_are_422_and_unknown_ones_404(
    http: httpx.Client, auth: dict[str, str]
) -> None:
    for bad in ("42", "not-a-uuid", "%00", "'; DROP TABLE orders; --"):
        response = http.get(f"/v1/orders/{bad}", headers=auth)
        assert response.status_code in (404, 422), bad
        assert error(response)["code"] in {"invalid_field", "not_found"}
    unknown = http.get(f"/v1/orders/{uuid4()}", headers=auth)
    assert unknown.status_code == 404
    assert error(unknown)["code"] == "order_not_found"
    assert http.get("/pay/not-a-uuid").status_code == 404
    assert http.get(f"/pay/{uuid4()}").status_code == 404
    assert http.get("/pay/42/status").status_code == 422


def test_unknown_routes_and_methods_answer_json(http: httpx.Client) -> None:
    assert error(http.get("/v1/nothing"))["code"] == "not_found"
    response = http.put("/v1/orders")
    assert response.status_code == 405
    assert error(response)["code"] == "method_not_allowed"


# -- read, list, cancel -----------------------------------------------------------------------


def test_an_order_comes_with_its_events(http: httpx.Client, auth: dict[str, str]) -> None:
    order_id = http.post("/v1/orders", json=ORDER, headers=auth).json()["id"]
    http.delete(f"/v1/orders/{order_id}", headers=auth)
    order = http.get(f"/v1/orders/{order_id}", headers=auth).json()
    assert order["status"] == "cancelled"
    assert [(e["from_status"], e["to_status"]) for e in order["events"]] == [
        (None, "new"),
        ("new", "cancelled"),
    ]


def test_list_pages_with_a_cursor_and_filters(http: httpx.Client, auth: dict[str, str]) -> None:
    made = [
        http.post("/v1/orders", json=ORDER | {"user_id": f"u{i % 2}"}, headers=auth).json()["id"]
        for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = http.get("/v1/orders", params=params, headers=auth).json()
        seen += [o["id"] for o in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(made))
    by_user = http.get("/v1/orders", params={"user_id": "u1"}, headers=auth).json()["items"]
    assert {o["user_id"] for o in by_user} == {"u1"}
    assert len(by_user) == 2
    http.delete(f"/v1/orders/{made[0]}", headers=auth)
    cancelled = http.get("/v1/orders", params={"status": "cancelled"}, headers=auth).json()
    assert [o["id"] for o in cancelled["items"]] == [made[0]]
    for params in ({"cursor": "garbage"}, {"limit": 0}, {"limit": 501}, {"status": "lost"}):
        response = http.get("/v1/orders", params=params, headers=auth)
        assert response.status_code == 422, params
        assert error(response)["field"] in {"cursor", "limit", "status"}


def test_cancel_twice_is_fine_but_a_paid_order_is_409(
    api: Api, http: httpx.Client, auth: dict[str, str]
) -> None:
    first = http.post("/v1/orders", json=ORDER, headers=auth).json()["id"]
    assert http.delete(f"/v1/orders/{first}", headers=auth).json()["status"] == "cancelled"
    assert http.delete(f"/v1/orders/{first}", headers=auth).status_code == 200
    paid = http.post("/v1/orders", json=ORDER, headers=auth).json()["id"]
    make_paid(api.repo, UUID(paid))
    refused = http.delete(f"/v1/orders/{paid}", headers=auth)
    assert refused.status_code == 409
    assert error(refused)["code"] == "not_cancellable"
    assert api.repo.get(UUID(paid)).status is S.PAID


def test_adapters_lists_the_enabled_payment_systems(
    http: httpx.Client, auth: dict[str, str]
) -> None:
    items = {a["name"]: a for a in http.get("/v1/adapters", headers=auth).json()["items"]}
    assert set(items) == {"sandbox", "yookassa"}
    assert "USD" in items["sandbox"]["currencies"]
    assert items["sandbox"]["signed_notifications"] is True
    assert items["yookassa"]["signed_notifications"] is False


# -- the buyer's pages -------------------------------------------------------------------------


def test_the_status_json_shows_only_what_the_page_shows(
    api: Api, http: httpx.Client, auth: dict[str, str]
) -> None:
    body = ORDER | {
        "description": "Top-up",
        "metadata": {"secret": "site-internal"},
        "site_ref": "S-9",
        "return_url": "https://shop.example/done",
    }
    order = http.post("/v1/orders", json=body, headers=auth).json()
    status = http.get(f"/pay/{order['id']}/status")
    assert status.status_code == 200
    data = status.json()
    assert set(data) == {
        "state", "amount", "description", "pay_url", "return_url", "final", "retry_after_ms"
    }  # fmt: skip
    assert data["state"] == "preparing"
    assert data["amount"] == "19.99 USD"
    assert "site-internal" not in status.text
    assert "S-9" not in status.text
    assert "u1" not in status.text
    assert status.headers["referrer-policy"] == "no-referrer"
    assert status.headers["cache-control"] == "no-store"


def test_the_status_page_waits_sends_to_pay_and_shows_the_result(
    api: Api, http: httpx.Client, auth: dict[str, str]
) -> None:
    body = ORDER | {"return_url": "https://shop.example/done", "description": "Gold <b>pack</b>"}
    order_id = http.post("/v1/orders", json=body, headers=auth).json()["id"]
    waiting = http.get(f"/pay/{order_id}")
    assert waiting.status_code == 200
    assert "text/html" in waiting.headers["content-type"]
    assert 'data-state="preparing"' in waiting.text
    assert f'http-equiv=refresh content="3;url=/pay/{order_id}?wait=1"' in waiting.text
    assert "Gold &lt;b&gt;pack&lt;/b&gt;" in waiting.text
    assert "id=cancel" in waiting.text

    oid = UUID(order_id)
    api.repo.transition(oid, S.NEW, S.SUBMITTING, actor="test")
    api.repo.transition(
        oid, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=f"p-{oid}",
        pay_url="https://psp.example/pay/1",
    )  # fmt: skip
    ready = http.get(f"/pay/{order_id}")
    assert 'id=pay-link href="https://psp.example/pay/1"' in ready.text
    # Without JavaScript, a page reached by waiting goes straight on to pay.
    after_wait = http.get(f"/pay/{order_id}", params={"wait": 1})
    assert 'content="0;url=https://psp.example/pay/1"' in after_wait.text
    assert http.get(f"/pay/{order_id}/status").json()["pay_url"] == "https://psp.example/pay/1"

    api.repo.transition(oid, S.AWAITING_PAYMENT, S.PAID, actor="test")
    paid = http.get(f"/pay/{order_id}")
    assert 'data-state="paid"' in paid.text
    assert 'id=return-link href="https://shop.example/done"' in paid.text
    assert "http-equiv=refresh" not in paid.text
    assert "id=cancel" not in paid.text
    assert http.get(f"/pay/{order_id}/status").json()["final"] is True


def test_the_buyer_can_cancel_or_choose_another_payment_system(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    body = ORDER | {"currency": "EUR", "metadata": {"cart": 7}}
    first = http.post("/v1/orders", json=body, headers=auth).json()["id"]
    page = http.get(f"/pay/{first}").text
    assert 'id="switch-yookassa"' in page  # yookassa takes EUR too

    moved = http.post(f"/pay/{first}/switch", data={"adapter": "yookassa"})
    assert moved.status_code == 303
    second = moved.headers["location"].removeprefix("/pay/")
    assert second != first
    again = http.post(f"/pay/{first}/switch", data={"adapter": "yookassa"})
    assert again.headers["location"] == moved.headers["location"]  # a double click
    old, new = api.repo.get(UUID(first)), api.repo.get(UUID(second))
    assert old.status is S.CANCELLED
    assert (new.adapter, new.site, new.user_id, new.money) == ("yookassa", site, "u1", old.money)
    assert new.metadata == {"cart": 7, "replaces": first}
    assert new.return_url == f"{api.url}/pay/{second}"

    cancelled = http.post(f"/pay/{second}/cancel")
    assert cancelled.status_code == 303
    assert api.repo.get(UUID(second)).status is S.CANCELLED
    assert 'data-state="cancelled"' in http.get(f"/pay/{second}").text
    # Nothing to switch to: refused quietly, no order made.
    http.post(f"/pay/{second}/switch", data={"adapter": "nowhere"})
    assert site_orders(api, site) == 2


def test_viewing_the_status_page_pulls_the_next_poll_forward_debounced(
    api: Api, http: httpx.Client, auth: dict[str, str]
) -> None:
    oid = UUID(http.post("/v1/orders", json=ORDER, headers=auth).json()["id"])
    api.repo.transition(oid, S.NEW, S.SUBMITTING, actor="test")
    later = datetime.now(UTC) + timedelta(minutes=5)
    api.repo.transition(
        oid, S.SUBMITTING, S.AWAITING_PAYMENT, actor="test", psp_id=f"p-{oid}",
        pay_url="https://psp.example/pay/2", next_run_at=later,
    )  # fmt: skip
    with api.ctx.pool.connection() as conn:  # as if the dispatcher last looked a while ago
        conn.execute(
            "UPDATE orders SET updated_at = now() - interval '1 minute' WHERE id = %s", (oid,)
        )
    http.get(f"/pay/{oid}/status")
    pulled = api.repo.get(oid).next_run_at
    assert pulled is not None
    assert pulled <= datetime.now(UTC)
    # Looking again at once changes nothing: the order is due already, and views are debounced.
    with api.ctx.pool.connection() as conn:
        conn.execute("UPDATE orders SET next_run_at = %s WHERE id = %s", (later, oid))
    http.get(f"/pay/{oid}")
    assert api.repo.get(oid).next_run_at == later


# -- ops ---------------------------------------------------------------------------------------


def test_health_readiness_and_metrics(api: Api, http: httpx.Client, pool: Pool) -> None:
    assert http.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert "paydispatch_orders_created_total" in metrics.text
    with running_api(pool, broker_url="redis://127.0.0.1:9/0") as broken:
        response = httpx.get(f"{broken.url}/readyz", timeout=10)
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["broker"].startswith("error")


def test_orders_created_through_the_library_and_the_api_look_the_same(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    made = api.repo.create(
        NewOrder(site=site, user_id="u9", money=Money(500, "EUR"), adapter="sandbox")
    ).order
    listed = http.get("/v1/orders", headers=auth).json()["items"]
    assert [o["id"] for o in listed] == [str(made.id)]
    assert listed[0]["return_url"] is None


# -- wallets -----------------------------------------------------------------------------------


def test_wallet_balances_history_and_debits(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    # Given a user whose paid order credited 20.00 USD,
    order_id = UUID(
        http.post("/v1/orders", json=ORDER | {"amount": 2000}, headers=auth).json()["id"]
    )
    make_paid(api.repo, order_id)
    with SyncWallets(api.ctx.pool) as wallets:
        wallets.credit(
            site, "u1", Money(2000, "USD"), kind="topup", key=None, description="top-up",
            order_id=order_id,
        )  # fmt: skip
    wallet = http.get("/v1/wallets/u1", headers=auth).json()
    assert [(b["currency"], b["amount"], b["formatted"]) for b in wallet["balances"]] == [
        ("USD", 2000, "20.00 USD")
    ]
    # a debit is 201, its replay 200, a reused key with another amount 409,
    debit = {"amount": 1500, "currency": "USD", "description": "a hat"}
    key = auth | {"Idempotency-Key": "hat-1"}
    first = http.post("/v1/wallets/u1/debit", json=debit, headers=key)
    assert first.status_code == 201, first.text
    assert (first.json()["amount"], first.json()["balance_after"]) == (-1500, 500)
    assert http.post("/v1/wallets/u1/debit", json=debit, headers=key).status_code == 200
    reused = http.post("/v1/wallets/u1/debit", json=debit | {"amount": 1}, headers=key)
    assert (reused.status_code, error(reused)["code"]) == (409, "idempotency_conflict")
    # overdrawing is refused, and so are unknown wallets, floats and missing keys,
    more = http.post("/v1/wallets/u1/debit", json=debit, headers=auth | {"Idempotency-Key": "h2"})
    assert (more.status_code, error(more)["code"]) == (409, "insufficient_funds")
    euros = http.post(
        "/v1/wallets/u1/debit", json=debit | {"currency": "EUR"},
        headers=auth | {"Idempotency-Key": "h3"},
    )  # fmt: skip
    assert (euros.status_code, error(euros)["code"]) == (404, "wallet_not_found")
    floats = http.post(
        "/v1/wallets/u1/debit",
        json=debit | {"amount": 1.5},
        headers=auth | {"Idempotency-Key": "h4"},
    )
    assert (floats.status_code, error(floats)["field"]) == (422, "amount")
    no_key = http.post("/v1/wallets/u1/debit", json=debit, headers=auth)
    assert (no_key.status_code, error(no_key)["field"]) == (422, "Idempotency-Key")
    # and the history shows both entries, newest first, a page at a time.
    page = http.get("/v1/wallets/u1/entries", params={"limit": 1}, headers=auth).json()
    assert [e["kind"] for e in page["items"]] == ["debit"]
    rest = http.get(
        "/v1/wallets/u1/entries", params={"cursor": page["next_cursor"]}, headers=auth
    ).json()
    assert [(e["kind"], e["order_id"]) for e in rest["items"]] == [("topup", str(order_id))]
    # Another site sees nothing of it.
    other = api.site_key(f"other-{uuid4().hex[:8]}")
    assert http.get("/v1/wallets/u1", headers=other).json()["balances"] == []
    assert http.get("/v1/wallets/u1/entries", headers=other).json()["items"] == []

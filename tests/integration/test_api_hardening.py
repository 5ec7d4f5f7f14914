"""Issue #12, the HTTP API's items: what an attacker, a careless operator and a late buyer could
do to the API, each pinned by a test that failed on the code before the fix.

Item 1: switching payment systems on the status page; item 3: unauthenticated input that raised
server errors; item 7: control characters in stored text; item 8: headers and /docs; item 9:
the OpenAPI document against what the API does (schemathesis runs in test_api_schema.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest

from adapters.sandbox.protocol import DEFAULT_WEBHOOK_SECRET, signature_header
from dispatcher import config
from orders import Money, NewOrder, OrderStatus
from orders.db import Pool
from orders.errors import InvalidInput
from orders.model import MAX_SWITCH_DEPTH, Order
from tests.integration.test_api import ORDER, Api, api_runtimes, error, running_api, site_orders

S = OrderStatus
DEEP = b"[" * 5000 + b"]" * 5000


@pytest.fixture(scope="module")
def api(pool: Pool, found_services: Any) -> Iterator[Api]:
    # YooKassa's sender check off: these tests send its notifications from loopback, as an
    # attacker inside its allowed networks could.
    runtimes = api_runtimes()
    yk = runtimes["yookassa"]
    values = dict(yk.settings.values) | {"NOTIFY_IP_CHECK": "false"}
    runtimes["yookassa"] = replace(yk, settings=replace(yk.settings, values=values))
    with running_api(pool, runtimes=runtimes, broker_url=found_services.broker_url) as running:
        yield running


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


@pytest.fixture
def auth(api: Api, site: str) -> dict[str, str]:
    return api.site_key(site)


def signed(body: bytes) -> dict[str, str]:
    stamp = int(datetime.now(UTC).timestamp())
    return {"Sandbox-Signature": signature_header(DEFAULT_WEBHOOK_SECRET, stamp, body)}


def assert_client_error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (400, 422), (response.status_code, response.text)
    return error(response)


# -- item 1: switching to another payment system ----------------------------------------------

EUR = ORDER | {"currency": "EUR"}  # both payment systems take EUR


def _switch(http: httpx.Client, order_id: str, adapter: str) -> str:
    """Press "Pay with <adapter> instead"; the order id of the page it leads to."""
    response = http.post(f"/pay/{order_id}/switch", data={"adapter": adapter})
    assert response.status_code == 303, response.text
    return str(response.headers["location"].removeprefix("/pay/"))


@pytest.mark.parametrize("by", ["site", "buyer"])
def test_issue12_item1_cancelled_order_cannot_be_switched(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str, by: str
) -> None:
    # Given an order its site (or the buyer) cancelled,
    order_id = http.post("/v1/orders", json=EUR, headers=auth).json()["id"]
    if by == "site":
        assert http.delete(f"/v1/orders/{order_id}", headers=auth).status_code == 200
    else:
        assert http.post(f"/pay/{order_id}/cancel").status_code == 303
    # when someone posts the switch form for it,
    landed = _switch(http, order_id, "yookassa")
    # then it stays cancelled and nothing new is payable.
    assert landed == order_id
    assert api.repo.get(UUID(order_id)).status is S.CANCELLED
    assert site_orders(api, site) == 1
    assert 'data-state="cancelled"' in http.get(f"/pay/{order_id}").text


def test_issue12_item1_an_order_is_replaced_once_and_a_replay_returns_the_replacement(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    order_id = http.post("/v1/orders", json=EUR, headers=auth).json()["id"]
    # Given many switches of one order at once, to either payment system,
    with ThreadPoolExecutor(8) as pool:
        landed = set(pool.map(lambda n: _switch(http, order_id, "yookassa"), range(8)))
    # then one replacement was made, every answer leads to it,
    assert len(landed) == 1
    (replacement,) = landed
    assert replacement != order_id
    assert site_orders(api, site) == 2
    made = api.repo.get(UUID(replacement))
    assert (made.replaces, made.switch_depth, made.adapter) == (UUID(order_id), 1, "yookassa")
    # and a later replay (even naming another system) goes to it too, making nothing new.
    assert _switch(http, order_id, "sandbox") == replacement
    assert site_orders(api, site) == 2
    events = api.repo.events(UUID(order_id))
    assert [(e.from_status, e.to_status) for e in events] == [(None, S.NEW), (S.NEW, S.CANCELLED)]
    assert events[-1].detail["replaced_by"] == replacement


def test_issue12_item1_a_chain_of_switches_is_bounded(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    current = http.post("/v1/orders", json=EUR, headers=auth).json()["id"]
    systems = ["yookassa", "sandbox"]
    for depth in range(1, MAX_SWITCH_DEPTH + 1):
        following = _switch(http, current, systems[depth % 2 - 1])
        assert following != current
        assert api.repo.get(UUID(following)).switch_depth == depth
        current = following
    # At the end of the chain the page offers no switch, and a forged form makes nothing.
    assert "class=switch" not in http.get(f"/pay/{current}").text
    assert _switch(http, current, "sandbox") == current
    assert _switch(http, current, "yookassa") == current
    assert api.repo.get(UUID(current)).status is S.NEW
    assert site_orders(api, site) == MAX_SWITCH_DEPTH + 1


def test_issue12_item1_an_order_older_than_the_text_rules_is_not_switched_and_not_a_500(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    # Given an order stored before control characters were refused,
    order_id = http.post("/v1/orders", json=EUR, headers=auth).json()["id"]
    with api.ctx.pool.connection() as conn:
        conn.execute("UPDATE orders SET description = 'two\nlines' WHERE id = %s", (order_id,))
    # when the buyer switches it, the page comes back and nothing changes.
    assert _switch(http, order_id, "yookassa") == order_id
    assert api.repo.get(UUID(order_id)).status is S.NEW
    assert site_orders(api, site) == 1


def test_issue12_item1_the_database_allows_one_replacement_per_order(api: Api, site: str) -> None:
    first = api.repo.create(
        NewOrder(site=site, user_id="u1", money=Money(100, "EUR"), adapter="sandbox")
    ).order

    def again(order: Order) -> NewOrder:
        return NewOrder(site=site, user_id="u1", money=order.money, adapter="yookassa",
                        return_url="https://shop.example/")  # fmt: skip

    made = api.repo.switch(first.id, again, new_id=uuid4())
    assert made.created
    with api.ctx.pool.connection() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "UPDATE orders SET replaces = %s, switch_depth = 1 WHERE id = %s",
            (first.id, api.repo.create(
                NewOrder(site=site, user_id="u2", money=Money(1, "EUR"), adapter="sandbox")
            ).order.id),
        )  # fmt: skip


# -- item 3: unauthenticated requests that raised server errors --------------------------------


def _invoice(**fields: Any) -> bytes:
    body = {"event_id": "evt_1", "type": "invoice.updated", "invoice": fields}
    return json.dumps(body).encode()


SANDBOX_BODIES = {
    "deep JSON": DEEP,
    "deep JSON inside the invoice": b'{"invoice": {"id": "x", "deep": ' + DEEP + b"}}",
    "NUL in the invoice id": _invoice(id="inv_\x00"),
    "lone surrogate in the invoice id": _invoice(id="inv_\ud800"),
    "number past bigint": _invoice(number=2**63),
    "number far past bigint": _invoice(number=10**30),
    "negative number past bigint": _invoice(number=-(2**63) - 1),
    "NUL and a number past bigint": _invoice(id="\x00", number=2**64, order_id="\x00"),
}


@pytest.mark.parametrize("body", SANDBOX_BODIES.values(), ids=SANDBOX_BODIES.keys())
@pytest.mark.parametrize("with_signature", [False, True], ids=["unsigned", "signed"])
def test_issue12_item3_unreadable_sandbox_callbacks_are_never_a_server_error(
    http: httpx.Client, body: bytes, with_signature: bool
) -> None:
    """A 4xx with the stable body, signed or not: never a 500, never the acknowledgement."""
    headers = signed(body) if with_signature else {}
    response = http.post("/v1/callbacks/sandbox", content=body, headers=headers)
    assert_client_error(response)


@pytest.mark.parametrize(
    "ref",
    [{"psp_id": "inv_\x00"}, {"psp_id": "inv_\ud800"}, {"number": 2**63}, {"number": -(2**63) - 1}],
)
def test_issue12_item3_a_reference_no_order_can_have_is_invalid_input_not_a_query_error(
    api: Api, ref: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput):
        api.repo.find_by_ref("sandbox", **ref)


YOOKASSA_BODIES = {
    "deep JSON": DEEP,
    "NUL in the payment id": {"id": "2d0b\x00"},
    "lone surrogate in the payment id": {"id": "2d0b\ud800"},
    "lone surrogate in the event": None,
}


@pytest.mark.parametrize("case", YOOKASSA_BODIES, ids=YOOKASSA_BODIES.keys())
def test_issue12_item3_unreadable_yookassa_callbacks_are_4xx_with_the_error_body(
    http: httpx.Client, case: str
) -> None:
    payment = YOOKASSA_BODIES[case]
    if isinstance(payment, bytes):
        content = payment
    else:
        event = "payment.\ud800" if payment is None else "payment.succeeded"
        body = {"type": "notification", "event": event, "object": payment or {"status": "x"}}
        content = json.dumps(body).encode()
    response = http.post("/v1/callbacks/yookassa", content=content)
    assert_client_error(response)


def test_issue12_item3_a_switch_form_with_too_many_fields_is_400_even_for_an_unknown_order(
    api: Api, http: httpx.Client, auth: dict[str, str]
) -> None:
    form = "&".join(f"f{i}=x" for i in range(11))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    order_id = http.post("/v1/orders", json=ORDER, headers=auth).json()["id"]
    for target in (str(uuid4()), order_id):
        response = http.post(f"/pay/{target}/switch", content=form, headers=headers)
        assert response.status_code == 400, response.text
        assert error(response)["code"] == "bad_request"
    assert api.repo.get(UUID(order_id)).status is S.NEW


@pytest.mark.parametrize(
    "cursor", [str(2**63), "9" * 30, "-1", "e1", "ZTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk"]
)
def test_issue12_item3_a_wallet_entries_cursor_past_bigint_is_422(
    http: httpx.Client, auth: dict[str, str], cursor: str
) -> None:
    response = http.get("/v1/wallets/u1/entries", params={"cursor": cursor}, headers=auth)
    assert response.status_code == 422, response.text
    assert (error(response)["code"], error(response)["field"]) == ("invalid_cursor", "cursor")


def test_issue12_item3_a_value_the_database_refuses_deep_in_a_route_is_400_not_500(
    api: Api, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net: should a value PostgreSQL refuses as data (SQLSTATE class 22) get past
    every check into a query, the answer is the client's 400 with the stable body."""

    # Given a lookup that sends an integer past bigint to the database,
    async def overflowing(adapter: str, **ref: Any) -> None:
        async with api.ctx.orders.pool.connection() as conn:
            await conn.execute("SELECT %s::bigint", (2**63,))

    monkeypatch.setattr(api.ctx.orders, "find_by_ref", overflowing)
    # when a notification reaches it,
    response = http.post("/v1/callbacks/sandbox", content=_invoice(id="inv_x"))
    # then the answer is 400 bad_request, not a 500.
    assert response.status_code == 400, response.text
    assert error(response)["code"] == "bad_request"


# -- item 7: control characters in stored text ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("return_url", "https://shop.example/back\r\nSet-Cookie: a=b"),
        ("return_url", "https://shop.example/\tback"),
        ("return_url", "\nhttps://shop.example/back"),
        ("return_url", " https://shop.example/back"),
        ("return_url", "https://shop.example/a b"),
        ("return_url", ""),
        ("description", "Top-up\r\nBcc: everyone@example.com"),
        ("description", "bell\x07"),
        ("description", "C1\x85control"),
        ("user_id", "u1\n"),
        ("site_ref", "A-1\r"),
        ("adapter", "sandbox\x1b"),
    ],
)
def test_issue12_item7_control_characters_in_text_fields_are_refused_and_nothing_stored(  # noqa: PLR0917
    api: Api, http: httpx.Client, auth: dict[str, str], site: str, field: str, value: str
) -> None:
    response = http.post("/v1/orders", json=ORDER | {field: value}, headers=auth)
    assert response.status_code == 422, response.text
    assert (error(response)["code"], error(response)["field"]) == ("invalid_field", field)
    assert site_orders(api, site) == 0


@pytest.mark.parametrize(
    "return_url", ["https://shop.example/back\r\nX: y", "https://shop.example/\tx", "http://[::1"]
)
def test_issue12_item7_the_library_stores_only_the_return_url_it_checked(
    api: Api, site: str, return_url: str
) -> None:
    new = NewOrder(
        site=site, user_id="u1", money=Money(100, "USD"), adapter="sandbox", return_url=return_url
    )
    with pytest.raises(InvalidInput) as refused:
        api.repo.create(new)
    assert refused.value.field == "return_url"
    assert site_orders(api, site) == 0


def test_issue12_item7_a_clean_return_url_and_description_are_stored_exactly_as_sent(
    http: httpx.Client, auth: dict[str, str]
) -> None:
    body = ORDER | {
        "return_url": "https://xn--e1afmkfd.xn--p1ai/back?x=1&y=%20#top",
        "description": "Пополнение «Gold» 🎁",
    }
    created = http.post("/v1/orders", json=body, headers=auth)
    assert created.status_code == 201, created.text
    stored = http.get(f"/v1/orders/{created.json()['id']}", headers=auth).json()
    assert (stored["return_url"], stored["description"]) == (
        body["return_url"],
        body["description"],
    )


# -- item 8: headers, and /docs in production ---------------------------------------------------


def _policy(response: httpx.Response) -> dict[str, list[str]]:
    header = response.headers["content-security-policy"]
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {name: values for name, *values in directives}


def _inline(html: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)


def _hash(source: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()}'"


def test_issue12_item8_the_buyers_pages_run_only_their_own_script_by_hash(
    api: Api, http: httpx.Client, auth: dict[str, str]
) -> None:
    order_id = http.post("/v1/orders", json=ORDER, headers=auth).json()["id"]
    for path, status in ((f"/pay/{order_id}", 200), (f"/pay/{uuid4()}", 404)):
        page = http.get(path)
        assert page.status_code == status
        policy = _policy(page)
        assert policy["default-src"] == ["'none'"]
        assert policy["form-action"] == ["'self'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["connect-src"] == ["'self'"]
        # Every inline script and style of the page is allowed by its hash, and nothing else is.
        for tag, directive in (("script", "script-src"), ("style", "style-src")):
            allowed = policy[directive]
            assert all(value.startswith("'sha256-") for value in allowed), allowed
            assert {_hash(source) for source in _inline(page.text, tag)} <= set(allowed)
    assert _inline(http.get(f"/pay/{order_id}").text, "script"), "the waiting page has its script"
    # The form posts and the JSON the script reads carry the policy too.
    switched = http.post(f"/pay/{order_id}/cancel")
    assert _policy(switched)["form-action"] == ["'self'"]
    assert _policy(http.get(f"/pay/{order_id}/status"))["default-src"] == ["'none'"]


def test_issue12_item8_the_nginx_example_sends_hsts_on_every_https_answer() -> None:
    conf = (Path(__file__).parents[2] / "deploy" / "nginx" / "paydispatch.conf").read_text()
    servers = re.split(r"(?m)^server \{", conf)[1:]
    https = [s for s in servers if re.search(r"listen\s+443\s+ssl", s)]
    assert len(https) == 1
    hsts = re.findall(r"add_header\s+Strict-Transport-Security\s+\"([^\"]+)\"\s+always;", https[0])
    assert len(hsts) == 1, "one HSTS header, sent on error answers too"
    max_age = int(re.search(r"max-age=(\d+)", hsts[0]).group(1))  # type: ignore[union-attr]
    assert max_age >= 365 * 24 * 3600
    # nginx drops a server's add_header in any location that sets one of its own.
    body = https[0].split("location", 1)[1]
    assert "add_header" not in body


def test_issue12_item8_docs_can_be_turned_off_and_the_schema_stays(pool: Pool) -> None:
    assert config.load({"PAYDISPATCH_API_DOCS": "0"}).api_docs is False
    assert config.load({}).api_docs is True
    with pytest.raises(config.ConfigError, match="PAYDISPATCH_API_DOCS"):
        config.load({"PAYDISPATCH_API_DOCS": "maybe"})
    with running_api(pool, docs=False) as quiet:
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            response = httpx.get(f"{quiet.url}{path}", timeout=10)
            assert response.status_code == 404, path
            assert error(response)["code"] == "not_found"
        assert httpx.get(f"{quiet.url}/openapi.json", timeout=10).status_code == 200
    with running_api(pool) as default:
        assert httpx.get(f"{default.url}/docs", timeout=10).status_code == 200

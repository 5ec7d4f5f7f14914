"""Refunds through the HTTP API over real PostgreSQL (issue #14): full and partial refunds, never
past what was paid, idempotent requests, tenant isolation, the stable errors, and the order's
derived ``refund_status``. No worker runs here: a refund's dispatch is simulated by moving it
as the worker would (``settle``, through the transfers repository), so the order's columns are
kept by the database's own trigger, as in production."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar
from uuid import UUID, uuid4

import httpx
import pytest

from adapters import registry
from adapters.base import Capabilities
from adapters.sandbox import Sandbox
from dispatcher import config
from dispatcher.billing.hooks import build_refund_hold
from dispatcher.billing.refunds import RefundHold
from dispatcher.billing.wallet import SyncWallets
from dispatcher.compose import Root
from dispatcher.config import BillingSettings
from dispatcher.runtime import AdapterRuntime
from orders import Money, NewOrder
from orders.client import Client, Conflict
from orders.db import Pool
from orders.errors import RefundRefused
from orders.model import Transfer, TransferStatus
from orders.transfers import SyncTransfers
from tests.dispatch_support import FAST
from tests.integration.test_api import Api, api_runtimes, error, make_paid, running_api


class NoRefunds(Sandbox):
    """A payment system whose API cannot refund."""

    name: ClassVar[str] = "norefunds"
    capabilities: ClassVar[Capabilities] = dataclasses.replace(
        Sandbox.capabilities,
        refunds=False,
        partial_refunds=False,
        idempotent_refund=False,
        refund_lookup=False,
    )


@pytest.fixture(scope="module")
def api(pool: Pool, found_services: Any) -> Iterator[Api]:
    runtimes = api_runtimes()
    no_refunds = NoRefunds()
    runtimes["norefunds"] = AdapterRuntime(
        no_refunds, registry.resolve_settings(no_refunds, {}, environ={}), FAST
    )
    with running_api(pool, runtimes=runtimes, broker_url=found_services.broker_url) as running:
        yield running


@pytest.fixture
def http(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


@pytest.fixture
def auth(api: Api, site: str) -> dict[str, str]:
    return api.site_key(site)


def paid_order(api: Api, site: str, money: Money, adapter: str = "sandbox") -> UUID:
    new = NewOrder(site=site, user_id="u1", money=money, adapter=adapter)
    order_id = api.repo.create(new).order.id
    make_paid(api.repo, order_id)
    return order_id


def refund(
    http: httpx.Client,
    auth: dict[str, str],
    order_id: UUID,
    body: dict[str, Any],
    key: str | None = None,
) -> httpx.Response:
    headers = auth | {"Idempotency-Key": key or f"k-{uuid4()}"}
    return http.post(f"/v1/orders/{order_id}/refunds", json=body, headers=headers)


def settle(api: Api, refund_id: str, to: str = "succeeded") -> None:
    """Move a refund as the worker would: sent (``submitting``), then ``to``."""
    transfers = SyncTransfers(api.repo)
    refund = transfers.get(UUID(refund_id))
    for status in (TransferStatus.SUBMITTING, TransferStatus(to)):
        refund = transfers.write(refund, status, actor="test-worker", use_lease=False)


def order_view(http: httpx.Client, auth: dict[str, str], order_id: UUID) -> dict[str, Any]:
    response = http.get(f"/v1/orders/{order_id}", headers=auth)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def test_a_full_refund_gives_back_everything_and_the_order_stays_paid(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    # Given a paid order of 19.99 USD
    order_id = paid_order(api, site, Money(1999, "USD"))
    assert order_view(http, auth, order_id)["refund_status"] == "none"
    # When the site refunds it without an amount
    response = refund(http, auth, order_id, {"reason": "returned by the buyer"})
    # Then the refund is everything, requested, and the order shows nothing refunded yet
    assert response.status_code == 201, response.text
    made = response.json()
    assert (made["amount"], made["currency"], made["status"]) == (1999, "USD", "requested")
    assert (made["order_id"], made["origin"]) == (str(order_id), "site")
    assert made["reason"] == "returned by the buyer"
    assert made["requested_by"] == f"site:{site}"
    view = order_view(http, auth, order_id)
    assert (view["refunded_amount"], view["refund_status"]) == (0, "none")
    # And once it succeeded, the order is refunded, and still paid
    settle(api, made["id"])
    view = order_view(http, auth, order_id)
    assert (view["status"], view["refunded_amount"], view["refund_status"]) == (
        "paid",
        1999,
        "refunded",
    )
    # And the order's history records the refund's moves, under the order's unchanged status
    moves = [
        (e["from_status"], e["to_status"], e["detail"].get("to"), e["actor"])
        for e in view["events"]
        if e["detail"].get("refund") == made["id"]
    ]
    assert moves == [
        ("paid", "paid", "requested", f"site:{site}"),
        ("paid", "paid", "submitting", "test-worker"),
        ("paid", "paid", "succeeded", "test-worker"),
    ]
    # And nothing more can be refunded
    again = refund(http, auth, order_id, {"reason": "twice"})
    assert again.status_code == 409
    assert error(again)["code"] == "refund_refused"


def test_two_partial_refunds_then_a_third_over_the_rest_is_refused(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    order_id = paid_order(api, site, Money(1999, "USD"))
    first = refund(http, auth, order_id, {"amount": "5.00", "reason": "one item"})
    assert first.status_code == 201, first.text
    assert first.json()["amount"] == 500
    settle(api, first.json()["id"])
    view = order_view(http, auth, order_id)
    assert (view["refunded_amount"], view["refund_status"]) == (500, "partially_refunded")

    second = refund(http, auth, order_id, {"amount": "7.5", "reason": "another item"})
    assert second.status_code == 201, second.text
    assert second.json()["amount"] == 750
    # Under way, it already counts against what is left: 19.99 - 5.00 - 7.50 = 7.49
    over = refund(http, auth, order_id, {"amount": "7.50", "reason": "too much"})
    assert over.status_code == 409, over.text
    assert error(over)["code"] == "refund_refused"
    settle(api, second.json()["id"])
    view = order_view(http, auth, order_id)
    assert (view["refunded_amount"], view["refund_status"]) == (1250, "partially_refunded")

    # The rest, exactly, is taken; a failed refund gives its amount back to what is left
    rest = refund(http, auth, order_id, {"amount": "7.49", "reason": "the rest"})
    assert rest.status_code == 201, rest.text
    settle(api, rest.json()["id"], "failed")
    view = order_view(http, auth, order_id)
    assert (view["refunded_amount"], view["refund_status"]) == (1250, "partially_refunded")
    last = refund(http, auth, order_id, {"reason": "all that is left"})
    assert last.status_code == 201, last.text
    assert last.json()["amount"] == 749
    settle(api, last.json()["id"])
    view = order_view(http, auth, order_id)
    assert (view["refunded_amount"], view["refund_status"]) == (1999, "refunded")

    listed = http.get(f"/v1/orders/{order_id}/refunds", headers=auth)
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [(r["amount"], r["status"]) for r in items] == [
        (500, "succeeded"),
        (750, "succeeded"),
        (749, "failed"),
        (749, "succeeded"),
    ]


def test_a_replay_answers_the_same_refund_and_another_body_with_the_key_conflicts(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    order_id = paid_order(api, site, Money(1999, "USD"))
    body = {"amount": "3.00", "reason": "damaged"}
    first = refund(http, auth, order_id, body, key="refund-1")
    assert first.status_code == 201, first.text
    replay = refund(http, auth, order_id, body, key="refund-1")
    assert replay.status_code == 200, replay.text
    assert replay.json() == first.json()
    other = refund(http, auth, order_id, {"amount": "4.00", "reason": "damaged"}, key="refund-1")
    assert other.status_code == 409, other.text
    assert error(other)["code"] == "idempotency_conflict"
    listed = http.get(f"/v1/orders/{order_id}/refunds", headers=auth).json()["items"]
    assert [r["id"] for r in listed] == [first.json()["id"]]


def test_a_replay_of_a_refund_of_everything_left_is_the_same_refund(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    order_id = paid_order(api, site, Money(1000, "EUR"))
    first = refund(http, auth, order_id, {"reason": "all"}, key="all-1")
    assert first.status_code == 201, first.text
    settle(api, first.json()["id"])
    # Nothing is left now, yet the retry of that request is the refund it made
    replay = refund(http, auth, order_id, {"reason": "all"}, key="all-1")
    assert replay.status_code == 200, replay.text
    assert replay.json()["id"] == first.json()["id"]


def test_another_sites_order_is_not_found(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    theirs = paid_order(api, f"{site}-other", Money(1999, "USD"))
    for response in (
        refund(http, auth, theirs, {"reason": "not mine"}),
        http.get(f"/v1/orders/{theirs}/refunds", headers=auth),
        refund(http, auth, uuid4(), {"reason": "no such order"}),
    ):
        assert response.status_code == 404, response.text
        assert error(response)["code"] == "order_not_found"
    other = api.site_key(f"{site}-other")
    assert http.get(f"/v1/orders/{theirs}/refunds", headers=other).json() == {"items": []}


def test_an_unpaid_order_and_a_payment_system_without_refunds_are_refused(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    new = NewOrder(site=site, user_id="u1", money=Money(1999, "USD"), adapter="sandbox")
    unpaid = api.repo.create(new).order.id
    response = refund(http, auth, unpaid, {"reason": "never paid"})
    assert response.status_code == 409, response.text
    assert error(response)["code"] == "refund_refused"
    assert "paid" in error(response)["message"]

    cannot = paid_order(api, site, Money(1999, "USD"), adapter="norefunds")
    response = refund(http, auth, cannot, {"reason": "no API for it"})
    assert response.status_code == 409, response.text
    assert error(response)["code"] == "refund_refused"
    assert "norefunds" in error(response)["message"]
    for order_id in (unpaid, cannot):
        assert http.get(f"/v1/orders/{order_id}/refunds", headers=auth).json() == {"items": []}
        assert order_view(http, auth, order_id)["refund_status"] == "none"


@pytest.mark.parametrize(
    "case",
    [
        ("USD", "1.005", "amount_precision"),  # more decimals than the currency has
        ("JPY", "1.5", "amount_precision"),
        ("USD", "0", "invalid_field"),
        ("USD", "0.00", "invalid_field"),
        ("USD", "-1.00", "invalid_field"),
        ("USD", "abc", "invalid_field"),
        ("USD", "1e3", "invalid_field"),
        ("USD", " 1.00", "invalid_field"),
        ("USD", 12.5, "invalid_field"),  # a number, not the decimal string
        ("USD", "", "invalid_field"),
    ],
)
def test_a_bad_amount_is_refused_with_422_and_writes_nothing(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str, case: tuple[str, Any, str]
) -> None:
    currency, amount, code = case
    order_id = paid_order(api, site, Money(100000, currency))
    response = refund(http, auth, order_id, {"amount": amount, "reason": "bad amount"})
    assert response.status_code == 422, response.text
    assert (error(response)["code"], error(response)["field"]) == (code, "amount")
    assert http.get(f"/v1/orders/{order_id}/refunds", headers=auth).json() == {"items": []}


def test_the_key_and_the_reason_are_required(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    order_id = paid_order(api, site, Money(1999, "USD"))
    url = f"/v1/orders/{order_id}/refunds"
    no_key = http.post(url, json={"reason": "r"}, headers=auth)
    assert no_key.status_code == 422
    assert (error(no_key)["code"], error(no_key)["field"]) == ("missing_field", "Idempotency-Key")
    no_reason = refund(http, auth, order_id, {"amount": "1.00"})
    assert no_reason.status_code == 422
    assert (error(no_reason)["code"], error(no_reason)["field"]) == ("missing_field", "reason")
    assert http.get(url, headers=auth).json() == {"items": []}


def test_a_refund_the_billing_check_refuses_is_not_written(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    # Given billing's refuse-overdraft policy, which cannot cover this refund
    seen: list[Transfer] = []

    async def refuse(tx: Any, transfer: Transfer) -> None:
        seen.append(transfer)
        raise RefundRefused("the balance of 0.00 USD cannot cover the refund of 19.99 USD")

    order_id = paid_order(api, site, Money(1999, "USD"))
    api.ctx.refund_hold = refuse
    try:
        response = refund(http, auth, order_id, {"reason": "spent already"})
    finally:
        api.ctx.refund_hold = None
    # Then it is refused with the check's reason, and the refund it saw was rolled back
    assert response.status_code == 409, response.text
    assert error(response)["code"] == "refund_refused"
    assert "cannot cover" in error(response)["message"]
    assert [t.order_id for t in seen] == [order_id]
    assert http.get(f"/v1/orders/{order_id}/refunds", headers=auth).json() == {"items": []}
    # And the same request is taken once the check lets it through
    response = refund(http, auth, order_id, {"reason": "spent already"})
    assert response.status_code == 201, response.text


def test_the_schema_publishes_the_refund_endpoints(api: Api, http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    paths = document["paths"]["/v1/orders/{order_id}/refunds"]
    assert set(paths) == {"get", "post"}
    assert {"200", "201", "404", "409", "422"} <= set(paths["post"]["responses"])
    order = document["components"]["schemas"]["OrderOut"]["properties"]
    assert order["refund_status"]["enum"] == ["none", "partially_refunded", "refunded"]


def test_the_refuse_policy_holds_the_refund_and_refuses_what_the_balance_cannot_cover(
    api: Api, http: httpx.Client, auth: dict[str, str], site: str
) -> None:
    # Given billing's own check (policy refuse) and a user who spent 15.00 of a 19.99 top-up
    hold = build_refund_hold(BillingSettings(hooks=("wallet",), refund_overdraft="refuse"))
    assert hold is not None
    order_id = paid_order(api, site, Money(1999, "USD"))
    with SyncWallets(api.ctx.pool) as wallets:
        wallets.credit(
            site, "u1", Money(1999, "USD"), kind="topup", key=None, description="top-up",
            order_id=order_id,
        )  # fmt: skip
        wallets.debit(site, "u1", Money(1500, "USD"), key=f"spent-{order_id}", description="")
        api.ctx.refund_hold = hold
        try:
            # When the site refunds more than is left in the wallet, it is refused
            over = refund(http, auth, order_id, {"amount": "5.00", "reason": "too much"})
            # and what the wallet covers is held until the refund is final
            fits = refund(http, auth, order_id, {"amount": "4.99", "reason": "fits"})
        finally:
            api.ctx.refund_hold = None
        (balance,) = wallets.balances(site, "u1")
    assert over.status_code == 409, over.text
    assert error(over)["code"] == "refund_refused"
    assert fits.status_code == 201, fits.text
    assert (balance.money, balance.held) == (Money(0, "USD"), Money(499, "USD"))
    listed = http.get(f"/v1/orders/{order_id}/refunds", headers=auth).json()["items"]
    assert [r["amount"] for r in listed] == [499]


def test_the_python_client_refunds_and_reads_the_refund_status(
    api: Api, auth: dict[str, str], site: str
) -> None:
    order_id = paid_order(api, site, Money(1000, "JPY"))
    key = auth["Authorization"].removeprefix("Bearer ")
    with Client(api.url, key) as pd:
        made = pd.create_refund(order_id, reason="one of two", money=Money.parse("400", "JPY"))
        again = pd.create_refund(
            order_id, reason="one of two", money=Money(400, "JPY"),
            idempotency_key=made.idempotency_key,
        )  # fmt: skip
        settle(api, str(made.refund.id))
        with pytest.raises(Conflict) as refused:
            pd.create_refund(order_id, reason="too much", money=Money(601, "JPY"))
        order = pd.get_order(order_id)
        listed = pd.list_refunds(order_id)
    assert (made.created, again.created, again.refund.id) == (True, False, made.refund.id)
    assert made.refund.money == Money(400, "JPY")
    assert refused.value.code == "refund_refused"
    assert (order.refunded_amount, order.refund_status) == (400, "partially_refunded")
    assert [(r.id, r.status) for r in listed] == [(made.refund.id, TransferStatus.SUCCEEDED)]


@pytest.mark.parametrize(
    "case",
    [
        ({}, RefundHold),  # the default: refuse what the balance cannot cover
        ({"PAYDISPATCH_BILLING_REFUND_OVERDRAFT": "allow"}, type(None)),
        ({"PAYDISPATCH_BILLING_HOOKS": "none"}, type(None)),  # no wallet: nothing to hold
    ],
)
def test_the_api_and_the_cli_get_billings_refund_check_from_the_configuration(
    case: tuple[dict[str, str], type],
) -> None:
    environ, kind = case
    with Root(config.load(environ)) as root:
        assert type(root.refund_hold()) is kind

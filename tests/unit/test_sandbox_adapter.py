"""The sandbox adapter's pure functions: requests built, answers read, webhooks trusted."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

import pytest

from adapters.base import (
    AdapterSettings,
    CanonicalState,
    InvalidSettings,
    Invoice,
    MalformedResponse,
    Notification,
    OrderRef,
    PayoutRequest,
    PayoutState,
    PspRejected,
    PspResponse,
    RefundRequest,
    RefundState,
    Reply,
)
from adapters.registry import resolve_settings
from adapters.sandbox import SCENARIO_METADATA_KEY, Sandbox, adapter
from adapters.sandbox.protocol import Scenario, ScenarioKind, SignatureHeader, signature_header
from adapters.testing import (
    SAMPLE_ORDER_ID,
    SAMPLE_PAYOUT_ID,
    SAMPLE_REFUND_ID,
    SAMPLE_TIME,
    AdapterConformance,
    FixtureSet,
    NotificationFixtures,
    PayoutFixtures,
    RefundFixtures,
    sample_order,
)
from orders.errors import InvalidInput, OutcomeUnknown, TransientError
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus

API_KEY = "test-api-key-5f1c"
WEBHOOK_SECRET = "test-webhook-secret-9a2e"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ORDER_ID = UUID("0b6c4b9e-8a57-4c39-9d4a-2f0d3c1e5a77")


def make_order(**changes: Any) -> Order:
    fields: dict[str, Any] = {
        "id": ORDER_ID,
        "number": 42,
        "site": "shop",
        "site_ref": "A-42",
        "user_id": "u1",
        "money": Money(1999, "EUR"),
        "adapter": "sandbox",
        "description": "Gift card",
        "return_url": "https://shop.example/return",
        "metadata": {},
        "status": OrderStatus.AWAITING_PAYMENT,
        "psp_id": "inv_abc",
        "pay_url": "http://127.0.0.1:8765/pay/inv_abc",
        "attempts": 1,
        "polls": 0,
        "next_run_at": None,
        "lease_until": None,
        "lease_token": None,
        "expires_at": NOW + timedelta(minutes=15),
        "last_error": None,
        "idempotency_key": None,
        "created_at": NOW,
        "updated_at": NOW,
        "paid_at": None,
    }
    fields.update(changes)
    return Order(**fields)


def make_settings(**overrides: str) -> AdapterSettings:
    configured = {
        "API_URL": "http://sandbox.test:9000/",
        "API_KEY": API_KEY,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        **overrides,
    }
    return resolve_settings(adapter, configured=configured, environ={})


SETTINGS = make_settings()


def invoice_json(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "inv_abc",
        "status": "pending",
        "amount": 1999,
        "currency": "EUR",
        "pay_url": "http://127.0.0.1:8765/pay/inv_abc",
        "expires_at": (NOW + timedelta(minutes=15)).isoformat(),
        "order_id": str(ORDER_ID),
        "number": 42,
        "created_at": NOW.isoformat(),
        "paid_at": None,
    }
    body.update(changes)
    return body


def response(status_code: int, body: Any) -> PspResponse:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return PspResponse(status_code, content, {"content-type": "application/json"})


def notification(
    body: bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    signed_at: datetime = NOW,
    received_at: datetime = NOW,
    headers: Mapping[str, str] | None = None,
) -> Notification:
    if headers is None:
        headers = {"sandbox-signature": signature_header(secret, int(signed_at.timestamp()), body)}
    return Notification(headers=headers, body=body, received_at=received_at)


def webhook_body(**invoice_changes: Any) -> bytes:
    payload = {
        "event_id": "evt_1",
        "type": "invoice.updated",
        "invoice": invoice_json(**invoice_changes),
    }
    return json.dumps(payload).encode()


# -- declaration -------------------------------------------------------------------------------


def test_entry_point_object_is_a_sandbox_adapter() -> None:
    assert isinstance(adapter, Sandbox)
    assert adapter.name == "sandbox"


def test_settings_default_to_the_local_sandbox_and_mark_credentials_secret() -> None:
    settings = resolve_settings(adapter, environ={})
    assert settings.api_url == "http://127.0.0.1:8765"
    specs = {spec.key: spec for spec in adapter.settings_spec}
    assert specs["API_KEY"].secret
    assert specs["WEBHOOK_SECRET"].secret
    assert not specs["API_URL"].secret


def test_capabilities_promise_what_the_adapter_implements() -> None:
    caps = adapter.capabilities
    assert caps.idempotent_create
    assert caps.lookup_by_reference
    assert caps.cancel
    assert caps.signed_notifications
    assert {"USD", "EUR", "RUB", "GBP", "JPY"} <= caps.currencies
    assert caps.poll.first <= timedelta(seconds=1)


def test_secrets_never_show_in_reprs() -> None:
    settings = make_settings()
    for text in (repr(settings), str(settings), repr(adapter)):
        assert API_KEY not in text
        assert WEBHOOK_SECRET not in text


# -- create ------------------------------------------------------------------------------------


def test_create_request_carries_the_orders_idempotency_key_and_bearer_auth() -> None:
    request = adapter.build_create(make_order(), make_settings())

    assert request.method == "POST"
    assert request.url == "http://sandbox.test:9000/api/v1/invoices"
    assert request.operation == "create"
    assert request.headers["Idempotency-Key"] == f"pd-{ORDER_ID}"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.json == {
        "order_id": str(ORDER_ID),
        "number": 42,
        "amount": 1999,
        "currency": "EUR",
        "description": "Gift card",
        "return_url": "https://shop.example/return",
        "expires_at": "2026-03-01T12:15:00+00:00",
    }


def test_create_request_is_the_same_on_every_attempt() -> None:
    # Given the same order retried after a timeout
    first = adapter.build_create(make_order(attempts=1), make_settings())
    second = adapter.build_create(make_order(attempts=3), make_settings())
    # Then the sandbox sees an identical request under the same key: one invoice
    assert first == second


def test_create_request_forwards_scenario_and_notify_url() -> None:
    order = make_order(metadata={SCENARIO_METADATA_KEY: "pay_after:2"})
    settings = make_settings(NOTIFY_URL="http://127.0.0.1:8000/v1/callbacks/sandbox")

    request = adapter.build_create(order, settings)

    assert request.json["scenario"] == "pay_after:2"
    assert request.json["notify_url"] == "http://127.0.0.1:8000/v1/callbacks/sandbox"


@pytest.mark.parametrize("key", ["API_URL", "NOTIFY_URL"])
def test_unusable_urls_in_settings_name_the_variable_to_fix(key: str) -> None:
    with pytest.raises(InvalidSettings, match=f"PAYDISPATCH_SANDBOX_{key}"):
        adapter.build_create(make_order(), make_settings(**{key: "sandbox.local"}))


def test_create_request_without_notify_url_setting_asks_for_no_webhooks() -> None:
    request = adapter.build_create(make_order(), make_settings())
    assert "notify_url" not in request.json
    assert "scenario" not in request.json


@pytest.mark.parametrize("status_code", [200, 201])
def test_create_response_gives_the_invoice(status_code: int) -> None:
    invoice = adapter.parse_create(make_order(psp_id=None), response(status_code, invoice_json()))
    assert invoice == Invoice(
        psp_id="inv_abc",
        pay_url="http://127.0.0.1:8765/pay/inv_abc",
        expires_at=NOW + timedelta(minutes=15),
    )


@pytest.mark.parametrize(
    ("status_code", "code"),
    [
        (400, "invalid_field"),
        (400, "invalid_json"),
        (422, "unsupported_currency"),
        (422, "already_expired"),
    ],
)
def test_definite_validation_errors_reject_the_create(status_code: int, code: str) -> None:
    body = {"error": {"code": code, "message": "no"}}
    with pytest.raises(PspRejected):
        adapter.parse_create(make_order(), response(status_code, body))


def test_key_reused_with_other_terms_is_an_unknown_outcome_not_a_rejection() -> None:
    body = {"error": {"code": "idempotency_key_reused", "message": "different body"}}
    with pytest.raises(OutcomeUnknown):
        adapter.parse_create(make_order(), response(422, body))


@pytest.mark.parametrize(
    ("status_code", "body"),
    [
        (500, {"error": {"code": "internal_error", "message": "boom"}}),
        (429, {"error": {"code": "rate_limited", "message": "slow down"}}),
        (401, {"error": {"code": "unauthorized", "message": "key"}}),
        (504, {"error": {"code": "timeout", "message": "late"}}),
        (400, b"<html><body>Bad Request</body></html>"),
        (200, b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
        (201, b'{"id": "inv_abc", "status": "pen'),
        (201, invoice_json(id=None)),
        (201, invoice_json(pay_url="javascript:alert(1)")),
        (201, invoice_json(expires_at="tomorrow")),
        (201, [1, 2, 3]),
    ],
)
def test_unreadable_create_answers_are_transient(status_code: int, body: Any) -> None:
    with pytest.raises(MalformedResponse):
        adapter.parse_create(make_order(), response(status_code, body))


def test_parse_errors_do_not_leak_credentials() -> None:
    with pytest.raises(MalformedResponse) as caught:
        adapter.parse_create(make_order(), response(401, {"error": {"code": "unauthorized"}}))
    assert API_KEY not in str(caught.value)


# -- status, cancel, lookup --------------------------------------------------------------------


def test_status_and_cancel_requests_name_the_invoice_and_authenticate() -> None:
    settings = make_settings()
    status = adapter.build_status(make_order(), settings)
    cancel = adapter.build_cancel(make_order(), settings)

    assert (status.method, status.url) == (
        "GET",
        "http://sandbox.test:9000/api/v1/invoices/inv_abc",
    )
    assert (cancel.method, cancel.url) == (
        "POST",
        "http://sandbox.test:9000/api/v1/invoices/inv_abc/cancel",
    )
    assert status.headers["Authorization"] == cancel.headers["Authorization"] == f"Bearer {API_KEY}"
    assert (status.operation, cancel.operation) == ("status", "cancel")


def test_status_request_needs_an_invoice() -> None:
    with pytest.raises(ValueError, match="no sandbox invoice"):
        adapter.build_status(make_order(psp_id=None), make_settings())


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("pending", CanonicalState.PENDING),
        ("paid", CanonicalState.PAID),
        ("declined", CanonicalState.REJECTED),
        ("cancelled", CanonicalState.REJECTED),
        ("expired", CanonicalState.EXPIRED),
        ("refunded", CanonicalState.REFUNDED),
    ],
)
def test_every_sandbox_status_maps_to_one_canonical_state(raw: str, state: CanonicalState) -> None:
    report = adapter.parse_status(make_order(), response(200, invoice_json(status=raw)), SETTINGS)
    assert report.state is state
    assert report.raw_status == raw
    assert report.psp_id == "inv_abc"
    assert report.money == Money(1999, "EUR")


def test_status_reports_the_amount_the_sandbox_reports_so_mismatches_show() -> None:
    body = invoice_json(status="paid", amount=2099)
    report = adapter.parse_status(make_order(), response(200, body), SETTINGS)
    assert report.money == Money(2099, "EUR")
    assert report.money != make_order().money


def test_refused_cancel_of_a_paid_invoice_reads_as_paid() -> None:
    body = {
        "error": {"code": "already_paid", "message": "cannot cancel"},
        "invoice": invoice_json(status="paid", paid_at=NOW.isoformat()),
    }
    report = adapter.parse_status(make_order(), response(409, body), SETTINGS, "cancel")
    assert report.state is CanonicalState.PAID


@pytest.mark.parametrize(
    ("status_code", "body"),
    [
        (200, invoice_json(status="authorised")),
        (200, invoice_json(status=None)),
        (200, invoice_json(amount="19.99")),
        (200, invoice_json(amount=True)),
        (200, invoice_json(currency="XXX")),
        (200, invoice_json(currency=None)),
        (200, invoice_json(id="inv_other")),
        (200, b"<html>oops</html>"),
        (200, b'{"id": "inv_abc", "sta'),
        (404, {"error": {"code": "not_found", "message": "no invoice"}}),
        (409, {"error": {"code": "not_allowed", "message": "no invoice attached"}}),
        (500, {"error": {"code": "internal_error", "message": "boom"}}),
    ],
)
def test_unreadable_status_answers_are_transient(status_code: int, body: Any) -> None:
    with pytest.raises(MalformedResponse):
        adapter.parse_status(make_order(), response(status_code, body), SETTINGS)


def test_lookup_asks_by_our_order_number() -> None:
    request = adapter.build_lookup(make_order(psp_id=None), make_settings())
    assert (request.method, request.url) == ("GET", "http://sandbox.test:9000/api/v1/invoices")
    assert request.params == {"number": "42"}
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"


def test_lookup_finds_the_invoice_of_this_order_only() -> None:
    other = invoice_json(id="inv_other", order_id="another-order")
    mine = invoice_json(id="inv_mine")
    found = adapter.parse_lookup(
        make_order(psp_id=None), response(200, {"items": [other, mine]}), SETTINGS
    )
    assert found is not None
    assert found.psp_id == "inv_mine"


def test_lookup_without_a_match_says_none() -> None:
    other = invoice_json(order_id="another-order")
    assert adapter.parse_lookup(make_order(), response(200, {"items": []}), SETTINGS) is None
    assert adapter.parse_lookup(make_order(), response(200, {"items": [other]}), SETTINGS) is None


@pytest.mark.parametrize(
    ("status_code", "body"), [(500, {"error": {}}), (200, {"invoices": []}), (200, b"<html>")]
)
def test_unreadable_lookup_answers_are_transient(status_code: int, body: Any) -> None:
    with pytest.raises(MalformedResponse):
        adapter.parse_lookup(make_order(), response(status_code, body), SETTINGS)


# -- notifications -----------------------------------------------------------------------------


def test_valid_notification_is_verified_and_reports_the_status() -> None:
    body = webhook_body(status="paid")

    result = adapter.parse_notification(notification(body), make_settings())

    assert result.verified
    assert result.report is not None
    assert result.report.state is CanonicalState.PAID
    assert result.report.money == Money(1999, "EUR")
    assert result.ref.psp_id == "inv_abc"
    assert result.ref.order_id == str(ORDER_ID)
    assert result.ref.number == 42
    assert (result.reply.status_code, result.reply.body) == (200, b"ok")


def test_tampered_notification_is_only_a_hint() -> None:
    signed = webhook_body(status="pending")
    note = notification(signed)
    tampered = Notification(headers=note.headers, body=webhook_body(status="paid"), received_at=NOW)

    result = adapter.parse_notification(tampered, make_settings())

    assert not result.verified
    assert result.report is None
    assert result.ref.psp_id == "inv_abc"


def test_notification_signed_with_another_secret_is_only_a_hint() -> None:
    note = notification(webhook_body(status="paid"), secret="someone-else")
    result = adapter.parse_notification(note, make_settings())
    assert not result.verified
    assert result.report is None


@pytest.mark.parametrize("skew", [timedelta(minutes=6), timedelta(minutes=-6)])
def test_stale_or_future_signatures_are_only_hints(skew: timedelta) -> None:
    note = notification(webhook_body(status="paid"), signed_at=NOW - skew, received_at=NOW)
    result = adapter.parse_notification(note, make_settings())
    assert not result.verified
    assert result.report is None


def test_signature_within_tolerance_is_accepted() -> None:
    note = notification(webhook_body(status="paid"), signed_at=NOW - timedelta(minutes=4))
    assert adapter.parse_notification(note, make_settings()).verified


@pytest.mark.parametrize(
    "header",
    ["", "t=abc,v1=00", "v1=" + "0" * 64, "t=1700000000", "t=99999999999999,v1=" + "0" * 64],
)
def test_missing_or_garbled_signature_headers_are_only_hints(header: str) -> None:
    note = notification(webhook_body(status="paid"), headers={"sandbox-signature": header})
    result = adapter.parse_notification(note, make_settings())
    assert not result.verified


def test_signed_notification_with_an_unknown_status_is_only_a_hint() -> None:
    result = adapter.parse_notification(
        notification(webhook_body(status="on_hold")), make_settings()
    )
    assert not result.verified
    assert result.report is None


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"invoice": "inv_abc"}', b'{"invoice": {}}']
)
def test_notification_naming_no_invoice_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        adapter.parse_notification(notification(body), make_settings())


# -- protocol ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pay_after:2", Scenario(ScenarioKind.PAY_AFTER, 2.0)),
        ("decline_after:0.5", Scenario(ScenarioKind.DECLINE_AFTER, 0.5)),
        ("never", Scenario(ScenarioKind.NEVER)),
        ("pay_late:3", Scenario(ScenarioKind.PAY_LATE, 3.0)),
    ],
)
def test_scenarios_parse(text: str, expected: Scenario) -> None:
    assert Scenario.parse(text) == expected
    assert Scenario.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["pay_now", "pay_after:soon", "pay_after:-1", "never:3", ""])
def test_bad_scenarios_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="scenario"):
        Scenario.parse(text)


def test_signature_header_round_trip() -> None:
    header = SignatureHeader.parse(signature_header("s3cret", 1_700_000_000, b"{}"))
    assert header is not None
    assert header.timestamp == 1_700_000_000
    assert header.matches("s3cret", b"{}")
    assert not header.matches("s3cret", b"{ }")
    assert not header.matches("other", b"{}")


# -- conformance kit ---------------------------------------------------------------------------


def _kit_invoice(**changes: Any) -> dict[str, Any]:
    body = invoice_json(
        id="inv_kit",
        amount=10000,
        currency="RUB",
        order_id=str(SAMPLE_ORDER_ID),
        number=42,
        pay_url="http://127.0.0.1:8765/pay/inv_kit",
        expires_at=(SAMPLE_TIME + timedelta(hours=1)).isoformat(),
    )
    body.update(changes)
    return body


def _kit_notification(body: bytes, signed_at: datetime, received_at: datetime) -> Notification:
    header = signature_header(WEBHOOK_SECRET, int(signed_at.timestamp()), body)
    return Notification({"sandbox-signature": header}, body, received_at=received_at)


def _kit_notifications() -> NotificationFixtures:
    def body(status: str) -> bytes:
        payload = {
            "event_id": "evt_kit",
            "type": "invoice.updated",
            "invoice": _kit_invoice(status=status),
        }
        return json.dumps(payload).encode()

    received = SAMPLE_TIME + timedelta(minutes=2)
    valid = _kit_notification(body("paid"), SAMPLE_TIME + timedelta(minutes=1), received)
    return NotificationFixtures(
        valid=valid,
        tampered=Notification(valid.headers, body("refunded"), received_at=received),
        stale=_kit_notification(body("paid"), SAMPLE_TIME - timedelta(minutes=10), received),
        expected_ref=OrderRef(order_id=str(SAMPLE_ORDER_ID), number=42, psp_id="inv_kit"),
        expected_reply=Reply(200, b"ok"),
    )


def _error(code: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": code}}


def _kit_refund(status: str, reason: str | None = None, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "rf_kit",
        "object": "refund",
        "status": status,
        "amount": 2500,
        "currency": "RUB",
        "reference": str(SAMPLE_REFUND_ID),
        "invoice_id": "inv_kit",
        "reason": "Returned by the buyer",
        "created_at": NOW.isoformat(),
        "settled_at": None,
        "failure_reason": reason,
    }
    return body | changes


def _kit_payout(status: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "po_kit",
        "object": "payout",
        "status": status,
        "amount": 10000,
        "currency": "RUB",
        "reference": str(SAMPLE_PAYOUT_ID),
        "account": "acct-42",
        "description": "Withdrawal 42",
        "page_url": "http://127.0.0.1:8765/payouts/po_kit",
        "created_at": NOW.isoformat(),
        "settled_at": None,
        "failure_reason": reason,
    }


class TestSandboxConformance(AdapterConformance):
    adapter = adapter
    settings: ClassVar[Mapping[str, str]] = {
        "API_KEY": API_KEY,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    order = sample_order(adapter="sandbox")
    fixtures = FixtureSet(
        psp_id="inv_kit",
        create=response(201, _kit_invoice()),
        states={
            CanonicalState.PENDING: response(200, _kit_invoice(status="pending")),
            CanonicalState.PAID: response(200, _kit_invoice(status="paid")),
            CanonicalState.REJECTED: response(200, _kit_invoice(status="declined")),
            CanonicalState.EXPIRED: response(200, _kit_invoice(status="expired")),
            CanonicalState.REFUNDED: response(200, _kit_invoice(status="refunded")),
        },
        malformed={
            "unknown-status": response(200, _kit_invoice(status="on_hold")),
            "amount-as-string": response(200, _kit_invoice(amount="100.00")),
        },
        malformed_create={"no-pay-url": response(201, _kit_invoice(pay_url=None))},
        notifications=_kit_notifications(),
        lookup_found=response(200, {"items": [_kit_invoice()]}),
        lookup_missing=response(200, {"items": [_kit_invoice(order_id=str(ORDER_ID))]}),
        cancelled=response(200, _kit_invoice(status="cancelled")),
        refunds=RefundFixtures(
            states={
                RefundState.PENDING: response(200, _kit_refund("pending")),
                RefundState.SUCCEEDED: response(200, _kit_refund("succeeded")),
                RefundState.FAILED: response(200, _kit_refund("failed", "declined by the bank")),
            },
            # A new refund answers 201 and starts pending.
            created={RefundState.PENDING: response(201, _kit_refund("pending"))},
            rejected=response(422, _error("amount_exceeds")),
            psp_refund_id="rf_kit",
            money=Money(2500, "RUB"),
            malformed={
                "unknown-status": response(200, _kit_refund("processing")),
                "not-ours": response(200, _kit_refund("pending", reference="another")),
                "lookup-without-list": response(200, {"items": "rf_kit"}),
            },
        ),
        payouts=PayoutFixtures(
            states={
                PayoutState.PENDING: response(200, _kit_payout("pending")),
                PayoutState.SUCCEEDED: response(200, _kit_payout("succeeded")),
                PayoutState.FAILED: response(200, _kit_payout("failed", "failed on the page")),
            },
            created={PayoutState.PENDING: response(201, _kit_payout("pending"))},
            rejected=response(422, _error("refused")),
            psp_payout_id="po_kit",
            destination={"account": "acct-42"},
            malformed={"unknown-status": response(200, _kit_payout("sent"))},
        ),
    )


# -- refunds and payouts (issue #14) ------------------------------------------------------------

REFUND_ID = UUID("5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f")
PAYOUT_ID = UUID("7d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f50")
PAID_ORDER = make_order(status=OrderStatus.PAID, paid_at=NOW)


def refund_of(amount: int = 500, psp_refund_id: str | None = None) -> RefundRequest:
    return RefundRequest(
        id=REFUND_ID,
        order=PAID_ORDER,
        money=Money(amount, "EUR"),
        reason="damaged",
        psp_refund_id=psp_refund_id,
    )


def payout_of(**destination: str) -> PayoutRequest:
    return PayoutRequest(
        id=PAYOUT_ID,
        money=Money(1000, "EUR"),
        destination=destination or {"account": "acct-7"},
        description="Withdrawal",
    )


def refund_json(status: str = "pending", **changes: Any) -> dict[str, Any]:
    body = _kit_refund(status, reference=str(REFUND_ID), currency="EUR", amount=500, id="rf_1")
    return body | changes


def test_refund_request_names_the_invoice_and_carries_our_id_twice() -> None:
    request = adapter.build_refund(refund_of(), SETTINGS)
    assert (request.method, request.url) == ("POST", "http://sandbox.test:9000/api/v1/refunds")
    assert request.headers["Idempotency-Key"] == f"pd-refund-{REFUND_ID}"
    assert request.json == {
        "invoice_id": "inv_abc",
        "amount": 500,
        "currency": "EUR",
        "reference": str(REFUND_ID),
        "reason": "damaged",
    }


def test_refund_status_asks_by_our_reference_until_the_sandbox_id_is_known() -> None:
    by_ours = adapter.build_refund_status(refund_of(), SETTINGS)
    assert (by_ours.url, dict(by_ours.params)) == (
        "http://sandbox.test:9000/api/v1/refunds",
        {"reference": str(REFUND_ID)},
    )
    by_id = adapter.build_refund_status(refund_of(psp_refund_id="rf_1"), SETTINGS)
    assert by_id.url == "http://sandbox.test:9000/api/v1/refunds/rf_1"


def test_refund_lookup_finding_nothing_is_transient_never_failed() -> None:
    with pytest.raises(TransientError) as caught:
        adapter.parse_refund_status(refund_of(), response(200, {"items": []}), SETTINGS)
    assert not isinstance(caught.value, MalformedResponse | PspRejected)


def test_refund_lookup_finding_two_records_is_outcome_unknown() -> None:
    twice = {"items": [refund_json(), refund_json(id="rf_2")]}
    with pytest.raises(OutcomeUnknown):
        adapter.parse_refund_status(refund_of(), response(200, twice), SETTINGS)


def test_refund_lookup_reads_our_record() -> None:
    found = {"items": [refund_json("succeeded")]}
    report = adapter.parse_refund_status(refund_of(), response(200, found), SETTINGS)
    assert (report.state, report.psp_refund_id, report.money) == (
        RefundState.SUCCEEDED,
        "rf_1",
        Money(500, "EUR"),
    )


@pytest.mark.parametrize(
    ("status_code", "code"),
    [
        (404, "not_found"),
        (409, "not_refundable"),
        (422, "amount_exceeds"),
        (422, "currency_mismatch"),
        (422, "refused"),
    ],
)
def test_refund_refusals_are_rejections(status_code: int, code: str) -> None:
    with pytest.raises(PspRejected, match=code):
        adapter.parse_refund(refund_of(), response(status_code, _error(code)), SETTINGS)


def test_refund_under_a_reused_key_is_outcome_unknown() -> None:
    with pytest.raises(OutcomeUnknown):
        adapter.parse_refund(refund_of(), response(422, _error("idempotency_key_reused")), SETTINGS)


def test_status_reports_what_the_invoice_has_refunded() -> None:
    report = adapter.parse_status(
        make_order(), response(200, invoice_json(status="paid", refunded=700)), SETTINGS
    )
    assert (report.state, report.refunded) == (CanonicalState.PAID, Money(700, "EUR"))
    assert (
        adapter.parse_status(make_order(), response(200, invoice_json()), SETTINGS).refunded is None
    )
    with pytest.raises(MalformedResponse):
        adapter.parse_status(make_order(), response(200, invoice_json(refunded="7")), SETTINGS)


def test_signed_refund_notification_reports_the_payment_and_the_refund() -> None:
    body = json.dumps(
        {
            "event_id": "evt_1",
            "type": "refund.updated",
            "refund": refund_json("succeeded"),
            "invoice": invoice_json(status="paid", refunded=500),
        }
    ).encode()
    result = adapter.parse_notification(notification(body), SETTINGS)
    assert result.verified
    assert result.ref.psp_id == "inv_abc"
    assert result.report is not None
    assert result.report.refunded == Money(500, "EUR")
    assert result.refund is not None
    assert (result.refund.state, result.refund.psp_refund_id) == (RefundState.SUCCEEDED, "rf_1")
    forged = adapter.parse_notification(notification(body, secret="wrong-secret-1"), SETTINGS)
    assert not forged.verified


def test_signed_payout_notification_names_no_order_and_reports_the_payout() -> None:
    payout = _kit_payout("failed", "failed on the page") | {"reference": str(PAYOUT_ID)}
    body = json.dumps({"event_id": "evt_2", "type": "payout.updated", "payout": payout}).encode()
    result = adapter.parse_notification(notification(body), SETTINGS)
    assert (result.verified, result.ref) == (True, OrderRef())
    assert result.payout is not None
    assert (result.payout.state, result.payout.reason) == (PayoutState.FAILED, "failed on the page")
    stale = notification(body, signed_at=NOW - timedelta(hours=1))
    assert not adapter.parse_notification(stale, SETTINGS).verified


def test_payout_goes_to_the_account_with_our_key_and_notify_url() -> None:
    settings = make_settings(NOTIFY_URL="https://pd.example/v1/callbacks/sandbox")
    request = adapter.build_payout(payout_of(), settings)
    assert request.url == "http://sandbox.test:9000/api/v1/payouts"
    assert request.headers["Idempotency-Key"] == f"pd-payout-{PAYOUT_ID}"
    assert request.json == {
        "amount": 1000,
        "currency": "EUR",
        "account": "acct-7",
        "reference": str(PAYOUT_ID),
        "description": "Withdrawal",
        "notify_url": "https://pd.example/v1/callbacks/sandbox",
    }
    with pytest.raises(InvalidInput):
        adapter.build_payout(payout_of(payout_token="tok"), SETTINGS)

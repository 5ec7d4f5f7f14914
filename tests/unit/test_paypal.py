"""The PayPal Orders v2 adapter: the conformance kit plus what is particular to PayPal."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import pytest

from adapters import paypal
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    FollowUp,
    MalformedResponse,
    Notification,
    OrderRef,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundRequest,
    RefundState,
    Reply,
    Secret,
    StatusReport,
)
from adapters.registry import resolve_settings
from adapters.testing import (
    SAMPLE_REFUND_ID,
    AdapterConformance,
    FixtureSet,
    NotificationFixtures,
    RefundFixtures,
    load_response,
    sample_order,
)
from orders.errors import InvalidInput, OutcomeUnknown, PermanentError, TransientError
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "paypal"
PAYPAL_ORDER = "5O190127TN364715T"
CLIENT_ID = "AbPfakeClientId-for-tests-0123456789"
SECRET = "EFfake-client-secret-for-tests-ZYXWVU9876543210"
SETTINGS = {"client_id": CLIENT_ID, "client_secret": SECRET}
ADAPTER = paypal.adapter
ORDER = sample_order(adapter="paypal", money=Money(10000, "USD"))
INVOICED = replace(ORDER, psp_id=PAYPAL_ORDER)


def fixture(name: str, status_code: int = 200) -> PspResponse:
    return load_response(FIXTURES / f"{name}.json", status_code)


def fixture_body(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_bytes())


def notification(name: str) -> Notification:
    return Notification(
        headers={
            "content-type": "application/json",
            "paypal-transmission-id": "69cd13f0-d67a-11e5-baa3-778b53f4ae55",
            "paypal-transmission-time": "2025-02-10T10:15:53Z",
            "paypal-transmission-sig": "bm90IGEgcmVhbCBzaWduYXR1cmU=",
            "paypal-cert-url": "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1d93a270",
            "paypal-auth-algo": "SHA256withRSA",
        },
        body=(FIXTURES / f"{name}.json").read_bytes(),
        remote_addr="173.0.82.126",
        received_at=datetime(2025, 2, 10, 10, 16, tzinfo=UTC),
    )


def settings(**overrides: str) -> AdapterSettings:
    return resolve_settings(ADAPTER, configured={**SETTINGS, **overrides}, environ={})


def status(
    name: str, status_code: int = 200, order: Order = INVOICED, operation: str = "status"
) -> StatusReport:
    return ADAPTER.parse_status(order, fixture(name, status_code), settings(), operation)


def with_body(body: Any, status_code: int = 200) -> PspResponse:
    return PspResponse(status_code, json.dumps(body).encode())


class TestPaypalConformance(AdapterConformance):
    adapter = ADAPTER
    settings = SETTINGS
    order = ORDER
    fixtures: ClassVar[FixtureSet] = FixtureSet(
        psp_id=PAYPAL_ORDER,
        create=fixture("create_payer_action_required", 201),
        states={
            CanonicalState.PENDING: fixture("status_payer_action_required"),
            CanonicalState.PAID: fixture("status_completed"),
            CanonicalState.REJECTED: fixture("status_voided"),
            CanonicalState.EXPIRED: fixture("error_resource_not_found", 404),
            CanonicalState.REFUNDED: fixture("status_completed_refunded"),
        },
        malformed={
            "unknown-status": fixture("status_unknown_status"),
            "unknown-capture-status": fixture("status_unknown_capture_status"),
            "amount-as-json-number": fixture("status_amount_as_number"),
            "completed-without-capture": fixture("status_completed_without_capture"),
        },
        malformed_create={
            "unknown-status": fixture("status_unknown_status"),
            "amount-as-json-number": fixture("status_amount_as_number"),
        },
        captured=fixture("capture_completed", 201),
        token=fixture("token"),
        refunds=RefundFixtures(
            states={
                RefundState.PENDING: fixture("refund_pending"),
                RefundState.SUCCEEDED: fixture("refund_completed"),
                RefundState.FAILED: fixture("refund_failed"),
            },
            created={RefundState.SUCCEEDED: fixture("refund_completed", 201)},
            rejected=fixture("error_refund_amount_exceeded", 422),
            psp_refund_id="1JU08902781691411",
            money=Money(4000, "USD"),
            malformed={
                "unknown-status": fixture("refund_unknown_status"),
                "another-order": fixture("refund_other_refund"),
            },
        ),
        notifications=NotificationFixtures(
            valid=notification("notification_payment_capture_completed"),
            tampered=notification("notification_payment_capture_completed_tampered"),
            stale=notification("notification_checkout_order_approved_stale"),
            expected_ref=OrderRef(order_id=str(ORDER.id), psp_id=PAYPAL_ORDER),
            expected_reply=Reply(200, b""),
        ),
    )


# -- token --------------------------------------------------------------------------------------


def test_token_request_is_client_credentials_with_basic_auth() -> None:
    request = ADAPTER.build_token(settings())
    assert (request.method, request.url, request.operation) == (
        "POST",
        "https://api-m.paypal.com/v1/oauth2/token",
        "token",
    )
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(
        f"{CLIENT_ID}:{SECRET}".encode()
    ).decode("ascii")
    assert list(request.form or []) == [("grant_type", "client_credentials")]
    assert request.json is None


def test_token_answer_gives_a_secret_with_its_lifetime() -> None:
    token = ADAPTER.parse_token(fixture("token"), settings())
    assert isinstance(token.value, Secret)
    assert token.value.reveal() == fixture_body("token")["access_token"]
    assert token.expires_in == timedelta(seconds=31668)
    assert fixture_body("token")["access_token"] not in repr(token)


def test_default_apply_token_sends_it_as_bearer() -> None:
    token = ADAPTER.parse_token(fixture("token"), settings())
    request = ADAPTER.apply_token(ADAPTER.build_status(INVOICED, settings()), token)
    assert request.headers["Authorization"] == f"Bearer {token.value.reveal()}"


def test_invalid_client_on_the_token_call_is_credentials_rejected() -> None:
    with pytest.raises(CredentialsRejected, match="invalid_client") as caught:
        ADAPTER.parse_token(fixture("error_token_invalid_client", 401), settings())
    assert "PAYDISPATCH_PAYPAL_CLIENT_SECRET" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("code", [429, 500, 503])
def test_token_endpoint_overload_is_transient(code: int) -> None:
    with pytest.raises(TransientError) as caught:
        ADAPTER.parse_token(PspResponse(code, b"<html>busy</html>"), settings())
    assert not isinstance(caught.value, CredentialsRejected)


@pytest.mark.parametrize(
    "body",
    [
        {"access_token": "A21AA", "token_type": "Bearer"},
        {"access_token": "A21AA", "token_type": "Bearer", "expires_in": "3600"},
        {"access_token": "A21AA", "token_type": "Bearer", "expires_in": 0},
        {"access_token": "", "token_type": "Bearer", "expires_in": 3600},
        {"access_token": "A21AA", "token_type": "MAC", "expires_in": 3600},
    ],
)
def test_unreadable_token_answer_is_malformed(body: dict[str, Any]) -> None:
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_token(with_body(body), settings())


def test_cut_token_answer_does_not_quote_the_token() -> None:
    content = fixture("token").content
    cut = content[: content.index(b'"token_type"')]
    with pytest.raises(MalformedResponse) as caught:
        ADAPTER.parse_token(PspResponse(200, cut), settings())
    assert "A21AAFEpH4" not in str(caught.value)


# -- amounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("money", "value"),
    [
        (Money(10000, "USD"), "100.00"),
        (Money(1, "EUR"), "0.01"),
        (Money(500, "JPY"), "500"),
        (Money(150000, "HUF"), "1500"),
        (Money(9900, "TWD"), "99"),
    ],
)
def test_amount_is_a_decimal_string_with_paypals_decimals(money: Money, value: str) -> None:
    assert paypal.format_amount(money) == {"currency_code": money.currency, "value": value}
    assert paypal.parse_amount(paypal.format_amount(money), PspResponse(200, b"")) == money


@pytest.mark.parametrize("money", [Money(150050, "HUF"), Money(9901, "TWD")])
def test_fractions_of_a_currency_without_decimals_are_refused_before_any_call(
    money: Money,
) -> None:
    with pytest.raises(InvalidInput, match="whole units"):
        ADAPTER.build_create(replace(ORDER, money=money), settings())


@pytest.mark.parametrize(
    "amount",
    [
        {"value": 100.0, "currency_code": "USD"},
        {"value": "100.001", "currency_code": "USD"},
        {"value": "1.5", "currency_code": "JPY"},
        {"value": "abc", "currency_code": "USD"},
        {"value": "100.00", "currency_code": "XYZ"},
        {"value": "100.00", "currency": "USD"},
        "100.00 USD",
    ],
)
def test_unreadable_amount_is_malformed_not_rounded(amount: Any) -> None:
    with pytest.raises(MalformedResponse):
        paypal.parse_amount(amount, PspResponse(200, b""))


# -- requests -----------------------------------------------------------------------------------


def test_create_request_follows_the_orders_v2_reference() -> None:
    request = ADAPTER.build_create(ORDER, settings())
    assert (request.method, request.url) == (
        "POST",
        "https://api-m.paypal.com/v2/checkout/orders",
    )
    assert request.headers == {
        "PayPal-Request-Id": f"pd-{ORDER.id}",
        "Prefer": "return=representation",
    }
    assert request.json == {
        "intent": "CAPTURE",
        "purchase_units": [
            {
                "custom_id": str(ORDER.id),
                "invoice_id": str(ORDER.id),
                "description": "Order 42",
                "amount": {"currency_code": "USD", "value": "100.00"},
            }
        ],
        "payment_source": {
            "paypal": {
                "experience_context": {
                    "return_url": "https://shop.example/return/42",
                    "cancel_url": "https://shop.example/return/42",
                    "user_action": "PAY_NOW",
                    "shipping_preference": "NO_SHIPPING",
                }
            }
        },
    }


def test_request_id_fits_paypals_limit() -> None:
    request = ADAPTER.build_create(ORDER, settings())
    assert len(request.headers["PayPal-Request-Id"]) <= 108


def test_description_is_cut_to_127_characters_and_never_empty() -> None:
    long = ADAPTER.build_create(replace(ORDER, description="x" * 300), settings())
    empty = ADAPTER.build_create(replace(ORDER, description="  "), settings())
    assert long.json["purchase_units"][0]["description"] == "x" * 127
    assert empty.json["purchase_units"][0]["description"] == "Order 42"


def test_order_without_return_url_is_refused_before_any_call() -> None:
    with pytest.raises(InvalidInput, match="return_url"):
        ADAPTER.build_create(replace(ORDER, return_url=None), settings())


def test_sandbox_base_url_moves_every_request() -> None:
    sandbox = settings(api_url=paypal.SANDBOX_API_URL)
    assert ADAPTER.build_token(sandbox).url.startswith("https://api-m.sandbox.paypal.com/")
    assert ADAPTER.build_status(INVOICED, sandbox).url == (
        f"https://api-m.sandbox.paypal.com/v2/checkout/orders/{PAYPAL_ORDER}"
    )


def test_status_request_is_a_get_of_the_order() -> None:
    request = ADAPTER.build_status(INVOICED, settings())
    assert (request.method, request.url) == (
        "GET",
        f"https://api-m.paypal.com/v2/checkout/orders/{PAYPAL_ORDER}",
    )
    assert "PayPal-Request-Id" not in request.headers


def test_capture_carries_its_own_request_id() -> None:
    first = ADAPTER.build_capture(INVOICED, settings())
    again = ADAPTER.build_capture(INVOICED, settings())
    assert (first.method, first.url, first.operation) == (
        "POST",
        f"https://api-m.paypal.com/v2/checkout/orders/{PAYPAL_ORDER}/capture",
        "capture",
    )
    assert first.headers["PayPal-Request-Id"] == again.headers["PayPal-Request-Id"]
    assert first.headers["PayPal-Request-Id"].startswith(f"pd-{ORDER.id}-capture")
    assert first.headers["Prefer"] == "return=representation"
    assert first.json == {}


def test_a_later_capture_attempt_gets_a_request_id_of_its_own() -> None:
    # PayPal answers a reused PayPal-Request-Id with its first answer: a capture declined before
    # the buyer approved again with another funding source would be declined forever.
    first = ADAPTER.build_capture(INVOICED, settings())
    next_poll = ADAPTER.build_capture(replace(INVOICED, polls=INVOICED.polls + 1), settings())
    late = ADAPTER.build_capture(replace(INVOICED, status=OrderStatus.REJECTED), settings())
    keys = {r.headers["PayPal-Request-Id"] for r in (first, next_poll, late)}
    assert len(keys) == 3


@pytest.mark.parametrize("psp_id", [None, "", "../../v1/oauth2/token", "5o1901?x=1"])
def test_status_of_an_order_without_a_paypal_order_id_is_refused(psp_id: str | None) -> None:
    with pytest.raises(InvalidInput, match="psp_id"):
        ADAPTER.build_status(replace(ORDER, psp_id=psp_id), settings())


def test_paypal_cannot_cancel_an_order() -> None:
    assert ADAPTER.capabilities.cancel is False
    report = status("status_payer_action_required")
    assert ADAPTER.can_cancel(INVOICED, report) is False


# -- create responses ---------------------------------------------------------------------------


def test_create_response_gives_order_id_and_payer_action_link() -> None:
    invoice = ADAPTER.parse_create(ORDER, fixture("create_payer_action_required", 201))
    assert invoice.psp_id == PAYPAL_ORDER
    assert invoice.pay_url == f"https://www.paypal.com/checkoutnow?token={PAYPAL_ORDER}"
    assert invoice.expires_at is None


@pytest.mark.parametrize("name", ["create_created_approve_link", "create_minimal"])
def test_approve_link_and_minimal_answer_are_read_too(name: str) -> None:
    invoice = ADAPTER.parse_create(ORDER, fixture(name, 201))
    assert invoice.pay_url == f"https://www.paypal.com/checkoutnow?token={PAYPAL_ORDER}"


def test_replayed_create_answered_200_gives_the_same_order() -> None:
    invoice = ADAPTER.parse_create(ORDER, fixture("create_payer_action_required", 200))
    assert invoice.psp_id == PAYPAL_ORDER


def test_create_replayed_after_approval_gives_invoice_without_pay_url() -> None:
    invoice = ADAPTER.parse_create(ORDER, fixture("status_approved"))
    assert (invoice.psp_id, invoice.pay_url) == (PAYPAL_ORDER, None)


def test_awaiting_order_without_a_pay_link_is_malformed() -> None:
    body = fixture_body("create_payer_action_required")
    body["links"] = [link for link in body["links"] if link["rel"] == "self"]
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_create(ORDER, with_body(body, 201))


def test_create_answer_about_another_order_of_ours_is_malformed() -> None:
    other = replace(ORDER, id=UUID("00000000-0000-4000-8000-000000000001"))
    with pytest.raises(MalformedResponse, match="custom_id"):
        ADAPTER.parse_create(other, fixture("create_payer_action_required", 201))


# -- statuses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("order_status", ["CREATED", "SAVED", "PAYER_ACTION_REQUIRED"])
def test_orders_awaiting_the_buyer_are_pending_without_follow_up(order_status: str) -> None:
    body = fixture_body("status_payer_action_required")
    body["status"] = order_status
    report = ADAPTER.parse_status(INVOICED, with_body(body), settings())
    assert (report.state, report.follow_up, report.raw_status) == (
        CanonicalState.PENDING,
        None,
        order_status,
    )


def test_approved_is_pending_with_a_capture_follow_up_and_the_order_money() -> None:
    report = status("status_approved")
    assert report.state is CanonicalState.PENDING
    assert report.follow_up is FollowUp.CAPTURE
    assert report.money == Money(10000, "USD")
    assert report.raw_status == "APPROVED"


def test_completed_order_is_read_by_its_capture() -> None:
    report = status("status_completed")
    assert (report.state, report.money, report.raw_status, report.follow_up) == (
        CanonicalState.PAID,
        Money(10000, "USD"),
        "COMPLETED/COMPLETED",
        None,
    )


@pytest.mark.parametrize(
    ("name", "state", "raw"),
    [
        ("capture_pending", CanonicalState.PENDING, "COMPLETED/PENDING"),
        ("capture_declined", CanonicalState.REJECTED, "COMPLETED/DECLINED"),
        ("status_completed_capture_failed", CanonicalState.REJECTED, "COMPLETED/FAILED"),
        ("status_completed_refunded", CanonicalState.REFUNDED, "COMPLETED/REFUNDED"),
        (
            "status_completed_partially_refunded",
            CanonicalState.PAID,
            "COMPLETED/PARTIALLY_REFUNDED",
        ),
    ],
)
def test_capture_status_decides_a_completed_order(
    name: str, state: CanonicalState, raw: str
) -> None:
    report = status(name)
    assert (report.state, report.raw_status) == (state, raw)
    assert report.follow_up is None


def test_pending_capture_says_why() -> None:
    assert status("capture_pending").reason == "PENDING_REVIEW"


def test_voided_order_is_rejected() -> None:
    report = status("status_voided")
    assert (report.state, report.raw_status) == (CanonicalState.REJECTED, "VOIDED")


def test_order_paypal_no_longer_knows_is_expired() -> None:
    report = status("error_resource_not_found", 404)
    assert report.state is CanonicalState.EXPIRED
    assert report.money is None


def test_404_without_paypals_error_object_is_malformed_not_expired() -> None:
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_status(INVOICED, PspResponse(404, b"<html>Not Found</html>"), settings())


def test_capture_of_another_amount_reports_that_amount() -> None:
    assert status("status_completed_other_amount").money == Money(9000, "USD")


def test_status_about_another_paypal_order_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        status("status_completed", order=replace(INVOICED, psp_id="8HD65802VF9526337"))


# -- capture answers ----------------------------------------------------------------------------


def test_completed_capture_answer_is_paid() -> None:
    report = status("capture_completed", 201, operation="capture")
    assert (report.state, report.money) == (CanonicalState.PAID, Money(10000, "USD"))


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("capture_completed", CanonicalState.PAID),
        ("capture_pending", CanonicalState.PENDING),
        ("capture_declined", CanonicalState.REJECTED),
        ("status_completed_capture_failed", CanonicalState.REJECTED),
    ],
)
def test_capture_answer_reads_the_captures_status(name: str, state: CanonicalState) -> None:
    assert status(name, 201, operation="capture").state is state


def test_capture_of_an_unapproved_order_is_pending() -> None:
    report = status("error_order_not_approved", 422, operation="capture")
    assert (report.state, report.raw_status) == (CanonicalState.PENDING, "ORDER_NOT_APPROVED")
    assert report.follow_up is None


def test_declined_instrument_on_capture_leaves_the_buyer_to_pick_another_funding_source() -> None:
    # PayPal's "handle funding failures": restart the payment so the payer can pick another
    # option. The payment may still be made, so nothing final is read from it.
    report = status("error_instrument_declined", 422, operation="capture")
    assert (report.state, report.raw_status) == (CanonicalState.PENDING, "INSTRUMENT_DECLINED")
    assert report.follow_up is None
    assert "debug_id 90957fca61718" in report.reason


def test_a_refused_transaction_on_capture_is_rejected_with_paypals_words() -> None:
    refused = [{"issue": "TRANSACTION_REFUSED", "description": "Transaction refused."}]
    body = {**fixture_body("error_instrument_declined"), "details": refused}
    report = ADAPTER.parse_status(
        INVOICED, PspResponse(422, json.dumps(body).encode()), settings(), "capture"
    )
    assert (report.state, report.raw_status) == (CanonicalState.REJECTED, "TRANSACTION_REFUSED")
    assert "debug_id 90957fca61718" in report.reason


def test_order_captured_already_is_read_on_the_next_poll() -> None:
    with pytest.raises(TransientError, match="next poll") as caught:
        status("error_order_already_captured", 422, operation="capture")
    assert not isinstance(caught.value, PermanentError)


def test_other_422_on_capture_is_transient() -> None:
    with pytest.raises(TransientError):
        status("error_duplicate_invoice_id", 422, operation="capture")


def test_capture_issues_mean_nothing_on_a_status_read() -> None:
    with pytest.raises(TransientError):
        status("error_instrument_declined", 422)


# -- errors -------------------------------------------------------------------------------------


def test_invalid_request_on_create_is_a_permanent_rejection_with_details() -> None:
    with pytest.raises(PspRejected, match=r"INVALID_REQUEST .*INVALID_PARAMETER_VALUE"):
        ADAPTER.parse_create(ORDER, fixture("error_invalid_request", 400))


def test_unprocessable_create_is_a_permanent_rejection() -> None:
    with pytest.raises(PspRejected, match="INVALID_CURRENCY_CODE"):
        ADAPTER.parse_create(ORDER, fixture("error_invalid_currency_code", 422))


def test_duplicate_invoice_id_on_create_is_an_unknown_outcome() -> None:
    with pytest.raises(OutcomeUnknown, match="DUPLICATE_INVOICE_ID"):
        ADAPTER.parse_create(ORDER, fixture("error_duplicate_invoice_id", 422))


@pytest.mark.parametrize(
    ("name", "code"), [("error_authentication_failure", 401), ("error_not_authorized", 403)]
)
def test_refused_credentials_fail_no_order(name: str, code: int) -> None:
    for parse in (
        lambda: ADAPTER.parse_create(ORDER, fixture(name, code)),
        lambda: status(name, code),
        lambda: status(name, code, operation="capture"),
    ):
        with pytest.raises(CredentialsRejected) as caught:
            parse()
        assert "PAYDISPATCH_PAYPAL_CLIENT_ID" in str(caught.value)
        assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("error_rate_limit_reached", 429),
        ("error_internal_server_error", 500),
        ("error_resource_conflict", 409),
    ],
)
def test_overload_and_server_errors_are_transient_everywhere(name: str, code: int) -> None:
    response = fixture(name, code)
    for parse in (
        lambda: ADAPTER.parse_create(ORDER, response),
        lambda: ADAPTER.parse_status(INVOICED, response, settings()),
        lambda: ADAPTER.parse_status(INVOICED, response, settings(), "capture"),
    ):
        with pytest.raises(TransientError) as caught:
            parse()
        assert not isinstance(caught.value, CredentialsRejected | PermanentError)


def test_refused_status_calls_never_end_the_order() -> None:
    with pytest.raises(TransientError) as caught:
        status("error_invalid_request", 400)
    assert not isinstance(caught.value, PermanentError)


def test_missing_order_on_capture_is_transient_and_names_the_api_url() -> None:
    with pytest.raises(TransientError, match="PAYDISPATCH_PAYPAL_API_URL"):
        status("error_resource_not_found", 404, operation="capture")


def test_error_without_paypals_error_name_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_create(ORDER, with_body({"message": "?"}, 400))


# -- notifications ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "notification_checkout_order_approved",
        "notification_payment_capture_completed",
        "notification_payment_capture_declined",
    ],
)
def test_webhook_is_an_unverified_hint_naming_the_order(name: str) -> None:
    result = ADAPTER.parse_notification(notification(name), settings())
    assert result.verified is False
    assert result.report is None
    assert result.ref == OrderRef(order_id=str(ORDER.id), psp_id=PAYPAL_ORDER)
    assert result.reply == Reply(200, b"")


def test_refund_event_names_our_order_by_custom_id_and_the_capture_it_refunds() -> None:
    result = ADAPTER.parse_notification(
        notification("notification_payment_capture_refunded"), settings()
    )
    assert result.ref == OrderRef(order_id=str(ORDER.id), psp_payment_id=CAPTURE_ID)
    assert result.verified is False


def test_a_dashboard_refund_without_our_custom_id_names_the_capture_alone() -> None:
    # A refund made in PayPal's dashboard carries no custom_id of ours: its "up" link to the
    # capture (the order's psp_payment_id) is what names the order.
    body = fixture_body("notification_payment_capture_refunded")
    del body["resource"]["custom_id"], body["resource"]["invoice_id"]
    result = ADAPTER.parse_notification(
        Notification(headers={}, body=json.dumps(body).encode()), settings()
    )
    assert result.ref == OrderRef(psp_payment_id=CAPTURE_ID)
    assert result.refund is not None


def test_event_of_another_kind_is_acknowledged_naming_nothing() -> None:
    result = ADAPTER.parse_notification(
        notification("notification_billing_subscription_activated"), settings()
    )
    assert result.ref == OrderRef()
    assert result.reply == Reply(200, b"")


def test_custom_id_that_is_not_ours_is_not_taken_for_an_order_id() -> None:
    body = fixture_body("notification_checkout_order_approved")
    body["resource"]["purchase_units"][0]["custom_id"] = "wc_order_4ayEdX1XQNtn7"
    result = ADAPTER.parse_notification(
        replace(
            notification("notification_checkout_order_approved"), body=json.dumps(body).encode()
        ),
        settings(),
    )
    assert result.ref == OrderRef(psp_id=PAYPAL_ORDER)


def test_odd_order_id_in_a_webhook_is_dropped() -> None:
    body = fixture_body("notification_checkout_order_approved")
    body["resource"]["id"] = "../../admin"
    result = ADAPTER.parse_notification(
        replace(
            notification("notification_checkout_order_approved"), body=json.dumps(body).encode()
        ),
        settings(),
    )
    assert result.ref.psp_id is None


@pytest.mark.parametrize(
    "body", [b"", b"{}", b'{"event_type": "CHECKOUT.ORDER.APPROVED"}', b"<html>", b"[]"]
)
def test_broken_webhook_body_is_malformed(body: bytes) -> None:
    broken = replace(notification("notification_checkout_order_approved"), body=body)
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_notification(broken, settings())


# -- settings -----------------------------------------------------------------------------------


def test_settings_default_to_the_live_api_and_hide_the_secret() -> None:
    resolved = settings()
    assert resolved.api_url == "https://api-m.paypal.com"
    assert SECRET not in repr(resolved)
    spec = {s.key: s for s in ADAPTER.settings_spec}
    assert spec["CLIENT_SECRET"].secret
    assert not spec["CLIENT_ID"].secret


def test_requests_carry_no_credentials_outside_headers() -> None:
    built: list[PspRequest] = [
        ADAPTER.build_token(settings()),
        ADAPTER.build_create(ORDER, settings()),
        ADAPTER.build_status(INVOICED, settings()),
        ADAPTER.build_capture(INVOICED, settings()),
    ]
    for request in built:
        payload = json.dumps([request.url, request.json, list(request.form or [])])
        assert SECRET not in payload
        assert CLIENT_ID not in payload


# -- refunds (issue #14) --------------------------------------------------------------------------

CAPTURE_ID = "3C679366HH908993F"
REFUND_ID = "1JU08902781691411"
PAID = replace(INVOICED, status=OrderStatus.PAID)


def refund_request(**changes: Any) -> RefundRequest:
    request = RefundRequest(
        id=SAMPLE_REFUND_ID,
        order=PAID,
        money=Money(4000, "USD"),
        reason="Returned by the buyer",
        psp_payment_id=CAPTURE_ID,
    )
    return replace(request, **changes)


def read(name: str, status_code: int = 200) -> StatusReport:
    return ADAPTER.parse_status(INVOICED, fixture(name, status_code), settings())


def test_completed_order_names_its_capture_for_refunds_and_nothing_refunded() -> None:
    report = read("status_completed")
    assert (report.psp_payment_id, report.refunded) == (CAPTURE_ID, Money(0, "USD"))


def test_partly_refunded_order_shows_the_completed_refunds() -> None:
    report = read("status_completed_partially_refunded")
    assert (report.state, report.refunded) == (CanonicalState.PAID, Money(4000, "USD"))


def test_refunded_order_shows_the_amount_refunded() -> None:
    report = read("status_completed_refunded")
    assert report.state is CanonicalState.REFUNDED
    assert report.refunded == Money(10000, "USD")


def test_order_before_capture_names_no_payment_and_no_refund() -> None:
    report = read("status_approved")
    assert (report.psp_payment_id, report.refunded) == (None, None)


def test_refund_request_follows_the_payments_reference() -> None:
    request = ADAPTER.build_refund(refund_request(), settings())
    assert (request.method, request.url, request.operation) == (
        "POST",
        f"https://api-m.paypal.com/v2/payments/captures/{CAPTURE_ID}/refund",
        "refund",
    )
    assert request.headers == {
        "PayPal-Request-Id": f"pd-refund-{SAMPLE_REFUND_ID}",
        "Prefer": "return=representation",
    }
    assert request.json == {
        "amount": {"currency_code": "USD", "value": "40.00"},
        "custom_id": str(ORDER.id),
        "note_to_payer": "Returned by the buyer",
    }


def test_refund_without_a_reason_sends_no_note() -> None:
    request = ADAPTER.build_refund(refund_request(reason="  "), settings())
    assert "note_to_payer" not in request.json


@pytest.mark.parametrize("payment", [None, "", "not/a/capture"])
def test_refund_without_the_capture_id_is_refused_before_any_call(payment: Any) -> None:
    with pytest.raises(InvalidInput, match="psp_payment_id"):
        ADAPTER.build_refund(refund_request(psp_payment_id=payment), settings())


def test_refund_status_reads_the_refund() -> None:
    request = ADAPTER.build_refund_status(refund_request(psp_refund_id=REFUND_ID), settings())
    assert (request.method, request.url) == (
        "GET",
        f"https://api-m.paypal.com/v2/payments/refunds/{REFUND_ID}",
    )
    with pytest.raises(InvalidInput, match="psp_refund_id"):
        ADAPTER.build_refund_status(refund_request(), settings())


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("refund_pending", RefundState.PENDING),
        ("refund_completed", RefundState.SUCCEEDED),
        ("refund_failed", RefundState.FAILED),
        ("refund_cancelled", RefundState.FAILED),
    ],
)
def test_refund_statuses(name: str, state: RefundState) -> None:
    report = ADAPTER.parse_refund(refund_request(), fixture(name, 201), settings())
    assert (report.state, report.psp_refund_id, report.money) == (
        state,
        REFUND_ID,
        Money(4000, "USD"),
    )


def test_pending_refund_says_why() -> None:
    report = ADAPTER.parse_refund(refund_request(), fixture("refund_pending", 201), settings())
    assert report.reason == "ECHECK"


@pytest.mark.parametrize("name", ["error_refund_amount_exceeded", "error_capture_fully_refunded"])
def test_refused_refund_is_a_permanent_rejection(name: str) -> None:
    with pytest.raises(PspRejected, match=r"REFUND_AMOUNT_EXCEEDED|CAPTURE_FULLY_REFUNDED"):
        ADAPTER.parse_refund(refund_request(), fixture(name, 422), settings())


@pytest.mark.parametrize(
    ("name", "code"), [("error_resource_not_found", 404), ("error_resource_conflict", 409)]
)
def test_refund_errors_that_say_nothing_final_are_transient(name: str, code: int) -> None:
    with pytest.raises(TransientError):
        ADAPTER.parse_refund(refund_request(), fixture(name, code), settings())


def test_refused_refund_status_read_is_transient() -> None:
    with pytest.raises(TransientError):
        ADAPTER.parse_refund_status(
            refund_request(psp_refund_id=REFUND_ID),
            fixture("error_invalid_request", 400),
            settings(),
        )


def test_refund_answer_about_another_refund_is_malformed() -> None:
    with pytest.raises(MalformedResponse, match="another order"):
        ADAPTER.parse_refund(refund_request(), fixture("refund_other_refund", 201), settings())
    with pytest.raises(MalformedResponse, match="not 1JU"):
        ADAPTER.parse_refund_status(
            refund_request(psp_refund_id=REFUND_ID), fixture("refund_other_refund"), settings()
        )


def test_refund_notification_names_the_refund_but_is_only_a_hint() -> None:
    result = ADAPTER.parse_notification(
        notification("notification_payment_capture_refunded"), settings()
    )
    assert (result.verified, result.report) == (False, None)
    assert result.ref == OrderRef(order_id=str(ORDER.id), psp_payment_id=CAPTURE_ID)
    assert result.refund is not None
    assert (result.refund.state, result.refund.psp_refund_id, result.refund.money) == (
        RefundState.SUCCEEDED,
        REFUND_ID,
        Money(4000, "USD"),
    )


def test_reversal_notification_names_the_reversal_as_a_chargeback_hint() -> None:
    result = ADAPTER.parse_notification(
        notification("notification_payment_capture_reversed"), settings()
    )
    assert not result.verified
    assert result.refund is not None
    assert result.refund.psp_refund_id == "4NK90415TJ7209425"
    assert "reversed" in result.refund.reason
    assert result.ref.psp_payment_id == CAPTURE_ID


def test_refund_notification_with_an_unreadable_refund_still_names_the_order() -> None:
    body = fixture_body("notification_payment_capture_refunded")
    body["resource"]["status"] = "SOMETHING_NEW"
    result = ADAPTER.parse_notification(
        Notification(headers={}, body=json.dumps(body).encode()), settings()
    )
    assert result.refund is None
    assert result.ref == OrderRef(order_id=str(ORDER.id), psp_payment_id=CAPTURE_ID)

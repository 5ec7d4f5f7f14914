"""The YooKassa adapter: the conformance kit plus what is particular to YooKassa."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from adapters import yookassa
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    FollowUp,
    InvalidSettings,
    MalformedResponse,
    Notification,
    OrderRef,
    PayoutReport,
    PayoutRequest,
    PayoutState,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
    Reply,
)
from adapters.registry import resolve_settings
from adapters.testing import (
    SAMPLE_PAYOUT_ID,
    SAMPLE_REFUND_ID,
    AdapterConformance,
    FixtureSet,
    NotificationFixtures,
    PayoutFixtures,
    RefundFixtures,
    load_response,
    sample_order,
)
from orders.errors import DispatchError, InvalidInput, PermanentError, TransientError
from orders.model import Order
from orders.money import Money
from orders.status import OrderStatus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yookassa"
PAYMENT_ID = "2f3b588d-000f-5000-8000-1d6e87c7fbde"
SECRET = "test_Fh8hUAVVBGUGbjmlzba6TB0iyUbos_lueTHE-axOwM0"
PAYOUT_SECRET = "live_payout_Zq81mXvB0cT3hYw5rN7kLd2F"
SETTINGS = {
    "shop_id": "100500",
    "secret_key": SECRET,
    "payout_agent_id": "505050",
    "payout_secret_key": PAYOUT_SECRET,
}
REFUND_ID = "216749f7-0016-50be-b000-078d43a63ae4"
PAYOUT_ID = "po-285c0ab7-0003-5000-9000-0e1166498fda"
YOOKASSA_IP = "185.71.76.10"
ADAPTER = yookassa.adapter
ORDER = sample_order(adapter="yookassa")
INVOICED = replace(ORDER, psp_id=PAYMENT_ID)


def fixture(name: str, status_code: int = 200) -> PspResponse:
    return load_response(FIXTURES / f"{name}.json", status_code)


def notification(name: str, remote_addr: str | None = YOOKASSA_IP) -> Notification:
    return Notification(
        headers={"content-type": "application/json"},
        body=(FIXTURES / f"{name}.json").read_bytes(),
        remote_addr=remote_addr,
        received_at=datetime(2025, 2, 10, 10, 16, tzinfo=UTC),
    )


def settings(**overrides: str) -> AdapterSettings:
    return resolve_settings(ADAPTER, configured={**SETTINGS, **overrides}, environ={})


def status(name: str, status_code: int = 200, order: Order = INVOICED) -> Any:
    return ADAPTER.parse_status(order, fixture(name, status_code), settings())


def body_of(request: PspRequest) -> Any:
    return request.json


class TestYooKassaConformance(AdapterConformance):
    adapter = ADAPTER
    settings = SETTINGS
    order = ORDER
    fixtures: ClassVar[FixtureSet] = FixtureSet(
        psp_id=PAYMENT_ID,
        create=fixture("create_pending"),
        states={
            CanonicalState.PENDING: fixture("status_pending"),
            CanonicalState.PAID: fixture("status_succeeded"),
            CanonicalState.REJECTED: fixture("status_canceled_insufficient_funds"),
            CanonicalState.EXPIRED: fixture("status_canceled_expired_on_confirmation"),
            CanonicalState.REFUNDED: fixture("status_refunded"),
        },
        malformed={
            "unknown-status": fixture("status_unknown_status"),
            "amount-as-json-number": fixture("status_amount_as_number"),
        },
        malformed_create={
            "unknown-status": fixture("status_unknown_status"),
            "amount-as-json-number": fixture("status_amount_as_number"),
        },
        # Capture and cancel answer with the payment object, as a status read does
        # (https://yookassa.ru/developers/api#capture_payment, #cancel_payment).
        cancelled=fixture("status_canceled_by_merchant"),
        captured=fixture("status_succeeded"),
        notifications=NotificationFixtures(
            valid=notification("notification_payment_succeeded"),
            tampered=notification("notification_payment_succeeded_tampered"),
            stale=notification("notification_payment_waiting_for_capture_stale"),
            expected_ref=OrderRef(order_id=str(ORDER.id), psp_id=PAYMENT_ID),
            expected_reply=Reply(200, b""),
        ),
        # Create and status reads answer the same refund / payout object
        # (https://yookassa.ru/developers/api#create_refund, #get_refund, #create_payout).
        refunds=RefundFixtures(
            states={
                RefundState.PENDING: fixture("refund_pending"),
                RefundState.SUCCEEDED: fixture("refund_succeeded"),
                RefundState.FAILED: fixture("refund_canceled"),
            },
            rejected=fixture("error_refund_amount_exceeds", 400),
            psp_refund_id=REFUND_ID,
            money=Money(4000, "RUB"),
            malformed={
                "unknown-status": fixture("refund_unknown_status"),
                "another-payment": fixture("refund_of_another_payment"),
            },
        ),
        payouts=PayoutFixtures(
            states={
                PayoutState.PENDING: fixture("payout_pending"),
                PayoutState.SUCCEEDED: fixture("payout_succeeded"),
                PayoutState.FAILED: fixture("payout_canceled"),
            },
            rejected=fixture("error_payout_insufficient_balance", 400),
            psp_payout_id=PAYOUT_ID,
            destination={"type": "yoo_money", "account_number": "41001614575714"},
            malformed={"unknown-status": fixture("payout_unknown_status")},
        ),
    )


# -- amounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("money", "value"),
    [
        (Money(10000, "RUB"), "100.00"),
        (Money(1, "RUB"), "0.01"),
        (Money(123456789, "RUB"), "1234567.89"),
        (Money(500, "JPY"), "500"),
        (Money(1234, "KWD"), "1.234"),
    ],
)
def test_amount_is_a_decimal_string_with_the_currency_exponent(money: Money, value: str) -> None:
    assert yookassa.format_amount(money) == {"value": value, "currency": money.currency}
    response = PspResponse(200, b"")
    assert yookassa.parse_amount(yookassa.format_amount(money), response) == money


@pytest.mark.parametrize(
    "amount",
    [
        {"value": 100.0, "currency": "RUB"},
        {"value": "100.001", "currency": "RUB"},
        {"value": "1.5", "currency": "JPY"},
        {"value": "abc", "currency": "RUB"},
        {"value": "100.00", "currency": "RUR"},
        {"value": "100.00"},
        "100.00 RUB",
    ],
)
def test_unreadable_amount_is_malformed_not_rounded(amount: Any) -> None:
    with pytest.raises(MalformedResponse):
        yookassa.parse_amount(amount, PspResponse(200, b""))


def test_create_body_sends_the_order_amount_as_string() -> None:
    order = replace(ORDER, money=Money(500, "JPY"))
    request = ADAPTER.build_create(order, settings())
    assert body_of(request)["amount"] == {"value": "500", "currency": "JPY"}


# -- requests -----------------------------------------------------------------------------------


def test_create_request_follows_the_api_reference() -> None:
    request = ADAPTER.build_create(ORDER, settings())
    assert request.method == "POST"
    assert request.url == "https://api.yookassa.ru/v3/payments"
    assert request.headers["Idempotence-Key"] == f"pd-{ORDER.id}"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(
        f"100500:{SECRET}".encode()
    ).decode("ascii")
    assert body_of(request) == {
        "amount": {"value": "100.00", "currency": "RUB"},
        "capture": True,
        "confirmation": {"type": "redirect", "return_url": "https://shop.example/return/42"},
        "description": "Order 42",
        "metadata": {"paydispatch_order_id": str(ORDER.id), "paydispatch_number": "42"},
    }


def test_manual_capture_setting_asks_for_two_stage_payment() -> None:
    request = ADAPTER.build_create(ORDER, settings(capture="manual"))
    assert body_of(request)["capture"] is False


def test_unknown_capture_mode_names_the_setting() -> None:
    with pytest.raises(InvalidSettings, match="PAYDISPATCH_YOOKASSA_CAPTURE"):
        ADAPTER.build_create(ORDER, settings(capture="sometimes"))


def test_description_is_cut_to_128_characters_and_never_empty() -> None:
    long = ADAPTER.build_create(replace(ORDER, description="x" * 300), settings())
    empty = ADAPTER.build_create(replace(ORDER, description="  "), settings())
    assert body_of(long)["description"] == "x" * 128
    assert body_of(empty)["description"] == "Order 42"


def test_site_metadata_is_not_forwarded_to_yookassa() -> None:
    order = replace(ORDER, metadata={"cart": [1, 2, 3], "note": "x" * 600})
    request = ADAPTER.build_create(order, settings())
    assert set(body_of(request)["metadata"]) == {"paydispatch_order_id", "paydispatch_number"}


def test_order_without_return_url_is_refused_before_any_call() -> None:
    with pytest.raises(InvalidInput, match="return_url"):
        ADAPTER.build_create(replace(ORDER, return_url=None), settings())


def test_status_request_is_an_unkeyed_get_of_the_payment() -> None:
    request = ADAPTER.build_status(INVOICED, settings())
    assert (request.method, request.url) == (
        "GET",
        f"https://api.yookassa.ru/v3/payments/{PAYMENT_ID}",
    )
    assert "Idempotence-Key" not in request.headers


def test_capture_carries_its_own_idempotence_key_and_our_amount() -> None:
    first = ADAPTER.build_capture(INVOICED, settings())
    again = ADAPTER.build_capture(INVOICED, settings())
    assert first.url == f"https://api.yookassa.ru/v3/payments/{PAYMENT_ID}/capture"
    assert first.method == "POST"
    assert first.headers["Idempotence-Key"] == again.headers["Idempotence-Key"]
    assert first.headers["Idempotence-Key"] != INVOICED.psp_idempotency_key
    assert body_of(first) == {"amount": {"value": "100.00", "currency": "RUB"}}


@pytest.mark.parametrize(
    ("name", "cancellable"),
    [
        ("status_waiting_for_capture", True),
        ("status_pending", False),
        ("status_succeeded", False),
        ("status_canceled_by_merchant", False),
    ],
)
def test_issue12_item14_only_a_payment_waiting_for_capture_is_cancelled(
    name: str, cancellable: bool
) -> None:
    # YooKassa refuses to cancel a pending payment (it lapses by itself): no call is wasted.
    assert ADAPTER.can_cancel(INVOICED, status(name)) is cancellable
    assert ADAPTER.can_cancel(INVOICED, None) is False


def test_cancel_carries_its_own_idempotence_key() -> None:
    request = ADAPTER.build_cancel(INVOICED, settings())
    capture = ADAPTER.build_capture(INVOICED, settings())
    assert request.url == f"https://api.yookassa.ru/v3/payments/{PAYMENT_ID}/cancel"
    assert request.method == "POST"
    assert request.headers["Idempotence-Key"] not in {
        INVOICED.psp_idempotency_key,
        capture.headers["Idempotence-Key"],
    }
    assert len(request.headers["Idempotence-Key"]) <= 64  # YooKassa's limit


def test_status_of_an_order_without_payment_is_refused() -> None:
    with pytest.raises(InvalidInput, match="psp_id"):
        ADAPTER.build_status(ORDER, settings())


# -- create responses ---------------------------------------------------------------------------


def test_create_response_gives_payment_id_and_confirmation_url() -> None:
    invoice = ADAPTER.parse_create(ORDER, fixture("create_pending"))
    assert invoice.psp_id == PAYMENT_ID
    assert invoice.pay_url == (
        f"https://yoomoney.ru/checkout/payments/v2/contract?orderId={PAYMENT_ID}"
    )
    assert invoice.expires_at is None


def test_pending_create_response_without_confirmation_url_is_malformed() -> None:
    body = json.loads((FIXTURES / "create_pending.json").read_bytes())
    del body["confirmation"]
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_create(ORDER, PspResponse(200, json.dumps(body).encode()))


def test_create_replayed_after_payment_gives_invoice_without_pay_url() -> None:
    invoice = ADAPTER.parse_create(ORDER, fixture("status_succeeded"))
    assert (invoice.psp_id, invoice.pay_url) == (PAYMENT_ID, None)


# -- statuses -----------------------------------------------------------------------------------


def test_waiting_for_capture_is_pending_with_a_capture_follow_up() -> None:
    report = status("status_waiting_for_capture")
    assert report.state is CanonicalState.PENDING
    assert report.follow_up is FollowUp.CAPTURE
    assert report.money == Money(10000, "RUB")


def test_succeeded_is_paid_with_the_money_yookassa_reports() -> None:
    report = status("status_succeeded")
    assert (report.state, report.money, report.raw_status) == (
        CanonicalState.PAID,
        Money(10000, "RUB"),
        "succeeded",
    )
    assert report.follow_up is None


def test_partly_refunded_payment_stays_paid() -> None:
    report = status("status_succeeded_partly_refunded")
    assert report.state is CanonicalState.PAID
    assert report.reason == "partly refunded 40.00 RUB"


def test_fully_refunded_payment_is_refunded() -> None:
    assert status("status_refunded").state is CanonicalState.REFUNDED


@pytest.mark.parametrize(
    ("name", "state", "reason"),
    [
        ("expired_on_confirmation", CanonicalState.EXPIRED, "yoo_money: expired_on_confirmation"),
        ("insufficient_funds", CanonicalState.REJECTED, "payment_network: insufficient_funds"),
        ("3d_secure_failed", CanonicalState.REJECTED, "payment_network: 3d_secure_failed"),
        ("by_merchant", CanonicalState.REJECTED, "merchant: canceled_by_merchant"),
        ("expired_on_capture", CanonicalState.REJECTED, "yoo_money: expired_on_capture"),
    ],
)
def test_cancellation_reason_decides_expired_or_rejected(
    name: str, state: CanonicalState, reason: str
) -> None:
    report = status(f"status_canceled_{name}")
    assert (report.state, report.reason, report.raw_status) == (state, reason, "canceled")


def test_status_about_another_payment_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        status("status_succeeded", order=replace(INVOICED, psp_id="another-payment"))


# -- errors -------------------------------------------------------------------------------------


def test_invalid_request_on_create_is_a_permanent_rejection_with_details() -> None:
    with pytest.raises(PspRejected, match=r"invalid_request .*amount\.value"):
        ADAPTER.parse_create(ORDER, fixture("error_invalid_request", 400))


@pytest.mark.parametrize(("name", "code"), [("invalid_credentials", 401), ("forbidden", 403)])
@pytest.mark.parametrize("operation", ["create", "status", "capture", "cancel"])
def test_credential_errors_on_every_operation_reject_our_credentials_not_the_order(
    name: str, code: int, operation: str
) -> None:
    # A wrong shop id or key is no fault of the order: it must neither fail nor go to review.
    response = fixture(f"error_{name}", code)

    def parse() -> object:
        if operation == "create":
            return ADAPTER.parse_create(ORDER, response)
        return ADAPTER.parse_status(INVOICED, response, settings(), operation)

    with pytest.raises(CredentialsRejected) as caught:
        parse()
    assert not isinstance(caught.value, PermanentError)
    assert "PAYDISPATCH_YOOKASSA_SHOP_ID" in str(caught.value)
    assert "PAYDISPATCH_YOOKASSA_SECRET_KEY" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "code"), [("too_many_requests", 429), ("internal_server_error", 500)]
)
def test_overload_and_server_errors_are_transient_everywhere(name: str, code: int) -> None:
    response = fixture(f"error_{name}", code)
    with pytest.raises(TransientError):
        ADAPTER.parse_create(ORDER, response)
    with pytest.raises(TransientError):
        ADAPTER.parse_status(INVOICED, response, settings())


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("invalid_request", 400),
        ("invalid_credentials", 401),
        ("forbidden", 403),
        ("not_found", 404),
    ],
)
def test_errors_on_status_calls_never_end_the_order(name: str, code: int) -> None:
    with pytest.raises(TransientError) as caught:
        ADAPTER.parse_status(INVOICED, fixture(f"error_{name}", code), settings())
    assert not isinstance(caught.value, PermanentError)


def test_unknown_error_code_is_malformed() -> None:
    body = b'{"type": "error", "code": "brand_new_code", "description": "?"}'
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_create(ORDER, PspResponse(400, body))


def test_error_messages_never_carry_the_secret() -> None:
    for name, code in [("invalid_credentials", 401), ("forbidden", 403), ("invalid_request", 400)]:
        with pytest.raises(DispatchError) as caught:
            ADAPTER.parse_create(ORDER, fixture(f"error_{name}", code))
        assert SECRET not in str(caught.value)


# -- notifications ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "notification_payment_succeeded",
        "notification_payment_canceled",
        "notification_refund_succeeded",
    ],
)
def test_notification_is_an_unverified_hint_naming_the_payment(name: str) -> None:
    result = ADAPTER.parse_notification(notification(name), settings())
    assert result.verified is False
    assert result.report is None
    assert result.ref.psp_id == PAYMENT_ID
    assert result.reply == Reply(200, b"")


def test_notification_from_outside_yookassa_networks_is_refused_and_names_nothing() -> None:
    result = ADAPTER.parse_notification(
        notification("notification_payment_succeeded", remote_addr="203.0.113.7"), settings()
    )
    assert result.reply.status_code == 403
    assert result.ref == OrderRef()
    assert result.verified is False


@pytest.mark.parametrize("remote_addr", [None, "not-an-address", "77.75.156.12"])
def test_notification_with_unknown_sender_is_refused_when_checking(
    remote_addr: str | None,
) -> None:
    result = ADAPTER.parse_notification(
        notification("notification_payment_succeeded", remote_addr=remote_addr), settings()
    )
    assert result.reply.status_code == 403


@pytest.mark.parametrize("remote_addr", ["77.75.153.127", "77.75.156.35", "2a02:5180:0:1509::7"])
def test_notification_from_every_published_network_is_accepted(remote_addr: str) -> None:
    result = ADAPTER.parse_notification(
        notification("notification_payment_succeeded", remote_addr=remote_addr), settings()
    )
    assert result.reply.status_code == 200
    assert result.ref.psp_id == PAYMENT_ID


def test_ip_check_can_be_turned_off_for_proxies() -> None:
    result = ADAPTER.parse_notification(
        notification("notification_payment_succeeded", remote_addr="10.0.0.5"),
        settings(notify_ip_check="false"),
    )
    assert result.reply.status_code == 200
    assert result.ref.psp_id == PAYMENT_ID
    assert result.verified is False


def test_unreadable_ip_check_setting_names_the_variable() -> None:
    with pytest.raises(InvalidSettings, match="PAYDISPATCH_YOOKASSA_NOTIFY_IP_CHECK"):
        ADAPTER.parse_notification(
            notification("notification_payment_succeeded"), settings(notify_ip_check="maybe")
        )


def test_notification_about_a_payout_is_acknowledged_without_an_order() -> None:
    result = ADAPTER.parse_notification(notification("notification_payout_succeeded"), settings())
    assert result.reply == Reply(200, b"")
    assert result.ref == OrderRef()


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"type": "notification", "event": "payment.succeeded"}', b"<html>"],
)
def test_broken_notification_body_is_malformed(body: bytes) -> None:
    broken = replace(notification("notification_payment_succeeded"), body=body)
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_notification(broken, settings())


# -- refunds and payouts (issue #14) ------------------------------------------------------------

PAID = replace(INVOICED, status=OrderStatus.PAID)


REFUNDED = Money(4000, "RUB")


def refund_of(money: Money = REFUNDED, psp_refund_id: str | None = None) -> RefundRequest:
    return RefundRequest(
        id=SAMPLE_REFUND_ID,
        order=PAID,
        money=money,
        reason="Returned by the buyer",
        psp_refund_id=psp_refund_id,
    )


def payout_of(destination: dict[str, str] | None = None) -> PayoutRequest:
    return PayoutRequest(
        id=SAMPLE_PAYOUT_ID,
        money=Money(10000, "RUB"),
        destination=destination or {"type": "yoo_money", "account_number": "41001614575714"},
        description="Withdrawal 42",
    )


def test_refund_request_is_the_reference_body_with_our_key() -> None:
    request = ADAPTER.build_refund(refund_of(), settings())
    assert (request.method, request.url) == ("POST", "https://api.yookassa.ru/v3/refunds")
    assert request.headers["Idempotence-Key"] == f"pd-refund-{SAMPLE_REFUND_ID}"
    assert len(request.headers["Idempotence-Key"]) <= 64
    assert request.json == {
        "payment_id": PAYMENT_ID,
        "amount": {"value": "40.00", "currency": "RUB"},
        "description": "Returned by the buyer",
    }


def test_refund_of_an_order_without_a_payment_is_invalid_input() -> None:
    refund = replace(refund_of(), order=replace(PAID, psp_id=None))
    with pytest.raises(InvalidInput):
        ADAPTER.build_refund(refund, settings())


def test_refund_status_reads_the_refund_by_yookassas_id() -> None:
    request = ADAPTER.build_refund_status(refund_of(psp_refund_id=REFUND_ID), settings())
    assert (request.method, request.url) == (
        "GET",
        f"https://api.yookassa.ru/v3/refunds/{REFUND_ID}",
    )
    with pytest.raises(InvalidInput):
        ADAPTER.build_refund_status(refund_of(), settings())


def test_canceled_refund_is_failed_with_its_cancellation_details() -> None:
    report = ADAPTER.parse_refund_status(
        refund_of(psp_refund_id=REFUND_ID), fixture("refund_canceled"), settings()
    )
    assert report == RefundReport(
        state=RefundState.FAILED,
        psp_refund_id=REFUND_ID,
        money=Money(4000, "RUB"),
        raw_status="canceled",
        reason="yoo_money: insufficient_funds",
    )


def test_refund_answer_about_another_refund_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_refund_status(
            refund_of(psp_refund_id="another-refund"), fixture("refund_succeeded"), settings()
        )


@pytest.mark.parametrize(
    ("name", "status_code", "error"),
    [
        ("error_refund_amount_exceeds", 400, PspRejected),
        ("error_not_found", 404, PspRejected),
        ("error_invalid_credentials", 401, CredentialsRejected),
        ("error_internal_server_error", 500, TransientError),
        ("error_too_many_requests", 429, TransientError),
    ],
)
def test_refund_errors_map_to_what_the_dispatcher_should_do(
    name: str, status_code: int, error: type[DispatchError]
) -> None:
    with pytest.raises(error):
        ADAPTER.parse_refund(refund_of(), fixture(name, status_code), settings())


def test_refused_status_read_of_a_refund_is_never_final() -> None:
    with pytest.raises(TransientError):
        ADAPTER.parse_refund_status(
            refund_of(psp_refund_id=REFUND_ID), fixture("error_not_found", 404), settings()
        )


def test_status_report_carries_refunded_amount() -> None:
    assert status("status_succeeded_partly_refunded").refunded == Money(4000, "RUB")
    assert status("status_refunded").refunded == Money(10000, "RUB")
    assert status("status_succeeded").refunded == Money(0, "RUB")
    assert status("status_pending").refunded is None


def test_refund_notification_names_the_order_and_the_refund() -> None:
    result = ADAPTER.parse_notification(notification("notification_refund_succeeded"), settings())
    assert result.ref.psp_id == PAYMENT_ID
    assert result.verified is False
    assert result.refund == RefundReport(
        state=RefundState.SUCCEEDED,
        psp_refund_id=REFUND_ID,
        money=Money(10000, "RUB"),
        raw_status="succeeded",
    )


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("notification_payout_succeeded", PayoutState.SUCCEEDED),
        ("notification_payout_canceled", PayoutState.FAILED),
    ],
)
def test_payout_notification_reports_the_payout(name: str, state: PayoutState) -> None:
    result = ADAPTER.parse_notification(notification(name), settings())
    assert result.ref == OrderRef()
    assert result.verified is False
    assert isinstance(result.payout, PayoutReport)
    assert (result.payout.state, result.payout.psp_payout_id) == (state, PAYOUT_ID)


def test_payout_uses_the_payout_gateways_credentials_not_the_shops() -> None:
    request = ADAPTER.build_payout(payout_of(), settings())
    assert (request.method, request.url) == ("POST", "https://api.yookassa.ru/v3/payouts")
    expected = base64.b64encode(f"505050:{PAYOUT_SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.headers["Idempotence-Key"] == f"pd-payout-{SAMPLE_PAYOUT_ID}"
    assert request.json == {
        "amount": {"value": "100.00", "currency": "RUB"},
        "payout_destination_data": {"type": "yoo_money", "account_number": "41001614575714"},
        "description": "Withdrawal 42",
        "metadata": {"paydispatch_payout_id": str(SAMPLE_PAYOUT_ID)},
    }
    status_request = ADAPTER.build_payout_status(
        replace(payout_of(), psp_payout_id=PAYOUT_ID), settings()
    )
    assert status_request.url == f"https://api.yookassa.ru/v3/payouts/{PAYOUT_ID}"
    assert status_request.headers["Authorization"] == f"Basic {expected}"


def test_payout_to_a_token_sends_the_token_alone() -> None:
    request = ADAPTER.build_payout(payout_of({"payout_token": "99091209012"}), settings())
    assert request.json["payout_token"] == "99091209012"
    assert "payout_destination_data" not in request.json
    with pytest.raises(InvalidInput):
        ADAPTER.build_payout(payout_of({"payout_token": "x", "type": "yoo_money"}), settings())
    with pytest.raises(InvalidInput):
        ADAPTER.build_payout(payout_of({"account_number": "41001614575714"}), settings())


def test_payouts_without_gateway_credentials_name_the_settings() -> None:
    plain = resolve_settings(
        ADAPTER, configured={"shop_id": "100500", "secret_key": SECRET}, environ={}
    )
    with pytest.raises(InvalidSettings, match="PAYDISPATCH_YOOKASSA_PAYOUT_AGENT_ID"):
        ADAPTER.build_payout(payout_of(), plain)
    # Payments and refunds need no payout gateway.
    assert ADAPTER.build_refund(refund_of(), plain).operation == "refund"

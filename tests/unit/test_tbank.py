"""The T-Bank adapter: the conformance kit plus what is particular to T-Bank."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from adapters import tbank
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    FollowUp,
    InvalidSettings,
    InvoiceMayExist,
    MalformedResponse,
    Notification,
    OrderRef,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundRequest,
    RefundState,
    Reply,
    StatusReport,
)
from adapters.registry import resolve_settings
from adapters.testing import (
    SAMPLE_REFUND_ID,
    AdapterConformance,
    FixtureSet,
    NotificationFixtures,
    RefundFixtures,
    SignatureVector,
    load_response,
    sample_order,
)
from orders.errors import InvalidInput, TransientError
from orders.money import Money
from orders.status import OrderStatus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tbank"
TERMINAL = "1321054611234DEMO"
PASSWORD = "Dfsfh56dgKl"
PAYMENT_ID = "3093639567"
SETTINGS = {"terminal_key": TERMINAL, "password": PASSWORD}
ADAPTER = tbank.adapter
ORDER = sample_order(adapter="tbank")
INVOICED = replace(ORDER, psp_id=PAYMENT_ID)
OK = Reply(200, b"OK", "text/plain")


def fixture(name: str, status_code: int = 200) -> PspResponse:
    return load_response(FIXTURES / f"{name}.json", status_code)


def body_of(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_bytes())
    return loaded


def answer(body: Any, status_code: int = 200) -> PspResponse:
    return PspResponse(status_code, json.dumps(body, ensure_ascii=False).encode())


def notification(name: str) -> Notification:
    return Notification(
        headers={"content-type": "application/json"},
        body=(FIXTURES / f"{name}.json").read_bytes(),
        remote_addr="91.194.226.10",
        received_at=datetime(2025, 2, 10, 10, 16, tzinfo=UTC),
    )


def settings(**overrides: str) -> AdapterSettings:
    return resolve_settings(ADAPTER, configured={**SETTINGS, **overrides}, environ={})


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _vector(entry: dict[str, Any]) -> SignatureVector:
    def compute() -> str:
        return tbank.token(entry["params"], entry["password"])

    return SignatureVector(entry["name"], compute, entry["token"])


VECTORS = tuple(_vector(entry) for entry in json.loads((FIXTURES / "vectors.json").read_bytes()))


class TestTBankConformance(AdapterConformance):
    adapter = ADAPTER
    settings = SETTINGS
    order = ORDER
    vectors = VECTORS
    fixtures: ClassVar[FixtureSet] = FixtureSet(
        psp_id=PAYMENT_ID,
        create=fixture("init_new"),
        states={
            CanonicalState.PENDING: fixture("getstate_form_showed"),
            CanonicalState.PAID: fixture("getstate_confirmed"),
            CanonicalState.REJECTED: fixture("getstate_rejected"),
            CanonicalState.EXPIRED: fixture("getstate_deadline_expired"),
            CanonicalState.REFUNDED: fixture("getstate_refunded"),
        },
        malformed={
            "unknown-status": fixture("getstate_unknown_status"),
            "amount-as-string": fixture("getstate_amount_as_string"),
            "another-payment": fixture("getstate_other_payment"),
            "unknown-error-code": fixture("init_error_unknown_code"),
        },
        malformed_create={
            "unknown-error-code": fixture("init_error_unknown_code"),
            "already-confirmed": fixture("getstate_confirmed"),
        },
        malformed_lookup={"unknown-error-code": fixture("init_error_unknown_code")},
        lookup_found=fixture("checkorder_found"),
        lookup_missing=fixture("checkorder_not_found"),
        cancelled=fixture("cancel_reversed"),
        cancelled_state=CanonicalState.REJECTED,
        captured=fixture("confirm_confirmed"),
        refunds=RefundFixtures(
            # Status reads are GetState of the payment; the Cancel answers come first.
            states={
                RefundState.PENDING: fixture("getstate_async_refunding"),
                RefundState.SUCCEEDED: fixture("getstate_partial_refunded"),
                RefundState.FAILED: fixture("getstate_confirmed"),
            },
            created={
                RefundState.PENDING: fixture("cancel_async_refunding"),
                RefundState.SUCCEEDED: fixture("cancel_partial_refunded"),
            },
            rejected=fixture("cancel_error_amount"),
            psp_refund_id=str(SAMPLE_REFUND_ID),
            money=Money(4000, "RUB"),
            malformed={
                "unknown-status": fixture("getstate_unknown_status"),
                "another-payment": fixture("getstate_other_payment"),
                "unknown-error-code": fixture("init_error_unknown_code"),
            },
        ),
        notifications=NotificationFixtures(
            valid=notification("notification_confirmed"),
            tampered=notification("notification_confirmed_tampered"),
            # Genuine and old: T-Bank's token has no timestamp, so it still verifies.
            stale=notification("notification_authorized"),
            expected_ref=OrderRef(order_id=str(ORDER.id), psp_id=PAYMENT_ID),
            expected_reply=OK,
        ),
    )

    def test_money_out_status_request_names_it(self, money_out: str) -> None:
        """T-Bank keeps no refund of its own to read: a refund's status is its payment's
        (GetState), never a second Cancel (which T-Bank does not deduplicate for SBP). So the
        request names the payment, fixed for a fixed refund; the kit's other checks stand."""
        if money_out != "refunds":
            super().test_money_out_status_request_names_it(money_out)
            return
        known = replace(refund_request(), psp_refund_id=str(SAMPLE_REFUND_ID))
        first = ADAPTER.build_refund_status(known, settings())
        assert first == ADAPTER.build_refund_status(known, settings())
        assert first.json["PaymentId"] == PAYMENT_ID


# -- the token ----------------------------------------------------------------------------------


def test_token_signs_root_values_sorted_by_key_with_the_password() -> None:
    params = {"OrderId": "o-1", "Amount": 500, "TerminalKey": "T"}
    # Sorted keys: Amount, OrderId, Password, TerminalKey.
    assert tbank.token(params, "pw") == sha256("500o-1pwT")


def test_token_writes_booleans_as_true_false_and_leaves_nested_values_out() -> None:
    params = {"B": True, "C": False, "DATA": {"x": "1"}, "Items": [1, 2], "Token": "old", "N": None}
    assert tbank.token(params, "pw") == sha256("truefalsepw")


def test_signed_request_body_verifies_with_the_password_only() -> None:
    body = ADAPTER.build_create(ORDER, settings()).json
    assert body["Token"] == tbank.token(body, PASSWORD)
    assert body["Token"] != tbank.token(body, PASSWORD + "x")


# -- requests -----------------------------------------------------------------------------------


def test_init_request_follows_the_reference() -> None:
    request = ADAPTER.build_create(ORDER, settings())
    assert (request.method, request.url, request.operation) == (
        "POST",
        "https://securepay.tinkoff.ru/v2/Init",
        "create",
    )
    assert request.headers == {"Content-Type": "application/json"}
    body = dict(request.json)
    token = body.pop("Token")
    assert body == {
        "TerminalKey": TERMINAL,
        "Amount": 10000,
        "OrderId": str(ORDER.id),
        "Description": "Order 42",
        "PayType": "O",
        "RedirectDueDate": "2025-02-10T11:14:00+00:00",
        "DATA": {"OperationInitiatorType": "0"},
        "SuccessURL": "https://shop.example/return/42",
        "FailURL": "https://shop.example/return/42",
    }
    assert token == tbank.token(body, PASSWORD)


def test_two_stage_setting_asks_for_a_two_stage_payment() -> None:
    assert ADAPTER.build_create(ORDER, settings(two_stage="true")).json["PayType"] == "T"


def test_unreadable_two_stage_setting_names_the_variable() -> None:
    with pytest.raises(InvalidSettings, match="PAYDISPATCH_TBANK_TWO_STAGE"):
        ADAPTER.build_create(ORDER, settings(two_stage="sometimes"))


def test_notify_url_setting_becomes_the_notification_url_of_init() -> None:
    url = "https://pay.example/v1/callbacks/tbank"
    assert ADAPTER.build_create(ORDER, settings(notify_url=url)).json["NotificationURL"] == url
    assert "NotificationURL" not in ADAPTER.build_create(ORDER, settings()).json
    with pytest.raises(InvalidSettings, match="PAYDISPATCH_TBANK_NOTIFY_URL"):
        ADAPTER.build_create(ORDER, settings(notify_url="callbacks/tbank"))


def test_order_without_return_url_leaves_the_terminals_urls() -> None:
    body = ADAPTER.build_create(replace(ORDER, return_url=None), settings()).json
    assert "SuccessURL" not in body
    assert "FailURL" not in body


def test_redirect_due_date_is_the_deadline_in_whole_seconds() -> None:
    deadline = datetime(2025, 2, 10, 13, 14, 59, 999_000, tzinfo=UTC)
    body = ADAPTER.build_create(replace(ORDER, expires_at=deadline), settings()).json
    # Cut down, never rounded up: the pay link never outlives our final status check.
    assert body["RedirectDueDate"] == "2025-02-10T13:14:59+00:00"


def test_redirect_due_date_is_capped_at_90_days_after_creation() -> None:
    order = replace(ORDER, expires_at=ORDER.created_at + timedelta(days=200))
    body = ADAPTER.build_create(order, settings()).json
    assert body["RedirectDueDate"] == (ORDER.created_at + timedelta(days=90)).isoformat()


def test_description_is_cut_to_140_characters_and_never_empty() -> None:
    long = ADAPTER.build_create(replace(ORDER, description="x" * 300), settings()).json
    empty = ADAPTER.build_create(replace(ORDER, description="  "), settings()).json
    assert long["Description"] == "x" * 140
    assert empty["Description"] == "Order 42"


def test_order_in_another_currency_is_refused_before_any_call() -> None:
    with pytest.raises(InvalidInput, match="RUB"):
        ADAPTER.build_create(replace(ORDER, money=Money(1000, "USD")), settings())


@pytest.mark.parametrize(
    ("build", "method", "operation", "params"),
    [
        (ADAPTER.build_status, "GetState", "status", {"PaymentId": PAYMENT_ID}),
        (ADAPTER.build_capture, "Confirm", "capture", {"PaymentId": PAYMENT_ID, "Amount": 10000}),
        (ADAPTER.build_cancel, "Cancel", "cancel", {"PaymentId": PAYMENT_ID}),
        (ADAPTER.build_lookup, "CheckOrder", "lookup", {"OrderId": str(ORDER.id)}),
    ],
)
def test_other_requests_are_signed_posts_of_their_method(
    build: Callable[..., PspRequest], method: str, operation: str, params: dict[str, Any]
) -> None:
    request = build(INVOICED, settings(api_url="https://rest-api-test.tinkoff.ru/v2/"))
    assert (request.method, request.url, request.operation) == (
        "POST",
        f"https://rest-api-test.tinkoff.ru/v2/{method}",
        operation,
    )
    body = dict(request.json)
    assert body.pop("Token") == tbank.token(body, PASSWORD)
    assert body == {"TerminalKey": TERMINAL, **params}


def test_status_of_an_order_without_payment_is_refused() -> None:
    with pytest.raises(InvalidInput, match="psp_id"):
        ADAPTER.build_status(ORDER, settings())


# -- statuses -----------------------------------------------------------------------------------


def status_answer(status: str, **changes: Any) -> PspResponse:
    return answer({**body_of("getstate_confirmed"), "Status": status, **changes})


def read(status: str, *, two_stage: bool = False, operation: str = "status") -> StatusReport:
    flag = "true" if two_stage else "false"
    return ADAPTER.parse_status(
        INVOICED, status_answer(status), settings(two_stage=flag), operation
    )


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("NEW", CanonicalState.PENDING),
        ("FORM_SHOWED", CanonicalState.PENDING),
        ("AUTHORIZING", CanonicalState.PENDING),
        ("3DS_CHECKING", CanonicalState.PENDING),
        ("3DS_CHECKED", CanonicalState.PENDING),
        ("PAY_CHECKING", CanonicalState.PENDING),
        ("CONFIRMING", CanonicalState.PENDING),
        ("REVERSING", CanonicalState.PENDING),
        ("CONFIRMED", CanonicalState.PAID),
        ("REFUNDING", CanonicalState.PAID),
        ("ASYNC_REFUNDING", CanonicalState.PAID),
        ("PARTIAL_REFUNDED", CanonicalState.PAID),
        ("REFUNDED", CanonicalState.REFUNDED),
        ("REJECTED", CanonicalState.REJECTED),
        ("AUTH_FAIL", CanonicalState.REJECTED),
        ("ATTEMPTS_EXPIRED", CanonicalState.REJECTED),
        ("CANCELED", CanonicalState.REJECTED),
        ("REVERSED", CanonicalState.REJECTED),
        ("DEADLINE_EXPIRED", CanonicalState.EXPIRED),
    ],
)
def test_status_maps_to_its_canonical_state(status: str, state: CanonicalState) -> None:
    report = read(status)
    assert (report.state, report.raw_status, report.follow_up) == (state, status, None)
    assert report.psp_id == PAYMENT_ID
    assert report.money == Money(10000, "RUB")


def test_authorized_is_a_hold_to_capture_only_with_two_stage_payments() -> None:
    hold = read("AUTHORIZED", two_stage=True)
    passing = read("AUTHORIZED", two_stage=False)
    assert (hold.state, hold.follow_up) == (CanonicalState.PENDING, FollowUp.CAPTURE)
    assert (passing.state, passing.follow_up) == (CanonicalState.PENDING, None)


def test_partly_released_hold_still_waits_for_capture() -> None:
    report = read("PARTIAL_REVERSED", two_stage=True)
    assert (report.state, report.follow_up) == (CanonicalState.PENDING, FollowUp.CAPTURE)


def test_refunds_in_progress_or_partial_say_so() -> None:
    assert read("PARTIAL_REFUNDED").reason == "partly refunded"
    assert read("REFUNDING").reason == "refund in progress"
    assert read("ASYNC_REFUNDING").reason == "refund in progress"


@pytest.mark.parametrize("status", ["UNKNOWN", "TELEPORTED", ""])
def test_unknown_status_is_malformed_not_final(status: str) -> None:
    with pytest.raises(MalformedResponse):
        read(status)


@pytest.mark.parametrize("amount", [100.5, "10000", None, -1, True])
def test_unreadable_amount_is_malformed(amount: Any) -> None:
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_status(INVOICED, status_answer("CONFIRMED", Amount=amount), settings())


def test_answer_about_another_order_is_malformed() -> None:
    with pytest.raises(MalformedResponse, match="OrderId"):
        ADAPTER.parse_status(INVOICED, status_answer("CONFIRMED", OrderId="other"), settings())


def test_confirm_answer_reports_the_amount_confirm_was_asked_for() -> None:
    report = ADAPTER.parse_status(INVOICED, fixture("confirm_confirmed"), settings(), "capture")
    assert (report.state, report.money) == (CanonicalState.PAID, ORDER.money)


def test_cancel_answer_reports_its_status_and_no_amount() -> None:
    report = ADAPTER.parse_status(INVOICED, fixture("cancel_reversed"), settings(), "cancel")
    assert (report.state, report.raw_status, report.money) == (
        CanonicalState.REJECTED,
        "REVERSED",
        None,
    )


# -- create answers -----------------------------------------------------------------------------


def test_init_answer_gives_payment_id_and_payment_url() -> None:
    invoice = ADAPTER.parse_create(ORDER, fixture("init_new"))
    assert invoice.psp_id == PAYMENT_ID
    assert invoice.pay_url == "https://securepay.tinkoff.ru/new/fU1ppgqa"


def test_init_answer_without_payment_url_is_malformed() -> None:
    body = body_of("init_new")
    del body["PaymentURL"]
    with pytest.raises(MalformedResponse, match="PaymentURL"):
        ADAPTER.parse_create(ORDER, answer(body))


@pytest.mark.parametrize("name", ["init_error_duplicate_order", "init_error_paid_order"])
def test_duplicate_order_id_means_the_invoice_may_exist(name: str) -> None:
    with pytest.raises(InvoiceMayExist):
        ADAPTER.parse_create(ORDER, fixture(name))


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("init_error_invalid_token", CredentialsRejected),
        ("init_error_terminal_not_found", CredentialsRejected),
        ("init_error_redirect_due_date", PspRejected),
        ("init_error_currency", PspRejected),
        ("init_error_internal", tbank.TBankUnavailable),
        ("init_error_unknown_code", MalformedResponse),
    ],
)
def test_init_errors_map_to_what_the_caller_should_do(name: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        ADAPTER.parse_create(ORDER, fixture(name))


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("getstate_error_not_found", tbank.TBankRefused),
        ("confirm_error_wrong_state", tbank.TBankRefused),
        ("init_error_redirect_due_date", tbank.TBankRefused),
        ("init_error_duplicate_order", tbank.TBankRefused),
        ("init_error_invalid_token", CredentialsRejected),
        ("init_error_internal", tbank.TBankUnavailable),
        ("init_error_unknown_code", MalformedResponse),
    ],
)
def test_errors_of_other_calls_are_never_final(name: str, error: type[Exception]) -> None:
    for operation in ("status", "capture", "cancel"):
        with pytest.raises(error) as raised:
            ADAPTER.parse_status(INVOICED, fixture(name), settings(), operation)
        assert isinstance(raised.value, TransientError)


@pytest.mark.parametrize("status_code", [401, 403])
def test_http_refusal_of_our_credentials_is_credentials_rejected(status_code: int) -> None:
    response = PspResponse(status_code, b"<html>Forbidden</html>")
    with pytest.raises(CredentialsRejected, match="PAYDISPATCH_TBANK_PASSWORD"):
        ADAPTER.parse_create(ORDER, response)


def test_error_text_never_carries_the_password() -> None:
    with pytest.raises(CredentialsRejected) as raised:
        ADAPTER.parse_create(ORDER, fixture("init_error_invalid_token"))
    assert PASSWORD not in str(raised.value)
    assert "204" in str(raised.value)


# -- lookup -------------------------------------------------------------------------------------


def test_lookup_finds_the_payment_without_a_pay_url() -> None:
    invoice = ADAPTER.parse_lookup(ORDER, fixture("checkorder_found"), settings())
    assert invoice is not None
    assert (invoice.psp_id, invoice.pay_url) == (PAYMENT_ID, None)


def test_lookup_of_several_payments_prefers_the_one_that_took_money() -> None:
    invoice = ADAPTER.parse_lookup(ORDER, fixture("checkorder_several"), settings())
    assert invoice is not None
    assert invoice.psp_id == PAYMENT_ID


def test_lookup_of_failed_payments_only_still_names_one() -> None:
    body = body_of("checkorder_several")
    body["Payments"] = [p | {"Status": "REJECTED"} for p in body["Payments"]]
    invoice = ADAPTER.parse_lookup(ORDER, answer(body), settings())
    assert invoice is not None
    assert invoice.psp_id == "3093630003"


@pytest.mark.parametrize("name", ["checkorder_not_found", "checkorder_empty"])
def test_lookup_answers_none_when_t_bank_has_no_payment(name: str) -> None:
    assert ADAPTER.parse_lookup(ORDER, fixture(name), settings()) is None


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (fixture("init_error_internal"), tbank.TBankUnavailable),
        (fixture("init_error_invalid_token"), CredentialsRejected),
        (fixture("getstate_error_not_found"), tbank.TBankRefused),
        (answer({"Success": True, "ErrorCode": "0", "OrderId": str(ORDER.id)}), MalformedResponse),
        (PspResponse(503, b""), tbank.TBankUnavailable),
    ],
)
def test_lookup_that_does_not_tell_never_answers_none(
    response: PspResponse, error: type[Exception]
) -> None:
    with pytest.raises(error):
        ADAPTER.parse_lookup(ORDER, response, settings())


# -- cancel -------------------------------------------------------------------------------------


def test_only_a_two_stage_hold_may_be_cancelled() -> None:
    def allowed(status: str, two_stage: bool) -> bool:
        return ADAPTER.can_cancel(INVOICED, read(status, two_stage=two_stage))

    assert allowed("AUTHORIZED", two_stage=True)
    assert allowed("PARTIAL_REVERSED", two_stage=True)
    assert not allowed("AUTHORIZED", two_stage=False)  # one-stage: about to be confirmed
    for status in ("NEW", "FORM_SHOWED", "3DS_CHECKING", "CONFIRMING", "CONFIRMED", "REFUNDED"):
        assert not allowed(status, two_stage=True), status
    assert not ADAPTER.can_cancel(INVOICED, None)


# -- notifications ------------------------------------------------------------------------------


def notify(name: str, **overrides: str) -> Any:
    return ADAPTER.parse_notification(notification(name), settings(**overrides))


def test_genuine_notification_is_verified_and_answered_ok() -> None:
    result = notify("notification_confirmed")
    assert result.verified
    assert result.reply == OK
    assert result.ref == OrderRef(order_id=str(ORDER.id), psp_id=PAYMENT_ID)
    assert result.report is not None
    assert (result.report.state, result.report.money) == (CanonicalState.PAID, ORDER.money)


def test_the_references_own_notification_example_verifies() -> None:
    result = notify("notification_docs_example")
    assert result.verified
    assert result.ref == OrderRef(order_id="201709", psp_id="8742591")


def test_declined_notification_reports_rejected() -> None:
    result = notify("notification_rejected")
    assert result.verified
    assert result.report is not None
    assert result.report.state is CanonicalState.REJECTED


def test_genuine_notification_of_no_payment_status_is_acknowledged_and_names_the_order() -> None:
    result = notify("notification_receipt")
    assert (result.verified, result.report, result.reply) == (True, None, OK)
    assert result.ref == OrderRef(order_id=str(ORDER.id), psp_id=PAYMENT_ID)


@pytest.mark.parametrize(
    "name", ["notification_confirmed_tampered", "notification_confirmed_wrong_password"]
)
def test_notification_with_a_wrong_token_is_refused_and_names_nothing(name: str) -> None:
    result = notify(name)
    assert not result.verified
    assert result.ref == OrderRef()
    assert result.reply.status_code == 403
    assert b"OK" not in result.reply.body


def test_notification_for_another_terminal_is_refused() -> None:
    body = body_of("notification_confirmed")
    body["TerminalKey"] = "OtherTerminal"
    body["Token"] = tbank.token(body, PASSWORD)
    result = ADAPTER.parse_notification(
        Notification(headers={}, body=json.dumps(body).encode()), settings()
    )
    assert (result.verified, result.ref, result.reply.status_code) == (False, OrderRef(), 403)


@pytest.mark.parametrize(
    "body", [b"", b"<html>hi</html>", b"[]", b'{"OrderId": "x"}', b'{"Token": 5}']
)
def test_unreadable_or_unsigned_notification_is_refused(body: bytes) -> None:
    result = ADAPTER.parse_notification(Notification(headers={}, body=body), settings())
    assert (result.verified, result.ref, result.reply.status_code) == (False, OrderRef(), 403)


def test_notification_token_signs_numbers_as_written() -> None:
    body = b'{"TerminalKey": "T", "Amount": 10000, "Success": true, "Token": "%s"}'
    expected = sha256("10000" + PASSWORD + "trueT")
    assert tbank.notification_token_valid(body.replace(b"%s", expected.encode()), PASSWORD)
    assert not tbank.notification_token_valid(body.replace(b"%s", b"0" * 64), PASSWORD)


# -- refunds (issue #14) --------------------------------------------------------------------------

PAID = replace(INVOICED, status=OrderStatus.PAID)


def refund_request(**changes: Any) -> RefundRequest:
    request = RefundRequest(
        id=SAMPLE_REFUND_ID, order=PAID, money=Money(4000, "RUB"), reason="Returned by the buyer"
    )
    return replace(request, **changes)


def test_refund_is_a_signed_cancel_with_amount_and_our_id_as_external_request_id() -> None:
    request = ADAPTER.build_refund(refund_request(), settings())
    assert (request.method, request.url, request.operation) == (
        "POST",
        "https://securepay.tinkoff.ru/v2/Cancel",
        "refund",
    )
    body = dict(request.json)
    assert body.pop("Token") == tbank.token(body, PASSWORD)
    assert body == {
        "TerminalKey": TERMINAL,
        "PaymentId": PAYMENT_ID,
        "Amount": 4000,
        "ExternalRequestId": str(SAMPLE_REFUND_ID),
    }


def test_refund_in_another_currency_or_without_payment_is_refused_before_any_call() -> None:
    with pytest.raises(InvalidInput, match="currency"):
        ADAPTER.build_refund(refund_request(money=Money(4000, "USD")), settings())
    with pytest.raises(InvalidInput, match="psp_id"):
        ADAPTER.build_refund(refund_request(order=ORDER), settings())


def test_refund_status_reads_the_payment_never_a_second_cancel() -> None:
    request = ADAPTER.build_refund_status(
        refund_request(psp_refund_id=str(SAMPLE_REFUND_ID)), settings()
    )
    assert request.url.endswith("/GetState")
    assert request.operation == "refund_status"
    assert request.json["PaymentId"] == PAYMENT_ID


@pytest.mark.parametrize(
    ("name", "state", "refunded"),
    [
        ("cancel_partial_refunded", RefundState.SUCCEEDED, 4000),
        ("cancel_refunded", RefundState.SUCCEEDED, 4000),
        ("cancel_async_refunding", RefundState.PENDING, 4000),
        ("cancel_reversed", RefundState.SUCCEEDED, 10000),
    ],
)
def test_cancel_answer_reads_as_the_refund_with_the_amount_it_moved(
    name: str, state: RefundState, refunded: int
) -> None:
    report = ADAPTER.parse_refund(refund_request(), fixture(name), settings())
    assert (report.state, report.money) == (state, Money(refunded, "RUB"))
    assert report.psp_refund_id == str(SAMPLE_REFUND_ID)


@pytest.mark.parametrize("name", ["cancel_unexpected_status", "cancel_other_request"])
def test_cancel_answer_that_is_no_refund_of_ours_is_malformed(name: str) -> None:
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_refund(refund_request(), fixture(name), settings())


def test_refused_cancel_is_a_rejection_but_an_overloaded_bank_is_transient() -> None:
    with pytest.raises(PspRejected, match="error 100"):
        ADAPTER.parse_refund(refund_request(), fixture("cancel_error_amount"), settings())
    busy = PspResponse(200, json.dumps({"Success": False, "ErrorCode": "9999"}).encode())
    with pytest.raises(TransientError):
        ADAPTER.parse_refund(refund_request(), busy, settings())


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("getstate_partial_refunded", RefundState.SUCCEEDED),
        ("getstate_refunded", RefundState.SUCCEEDED),
        ("getstate_async_refunding", RefundState.PENDING),
        ("getstate_confirmed", RefundState.FAILED),
    ],
)
def test_payment_state_reads_as_the_accepted_refunds_state(name: str, state: RefundState) -> None:
    known = refund_request(psp_refund_id=str(SAMPLE_REFUND_ID))
    assert ADAPTER.parse_refund_status(known, fixture(name), settings()).state is state


def test_refund_status_of_a_payment_never_paid_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_refund_status(refund_request(), fixture("getstate_new"), settings())


def test_refunded_status_shows_the_whole_amount_refunded() -> None:
    report = ADAPTER.parse_status(INVOICED, fixture("getstate_refunded"), settings())
    assert report.refunded == Money(10000, "RUB")
    partly = ADAPTER.parse_status(INVOICED, fixture("getstate_partial_refunded"), settings())
    assert (partly.state, partly.refunded) == (CanonicalState.PAID, None)


def test_refund_notification_is_verified_and_carries_a_refund() -> None:
    result = ADAPTER.parse_notification(notification("notification_partial_refunded"), settings())
    assert result.verified
    assert result.reply == OK
    assert result.ref == OrderRef(order_id=str(ORDER.id), psp_id=PAYMENT_ID)
    assert result.refund is not None
    assert (result.refund.state, result.refund.raw_status) == (
        RefundState.SUCCEEDED,
        "PARTIAL_REFUNDED",
    )


def test_payment_notification_carries_no_refund() -> None:
    result = ADAPTER.parse_notification(notification("notification_confirmed"), settings())
    assert result.refund is None

"""The Stripe Checkout adapter: the conformance kit plus what is particular to Stripe."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from adapters import stripe
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    InvalidSettings,
    MalformedResponse,
    Notification,
    OrderRef,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundRequest,
    RefundState,
    Reply,
    pairs,
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
from orders.errors import InvalidInput, OutcomeUnknown, PermanentError, TransientError
from orders.money import Money
from orders.status import OrderStatus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stripe"
SIGNATURES = json.loads((FIXTURES / "signatures.json").read_text())
SESSION_ID = "cs_test_a1Qm4kYpN8rTz2WbVc6XeLd0HfGj3Su5Io7Pa9Kn1Mq2Rs4Tu6Vw8Xy0Zb"
SECRET_KEY = "sk_test_51QrQ8nLkdIwHu7ixTestOnlyKeyForParsingNotReal0042"
CURRENT, PREVIOUS = SIGNATURES["secrets"]["current"], SIGNATURES["secrets"]["previous"]
SETTINGS = {"secret_key": SECRET_KEY, "webhook_secrets": f"{PREVIOUS},{CURRENT}"}
RECEIVED = datetime.fromtimestamp(SIGNATURES["received_at"], UTC)
ADAPTER = stripe.adapter
ORDER = sample_order(adapter="stripe", money=Money(2000, "USD"))
INVOICED = replace(ORDER, psp_id=SESSION_ID)
INTENT_ID = "pi_3QrQ8nLkdIwHu7ix0Wq1Ab2C"
REFUND_ID = "re_3QrQ8nLkdIwHu7ix0Rf4Gh5J"
DISPUTE_ID = "du_3QrQ8nLkdIwHu7ix0Dp4Ut5E"


def fixture(name: str, status_code: int = 200, **headers: str) -> PspResponse:
    return load_response(FIXTURES / f"{name}.json", status_code, headers)


def settings(**overrides: str) -> AdapterSettings:
    return resolve_settings(ADAPTER, configured={**SETTINGS, **overrides}, environ={})


def vector(file: str, which: str = "current") -> dict[str, Any]:
    found: dict[str, Any] = next(
        v for v in SIGNATURES["vectors"] if v["file"] == file and v["secret"] == which
    )
    return found


def event(
    name: str, header: str | None = None, received: datetime | None = RECEIVED
) -> Notification:
    """The event fixture as Stripe POSTs it, signed with the recorded (openssl) vector."""
    body = (FIXTURES / f"{name}.json").read_bytes()
    if header is None:
        known = vector(f"{name}.json")
        header = f"t={known['t']},v1={known['v1']}"
    return Notification(
        headers={"stripe-signature": header, "content-type": "application/json; charset=utf-8"},
        body=body,
        received_at=received,
    )


def signed(body: bytes, secret: str = CURRENT, at: datetime = RECEIVED) -> Notification:
    """A notification signed here with the adapter's own signing function."""
    t = int(at.timestamp())
    header = f"t={t},v1={stripe.sign(secret, t, body)}"
    return Notification(headers={"stripe-signature": header}, body=body, received_at=at)


def status(name: str, status_code: int = 200, operation: str = "status") -> Any:
    return ADAPTER.parse_status(INVOICED, fixture(name, status_code), settings(), operation)


def form_of(request: PspRequest) -> dict[str, str]:
    assert isinstance(request.form, dict)
    return request.form


def _vector(entry: dict[str, Any]) -> SignatureVector:
    body = (FIXTURES / entry["file"]).read_bytes()
    secret = SIGNATURES["secrets"][entry["secret"]]
    return SignatureVector(
        f"{entry['file']} ({entry['secret']} secret)",
        lambda: stripe.sign(secret, entry["t"], body),
        entry["v1"],
    )


class TestStripeConformance(AdapterConformance):
    adapter = ADAPTER
    settings = SETTINGS
    order = ORDER
    fixtures: ClassVar[FixtureSet] = FixtureSet(
        psp_id=SESSION_ID,
        create=fixture("create_open"),
        states={
            CanonicalState.PENDING: fixture("status_open"),
            CanonicalState.PAID: fixture("status_complete_paid"),
            CanonicalState.REJECTED: fixture("status_complete_unpaid_failed"),
            CanonicalState.EXPIRED: fixture("status_expired"),
            CanonicalState.REFUNDED: fixture("status_refunded"),
        },
        malformed={
            "unknown-status": fixture("status_unknown_status"),
            "amount-as-string": fixture("status_amount_as_string"),
        },
        malformed_create={
            "unknown-status": fixture("status_unknown_status"),
            "amount-as-string": fixture("status_amount_as_string"),
        },
        cancelled=fixture("status_expired"),
        cancelled_state=CanonicalState.EXPIRED,
        refunds=RefundFixtures(
            states={
                RefundState.PENDING: fixture("refund_pending"),
                RefundState.SUCCEEDED: fixture("refund_succeeded"),
                RefundState.FAILED: fixture("refund_failed"),
            },
            rejected=fixture("error_refund_already_refunded", 400),
            psp_refund_id=REFUND_ID,
            money=Money(500, "USD"),
            malformed={
                "unknown-status": fixture("refund_unknown_status"),
                "another-refund": fixture("refund_other_refund"),
            },
        ),
        notifications=NotificationFixtures(
            valid=event("event_checkout_session_completed"),
            tampered=replace(
                event("event_checkout_session_completed"),
                body=(FIXTURES / "event_checkout_session_completed_tampered.json").read_bytes(),
            ),
            stale=event(
                "event_checkout_session_completed",
                header=f"t={SIGNATURES['stale']['t']},v1={SIGNATURES['stale']['v1']}",
            ),
            expected_ref=OrderRef(order_id=str(ORDER.id), psp_id=SESSION_ID),
            expected_reply=Reply(200, b""),
        ),
    )
    vectors: ClassVar[tuple[SignatureVector, ...]] = tuple(
        _vector(v) for v in SIGNATURES["vectors"]
    )


# -- amounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("money", "amount"),
    [
        (Money(2000, "USD"), 2000),
        (Money(500, "JPY"), 500),  # zero-decimal in both
        (Money(50000, "MGA"), 500),  # ISO has two decimals, Stripe none
        (Money(5, "ISK"), 500),  # special case: whole krónur sent as two-decimal amounts
        (Money(3800, "UGX"), 380000),  # special case, like ISK
        (Money(1230, "KWD"), 1230),  # three-decimal, last digit 0
        (Money(12345, "HUF"), 12345),  # two-decimal for charges
    ],
)
def test_amounts_follow_stripes_minor_units(money: Money, amount: int) -> None:
    assert stripe.to_stripe_amount(money) == amount
    response = PspResponse(200, b"")
    assert stripe.from_stripe_amount(amount, money.currency.lower(), response) == money


@pytest.mark.parametrize(
    "money",
    [Money(50050, "MGA"), Money(1235, "KWD"), Money(5, "TND")],
    ids=["mga-fraction", "kwd-last-digit", "tnd-last-digit"],
)
def test_amount_stripe_cannot_charge_exactly_is_refused_before_any_call(money: Money) -> None:
    with pytest.raises(InvalidInput, match="amount"):
        ADAPTER.build_create(replace(ORDER, money=money), settings())


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(550, "isk"), (2000.0, "usd"), ("2000", "usd"), (True, "usd"), (2000, "xyz"), (2000, None)],
)
def test_unreadable_stripe_amount_is_malformed(amount: Any, currency: Any) -> None:
    with pytest.raises(MalformedResponse):
        stripe.from_stripe_amount(amount, currency, PspResponse(200, b""))


# -- create -------------------------------------------------------------------------------------


def test_create_request_follows_the_api_reference() -> None:
    request = ADAPTER.build_create(ORDER, settings())
    assert (request.method, request.url) == ("POST", "https://api.stripe.com/v1/checkout/sessions")
    assert request.headers == {
        "Authorization": f"Bearer {SECRET_KEY}",
        "Stripe-Version": stripe.DEFAULT_API_VERSION,
        "Idempotency-Key": f"pd-{ORDER.id}",
    }
    assert form_of(request) == {
        "mode": "payment",
        "client_reference_id": str(ORDER.id),
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "2000",
        "line_items[0][price_data][product_data][name]": "Order 42",
        "metadata[order_id]": str(ORDER.id),
        "metadata[order_number]": "42",
        "success_url": "https://shop.example/return/42",
        "cancel_url": "https://shop.example/return/42",
        "expires_at": str(int((ORDER.created_at + timedelta(hours=1)).timestamp())),
    }


def test_api_version_setting_is_sent_as_stripe_version() -> None:
    request = ADAPTER.build_create(ORDER, settings(api_version="2025-03-31.basil"))
    assert request.headers["Stripe-Version"] == "2025-03-31.basil"


@pytest.mark.parametrize(
    ("lifetime", "sent"),
    [
        (timedelta(seconds=10), timedelta(minutes=60)),  # too soon for Stripe: at least 60 min
        (timedelta(minutes=30), timedelta(minutes=60)),
        (timedelta(minutes=61), timedelta(minutes=61)),  # inside the window: the deadline
        (timedelta(hours=20), timedelta(hours=20)),
        (timedelta(days=3), timedelta(hours=23, minutes=50)),  # past Stripe's 24 hours: cut
    ],
)
def test_expires_at_is_the_deadline_clamped_into_stripes_window(
    lifetime: timedelta, sent: timedelta
) -> None:
    order = replace(ORDER, expires_at=ORDER.created_at + lifetime)
    expires_at = form_of(ADAPTER.build_create(order, settings()))["expires_at"]
    assert int(expires_at) == int((ORDER.created_at + sent).timestamp())


def test_expires_at_does_not_depend_on_the_clock_so_a_replay_is_identical() -> None:
    # Stripe compares a replayed request with the first one under the same key.
    later = replace(ORDER, updated_at=ORDER.updated_at + timedelta(minutes=20), attempts=3)
    assert form_of(ADAPTER.build_create(later, settings())) == form_of(
        ADAPTER.build_create(ORDER, settings())
    )


def test_description_names_the_line_item_and_is_never_empty() -> None:
    named = ADAPTER.build_create(replace(ORDER, description="Top-up 20 USD"), settings())
    blank = ADAPTER.build_create(replace(ORDER, description="  "), settings())
    key = "line_items[0][price_data][product_data][name]"
    assert form_of(named)[key] == "Top-up 20 USD"
    assert form_of(blank)[key] == "Order 42"


def test_order_without_return_url_is_refused_before_any_call() -> None:
    # Hosted Checkout requires success_url (Stripe answers parameter_missing without it).
    with pytest.raises(InvalidInput, match="return_url"):
        ADAPTER.build_create(replace(ORDER, return_url=None), settings())


def test_create_response_gives_session_url_and_its_expiry() -> None:
    invoice = ADAPTER.parse_create(ORDER, fixture("create_open"))
    assert invoice.psp_id == SESSION_ID
    assert invoice.pay_url is not None
    assert invoice.pay_url.startswith(f"https://checkout.stripe.com/c/pay/{SESSION_ID}")
    assert invoice.expires_at == datetime(2025, 2, 10, 11, 14, tzinfo=UTC)


def test_open_session_without_url_is_malformed() -> None:
    body = json.loads((FIXTURES / "create_open.json").read_bytes())
    body["url"] = None
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_create(ORDER, PspResponse(200, json.dumps(body).encode()))


def test_create_answer_about_another_order_is_malformed() -> None:
    with pytest.raises(MalformedResponse, match="another order"):
        ADAPTER.parse_create(ORDER, fixture("status_other_order"))


# -- statuses -----------------------------------------------------------------------------------


def test_status_request_expands_the_payment_intent_and_its_charge() -> None:
    request = ADAPTER.build_status(INVOICED, settings())
    assert (request.method, request.url) == (
        "GET",
        f"https://api.stripe.com/v1/checkout/sessions/{SESSION_ID}",
    )
    assert request.params == {"expand[]": "payment_intent.latest_charge"}
    assert "Idempotency-Key" not in request.headers


@pytest.mark.parametrize(
    ("name", "state", "raw"),
    [
        ("status_open", CanonicalState.PENDING, "open/unpaid"),
        ("status_complete_paid", CanonicalState.PAID, "complete/paid"),
        ("status_complete_unpaid_processing", CanonicalState.PENDING, "complete/unpaid"),
        ("status_complete_unpaid_failed", CanonicalState.REJECTED, "complete/unpaid"),
        ("status_expired", CanonicalState.EXPIRED, "expired/unpaid"),
        ("status_refunded", CanonicalState.REFUNDED, "complete/paid"),
        ("status_partly_refunded", CanonicalState.PAID, "complete/paid"),
    ],
)
def test_session_status_and_payment_status_map_to_one_state(
    name: str, state: CanonicalState, raw: str
) -> None:
    report = status(name)
    assert (report.state, report.raw_status, report.psp_id) == (state, raw, SESSION_ID)
    assert report.money == Money(2000, "USD")


def test_delayed_payment_still_processing_stays_pending() -> None:
    # complete + unpaid: the buyer finished, a delayed method (SEPA, ACH) has not paid yet.
    report = status("status_complete_unpaid_processing")
    assert report.state is CanonicalState.PENDING
    assert not ADAPTER.can_cancel(INVOICED, report), "expiring it is impossible and unwanted"


def test_failed_delayed_payment_is_rejected_with_the_decline() -> None:
    report = status("status_complete_unpaid_failed")
    assert report.state is CanonicalState.REJECTED
    assert report.reason.startswith("insufficient_funds")


def test_partly_refunded_payment_stays_paid_and_says_so() -> None:
    assert status("status_partly_refunded").reason == "partly refunded 5.00 USD"


def test_no_payment_required_reports_nothing_collected_so_the_order_goes_to_review() -> None:
    report = status("status_no_payment_required")
    assert report.state is CanonicalState.PAID
    assert report.money == Money(0, "USD")
    assert report.money != ORDER.money  # the dispatcher's amount check: needs_review


@pytest.mark.parametrize(
    "name", ["status_unknown_status", "status_amount_as_string", "status_other_order"]
)
def test_unreadable_or_foreign_session_is_malformed(name: str) -> None:
    with pytest.raises(MalformedResponse):
        status(name)


def test_status_about_another_session_is_malformed() -> None:
    with pytest.raises(MalformedResponse, match="not cs_other"):
        ADAPTER.parse_status(
            replace(INVOICED, psp_id="cs_other"), fixture("status_open"), settings()
        )


def test_status_of_an_order_without_session_is_refused() -> None:
    with pytest.raises(InvalidInput, match="psp_id"):
        ADAPTER.build_status(ORDER, settings())


# -- expiry (cancel) ----------------------------------------------------------------------------


def test_cancel_expires_the_session_with_a_key_of_its_own() -> None:
    request = ADAPTER.build_cancel(INVOICED, settings())
    assert (request.method, request.url, request.operation) == (
        "POST",
        f"https://api.stripe.com/v1/checkout/sessions/{SESSION_ID}/expire",
        "cancel",
    )
    assert request.headers["Idempotency-Key"] == f"pd-{ORDER.id}-expire"


def test_expire_answer_reads_as_expired() -> None:
    assert status("status_expired", operation="cancel").state is CanonicalState.EXPIRED


def test_refused_expire_of_a_completed_session_is_transient_so_the_final_read_decides() -> None:
    with pytest.raises(TransientError) as caught:
        status("error_expire_not_open", 400, operation="cancel")
    assert not isinstance(caught.value, PermanentError)


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("status_open", True),
        ("status_complete_unpaid_processing", False),
        ("status_complete_paid", False),
        ("status_expired", False),
    ],
)
def test_only_an_open_session_may_be_expired(name: str, allowed: bool) -> None:
    assert ADAPTER.can_cancel(INVOICED, status(name)) is allowed


# -- errors -------------------------------------------------------------------------------------


def test_invalid_request_on_create_is_a_permanent_rejection_naming_the_param() -> None:
    with pytest.raises(PspRejected, match=r"parameter_invalid_integer .*unit_amount"):
        ADAPTER.parse_create(ORDER, fixture("error_invalid_request", 400))


def test_expires_at_refused_for_a_late_submission_fails_the_order_with_the_reason() -> None:
    with pytest.raises(PspRejected, match="param expires_at"):
        ADAPTER.parse_create(ORDER, fixture("error_expires_at", 400))


@pytest.mark.parametrize(
    ("name", "code"), [("error_authentication", 401), ("error_permission", 403)]
)
def test_our_refused_key_is_credentials_rejected_everywhere(name: str, code: int) -> None:
    for parse in (
        lambda r: ADAPTER.parse_create(ORDER, r),
        lambda r: ADAPTER.parse_status(INVOICED, r, settings()),
    ):
        with pytest.raises(CredentialsRejected, match="PAYDISPATCH_STRIPE_SECRET_KEY"):
            parse(fixture(name, code))


def test_authentication_error_type_is_credentials_rejected_whatever_the_status() -> None:
    body = b'{"error": {"type": "authentication_error", "message": "Invalid API Key"}}'
    with pytest.raises(CredentialsRejected):
        ADAPTER.parse_create(ORDER, PspResponse(400, body))


@pytest.mark.parametrize(
    ("name", "code", "headers"),
    [
        ("error_rate_limit", 429, {}),
        ("error_rate_limit", 400, {}),  # rate limits were once answered 400 code rate_limit
        ("error_api_error", 500, {}),
        ("error_idempotency", 409, {}),  # a request with our key still running
        ("error_invalid_request", 400, {"Stripe-Should-Retry": "true"}),
    ],
)
def test_overload_and_server_errors_are_transient_everywhere(
    name: str, code: int, headers: dict[str, str]
) -> None:
    response = fixture(name, code, **headers)
    for parse in (
        lambda: ADAPTER.parse_create(ORDER, response),
        lambda: ADAPTER.parse_status(INVOICED, response, settings()),
    ):
        with pytest.raises(TransientError) as caught:
            parse()
        assert not isinstance(caught.value, PermanentError)


def test_idempotency_error_on_create_is_an_unknown_outcome_for_a_person() -> None:
    # Our key holds a request with other parameters: a session may exist, none can be found.
    with pytest.raises(OutcomeUnknown, match="Idempotency-Key"):
        ADAPTER.parse_create(ORDER, fixture("error_idempotency", 400))


def test_not_found_on_create_is_transient_and_names_the_api_url_setting() -> None:
    with pytest.raises(TransientError, match="PAYDISPATCH_STRIPE_API_URL"):
        ADAPTER.parse_create(ORDER, fixture("error_resource_missing", 404))


@pytest.mark.parametrize(
    ("name", "code"),
    [("error_invalid_request", 400), ("error_resource_missing", 404), ("error_idempotency", 400)],
)
def test_errors_on_status_calls_never_end_the_order(name: str, code: int) -> None:
    with pytest.raises(TransientError) as caught:
        ADAPTER.parse_status(INVOICED, fixture(name, code), settings())
    assert not isinstance(caught.value, PermanentError)


@pytest.mark.parametrize(
    "body",
    [b'{"error": {"type": "brand_new_error", "message": "?"}}', b'{"error": "invalid_grant"}'],
)
def test_unknown_error_object_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_create(ORDER, PspResponse(400, body))


def test_error_messages_never_carry_the_secret_key() -> None:
    for name, code in [("error_authentication", 401), ("error_invalid_request", 400)]:
        with pytest.raises((CredentialsRejected, PspRejected)) as caught:
            ADAPTER.parse_create(ORDER, fixture(name, code))
        assert SECRET_KEY not in str(caught.value)


# -- webhooks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("event_checkout_session_completed", CanonicalState.PAID),
        ("event_checkout_session_completed_unpaid", CanonicalState.PENDING),
        ("event_checkout_session_async_payment_succeeded", CanonicalState.PAID),
        ("event_checkout_session_async_payment_failed", CanonicalState.REJECTED),
        ("event_checkout_session_expired", CanonicalState.EXPIRED),
    ],
)
def test_signed_session_event_is_verified_with_its_state_and_money(
    name: str, state: CanonicalState
) -> None:
    result = ADAPTER.parse_notification(event(name), settings())
    assert result.verified is True
    assert result.ref == OrderRef(order_id=str(ORDER.id), psp_id=SESSION_ID)
    assert result.report is not None
    assert (result.report.state, result.report.money) == (state, Money(2000, "USD"))
    assert result.reply == Reply(200, b"")


def test_other_event_types_are_acknowledged_without_a_report() -> None:
    result = ADAPTER.parse_notification(event("event_payment_intent_succeeded"), settings())
    assert (result.verified, result.report, result.ref) == (True, None, OrderRef())
    assert result.reply.status_code == 200


def test_verified_event_reports_the_money_it_carries_for_the_amount_check() -> None:
    body = (FIXTURES / "event_checkout_session_completed_tampered.json").read_bytes()
    result = ADAPTER.parse_notification(signed(body), settings())
    assert result.verified
    assert result.report is not None
    assert result.report.money == Money(200000, "USD") != ORDER.money


def test_previous_secret_still_verifies_during_a_rotation() -> None:
    known = vector("event_checkout_session_completed.json", "previous")
    header = f"t={known['t']},v1={known['v1']}"
    note = event("event_checkout_session_completed", header=header)
    assert ADAPTER.parse_notification(note, settings()).verified
    assert not ADAPTER.parse_notification(note, settings(webhook_secrets=CURRENT)).verified


def test_any_of_several_v1_signatures_may_match() -> None:
    known = vector("event_checkout_session_completed.json")
    header = f"t={known['t']},v1={'0' * 64},v0=6ffbb59b2300aae63f27,v1={known['v1']}"
    note = event("event_checkout_session_completed", header=header)
    assert ADAPTER.parse_notification(note, settings()).verified


@pytest.mark.parametrize(
    ("offset", "verified"),
    [(0, True), (300, True), (-300, True), (301, False), (-301, False), (3600, False)],
)
def test_signature_timestamp_must_be_within_300_seconds_of_receipt(
    offset: int, verified: bool
) -> None:
    body = (FIXTURES / "event_checkout_session_completed.json").read_bytes()
    note = replace(signed(body), received_at=RECEIVED + timedelta(seconds=offset))
    assert ADAPTER.parse_notification(note, settings()).verified is verified


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t=1739182561",
        "v1=11641fcde04c7687308f7880082cd90f03eb72bbc7f944a285fcf49813068718",
        "t=abc,v1=11641fcde04c7687308f7880082cd90f03eb72bbc7f944a285fcf49813068718",
        "t=1739182561,t=1739182562,v1=11641fcde04c7687308f7880082cd90f03eb72bbc7f944a285fcf498130"
        "68718",
        "t=1739182561,v1=11641FCDE04C7687308F7880082CD90F03EB72BBC7F944A285FCF49813068718",
        "t=1739182561,v1=ünïcode",
    ],
    ids=["empty", "no-v1", "no-t", "t-not-a-number", "two-t", "upper-case-hex", "non-ascii"],
)
def test_broken_signature_header_is_answered_400_and_names_nothing(header: str) -> None:
    result = ADAPTER.parse_notification(
        event("event_checkout_session_completed", header=header), settings()
    )
    assert (result.verified, result.ref, result.report) == (False, OrderRef(), None)
    assert result.reply.status_code == 400


def test_signature_with_another_secret_is_not_verified() -> None:
    body = (FIXTURES / "event_checkout_session_completed.json").read_bytes()
    forged = signed(body, secret="whsec_test_notOursAtAllButLongEnough")
    assert not ADAPTER.parse_notification(forged, settings()).verified


def test_signature_covers_the_raw_body_byte_for_byte() -> None:
    note = event("event_checkout_session_completed")
    reformatted = json.dumps(json.loads(note.body)).encode()  # same JSON, other bytes
    assert not ADAPTER.parse_notification(replace(note, body=reformatted), settings()).verified


def test_verified_body_that_is_not_an_event_is_malformed() -> None:
    for body in (b"not json", b"[]", b'{"object": "list"}', b'{"object": "event", "type": 5}'):
        with pytest.raises(MalformedResponse):
            ADAPTER.parse_notification(signed(body), settings())


def test_verified_session_event_without_a_session_is_malformed() -> None:
    body = b'{"object": "event", "type": "checkout.session.completed", "data": {"object": {}}}'
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_notification(signed(body), settings())


def test_webhook_secrets_setting_must_name_a_secret() -> None:
    with pytest.raises(InvalidSettings, match="PAYDISPATCH_STRIPE_WEBHOOK_SECRETS"):
        ADAPTER.parse_notification(
            event("event_checkout_session_completed"), settings(webhook_secrets=" , ")
        )


# -- refunds (issue #14) --------------------------------------------------------------------------

PAID = replace(INVOICED, status=OrderStatus.PAID)


def refund_request(**changes: Any) -> RefundRequest:
    request = RefundRequest(
        id=SAMPLE_REFUND_ID,
        order=PAID,
        money=Money(500, "USD"),
        reason="Returned by the buyer",
        psp_payment_id=INTENT_ID,
    )
    return replace(request, **changes)


def test_paid_status_names_the_payment_intent_a_refund_needs_and_nothing_refunded() -> None:
    report = status("status_complete_paid")
    assert report.psp_payment_id == INTENT_ID
    assert report.refunded == Money(0, "USD")
    assert report.chargeback is False


def test_partly_refunded_status_shows_the_amount_refunded_so_far() -> None:
    report = status("status_partly_refunded")
    assert (report.state, report.refunded) == (CanonicalState.PAID, Money(500, "USD"))


def test_fully_refunded_status_shows_the_whole_amount_refunded() -> None:
    report = status("status_refunded")
    assert report.state is CanonicalState.REFUNDED
    assert report.refunded == report.money


def test_disputed_charge_reports_a_chargeback() -> None:
    report = status("status_complete_paid_disputed")
    assert (report.state, report.chargeback) == (CanonicalState.PAID, True)


def test_refund_request_follows_the_api_reference() -> None:
    request = ADAPTER.build_refund(refund_request(), settings())
    assert (request.method, request.url) == ("POST", "https://api.stripe.com/v1/refunds")
    assert request.operation == "refund"
    assert request.headers["Idempotency-Key"] == f"pd-refund-{SAMPLE_REFUND_ID}"
    assert form_of_pairs(request) == {
        "payment_intent": INTENT_ID,
        "amount": "500",
        "metadata[refund_id]": str(SAMPLE_REFUND_ID),
        "metadata[order_id]": str(ORDER.id),
        "metadata[reason]": "Returned by the buyer",
    }


def test_refund_sends_stripes_minor_units() -> None:
    request = ADAPTER.build_refund(
        refund_request(money=Money(3, "ISK"), order=replace(PAID, money=Money(5, "ISK"))),
        settings(),
    )
    assert form_of_pairs(request)["amount"] == "300"


@pytest.mark.parametrize("payment", [None, "", SESSION_ID])
def test_refund_without_the_payment_intent_is_refused_before_any_call(payment: Any) -> None:
    with pytest.raises(InvalidInput, match="psp_payment_id"):
        ADAPTER.build_refund(refund_request(psp_payment_id=payment), settings())


def test_refund_status_reads_the_refund_by_stripes_id() -> None:
    request = ADAPTER.build_refund_status(refund_request(psp_refund_id=REFUND_ID), settings())
    assert (request.method, request.url) == (
        "GET",
        f"https://api.stripe.com/v1/refunds/{REFUND_ID}",
    )
    with pytest.raises(InvalidInput, match="psp_refund_id"):
        ADAPTER.build_refund_status(refund_request(), settings())


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("refund_pending", RefundState.PENDING),
        ("refund_succeeded", RefundState.SUCCEEDED),
        ("refund_failed", RefundState.FAILED),
        ("refund_canceled", RefundState.FAILED),
    ],
)
def test_refund_answer_reads_as_its_state(name: str, state: RefundState) -> None:
    report = ADAPTER.parse_refund(refund_request(), fixture(name), settings())
    assert (report.state, report.psp_refund_id, report.money) == (
        state,
        REFUND_ID,
        Money(500, "USD"),
    )


def test_failed_refund_says_why() -> None:
    report = ADAPTER.parse_refund_status(
        refund_request(psp_refund_id=REFUND_ID), fixture("refund_failed"), settings()
    )
    assert report.reason == "expired_or_canceled_card"


def test_refund_refused_by_stripe_is_a_permanent_rejection() -> None:
    with pytest.raises(PspRejected, match="charge_already_refunded"):
        ADAPTER.parse_refund(
            refund_request(), fixture("error_refund_already_refunded", 400), settings()
        )


def test_idempotency_error_on_a_refund_is_an_unknown_outcome() -> None:
    with pytest.raises(OutcomeUnknown, match="a refund may exist"):
        ADAPTER.parse_refund(refund_request(), fixture("error_idempotency", 400), settings())


def test_refused_refund_status_read_is_transient() -> None:
    with pytest.raises(TransientError):
        ADAPTER.parse_refund_status(
            refund_request(psp_refund_id=REFUND_ID),
            fixture("error_resource_missing", 404),
            settings(),
        )


def test_answer_about_another_refund_is_malformed() -> None:
    with pytest.raises(MalformedResponse, match="another refund"):
        ADAPTER.parse_refund(refund_request(), fixture("refund_other_refund"), settings())
    with pytest.raises(MalformedResponse, match="not re_other"):
        ADAPTER.parse_refund_status(
            refund_request(psp_refund_id="re_other"), fixture("refund_succeeded"), settings()
        )


def _event_at(name: str) -> Notification:
    known = vector(f"{name}.json")
    at = datetime.fromtimestamp(known["t"] + 4, UTC)
    return event(name, received=at)


def test_refund_event_carries_the_refund_and_names_our_order() -> None:
    result = ADAPTER.parse_notification(_event_at("event_refund_updated"), settings())
    assert result.verified
    assert result.report is None
    assert result.ref == OrderRef(order_id=str(ORDER.id), psp_payment_id=INTENT_ID)
    assert result.refund is not None
    assert (result.refund.state, result.refund.psp_refund_id, result.refund.money) == (
        RefundState.SUCCEEDED,
        REFUND_ID,
        Money(500, "USD"),
    )


def test_charge_refunded_event_reports_the_amount_refunded_and_the_payment_intent() -> None:
    result = ADAPTER.parse_notification(_event_at("event_charge_refunded"), settings())
    assert result.verified
    assert result.refund is None
    # No metadata of ours on the charge: it names the order by its PaymentIntent, the
    # psp_payment_id stored when the order was paid.
    assert result.ref == OrderRef(psp_payment_id=INTENT_ID)
    assert result.report is not None
    assert result.report.state is CanonicalState.PAID
    assert (result.report.refunded, result.report.psp_payment_id) == (
        Money(500, "USD"),
        INTENT_ID,
    )


@pytest.mark.parametrize(
    "name", ["event_charge_dispute_created", "event_charge_dispute_funds_withdrawn"]
)
def test_dispute_event_reports_a_chargeback_and_names_the_payment(name: str) -> None:
    result = ADAPTER.parse_notification(_event_at(name), settings())
    assert result.verified
    assert result.ref == OrderRef(psp_payment_id=INTENT_ID)
    assert result.report is not None
    assert result.report.chargeback is True
    assert result.report.psp_payment_id == INTENT_ID
    assert "fraudulent" in result.report.reason
    # The chargeback is the dispute's: its id (created and funds_withdrawn share it) and amount.
    assert result.refund is not None
    assert (result.refund.state, result.refund.psp_refund_id, result.refund.money) == (
        RefundState.SUCCEEDED,
        DISPUTE_ID,
        Money(2000, "USD"),
    )


def test_a_partial_dispute_names_only_its_amount() -> None:
    # "Usually the amount of the charge, but can differ (... only part of the order is
    # disputed)" (the Dispute object's amount).
    body = (FIXTURES / "event_charge_dispute_created.json").read_bytes()
    partial = body.replace(b'"amount": 2000', b'"amount": 750')
    result = ADAPTER.parse_notification(signed(partial), settings())
    assert result.refund is not None
    assert (result.refund.psp_refund_id, result.refund.money) == (DISPUTE_ID, Money(750, "USD"))


@pytest.mark.parametrize("prefix", [b"dp_", b"pdp_"])
def test_a_dispute_id_of_another_prefix_names_the_chargeback(prefix: bytes) -> None:
    # Stripe's dispute ids start with dp_ as well as du_ (the API reference's example), and
    # pdp_ for some payment methods: a dispute's id is its id, whatever its prefix.
    body = (FIXTURES / "event_charge_dispute_created.json").read_bytes()
    other = body.replace(DISPUTE_ID.encode(), prefix + DISPUTE_ID.encode()[3:])
    assert other != body
    result = ADAPTER.parse_notification(signed(other), settings())
    assert result.refund is not None
    assert (result.refund.state, result.refund.psp_refund_id) == (
        RefundState.SUCCEEDED,
        prefix.decode() + DISPUTE_ID[3:],
    )


@pytest.mark.parametrize(
    "name", ["event_charge_dispute_closed_won", "event_charge_dispute_funds_reinstated"]
)
def test_a_dispute_won_gives_its_chargeback_back(name: str) -> None:
    result = ADAPTER.parse_notification(_event_at(name), settings())
    assert result.verified
    assert result.ref == OrderRef(psp_payment_id=INTENT_ID)
    assert result.refund is not None
    assert (result.refund.state, result.refund.psp_refund_id, result.refund.money) == (
        RefundState.REVERSED,
        DISPUTE_ID,
        Money(2000, "USD"),
    )
    assert result.report is not None
    assert result.report.raw_status == "dispute won"


def test_funds_reinstated_after_a_lost_dispute_give_nothing_back() -> None:
    # A dispute of a partly refunded payment that is lost reinstates only what the refund gave
    # back already: the chargeback stands.
    body = (FIXTURES / "event_charge_dispute_funds_reinstated.json").read_bytes()
    lost = body.replace(b'"status": "won"', b'"status": "lost"')
    assert lost != body
    result = ADAPTER.parse_notification(signed(lost), settings())
    assert result.verified
    assert result.ref == OrderRef(psp_payment_id=INTENT_ID)
    assert (result.report, result.refund) == (None, None)


def test_a_dispute_inquiry_names_the_payment_and_takes_nothing_back() -> None:
    # An inquiry (warning_needs_response) withdraws no funds: no chargeback to record.
    result = ADAPTER.parse_notification(_event_at("event_charge_dispute_inquiry"), settings())
    assert result.verified
    assert result.ref == OrderRef(psp_payment_id=INTENT_ID)
    assert (result.report, result.refund) == (None, None)


def test_other_dispute_events_name_the_payment_and_report_nothing() -> None:
    body = (FIXTURES / "event_charge_dispute_created.json").read_bytes()
    closed = body.replace(b'"charge.dispute.created"', b'"charge.dispute.closed"').replace(
        b'"needs_response"', b'"lost"'
    )
    result = ADAPTER.parse_notification(signed(closed), settings())
    assert result.verified
    assert result.ref == OrderRef(psp_payment_id=INTENT_ID)
    assert (result.report, result.refund) == (None, None)


def test_refund_event_with_a_forged_signature_names_nothing() -> None:
    body = (FIXTURES / "event_refund_updated.json").read_bytes()
    result = ADAPTER.parse_notification(
        signed(body, secret="whsec_forged_not_ours_0000"), settings()
    )
    assert (result.verified, result.ref, result.refund) == (False, OrderRef(), None)


def form_of_pairs(request: PspRequest) -> dict[str, str]:
    return dict(pairs(request.form))

"""The Robokassa adapter: the conformance kit plus what is particular to Robokassa.

Expected signatures here were computed outside the adapter (coreutils ``md5sum``/``sha256sum``,
``openssl dgst``) over the base strings the documentation gives, so they check the adapter's
signing code rather than repeat it.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from adapters import robokassa
from adapters.base import (
    AdapterSettings,
    CanonicalState,
    CredentialsRejected,
    InvalidSettings,
    Invoice,
    MalformedResponse,
    Notification,
    NotSupported,
    OrderRef,
    PspRejected,
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

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "robokassa"
LOGIN = "conformance-shop"
PASSWORD1 = "kit-robokassa-password-one-4f1c"
PASSWORD2 = "kit-robokassa-password-two-9d2e"
PASSWORD3 = "kit-robokassa-password-three-7b3a"
SETTINGS = {
    "merchant_login": LOGIN,
    "password1": PASSWORD1,
    "password2": PASSWORD2,
    "password3": PASSWORD3,
}
ADAPTER = robokassa.adapter
ORDER = sample_order(adapter="robokassa")
INVOICED = replace(ORDER, psp_id="42")
ORDER_ID = str(ORDER.id)
FORM = {"content-type": "application/x-www-form-urlencoded"}
# md5("conformance-shop:100.00:42:<PASSWORD1>:Shp_order_id=<ORDER_ID>"), by md5sum.
PAY_SIGNATURE_MD5 = "524244600f1e80cf1599349e061b5676"
PAY_SIGNATURE_SHA256 = "e67a371d41e13dbe8bfc173e20fd7648d02091e8c06e846def82ffcebf484713"
# md5("conformance-shop:42:<PASSWORD2>"), by md5sum.
OPSTATE_SIGNATURE_MD5 = "72971c1560d3310db0aeb9f871d57ed0"


def settings(**overrides: str) -> AdapterSettings:
    return resolve_settings(ADAPTER, configured={**SETTINGS, **overrides}, environ={})


def xml(name: str, status_code: int = 200) -> PspResponse:
    return load_response(FIXTURES / f"{name}.xml", status_code)


def json_fixture(name: str, status_code: int = 200) -> PspResponse:
    return load_response(FIXTURES / f"{name}.json", status_code)


REQUEST_ID = "d2b5c1f0-7a3e-4c8b-9f1d-2e6a4b8c0d13"
OP_KEY = "0F7A21C6-5D0B-4E0E-9A54-1C2B3D4E5F60"
# The refund request's JWT for 40.00 RUB of OP_KEY with PASSWORD3, computed with coreutils
# base64 and `openssl dgst -sha256 -hmac`, not with the adapter's code.
REFUND_JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJPcEtleSI6IjBGN0EyMUM2LTVEMEItNEUwRS05QTU0LTFDMkIzRDRFNUY2MCIsIlJlZnVuZFN1bSI6NDAuMDB9."
    "RQzWOEepVSGCgyRNuPDej5hq5m3kQ6IfyalEZFJCPT0"
)


def status(name: str, status_code: int = 200) -> StatusReport:
    return ADAPTER.parse_status(INVOICED, xml(name, status_code), settings())


def form_notification(name: str) -> Notification:
    return Notification(headers=FORM, body=(FIXTURES / f"{name}.form").read_bytes())


def signed_callback(
    out_sum: str,
    inv_id: str = "42",
    shp: dict[str, str] | None = None,
    password2: str = PASSWORD2,
    algorithm: str = "md5",
) -> dict[str, str]:
    """A Result URL callback's fields, signed as the documentation says, by hashlib."""
    shp = {"Shp_order_id": ORDER_ID} if shp is None else shp
    base = f"{out_sum}:{inv_id}:{password2}" + "".join(f":{k}={v}" for k, v in sorted(shp.items()))
    signature = hashlib.new(algorithm, base.encode()).hexdigest().upper()
    return {"OutSum": out_sum, "InvId": inv_id, "SignatureValue": signature, **shp}


def post(fields: dict[str, str]) -> Notification:
    return Notification(headers=FORM, body=urlencode(fields).encode())


def pay_params(invoice: Invoice) -> dict[str, str]:
    assert invoice.pay_url is not None
    return dict(parse_qsl(urlsplit(invoice.pay_url).query, keep_blank_values=True))


def vector(algorithm: str, base: str) -> SignatureVector:
    return SignatureVector(
        f"{algorithm}: {base}", lambda: robokassa.signature(algorithm, base), VECTORS[algorithm]
    )


# The documentation's C# example ("Примеры реализации кода"): login "test", Password #1
# "securepass1", OutSum 5.12, InvId 5; digests by `openssl dgst -<algorithm>`.
DOCS_EXAMPLE = robokassa.payment_base("test", "5.12", "5", "securepass1")
VECTORS = {
    "md5": "d33ad746fefb057705993fc6662c5beb",
    "ripemd160": "6b670c77ae0f5b4309994eb1c285d203abcc7efd",
    "sha1": "7de442b86d36390ca7ebc8ce86e36a63aa32d310",
    "sha256": "aa262afe1f949ab1f0d362fb43ae8249aeb929c2f7c74d5df5965ca20434c691",
    "sha384": "24b6d8f23bb779342b5a9f6da781644103a67e4722b516efec1404c9d344a47313c6f03989f6"
    "47348fb69630ee9536bc",
    "sha512": "8b09c5833f3027a7767a63733fb18f2428f3b81c7629b42424d9db5f116cbbf63a68b19e08e4"
    "4ac094c31582aa17481f9348f41c42187a70ac3257b5f8a8f2b5",
}


class TestRobokassaConformance(AdapterConformance):
    adapter = ADAPTER
    settings = SETTINGS
    order = ORDER
    fixtures: ClassVar[FixtureSet] = FixtureSet(
        psp_id="42",
        states={
            CanonicalState.PENDING: xml("opstate_state_5"),
            CanonicalState.PAID: xml("opstate_state_100"),
            CanonicalState.REJECTED: xml("opstate_state_10"),
        },
        # OpStateExt has no expiry of its own (state 10 covers it) and shows no refunds.
        not_reported=frozenset({CanonicalState.EXPIRED, CanonicalState.REFUNDED}),
        malformed={
            "undocumented-state": xml("opstate_unknown_state_77"),
            "undocumented-result": xml("opstate_result_17_undocumented"),
            "paid-without-info": xml("opstate_paid_without_info"),
            "paid-out-sum-not-a-number": xml("opstate_paid_outsum_not_a_number"),
            "doctype-with-entities": xml("opstate_entity_expansion"),
        },
        refunds=RefundFixtures(
            states={
                RefundState.PENDING: json_fixture("refund_state_processing"),
                RefundState.SUCCEEDED: json_fixture("refund_state_finished"),
                RefundState.FAILED: json_fixture("refund_state_canceled"),
            },
            created={RefundState.PENDING: json_fixture("refund_create_accepted")},
            rejected=json_fixture("refund_create_refused"),
            psp_refund_id=REQUEST_ID,
            money=Money(4000, "RUB"),
            malformed={
                "unknown-label": json_fixture("refund_state_unknown_label"),
                "another-request": json_fixture("refund_state_other_request"),
            },
        ),
        notifications=NotificationFixtures(
            valid=form_notification("result_url_paid"),
            tampered=form_notification("result_url_tampered_out_sum"),
            stale=form_notification("result_url_replayed"),
            expected_ref=OrderRef(order_id=ORDER_ID, number=42, psp_id="42"),
            expected_reply=Reply(200, b"OK42", "text/plain"),
        ),
    )

    def test_requests_start_at_the_configured_api_url(self) -> None:
        """Robokassa's refund API has a host of its own (services.robokassa.ru): with the
        default API_URL refunds go there; a moved API_URL (a fake) moves every request."""
        settings = self.resolved(API_URL=self.other_api_url)
        for operation, built in self.built_requests(settings).items():
            url = built.pay_url if isinstance(built, Invoice) else built.url
            assert url is not None
            assert url.startswith(self.other_api_url), (operation, url)
        default = self.resolved()
        for operation, built in self.built_requests(default).items():
            url = built.pay_url if isinstance(built, Invoice) else built.url
            assert url is not None
            home = robokassa.DEFAULT_REFUND_API_URL if "refund" in operation else default.api_url
            assert url.startswith(home), (operation, url)

    vectors = (
        *(vector(algorithm, DOCS_EXAMPLE) for algorithm in robokassa.HASHES),
        SignatureVector(
            "refund JWT (HS256 with Password #3), by openssl",
            lambda: robokassa.refund_jwt(f'{{"OpKey":"{OP_KEY}","RefundSum":40.00}}', PASSWORD3),
            REFUND_JWT,
        ),
        # The testing-mode page's PHP example: Test1999, 100.00, InvId 678678, "password_1".
        SignatureVector(
            "testing-mode example",
            lambda: robokassa.signature(
                "md5", robokassa.payment_base("Test1999", "100.00", "678678", "password_1")
            ),
            "c5adfa46ee893917da42e108b26bed8b",
        ),
        SignatureVector(
            "kit order pay URL",
            lambda: pay_params(ADAPTER.build_create(ORDER, settings()))["SignatureValue"],
            PAY_SIGNATURE_MD5,
        ),
        SignatureVector(
            "kit order OpStateExt",
            lambda: dict(ADAPTER.build_status(INVOICED, settings()).params)["Signature"],
            OPSTATE_SIGNATURE_MD5,
        ),
    )


# -- the pay URL --------------------------------------------------------------------------------


def test_pay_url_carries_the_documented_parameters_signed_with_password1() -> None:
    invoice = ADAPTER.build_create(ORDER, settings())
    assert invoice == Invoice(psp_id="42", pay_url=invoice.pay_url)
    assert invoice.pay_url is not None
    assert invoice.pay_url.startswith("https://auth.robokassa.ru/Merchant/Index.aspx?")
    assert pay_params(invoice) == {
        "MerchantLogin": LOGIN,
        "OutSum": "100.00",
        "InvId": "42",
        "Description": "Order 42",
        "SignatureValue": PAY_SIGNATURE_MD5,
        "Shp_order_id": ORDER_ID,
    }
    assert PASSWORD1 not in invoice.pay_url
    assert PASSWORD2 not in invoice.pay_url


def test_pay_url_signature_follows_the_hash_setting() -> None:
    params = pay_params(ADAPTER.build_create(ORDER, settings(HASH="SHA256")))
    assert params["SignatureValue"] == PAY_SIGNATURE_SHA256


@pytest.mark.parametrize("algorithm", robokassa.HASHES)
def test_every_offered_hash_signs_the_pay_url_over_the_documented_base(algorithm: str) -> None:
    params = pay_params(ADAPTER.build_create(ORDER, settings(HASH=algorithm)))
    base = f"{LOGIN}:100.00:42:{PASSWORD1}:Shp_order_id={ORDER_ID}"
    assert params["SignatureValue"] == hashlib.new(algorithm, base.encode()).hexdigest()


def test_unknown_hash_setting_is_invalid_settings_naming_the_variable() -> None:
    with pytest.raises(InvalidSettings, match="PAYDISPATCH_ROBOKASSA_HASH"):
        ADAPTER.build_create(ORDER, settings(HASH="crc32"))


def test_test_mode_adds_is_test_and_live_mode_leaves_it_out() -> None:
    assert pay_params(ADAPTER.build_create(ORDER, settings(TEST="true")))["IsTest"] == "1"
    assert "IsTest" not in pay_params(ADAPTER.build_create(ORDER, settings(TEST="false")))
    with pytest.raises(InvalidSettings, match="PAYDISPATCH_ROBOKASSA_TEST"):
        ADAPTER.build_create(ORDER, settings(TEST="maybe"))


def test_amounts_go_out_in_roubles_with_kopecks() -> None:
    for amount, out_sum in ((1, "0.01"), (12301, "123.01"), (123456789, "1234567.89")):
        order = replace(ORDER, money=Money(amount, "RUB"))
        assert pay_params(ADAPTER.build_create(order, settings()))["OutSum"] == out_sum


@pytest.mark.parametrize("currency", ["USD", "EUR", "KZT"])
def test_other_currencies_are_refused_at_create_as_invalid_input(currency: str) -> None:
    order = replace(ORDER, money=Money(10000, currency))
    with pytest.raises(InvalidInput) as caught:
        ADAPTER.build_create(order, settings())
    assert caught.value.field == "currency"
    assert ADAPTER.capabilities.currencies == frozenset({"RUB"})


def test_description_is_cut_to_robokassas_100_characters() -> None:
    order = replace(ORDER, description="x" * 150)
    assert pay_params(ADAPTER.build_create(order, settings()))["Description"] == "x" * 100
    blank = replace(ORDER, description="  ")
    assert pay_params(ADAPTER.build_create(blank, settings()))["Description"] == "Order 42"


def test_culture_and_email_come_from_order_metadata_when_usable() -> None:
    order = replace(ORDER, metadata={"culture": "EN", "email": "buyer@example.com"})
    params = pay_params(ADAPTER.build_create(order, settings()))
    assert params["Culture"] == "en"
    assert params["Email"] == "buyer@example.com"
    odd = replace(ORDER, metadata={"culture": "de", "email": "nobody"})
    params = pay_params(ADAPTER.build_create(odd, settings()))
    assert "Culture" not in params
    assert "Email" not in params


def test_api_url_moves_the_pay_page() -> None:
    invoice = ADAPTER.build_create(ORDER, settings(API_URL="http://127.0.0.1:9/Merchant/"))
    assert invoice.pay_url is not None
    assert invoice.pay_url.startswith("http://127.0.0.1:9/Merchant/Index.aspx?")


def test_there_is_no_create_call_to_parse() -> None:
    with pytest.raises(NotSupported):
        ADAPTER.parse_create(ORDER, xml("opstate_state_5"))


# -- the OpStateExt request ---------------------------------------------------------------------


def test_status_request_is_opstateext_signed_with_password2() -> None:
    request = ADAPTER.build_status(INVOICED, settings())
    assert request.method == "GET"
    assert request.url == "https://auth.robokassa.ru/Merchant/WebService/Service.asmx/OpStateExt"
    assert list(request.params) == [
        ("MerchantLogin", LOGIN),
        ("InvoiceID", "42"),
        ("Signature", OPSTATE_SIGNATURE_MD5),
    ]
    assert not request.headers


# -- OpStateExt answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state_code", "state"),
    [
        (5, CanonicalState.PENDING),
        (10, CanonicalState.REJECTED),
        (20, CanonicalState.PENDING),
        (50, CanonicalState.PENDING),
        (60, CanonicalState.REJECTED),
        (80, CanonicalState.PENDING),
        (100, CanonicalState.PAID),
    ],
)
def test_each_documented_state_code_maps_to_its_canonical_state(
    state_code: int, state: CanonicalState
) -> None:
    report = status(f"opstate_state_{state_code}")
    assert report.state is state
    assert report.raw_status == str(state_code)
    assert report.psp_id == "42"
    assert report.money == Money(10000, "RUB")


def test_money_received_but_not_yet_credited_is_not_yet_paid() -> None:
    # State 50 can still end in 60 (returned to the buyer); the Result URL comes only at 100.
    assert status("opstate_state_50").state is CanonicalState.PENDING


def test_paid_answer_reports_the_amount_robokassa_took() -> None:
    report = status("opstate_paid_other_amount")
    assert report.state is CanonicalState.PAID
    assert report.money == Money(9550, "RUB")


@pytest.mark.parametrize("name", ["opstate_paid_fee_on_shop", "opstate_paid_fee_on_buyer"])
def test_robokassas_fee_on_either_side_still_pays_the_orders_amount(name: str) -> None:
    # IncSum is what the buyer paid, OutSum what the shop was credited: the fee sits between.
    report = status(name)
    assert report.state is CanonicalState.PAID
    assert report.money == Money(10000, "RUB")


def test_no_such_invoice_means_the_buyer_has_not_opened_the_page_yet() -> None:
    report = status("opstate_result_3_no_invoice")
    assert report.state is CanonicalState.PENDING
    assert report.money is None
    assert report.raw_status == "result 3"


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("opstate_result_1_bad_signature", "PASSWORD2"),
        ("opstate_result_2_unknown_shop", "MERCHANT_LOGIN"),
    ],
)
def test_refused_credentials_are_credentials_rejected_with_a_hint(name: str, hint: str) -> None:
    with pytest.raises(CredentialsRejected, match=hint):
        status(name)


@pytest.mark.parametrize("status_code", [401, 403])
def test_http_401_and_403_are_credentials_rejected(status_code: int) -> None:
    with pytest.raises(CredentialsRejected):
        ADAPTER.parse_status(INVOICED, PspResponse(status_code, b"Unauthorized"), settings())


def test_two_operations_with_one_number_is_transient_and_not_malformed() -> None:
    with pytest.raises(robokassa.RobokassaRefusedError) as caught:
        status("opstate_result_4_two_operations")
    assert isinstance(caught.value, TransientError)
    assert not isinstance(caught.value, MalformedResponse | CredentialsRejected)


@pytest.mark.parametrize(
    "response",
    [
        xml("opstate_result_1000_internal_error"),
        PspResponse(429, b""),
        PspResponse(500, b"<html>Server Error in '/Merchant' Application.</html>"),
        PspResponse(503, b""),
    ],
    ids=["result-1000", "http-429", "http-500", "http-503"],
)
def test_rate_limits_and_server_errors_are_unavailable(response: PspResponse) -> None:
    with pytest.raises(robokassa.RobokassaUnavailableError):
        ADAPTER.parse_status(INVOICED, response, settings())


@pytest.mark.parametrize(
    "name",
    [
        "opstate_unknown_state_77",
        "opstate_result_17_undocumented",
        "opstate_paid_without_info",
        "opstate_paid_outsum_not_a_number",
        "opstate_entity_expansion",
    ],
)
def test_unknown_codes_and_unreadable_answers_are_malformed_never_final(name: str) -> None:
    with pytest.raises(MalformedResponse):
        status(name)


def test_a_doctype_is_refused_before_parsing() -> None:
    body = (
        b'<?xml version="1.0"?><!doctype x SYSTEM "file:///etc/passwd">'
        b"<OperationStateResponse><Result><Code>3</Code></Result></OperationStateResponse>"
    )
    with pytest.raises(MalformedResponse, match="DOCTYPE"):
        ADAPTER.parse_status(INVOICED, PspResponse(200, body), settings())


def test_other_xml_documents_are_malformed() -> None:
    body = b"<CurrenciesList><Result><Code>0</Code></Result></CurrenciesList>"
    with pytest.raises(MalformedResponse, match="OperationStateResponse"):
        ADAPTER.parse_status(INVOICED, PspResponse(200, body), settings())


def test_an_answer_without_namespace_reads_the_same() -> None:
    body = (
        b"<OperationStateResponse><Result><Code>0</Code></Result><State><Code>100</Code>"
        b"</State><Info><OutSum>100</OutSum></Info></OperationStateResponse>"
    )
    report = ADAPTER.parse_status(INVOICED, PspResponse(200, body), settings())
    assert report.state is CanonicalState.PAID
    assert report.money == Money(10000, "RUB")


# -- the Result URL callback --------------------------------------------------------------------


@pytest.mark.parametrize("out_sum", ["100", "100.00", "100.000000"])
def test_result_url_is_verified_in_every_out_sum_format(out_sum: str) -> None:
    result = ADAPTER.parse_notification(post(signed_callback(out_sum)), settings())
    assert result.verified
    assert result.report == StatusReport(
        state=CanonicalState.PAID, psp_id="42", money=Money(10000, "RUB"), raw_status="result url"
    )
    assert result.ref == OrderRef(order_id=ORDER_ID, number=42, psp_id="42")
    assert result.reply == Reply(200, b"OK42", "text/plain")


def test_result_url_signature_case_does_not_matter() -> None:
    fields = signed_callback("100.00")
    fields["SignatureValue"] = fields["SignatureValue"].lower()
    assert ADAPTER.parse_notification(post(fields), settings()).verified


def test_result_url_shp_parameters_are_signed_sorted_by_key() -> None:
    shp = {"Shp_order_id": ORDER_ID, "Shp_b": "2", "Shp_a": "1"}
    assert ADAPTER.parse_notification(post(signed_callback("100.00", shp=shp)), settings()).verified
    forged = signed_callback("100.00", shp=shp)
    forged["Shp_a"] = "9"
    assert not ADAPTER.parse_notification(post(forged), settings()).verified


def test_result_url_follows_the_hash_setting() -> None:
    fields = signed_callback("100.00", algorithm="sha512")
    assert ADAPTER.parse_notification(post(fields), settings(HASH="sha512")).verified
    assert not ADAPTER.parse_notification(post(fields), settings()).verified


def test_result_url_sent_as_a_get_query_is_read_too() -> None:
    fields = signed_callback("100.000000")
    result = ADAPTER.parse_notification(
        Notification(headers={}, body=b"", query=fields), settings()
    )
    assert result.verified
    assert result.reply.body == b"OK42"


@pytest.mark.parametrize(
    "fields",
    [
        signed_callback("100.00", password2="someone-elses-password-2"),
        {**signed_callback("100.00"), "OutSum": "1.00"},
        {**signed_callback("100.00"), "InvId": "43"},
        {**signed_callback("100.00"), "Shp_order_id": "00000000-0000-0000-0000-000000000000"},
        {**signed_callback("100.00"), "SignatureValue": "not hex at all"},
    ],
    ids=["wrong-password", "other-amount", "other-invoice", "other-order", "garbage-signature"],
)
def test_bad_signature_is_answered_400_and_names_no_order(fields: dict[str, str]) -> None:
    result = ADAPTER.parse_notification(post(fields), settings())
    assert not result.verified
    assert result.report is None
    assert result.ref == OrderRef()
    assert result.reply.status_code == 400
    assert not result.reply.body.startswith(b"OK")


@pytest.mark.parametrize(
    "body",
    [
        b"InvId=42&SignatureValue=ABC",
        b"OutSum=100.00&InvId=forty-two&SignatureValue=ABC",
        b"OutSum=100.00&InvId=42&InvId=43&SignatureValue=ABC",
        b"OutSum=100.00&InvId=42&SignatureValue=\xff\xfe",
    ],
    ids=["missing-out-sum", "inv-id-not-a-number", "inv-id-twice", "not-utf8"],
)
def test_unreadable_callbacks_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_notification(Notification(headers=FORM, body=body), settings())


def test_a_genuine_callback_for_an_amount_robokassa_cannot_state_is_malformed() -> None:
    fields = signed_callback("100.005")
    with pytest.raises(MalformedResponse):
        ADAPTER.parse_notification(post(fields), settings())


def test_replayed_genuine_callback_still_verifies_and_is_declared_replayable() -> None:
    # No time in the signature: a replay cannot be told apart, and says only what was true.
    assert ADAPTER.capabilities.replayable_notifications
    assert ADAPTER.capabilities.signed_notifications
    replay = form_notification("result_url_replayed")
    first = ADAPTER.parse_notification(replay, settings())
    second = ADAPTER.parse_notification(replay, settings())
    assert first == second
    assert first.verified
    assert first.report is not None
    assert first.report.state is CanonicalState.PAID


def test_robokassa_has_no_cancel_and_no_lookup() -> None:
    caps = ADAPTER.capabilities
    assert not caps.cancel
    assert not caps.lookup_by_reference
    assert not caps.cancel_refunds
    with pytest.raises(NotSupported):
        ADAPTER.build_cancel(INVOICED, settings())
    with pytest.raises(NotSupported):
        ADAPTER.build_lookup(ORDER, settings())


# -- refunds (issue #14) --------------------------------------------------------------------------


def refund_request(**changes: object) -> RefundRequest:
    request = RefundRequest(
        id=SAMPLE_REFUND_ID,
        order=replace(INVOICED, status=OrderStatus.PAID),
        money=Money(4000, "RUB"),
        psp_payment_id=OP_KEY,
    )
    return replace(request, **changes)  # type: ignore[arg-type]


def test_paid_status_names_the_operation_key_a_refund_needs() -> None:
    assert status("opstate_state_100").psp_payment_id == OP_KEY


def test_refund_request_is_the_jwt_robokassa_documents() -> None:
    request = ADAPTER.build_refund(refund_request(), settings())
    assert (request.method, request.url, request.operation) == (
        "POST",
        "https://services.robokassa.ru/RefundService/Refund/Create",
        "refund",
    )
    assert request.content == REFUND_JWT.encode()


def test_refund_api_url_is_a_setting_of_its_own() -> None:
    moved = settings(refund_api_url="https://refunds.example/RefundService/")
    request = ADAPTER.build_refund(refund_request(), moved)
    assert request.url == "https://refunds.example/RefundService/Refund/Create"
    status_request = ADAPTER.build_refund_status(refund_request(psp_refund_id=REQUEST_ID), moved)
    assert status_request.url == "https://refunds.example/RefundService/Refund/GetState"
    assert list(status_request.params) == [("id", REQUEST_ID)]


def test_refund_without_password3_or_op_key_is_refused_before_any_call() -> None:
    with pytest.raises(InvalidSettings, match="PASSWORD3"):
        ADAPTER.build_refund(refund_request(), settings(password3=""))
    with pytest.raises(InvalidInput, match="psp_payment_id"):
        ADAPTER.build_refund(refund_request(psp_payment_id=None), settings())
    with pytest.raises(InvalidInput, match="currency"):
        ADAPTER.build_refund(refund_request(money=Money(4000, "USD")), settings())


def test_accepted_refund_is_pending_under_robokassas_request_id() -> None:
    report = ADAPTER.parse_refund(
        refund_request(), json_fixture("refund_create_accepted"), settings()
    )
    assert (report.state, report.psp_refund_id) == (RefundState.PENDING, REQUEST_ID)


def test_refused_refund_is_a_rejection_naming_robokassas_reason() -> None:
    with pytest.raises(PspRejected, match="NotEnoughOperationFunds"):
        ADAPTER.parse_refund(refund_request(), json_fixture("refund_create_refused"), settings())


def test_accepted_refund_without_request_id_is_malformed() -> None:
    with pytest.raises(MalformedResponse, match="requestId"):
        ADAPTER.parse_refund(
            refund_request(), json_fixture("refund_create_without_request_id"), settings()
        )


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("refund_state_processing", RefundState.PENDING),
        ("refund_state_finished", RefundState.SUCCEEDED),
        ("refund_state_canceled", RefundState.FAILED),
    ],
)
def test_refund_labels(name: str, state: RefundState) -> None:
    known = refund_request(psp_refund_id=REQUEST_ID)
    report = ADAPTER.parse_refund_status(known, json_fixture(name), settings())
    assert (report.state, report.money, report.raw_status) == (
        state,
        Money(4000, "RUB"),
        name.rsplit("_", 1)[1],
    )


def test_refund_state_lookup_refused_is_transient() -> None:
    known = refund_request(psp_refund_id=REQUEST_ID)
    with pytest.raises(TransientError, match="RequestNotFound"):
        ADAPTER.parse_refund_status(known, json_fixture("refund_state_not_found"), settings())


@pytest.mark.parametrize(("code", "error"), [(401, CredentialsRejected), (503, TransientError)])
def test_refund_api_http_errors(code: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        ADAPTER.parse_refund(refund_request(), PspResponse(code, b""), settings())

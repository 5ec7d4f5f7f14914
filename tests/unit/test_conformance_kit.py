"""The conformance kit itself: it fails adapters with known defects and fits other API shapes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
import structlog

from adapters import yookassa
from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    CredentialsRejected,
    FollowUp,
    Invoice,
    InvoiceMayExist,
    MalformedResponse,
    Notification,
    NotificationResult,
    OrderRef,
    PspRejected,
    PspRequest,
    PspResponse,
    Reply,
    Secret,
    SettingSpec,
    StatusReport,
    Token,
)
from adapters.testing import (
    SAMPLE_ORDER_ID,
    AdapterConformance,
    FixtureSet,
    NotificationFixtures,
    SignatureVector,
    canonical_request,
    load_response,
    request_payload,
    sample_order,
)
from orders.model import Order
from orders.money import Money

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yookassa"
PAYMENT_ID = "2f3b588d-000f-5000-8000-1d6e87c7fbde"
SECRET = "test_Fh8hUAVVBGUGbjmlzba6TB0iyUbos_lueTHE-axOwM0"


def _fixture(name: str, status_code: int = 200) -> PspResponse:
    return load_response(FIXTURES / f"{name}.json", status_code)


def _notification(name: str) -> Notification:
    body = (FIXTURES / f"{name}.json").read_bytes()
    return Notification(headers={}, body=body, remote_addr="185.71.76.10")


YOOKASSA_FIXTURES = FixtureSet(
    psp_id=PAYMENT_ID,
    create=_fixture("create_pending"),
    states={
        CanonicalState.PENDING: _fixture("status_pending"),
        CanonicalState.PAID: _fixture("status_succeeded"),
        CanonicalState.REJECTED: _fixture("status_canceled_insufficient_funds"),
        CanonicalState.EXPIRED: _fixture("status_canceled_expired_on_confirmation"),
        CanonicalState.REFUNDED: _fixture("status_refunded"),
    },
    notifications=NotificationFixtures(
        valid=_notification("notification_payment_succeeded"),
        tampered=_notification("notification_payment_succeeded_tampered"),
        stale=_notification("notification_payment_waiting_for_capture_stale"),
        expected_ref=OrderRef(psp_id=PAYMENT_ID),
    ),
    cancelled=_fixture("status_canceled_by_merchant"),
    captured=_fixture("status_succeeded"),
)
YOOKASSA_SETTINGS = {"shop_id": "100500", "secret_key": SECRET}


def kit_for(
    adapter: Adapter,
    fixtures: FixtureSet = YOOKASSA_FIXTURES,
    settings: Mapping[str, str] = YOOKASSA_SETTINGS,
    vectors: Sequence[SignatureVector] = (),
) -> Any:
    """A conformance suite for a (deliberately broken) adapter, outside collection."""

    class Kit(AdapterConformance):
        pass

    Kit.adapter = adapter
    Kit.fixtures = fixtures
    Kit.settings = settings
    Kit.order = sample_order(adapter=adapter.name)
    Kit.vectors = vectors
    return Kit()


def _failure(check: Callable[..., None], *args: Any) -> BaseException | None:
    """What a kit check raised for the adapter (None when it passed)."""
    try:
        check(*args)
    except (AssertionError, KeyError, pytest.fail.Exception) as exc:
        return exc
    return None


def _fails(check: Callable[..., None], *args: Any) -> bool:
    return isinstance(_failure(check, *args), AssertionError | pytest.fail.Exception)


def _message(check: Callable[..., None], *args: Any) -> str:
    """The failure message a kit check gives the adapter's author."""
    failure = _failure(check, *args)
    assert isinstance(failure, AssertionError | pytest.fail.Exception), (
        f"expected the check to fail, found {failure!r}"
    )
    return str(failure)


# -- defects the kit must catch -----------------------------------------------------------------


class RandomKey(yookassa.YooKassa):
    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        request = super().build_create(order, settings)
        return replace(request, headers={**request.headers, "Idempotence-Key": str(uuid.uuid4())})


class FixedHost(yookassa.YooKassa):
    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        request = super().build_status(order, settings)
        return replace(request, url=f"https://api.yookassa.ru/v3/payments/{order.psp_id}")


class LogsCredentials(yookassa.YooKassa):
    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        request = super().build_status(order, settings)
        structlog.get_logger().debug("status request", headers=dict(request.headers))
        return request


class StdlibLogsSecret(yookassa.YooKassa):
    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        logging.getLogger("psp").debug("using key %s", settings.get("SECRET_KEY"))
        return super().build_create(order, settings)


class SecretInError(yookassa.YooKassa):
    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        if not response.content:
            raise MalformedResponse(f"empty body for {SECRET}")
        return super().parse_status(order, response, settings, operation)


class CrashesOnGarbage(yookassa.YooKassa):
    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        if response.content == b"{}":
            raise KeyError("status")
        return super().parse_status(order, response, settings, operation)


class TrustsNotifications(yookassa.YooKassa):
    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        result = super().parse_notification(notification, settings)
        return replace(result, verified=True)


class HintsByOurIdOnly(yookassa.YooKassa):
    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        result = super().parse_notification(notification, settings)
        return replace(result, ref=replace(result.ref, psp_id=None))


class PaidIsPending(yookassa.YooKassa):
    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        report = super().parse_status(order, response, settings, operation)
        return replace(report, state=CanonicalState.PENDING)


class RoundsAmounts(yookassa.YooKassa):
    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        report = super().parse_status(order, response, settings, operation)
        money = report.money or Money(0, "RUB")
        return replace(report, money=Money(money.amount // 100 * 100 + 1, money.currency))


class CancelsPaidPayments(yookassa.YooKassa):
    def can_cancel(self, order: Order, report: StatusReport | None) -> bool:
        return True


def test_kit_passes_the_real_yookassa_adapter(caplog: pytest.LogCaptureFixture) -> None:
    kit = kit_for(yookassa.adapter)
    kit.test_create_is_fixed_for_a_fixed_order()
    kit.test_requests_start_at_the_configured_api_url()
    kit.test_secrets_stay_out_of_logs_reprs_and_errors(caplog)
    kit.test_valid_notification_names_the_order()
    kit.test_cancel_answer_reads_as_cancelled()
    kit.test_capture_answer_reads_as_paid()
    kit.test_can_cancel_never_gives_back_money_taken()


def test_kit_fails_a_create_request_that_changes_between_calls() -> None:
    message = _message(kit_for(RandomKey()).test_create_is_fixed_for_a_fixed_order)
    assert "same request every time" in message
    assert "it differs in header idempotence-key:" in message
    assert "authorization" not in message, "the message names only what differs"


def test_kit_fails_a_request_that_ignores_api_url() -> None:
    message = _message(kit_for(FixedHost()).test_requests_start_at_the_configured_api_url)
    assert "status: with API_URL=" in message
    assert "https://api.yookassa.ru/v3/payments/" in message


@pytest.mark.parametrize("adapter", [LogsCredentials(), StdlibLogsSecret(), SecretInError()])
def test_kit_fails_secrets_in_logs_or_errors(
    adapter: yookassa.YooKassa, caplog: pytest.LogCaptureFixture
) -> None:
    message = _message(kit_for(adapter).test_secrets_stay_out_of_logs_reprs_and_errors, caplog)
    assert "SECRET_KEY" in message or "Authorization header" in message
    assert SECRET not in message, "the kit's own message must not repeat the secret"


def test_kit_fails_a_parser_that_crashes_on_missing_fields() -> None:
    kit = kit_for(CrashesOnGarbage())
    case = ("status", PspResponse(200, b"{}"))
    # The adapter's own crash escapes the kit's check: the test errors out with its traceback.
    failure = _failure(kit.test_malformed_body_raises_malformed_response, case)
    assert isinstance(failure, KeyError)


def test_kit_fails_an_unsigned_adapter_that_verifies_notifications() -> None:
    message = _message(kit_for(TrustsNotifications()).test_valid_notification_names_the_order)
    assert "unsigned notification is only ever a hint" in message


def test_kit_fails_an_unsigned_notification_naming_only_our_ids() -> None:
    notes = YOOKASSA_FIXTURES.notifications
    assert notes is not None
    by_our_id = replace(notes, expected_ref=OrderRef(order_id=str(SAMPLE_ORDER_ID)))
    kit = kit_for(HintsByOurIdOnly(), replace(YOOKASSA_FIXTURES, notifications=by_our_id))
    message = _message(kit.test_valid_notification_names_the_order)
    assert "must name the payment system's id (ref.psp_id)" in message


def test_kit_fails_a_wrong_state_and_a_wrong_amount() -> None:
    paid = (CanonicalState.PAID, YOOKASSA_FIXTURES.states[CanonicalState.PAID])
    message = _message(kit_for(PaidIsPending()).test_state_fixture_parses_to_its_state, paid)
    assert "the paid fixture must parse to paid, found pending" in message
    message = _message(kit_for(RoundsAmounts()).test_paid_fixture_reports_the_order_money)
    assert "100.00 RUB" in message
    assert "100.01 RUB" in message


def test_kit_fails_a_missing_state_fixture_unless_declared_not_reported() -> None:
    states = dict(YOOKASSA_FIXTURES.states)
    del states[CanonicalState.REFUNDED]
    missing = replace(YOOKASSA_FIXTURES, states=states)
    declared = replace(missing, not_reported=frozenset({CanonicalState.REFUNDED}))
    message = _message(kit_for(yookassa.adapter, missing).test_every_canonical_state_has_a_fixture)
    assert "refunded" in message
    kit_for(yookassa.adapter, declared).test_every_canonical_state_has_a_fixture()


def test_kit_requires_cancel_and_capture_answers_of_an_adapter_that_has_them() -> None:
    bare = replace(YOOKASSA_FIXTURES, cancelled=None, captured=None)
    kit = kit_for(yookassa.adapter, bare)
    assert "FixtureSet.cancelled" in _message(kit.test_cancel_answer_reads_as_cancelled)
    assert "FixtureSet.captured" in _message(kit.test_capture_answer_reads_as_paid)


def test_kit_fails_a_cancel_answer_read_as_anything_but_cancelled() -> None:
    paid_as_cancel = replace(YOOKASSA_FIXTURES, cancelled=_fixture("status_succeeded"))
    message = _message(
        kit_for(yookassa.adapter, paid_as_cancel).test_cancel_answer_reads_as_cancelled
    )
    assert "operation='cancel'" in message
    assert "PAID" in message


def test_kit_fails_an_adapter_that_would_cancel_a_paid_payment() -> None:
    message = _message(kit_for(CancelsPaidPayments()).test_can_cancel_never_gives_back_money_taken)
    assert "never cancel money already taken" in message


# -- pairs: forms and queries with repeated and nested keys -------------------------------------


def _form_request(form: Any) -> PspRequest:
    return PspRequest("POST", "https://psp.example/v1/sessions", "create", form=form)


def test_canonical_request_keeps_the_order_of_repeated_and_nested_keys() -> None:
    expand = [("expand[]", "payment_intent"), ("expand[]", "line_items")]
    swapped = [("expand[]", "line_items"), ("expand[]", "payment_intent")]
    assert canonical_request(_form_request(expand)) != canonical_request(_form_request(swapped))
    assert canonical_request(_form_request(expand)) == canonical_request(_form_request(expand))
    # A mapping's order means nothing on the wire: the same pairs compare equal in any order.
    forward = _form_request({"a": "1", "b": "2"})
    backward = _form_request({"b": "2", "a": "1"})
    assert canonical_request(forward) == canonical_request(backward)


def test_request_payload_shows_every_value_of_pairs_in_form_and_query() -> None:
    request = PspRequest(
        "GET",
        "https://psp.example/v1/sessions",
        "lookup",
        params=[("client_reference_id", "order-7"), ("expand[]", "data.payment_intent")],
        form=(("line_items[0][price_data][unit_amount]", "1999"),),
    )
    payload = request_payload(request)
    for text in (
        "order-7",
        "data.payment_intent",
        "line_items[0][price_data][unit_amount]",
        "1999",
    ):
        assert text in payload


# -- another shape: a redirect-only payment system with a signed pay URL and XML statuses ---------


class SignedRedirect(Adapter):
    """A Robokassa-like stand-in: no create call, an MD5-signed pay URL, XML status answers."""

    name: ClassVar[str] = "signedredirect"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=False, lookup_by_reference=False, currencies=frozenset({"RUB"})
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default="https://pay.example.com/merchant"),
        SettingSpec("LOGIN"),
        SettingSpec("PASSWORD", secret=True),
    )

    def build_create(self, order: Order, settings: AdapterSettings) -> Invoice:
        total = f"{order.money.to_decimal():.2f}"
        raw = f"{settings.get('LOGIN')}:{total}:{order.number}:{settings.get('PASSWORD')}"
        signature = hashlib.md5(raw.encode(), usedforsecurity=False).hexdigest()
        query = urlencode(
            {"MerchantLogin": settings.get("LOGIN"), "OutSum": total, "InvId": order.number}
        )
        url = f"{settings.api_url}/Index.aspx?{query}&SignatureValue={signature}"
        return Invoice(psp_id=str(order.number), pay_url=url)

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        raise AssertionError("a redirect-only system has no create response")

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            "GET",
            f"{settings.api_url}/OpState",
            "status",
            params=[("MerchantLogin", settings.get("LOGIN")), ("InvoiceID", str(order.number))],
        )

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        if response.status_code != 200:
            raise MalformedResponse(f"HTTP {response.status_code}")
        try:
            root = ElementTree.fromstring(response.content)  # noqa: S314 (fixed test input)
        except ElementTree.ParseError as exc:
            raise MalformedResponse(f"not XML: {exc}") from None
        code, amount = root.findtext("State/Code"), root.findtext("Info/OutSum")
        states = {"5": CanonicalState.PENDING, "100": CanonicalState.PAID}
        states |= {"10": CanonicalState.REJECTED, "60": CanonicalState.REFUNDED}
        if code not in states or amount is None:
            raise MalformedResponse(f"unreadable state {code!r}")
        return StatusReport(states[code], money=Money.parse(amount, "RUB"), raw_status=code)


def _xml(code: str) -> PspResponse:
    body = f"<OperationStateResponse><State><Code>{code}</Code></State>"
    return PspResponse(
        200, (body + "<Info><OutSum>100.00</OutSum></Info></OperationStateResponse>").encode()
    )


class TestKitFitsSignedRedirectSystems(AdapterConformance):
    adapter = SignedRedirect()
    settings: ClassVar[dict[str, str]] = {"login": "demo-shop", "password": "fake-password-1"}
    fixtures = FixtureSet(
        states={
            CanonicalState.PENDING: _xml("5"),
            CanonicalState.PAID: _xml("100"),
            CanonicalState.REJECTED: _xml("10"),
            CanonicalState.REFUNDED: _xml("60"),
        },
        not_reported=frozenset({CanonicalState.EXPIRED}),
        malformed={"unknown-state-code": _xml("77")},
    )


# -- another shape: no idempotency key, lookup by our reference, token-signed replayable
#    notifications, a cancel that refunds (a T-Bank-like stand-in) ------------------------------


def body_token(params: Mapping[str, Any], password: str) -> str:
    """SHA-256 over the root-level values plus the password, sorted by key (nested left out)."""
    values = {k: v for k, v in params.items() if k != "Token" and not isinstance(v, dict | list)}
    values["Password"] = password
    text = "".join(
        str(v).lower() if isinstance(v, bool) else str(v) for _, v in sorted(values.items())
    )
    return hashlib.sha256(text.encode()).hexdigest()


_SIGNED_STATES = {
    "NEW": CanonicalState.PENDING,
    "FORM_SHOWED": CanonicalState.PENDING,
    "CONFIRMED": CanonicalState.PAID,
    "REJECTED": CanonicalState.REJECTED,
    "CANCELED": CanonicalState.REJECTED,
    "DEADLINE_EXPIRED": CanonicalState.EXPIRED,
    "REFUNDED": CanonicalState.REFUNDED,
}


def _signed_body(response: PspResponse) -> Mapping[str, Any]:
    if response.status_code != 200:
        raise MalformedResponse(f"HTTP {response.status_code}")
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("Success"), bool):
        raise MalformedResponse("not an answer: no boolean Success")
    return body


def _signed_report(body: Mapping[str, Any]) -> StatusReport:
    status, amount = body.get("Status"), body.get("Amount")
    if status not in _SIGNED_STATES or not isinstance(amount, int) or isinstance(amount, bool):
        raise MalformedResponse(f"unreadable payment: Status {status!r}, Amount {amount!r}")
    return StatusReport(
        _SIGNED_STATES[status],
        psp_id=str(body.get("PaymentId")),
        money=Money(amount, "RUB"),
        raw_status=status,
    )


class SignedTokens(Adapter):
    name: ClassVar[str] = "signedtokens"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=False,
        lookup_by_reference=True,
        cancel=True,
        cancel_refunds=True,
        notifications=True,
        signed_notifications=True,
        replayable_notifications=True,
        currencies=frozenset({"RUB"}),
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default="https://acquiring.example.com/v2"),
        SettingSpec("TERMINAL_KEY"),
        SettingSpec("PASSWORD", secret=True),
    )

    def _call(
        self, operation: str, method: str, fields: Mapping[str, Any], settings: AdapterSettings
    ) -> PspRequest:
        params = {"TerminalKey": settings.get("TERMINAL_KEY"), **fields}
        params["Token"] = body_token(params, settings.get("PASSWORD"))
        return PspRequest("POST", f"{settings.api_url}/{method}", operation, json=params)

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        fields = {"Amount": order.money.amount, "OrderId": str(order.id), "Description": "x"}
        return self._call("create", "Init", fields, settings)

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        body = _signed_body(response)
        if body["Success"]:
            if not isinstance(body.get("PaymentURL"), str):
                raise MalformedResponse("Init answer without PaymentURL")
            return Invoice(str(body["PaymentId"]), body["PaymentURL"])
        if body.get("ErrorCode") == "8":
            raise InvoiceMayExist("an Init for this OrderId exists")
        raise PspRejected(f"refused: {body.get('ErrorCode')}")

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return self._call("status", "GetState", {"PaymentId": order.psp_id}, settings)

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        return _signed_report(_signed_body(response))

    def build_cancel(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return self._call("cancel", "Cancel", {"PaymentId": order.psp_id}, settings)

    def build_lookup(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return self._call("lookup", "CheckOrder", {"OrderId": str(order.id)}, settings)

    def parse_lookup(
        self, order: Order, response: PspResponse, settings: AdapterSettings
    ) -> Invoice | None:
        body = _signed_body(response)
        if not body["Success"] and body.get("ErrorCode") == "7":
            return None  # "no such order": no Init ever reached the payment system
        payments = body.get("Payments")
        if not body["Success"] or not isinstance(payments, list) or not payments:
            raise MalformedResponse("lookup answer without payments")
        return Invoice(str(payments[0]["PaymentId"]), None)

    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        body = _signed_body(PspResponse(200, notification.body))
        ref = OrderRef(order_id=body.get("OrderId"), psp_id=str(body.get("PaymentId")))
        expected = body_token(body, settings.get("PASSWORD"))
        verified = hmac.compare_digest(str(body.get("Token")), expected)
        report = _signed_report(body) if verified else None
        return NotificationResult(ref, verified, report, Reply(200, b"OK"))


SIGNED_SETTINGS = {"terminal_key": "KitTerminal", "password": "kit-password-123"}
SIGNED_PAYMENT = 700001


def _signed_answer(status: str, **changes: Any) -> PspResponse:
    body = {"Success": True, "ErrorCode": "0", "TerminalKey": "KitTerminal"}
    body |= {"PaymentId": SIGNED_PAYMENT, "Status": status, "Amount": 10000} | changes
    return PspResponse(200, json.dumps(body).encode())


def _signed_notification(status: str, amount: int = 10000, sign: bool = True) -> Notification:
    body: dict[str, Any] = {"TerminalKey": "KitTerminal", "OrderId": str(SAMPLE_ORDER_ID)}
    body |= {"Success": True, "Status": status, "PaymentId": SIGNED_PAYMENT, "Amount": 10000}
    body["Token"] = body_token(body, SIGNED_SETTINGS["password"])
    body["Amount"] = amount  # a tampered copy changes a field after signing
    return Notification({"content-type": "application/json"}, json.dumps(body).encode())


def _known_token() -> str:
    fields: dict[str, Any] = {"TerminalKey": "KitTerminal", "PaymentId": "700001"}
    fields |= {"Status": "CONFIRMED"}
    fields |= {"OrderId": str(SAMPLE_ORDER_ID), "Amount": 10000, "Success": True}
    return body_token(fields, "kit-password-123")


SIGNED_VECTORS = (
    SignatureVector(
        "notification token, booleans as true",
        _known_token,
        "a6bc9c7cf0dd1b1a6c690ae4195600526346ecf4492dc8f528cbeb5e19d09116",
    ),
)
SIGNED_FIXTURES = FixtureSet(
    psp_id=str(SIGNED_PAYMENT),
    create=_signed_answer("NEW", PaymentURL="https://securepay.example.com/new/700001"),
    states={
        CanonicalState.PENDING: _signed_answer("FORM_SHOWED"),
        CanonicalState.PAID: _signed_answer("CONFIRMED"),
        CanonicalState.REJECTED: _signed_answer("REJECTED"),
        CanonicalState.EXPIRED: _signed_answer("DEADLINE_EXPIRED"),
        CanonicalState.REFUNDED: _signed_answer("REFUNDED"),
    },
    malformed={"unknown-status": _signed_answer("ON_HOLD")},
    lookup_found=PspResponse(
        200,
        json.dumps(
            {"Success": True, "Payments": [{"PaymentId": SIGNED_PAYMENT, "Status": "NEW"}]}
        ).encode(),
    ),
    lookup_missing=PspResponse(200, b'{"Success": false, "ErrorCode": "7"}'),
    cancelled=_signed_answer("CANCELED"),
    notifications=NotificationFixtures(
        valid=_signed_notification("CONFIRMED"),
        tampered=_signed_notification("CONFIRMED", amount=1),
        # Signed like any other: without a timestamp nothing tells a replay apart.
        stale=_signed_notification("FORM_SHOWED"),
        expected_ref=OrderRef(order_id=str(SAMPLE_ORDER_ID), psp_id=str(SIGNED_PAYMENT)),
        expected_reply=Reply(200, b"OK"),
    ),
)


class TestKitFitsReplayableSignaturesAndLookups(AdapterConformance):
    adapter = SignedTokens()
    settings = SIGNED_SETTINGS
    fixtures = SIGNED_FIXTURES
    vectors = SIGNED_VECTORS


class LookupAlwaysNone(SignedTokens):
    def parse_lookup(
        self, order: Order, response: PspResponse, settings: AdapterSettings
    ) -> Invoice | None:
        return None


class NoSignatureCheck(SignedTokens):
    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        return replace(super().parse_notification(notification, settings), verified=True)


class ClaimsFreshness(SignedTokens):
    capabilities: ClassVar[Capabilities] = replace(
        SignedTokens.capabilities, replayable_notifications=False
    )


class CancelsWithoutAState(SignedTokens):
    def can_cancel(self, order: Order, report: StatusReport | None) -> bool:
        return report is None or report.state is CanonicalState.PENDING


def test_kit_fails_a_lookup_that_always_answers_none() -> None:
    kit = kit_for(LookupAlwaysNone(), SIGNED_FIXTURES, SIGNED_SETTINGS)
    message = _message(kit.test_lookup_finds_the_fixture_invoice)
    assert "must parse to an Invoice with psp_id '700001', found None" in message
    garbage = ("lookup", PspResponse(200, b"{}"))
    message = _message(kit.test_malformed_body_raises_malformed_response, garbage)
    assert "create a second invoice" in message


def test_kit_requires_both_lookup_answers_of_an_adapter_that_looks_up() -> None:
    bare = replace(SIGNED_FIXTURES, lookup_found=None, lookup_missing=None)
    kit = kit_for(SignedTokens(), bare, SIGNED_SETTINGS)
    assert "FixtureSet.lookup_found" in _message(kit.test_lookup_finds_the_fixture_invoice)
    assert "FixtureSet.lookup_missing" in _message(
        kit.test_lookup_answers_none_only_when_the_payment_system_has_no_invoice
    )


def test_kit_lets_a_replayable_signature_verify_its_stale_fixture_but_never_a_tampered_one() -> (
    None
):
    kit = kit_for(SignedTokens(), SIGNED_FIXTURES, SIGNED_SETTINGS)
    with pytest.raises(pytest.skip.Exception):
        kit.test_stale_notification_is_never_verified()
    kit.test_tampered_notification_is_never_verified()
    forged = kit_for(NoSignatureCheck(), SIGNED_FIXTURES, SIGNED_SETTINGS)
    message = _message(forged.test_tampered_notification_is_never_verified)
    assert "tampered notification fixture verified" in message


def test_kit_names_the_cure_when_a_timestamp_less_signature_verifies_a_stale_fixture() -> None:
    kit = kit_for(ClaimsFreshness(), SIGNED_FIXTURES, SIGNED_SETTINGS)
    message = _message(kit.test_stale_notification_is_never_verified)
    assert (
        "the stale notification fixture verified: a notification older than the tolerance must "
        "not verify (or declare replayable_notifications=True if the payment system's signature "
        "has no timestamp)"
    ) in message


def test_kit_fails_a_refunding_cancel_allowed_with_no_state_read() -> None:
    kit = kit_for(CancelsWithoutAState(), SIGNED_FIXTURES, SIGNED_SETTINGS)
    message = _message(kit.test_can_cancel_never_gives_back_money_taken)
    assert "cancel_refunds: with no state read" in message


def test_kit_fails_a_signature_vector_and_names_it() -> None:
    wrong = SignatureVector("documented Init example", _known_token, "00" * 32)
    kit = kit_for(SignedTokens(), SIGNED_FIXTURES, SIGNED_SETTINGS, vectors=(wrong,))
    message = _message(kit.test_signature_vector, wrong)
    assert "signature vector 'documented Init example'" in message
    assert "0000" in message
    assert SIGNED_VECTORS[0].expected in message


# -- another shape: OAuth client-credentials tokens, form bodies with nested keys, a capture step
#    (a PayPal- and Stripe-like stand-in) -------------------------------------------------------


class OAuthForms(Adapter):
    name: ClassVar[str] = "oauthforms"
    capabilities: ClassVar[Capabilities] = Capabilities(idempotent_create=True)
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default="https://api.oauth.example.com"),
        SettingSpec("CLIENT_ID"),
        SettingSpec("CLIENT_SECRET", secret=True),
    )

    def build_token(self, settings: AdapterSettings) -> PspRequest | None:
        pair = f"{settings.get('CLIENT_ID')}:{settings.get('CLIENT_SECRET')}".encode()
        return PspRequest(
            "POST",
            f"{settings.api_url}/v1/oauth2/token",
            "token",
            headers={"Authorization": "Basic " + base64.b64encode(pair).decode()},
            form=[("grant_type", "client_credentials")],
        )

    def parse_token(self, response: PspResponse, settings: AdapterSettings) -> Token:
        if response.status_code == 401:
            raise CredentialsRejected("the token endpoint refused our client credentials")
        body = _ok_json(response)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not isinstance(expires_in, int):
            raise MalformedResponse("token answer without access_token and expires_in")
        return Token(Secret(token), timedelta(seconds=expires_in))

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        form = [
            ("client_reference_id", str(order.id)),
            ("line_items[0][price_data][unit_amount]", str(order.money.amount)),
            ("line_items[0][price_data][currency]", order.money.currency.lower()),
            ("expand[]", "payment_intent"),
            ("expand[]", "line_items"),
        ]
        return PspRequest(
            "POST",
            f"{settings.api_url}/v1/sessions",
            "create",
            headers={"Idempotency-Key": order.psp_idempotency_key},
            form=form,
        )

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        body = _ok_json(response)
        if not isinstance(body.get("id"), str) or not isinstance(body.get("url"), str):
            raise MalformedResponse("session without id and url")
        return Invoice(body["id"], body["url"])

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest("GET", f"{settings.api_url}/v1/sessions/{order.psp_id}", "status")

    def build_capture(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            "POST",
            f"{settings.api_url}/v1/sessions/{order.psp_id}/capture",
            "capture",
            headers={"Idempotency-Key": f"{order.psp_idempotency_key}-capture"},
        )

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        body = _ok_json(response)
        states = {"CREATED": CanonicalState.PENDING, "APPROVED": CanonicalState.PENDING}
        states |= {"COMPLETED": CanonicalState.PAID, "VOIDED": CanonicalState.REJECTED}
        status, amount = body.get("status"), body.get("amount")
        if status not in states or not isinstance(amount, dict):
            raise MalformedResponse(f"unreadable session: status {status!r}")
        money = Money.parse(str(amount.get("value")), str(amount.get("currency_code")))
        follow_up = FollowUp.CAPTURE if status == "APPROVED" else None
        return StatusReport(states[status], body.get("id"), money, follow_up, raw_status=status)


def _ok_json(response: PspResponse) -> Mapping[str, Any]:
    if response.status_code not in (200, 201):
        raise MalformedResponse(f"HTTP {response.status_code}")
    body = response.json()
    if not isinstance(body, dict):
        raise MalformedResponse("not a JSON object")
    return body


def _session(status: str) -> PspResponse:
    body = {"id": "S-1", "status": status, "amount": {"value": "100.00", "currency_code": "RUB"}}
    return PspResponse(200, json.dumps(body).encode())


OAUTH_SETTINGS = {"client_id": "kit-client-id", "client_secret": "kit-client-secret-42"}
ACCESS_TOKEN = "A21AAkit-access-token-value"
OAUTH_FIXTURES = FixtureSet(
    psp_id="S-1",
    create=PspResponse(201, b'{"id": "S-1", "url": "https://pay.oauth.example.com/S-1"}'),
    states={
        CanonicalState.PENDING: _session("APPROVED"),
        CanonicalState.PAID: _session("COMPLETED"),
        CanonicalState.REJECTED: _session("VOIDED"),
    },
    not_reported=frozenset({CanonicalState.EXPIRED, CanonicalState.REFUNDED}),
    captured=_session("COMPLETED"),
    token=PspResponse(
        200, json.dumps({"access_token": ACCESS_TOKEN, "expires_in": 32400}).encode()
    ),
)


class TestKitFitsOAuthTokensFormsAndCaptures(AdapterConformance):
    adapter = OAuthForms()
    settings = OAUTH_SETTINGS
    fixtures = OAUTH_FIXTURES


class PlainTokenValue(OAuthForms):
    def parse_token(self, response: PspResponse, settings: AdapterSettings) -> Token:
        token = super().parse_token(response, settings)
        return replace(token, value=token.value.reveal())  # type: ignore[arg-type]


class SecretInTokenBody(OAuthForms):
    def build_token(self, settings: AdapterSettings) -> PspRequest | None:
        return PspRequest(
            "POST",
            f"{settings.api_url}/v1/oauth2/token",
            "token",
            form=[
                ("grant_type", "client_credentials"),
                ("client_id", settings.get("CLIENT_ID")),
                ("client_secret", settings.get("CLIENT_SECRET")),
            ],
        )


class LogsTheToken(OAuthForms):
    def parse_token(self, response: PspResponse, settings: AdapterSettings) -> Token:
        token = super().parse_token(response, settings)
        structlog.get_logger().info("token", value=token.value.reveal())
        return token


class RefusalIsMalformed(OAuthForms):
    def parse_token(self, response: PspResponse, settings: AdapterSettings) -> Token:
        if response.status_code == 401:
            raise MalformedResponse("HTTP 401")
        return super().parse_token(response, settings)


def test_kit_fails_a_token_that_is_no_secret() -> None:
    kit = kit_for(PlainTokenValue(), OAUTH_FIXTURES, OAUTH_SETTINGS)
    message = _message(kit.test_token_fixture_parses_to_a_secret_that_expires)
    assert "must be an adapters.base.Secret, found <class 'str'>" in message


def test_kit_fails_client_credentials_in_the_token_body() -> None:
    kit = kit_for(SecretInTokenBody(), OAUTH_FIXTURES, OAUTH_SETTINGS)
    message = _message(kit.test_token_request_carries_credentials_only_in_headers)
    assert "['CLIENT_SECRET'] in its URL or body" in message


def test_kit_fails_a_logged_access_token(caplog: pytest.LogCaptureFixture) -> None:
    kit = kit_for(LogsTheToken(), OAUTH_FIXTURES, OAUTH_SETTINGS)
    message = _message(kit.test_secrets_stay_out_of_logs_reprs_and_errors, caplog)
    assert "the access token reached the logs" in message
    assert ACCESS_TOKEN not in message


def test_kit_fails_refused_client_credentials_read_as_anything_else() -> None:
    kit = kit_for(RefusalIsMalformed(), OAUTH_FIXTURES, OAUTH_SETTINGS)
    message = _message(kit.test_refused_client_credentials_are_credentials_rejected)
    assert "expected CredentialsRejected, found MalformedResponse" in message


def test_kit_requires_a_token_answer_of_an_adapter_that_needs_tokens() -> None:
    kit = kit_for(OAuthForms(), replace(OAUTH_FIXTURES, token=None), OAUTH_SETTINGS)
    message = _message(kit.test_token_fixture_parses_to_a_secret_that_expires)
    assert "FixtureSet.token" in message

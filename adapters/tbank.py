"""T-Bank Internet Acquiring (MAPI v2): redirect payments, one- or two-stage, signed requests.

Built from T-Bank's public API reference for accepting payments
(https://www.tbank.ru/kassa/dev/payments/, now https://developer.tbank.ru/eacq/api, OpenAPI
document version 1.80): the sections on the token
(https://developer.tbank.ru/eacq/intro/developer/token), the payment status model, the error
codes and the operation notifications, and the methods Init, GetState, Confirm, Cancel and
CheckOrder. Every call is ``POST {API_URL}/<Method>`` with a JSON body.

**Signature.** Each request carries ``Token``: SHA-256 (hex) over the concatenated values of the
root-level parameters plus ``Password``, sorted by key; nested objects and arrays (``DATA``,
``Receipt``) are left out and booleans are written ``true``/``false`` (:func:`token`). Notifications
carry a ``Token`` made the same way over their own root values (the ``Token`` itself excluded).
The reference's published examples are the test vectors.

**No idempotency key.** ``OrderId`` is our order id (``str(order.id)``, exactly T-Bank's
36-character limit). T-Bank refuses a second ``Init`` for the same ``OrderId`` with error 20
("duplicate order identifier"; 623 when a successful payment exists already): that raises
:class:`InvoiceMayExist`, and the dispatcher looks the payment up with ``CheckOrder``. CheckOrder
does not return the pay URL (``PaymentURL`` is a random short link), so a payment found that way
has none; error 335 ("OrderId not found for TerminalKey") or an empty ``Payments`` list means
there is none.

**Deadline.** ``RedirectDueDate`` is the order's deadline (cut to whole seconds, so the pay link
never outlives our final status check), capped at 90 days after the order was created: T-Bank
accepts 1 minute to 90 days from now and answers 3017 outside that range, which refuses the
create (:class:`PspRejected`): an order submitted with under a minute left cannot be paid anyway.
Without it the link would live T-Bank's default 24 hours.

**Statuses** (``Status`` of GetState, Confirm, Cancel and notifications) as canonical states:

============================================================  ======================================
NEW, FORM_SHOWED, AUTHORIZING, 3DS_CHECKING, 3DS_CHECKED,     pending (the buyer is paying)
PAY_CHECKING, PREAUTHORIZING, PROCESSING, CHECKING, CHECKED,
CONFIRMING, REVERSING
AUTHORIZED                                                    pending; with ``TWO_STAGE`` a hold:
                                                              follow-up ``capture`` (``Confirm``);
                                                              one-stage: T-Bank confirms by itself
PARTIAL_REVERSED                                              pending, follow-up ``capture`` (the
                                                              rest of the hold still waits)
CONFIRMED                                                     paid
REFUNDING, ASYNC_REFUNDING, PARTIAL_REFUNDED                  paid (money taken; a refund runs, for
                                                              SBP asynchronously, or ran on part of
                                                              it), reason says so
REFUNDED                                                      refunded
REJECTED, AUTH_FAIL                                           rejected (declined, 3-D Secure failed)
ATTEMPTS_EXPIRED                                              rejected (the buyer opened the form
                                                              too many times; no money taken)
REVERSED, CANCELED                                            rejected (the merchant released the
                                                              hold or cancelled the payment)
DEADLINE_EXPIRED                                              expired (the link or 3-D Secure timed
                                                              out)
anything else (UNKNOWN included)                              :class:`MalformedResponse`
============================================================  ======================================

**Cancel refunds.** T-Bank's ``Cancel`` of a CONFIRMED payment is a refund, so
:meth:`TBank.can_cancel` allows a cancel only for a two-stage hold waiting for capture
(AUTHORIZED, e.g. when the held amount is not the order's). A NEW or FORM_SHOWED payment is never
cancelled at the deadline: it lapses by itself at ``RedirectDueDate`` (DEADLINE_EXPIRED), and a
cancel racing the buyer's payment could refund money just taken.

**Errors** (``Success: false`` with ``ErrorCode``, ``Message``, ``Details``; T-Bank answers them
with HTTP 200):

- 20, 623 on Init: :class:`InvoiceMayExist` (look it up, never create twice);
- 202, 204, 205, 331, 501, 648, 2015 (terminal unknown, blocked, token/password wrong) and HTTP
  401/403: :class:`CredentialsRejected`;
- 3, 21, 120, 123, 125, 401, 402, 903, 999, 1096, 3040, 7999, 8002, 8004, 9001, 9999 ("internal
  error", "try again later"), HTTP 429 and 5xx: :class:`TBankUnavailable` (transient);
- request validation codes (:data:`INVALID_REQUEST`: missing or malformed parameters, amount,
  currency, ``RedirectDueDate``, receipt) on Init: :class:`PspRejected`; on any other call, and
  the refusals of GetState, Confirm and Cancel (payment not found, wrong state): transient
  :class:`TBankRefused`, since a refused poll says nothing about the payment;
- any other code: :class:`MalformedResponse` (transient, never final).

**Notifications** are JSON POSTs answered with ``OK`` (text/plain, HTTP 200); anything else
makes T-Bank resend for a day. A valid ``Token`` names the order (``OrderId``) and the payment
(``PaymentId``) and is verified, but it carries no timestamp or nonce, so a genuine notification
can be replayed (``replayable_notifications``): the dispatcher polls on it. A missing or wrong
token (or another terminal) is answered 403 without ``OK`` and names nothing.

**Refunds** (issue #14; the Cancel method's reference: a Cancel of CONFIRMED is a refund, of
the whole payment or of ``Amount``, CONFIRMED -> PARTIAL_REFUNDED / REFUNDED): ``Cancel`` with
``PaymentId``, ``Amount`` and our refund id as ``ExternalRequestId`` (T-Bank answers a repeated
one with the payment's state instead of refunding again). The answer's ``REFUNDED`` and
``PARTIAL_REFUNDED`` are succeeded, ``REFUNDING``/``ASYNC_REFUNDING`` pending, the money is
``OriginalAmount - NewAmount``; a refusal (wrong state, an amount above what is left: error 100)
is final. T-Bank has no refund object: a refund's status is ``GetState`` of its payment, never a
second Cancel. ``idempotent_refund`` is not declared: the reference says ``ExternalRequestId``
does not work for SBP operations, so a refund whose answer was lost is never re-sent. Signed
``REFUNDED``/``PARTIAL_REFUNDED`` notifications carry a succeeded refund (not which one).

**Settings**: ``TERMINAL_KEY``, ``PASSWORD`` (secret), ``API_URL`` (default
``https://securepay.tinkoff.ru/v2``; T-Bank's test environment is
``https://rest-api-test.tinkoff.ru/v2``), ``TWO_STAGE`` (default false: ``PayType`` O; true:
``PayType`` T and the dispatcher confirms), ``NOTIFY_URL`` (``NotificationURL`` of each Init,
e.g. paydispatch's ``/v1/callbacks/tbank``; ``none``: the terminal's own setting).
Only roubles: T-Bank's internet acquiring accepts no other currency. Terminals with an online
cash register need a ``Receipt`` we do not build; T-Bank refuses those Inits (309).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, timedelta
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit

from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    CredentialsRejected,
    FollowUp,
    InvalidSettings,
    Invoice,
    InvoiceMayExist,
    MalformedResponse,
    Notification,
    NotificationResult,
    OrderRef,
    PollPolicy,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
    Reply,
    SettingSpec,
    StatusReport,
)
from orders.errors import InvalidInput, TransientError
from orders.model import Order
from orders.money import Money
from orders.settings import flag

DEFAULT_API_URL = "https://securepay.tinkoff.ru/v2"
CURRENCY = "RUB"
DESCRIPTION_LIMIT = 140
ORDER_ID_LIMIT = 36
# RedirectDueDate: at most 90 days ahead (T-Bank answers 3017 beyond).
MAX_REDIRECT = timedelta(days=90)
NO_NOTIFY_URL = "none"
# Customer-initiated, card not saved ("Передача признака инициатора операции").
OPERATION_INITIATOR = "0"

DUPLICATE_ORDER = frozenset({"20", "623"})
ORDER_NOT_FOUND = frozenset({"335"})
CREDENTIALS = frozenset({"202", "204", "205", "331", "501", "648", "2015"})
UNAVAILABLE = frozenset(
    {"3", "21", "120", "123", "125", "401", "402", "903", "999", "1096", "3040", "7999"}
    | {"8002", "8004", "9001", "9999"}
)
INVALID_REQUEST = frozenset(
    {"1", "2", "9", "12", "14", "17", "201", "203", "253", "254", "383", "385", "386", "419"}
    | {str(code) for code in range(206, 231)}
    | {str(code) for code in range(233, 243)}
    | {str(code) for code in range(245, 252)}
    | {"258", "259", "260", "261", "308", "309", "310", "316", "317", "318", "319", "320"}
    | {"321", "323", "326", "329", "330", "332", "333", "334", "1119", "1125", "1126"}
    | {"3001", "3016", "3017"}
)
# Refusals of GetState, Confirm and Cancel: not found, wrong state, cannot change the status.
REFUSED = frozenset({"4", "7", "8", "63", "100", "255", "324", "325", "914", "1076", "3002"})
# ... and of a refund's Cancel besides those (100 is also "an amount above what is left"):
# no refund to a foreign card (79), no such order (335).
REFUND_REFUSED = frozenset({"79", "335"})

PENDING = frozenset(
    {"NEW", "FORM_SHOWED", "AUTHORIZING", "3DS_CHECKING", "3DS_CHECKED", "PAY_CHECKING"}
    | {"PREAUTHORIZING", "PROCESSING", "CHECKING", "CHECKED", "CONFIRMING", "REVERSING"}
)
REFUNDING = {
    "REFUNDING": "refund in progress",
    "ASYNC_REFUNDING": "refund in progress",  # SBP (QR) payments refund asynchronously
    "PARTIAL_REFUNDED": "partly refunded",
}
# What a Cancel of a paid payment (a refund, issue #14) answers, and GetState shows after it.
REFUND_STATES = {
    "REFUNDED": RefundState.SUCCEEDED,
    "PARTIAL_REFUNDED": RefundState.SUCCEEDED,
    "REFUNDING": RefundState.PENDING,
    "ASYNC_REFUNDING": RefundState.PENDING,  # SBP refunds finish later
    # A hold released instead (the payment was never confirmed): the money went back too.
    "REVERSED": RefundState.SUCCEEDED,
    "PARTIAL_REVERSED": RefundState.SUCCEEDED,
}
REJECTED = {
    "REJECTED": "declined by the bank",
    "ATTEMPTS_EXPIRED": "the buyer opened the payment form too many times",
    "AUTH_FAIL": "authorisation or 3-D Secure failed",
    "REVERSED": "the hold was released by the merchant",
    "CANCELED": "cancelled by the merchant",
}


class TBankUnavailable(TransientError):
    """T-Bank could not answer now (internal error, "try again later", HTTP 429/5xx)."""


class TBankRefused(TransientError):
    """T-Bank refused a status, capture, cancel or lookup call.

    Never final: a refused poll says nothing about the payment, so the order keeps its status
    and the next look decides.
    """


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def token(params: Mapping[str, Any], password: str) -> str:
    """T-Bank's ``Token`` for a request or notification.

    Root-level values only (nested objects and arrays, ``None`` and ``Token`` itself left out),
    plus ``Password``, sorted by key, concatenated, SHA-256 over the UTF-8 bytes, hex.
    """
    values = {
        key: _value_text(value)
        for key, value in params.items()
        if key != "Token" and value is not None and not isinstance(value, Mapping | list)
    }
    values["Password"] = password
    joined = "".join(values[key] for key in sorted(values))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def signed(params: Mapping[str, Any], password: str) -> dict[str, Any]:
    """``params`` with their ``Token``."""
    return {**params, "Token": token(params, password)}


def notification_token_valid(body: bytes, password: str) -> bool:
    """Whether a notification body's ``Token`` is the one ``password`` makes.

    Numbers are signed as they are written in the JSON text (``parse_int``/``parse_float``
    keep them as text), as T-Bank's own Java example signs the string values it received.
    """
    try:
        raw = json.loads(body, parse_int=str, parse_float=str)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(raw, dict) or not isinstance(raw.get("Token"), str):
        return False
    expected = token(raw, password)
    return hmac.compare_digest(expected.encode(), raw["Token"].lower().encode())


def _body(response: PspResponse) -> Mapping[str, Any]:
    if response.status_code in {401, 403}:
        raise CredentialsRejected(
            f"T-Bank HTTP {response.status_code}: check PAYDISPATCH_TBANK_TERMINAL_KEY and "
            "PAYDISPATCH_TBANK_PASSWORD"
        )
    if response.status_code == 429 or response.status_code >= 500:
        raise TBankUnavailable(f"T-Bank HTTP {response.status_code}")
    return response.json_object()


def _error_text(body: Mapping[str, Any]) -> str:
    parts = [f"error {body.get('ErrorCode')}"]
    for key in ("Message", "Details"):
        text = str(body.get(key) or "").strip()
        if text and text != "None":
            parts.append(text)
    return ": ".join(parts)


def _raise_error(response: PspResponse, body: Mapping[str, Any], operation: str) -> NoReturn:
    """Translate ``Success: false`` into the error tree (module docstring, "Errors")."""
    code = str(body.get("ErrorCode", "")).strip()
    text = f"T-Bank {operation}: {_error_text(body)}"
    if code in CREDENTIALS:
        raise CredentialsRejected(
            f"{text}; check PAYDISPATCH_TBANK_TERMINAL_KEY and PAYDISPATCH_TBANK_PASSWORD"
        )
    if code in UNAVAILABLE:
        raise TBankUnavailable(text)
    if operation == "create":
        if code in DUPLICATE_ORDER:
            raise InvoiceMayExist(text)
        if code in INVALID_REQUEST:
            raise PspRejected(text)
    elif operation == "refund" and code in INVALID_REQUEST | REFUSED | REFUND_REFUSED:
        # A refused Cancel moved no money (wrong state, amount above what is left): final.
        raise PspRejected(text)
    elif code in INVALID_REQUEST | REFUSED | DUPLICATE_ORDER | ORDER_NOT_FOUND:
        raise TBankRefused(text)
    response.malformed(f"unknown T-Bank error: {text}")


def _answer(response: PspResponse, operation: str) -> Mapping[str, Any]:
    """The body of a successful answer; T-Bank's errors translated, anything else malformed."""
    body = _body(response)
    success = body.get("Success")
    if success is False:
        _raise_error(response, body, operation)
    if success is not True:
        response.malformed("answer without Success true/false")
    if response.status_code != 200:
        response.malformed("successful answer with a non-200 status")
    if str(body.get("ErrorCode", "0")) != "0":
        response.malformed(f"Success true with ErrorCode {body.get('ErrorCode')!r}")
    return body


def _payment_id(value: Any, response: PspResponse) -> str:
    """``PaymentId``: a string in answers, a number in notifications and some schemas."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        response.malformed(f"PaymentId is not a string or integer: {value!r}")
    text = str(value).strip()
    if not text:
        response.malformed("empty PaymentId")
    return text


def _status(body: Mapping[str, Any], response: PspResponse) -> str:
    status = body.get("Status")
    if not isinstance(status, str) or not status:
        response.malformed("answer without a Status")
    return status


def parse_amount(value: Any, response: PspResponse, field: str = "Amount") -> Money:
    """Kopecks as a JSON integer; anything else (fractions, strings) is malformed."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        response.malformed(f"{field} is not a whole number of kopecks: {value!r}")
    return Money(value, CURRENCY)


def _url_setting(settings: AdapterSettings, key: str) -> str:
    value = settings.api_url if key == "API_URL" else settings.get(key).strip()
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise InvalidSettings(f"PAYDISPATCH_TBANK_{key} must be an http(s) URL, got {value!r}")
    return value


class TBank(Adapter):
    """T-Bank Internet Acquiring v2 with T-Bank's payment form (no card data here)."""

    name: ClassVar[str] = "tbank"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=False,
        lookup_by_reference=True,
        # Cancel releases a two-stage hold; can_cancel keeps it away from anything paid.
        cancel=True,
        cancel_refunds=True,
        notifications=True,
        signed_notifications=True,
        replayable_notifications=True,
        currencies=frozenset({CURRENCY}),
        default_expiry=timedelta(hours=1),
        poll=PollPolicy(first=timedelta(seconds=10), factor=2.0, cap=timedelta(minutes=5)),
        refunds=True,  # Cancel of a CONFIRMED payment, with Amount (issue #14)
        partial_refunds=True,
        # ExternalRequestId makes a repeated card refund answer instead of refunding again, but
        # the reference says it "does not work for SBP operations": so never re-sent.
        idempotent_refund=False,
        refund_lookup=False,  # T-Bank keeps no refund to read: the status read is GetState
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default=DEFAULT_API_URL, help="T-Bank MAPI base URL (…/v2)"),
        SettingSpec("TERMINAL_KEY", help="TerminalKey of the shop's terminal"),
        SettingSpec("PASSWORD", secret=True, help="the terminal's password (signs every call)"),
        SettingSpec(
            "TWO_STAGE",
            default="false",
            help="true: two-stage payments (PayType T), the dispatcher confirms the hold after "
            "checking the amount; false: one-stage (PayType O)",
        ),
        SettingSpec(
            "NOTIFY_URL",
            default=NO_NOTIFY_URL,
            help="NotificationURL sent with each Init (paydispatch's /v1/callbacks/tbank); "
            f"{NO_NOTIFY_URL!r}: the terminal's own setting",
        ),
    )

    # -- requests --------------------------------------------------------------------------

    def _request(
        self, settings: AdapterSettings, method: str, operation: str, params: dict[str, Any]
    ) -> PspRequest:
        body = {"TerminalKey": settings.get("TERMINAL_KEY"), **params}
        return PspRequest(
            method="POST",
            url=f"{_url_setting(settings, 'API_URL')}/{method}",
            operation=operation,
            headers={"Content-Type": "application/json"},
            json=signed(body, settings.get("PASSWORD")),
        )

    def _payment(self, order: Order) -> str:
        if not order.psp_id:
            raise InvalidInput("psp_id", f"order {order.id} has no T-Bank payment yet")
        return order.psp_id

    def two_stage(self, settings: AdapterSettings) -> bool:
        return flag("PAYDISPATCH_TBANK_TWO_STAGE", settings.get("TWO_STAGE"), error=InvalidSettings)

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        if order.money.currency != CURRENCY:
            raise InvalidInput("currency", "T-Bank internet acquiring accepts only RUB")
        order_id = str(order.id)
        if len(order_id) > ORDER_ID_LIMIT:  # a UUID is exactly 36
            raise InvalidInput("id", f"T-Bank OrderId is at most {ORDER_ID_LIMIT} characters")
        description = order.description.strip() or f"Order {order.number}"
        due = min(order.expires_at, order.created_at + MAX_REDIRECT).astimezone(UTC)
        params: dict[str, Any] = {
            "Amount": order.money.amount,
            "OrderId": order_id,
            "Description": description[:DESCRIPTION_LIMIT],
            "PayType": "T" if self.two_stage(settings) else "O",
            "RedirectDueDate": due.replace(microsecond=0).isoformat(),
            "DATA": {"OperationInitiatorType": OPERATION_INITIATOR},
        }
        if settings.get("NOTIFY_URL").strip().lower() != NO_NOTIFY_URL:
            params["NotificationURL"] = _url_setting(settings, "NOTIFY_URL")
        if order.return_url:
            params["SuccessURL"] = order.return_url
            params["FailURL"] = order.return_url
        return self._request(settings, "Init", "create", params)

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return self._request(settings, "GetState", "status", {"PaymentId": self._payment(order)})

    def build_capture(self, order: Order, settings: AdapterSettings) -> PspRequest:
        # Exactly our amount: a larger hold is never taken whole (Confirm may take less).
        params = {"PaymentId": self._payment(order), "Amount": order.money.amount}
        return self._request(settings, "Confirm", "capture", params)

    def build_cancel(self, order: Order, settings: AdapterSettings) -> PspRequest:
        # No Amount: the whole hold is released.
        return self._request(settings, "Cancel", "cancel", {"PaymentId": self._payment(order)})

    def build_lookup(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return self._request(settings, "CheckOrder", "lookup", {"OrderId": str(order.id)})

    # -- answers ---------------------------------------------------------------------------

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        body = _answer(response, "create")
        psp_id = _payment_id(body.get("PaymentId"), response)
        if body.get("OrderId") not in {None, str(order.id)}:
            response.malformed(f"Init answered for OrderId {body.get('OrderId')!r}")
        status = _status(body, response)
        if status not in PENDING:
            response.malformed(f"a new payment in status {status!r}")
        pay_url = body.get("PaymentURL")
        if not isinstance(pay_url, str) or urlsplit(pay_url).scheme not in {"http", "https"}:
            response.malformed(f"Init answer without a PaymentURL: {pay_url!r}")
        return Invoice(psp_id=psp_id, pay_url=pay_url)

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        body = _answer(response, operation)
        psp_id = _payment_id(body.get("PaymentId"), response)
        if order.psp_id is not None and psp_id != order.psp_id:
            response.malformed(f"answer is about payment {psp_id}, not {order.psp_id}")
        if body.get("OrderId") not in {None, str(order.id)}:
            response.malformed(f"answer is about OrderId {body.get('OrderId')!r}")
        status = _status(body, response)
        # GetState reports the amount; Confirm and Cancel answers carry none of it. A Confirm
        # takes exactly the Amount build_capture sent (ours), so a confirmed capture reports it.
        money = parse_amount(body["Amount"], response) if "Amount" in body else None
        if money is None and operation == "capture" and status == "CONFIRMED":
            money = order.money
        return report(status, psp_id, money, self.two_stage(settings), response)

    def parse_lookup(
        self, order: Order, response: PspResponse, settings: AdapterSettings
    ) -> Invoice | None:
        body = _body(response)
        if body.get("Success") is False and str(body.get("ErrorCode")) in ORDER_NOT_FOUND:
            return None
        body = _answer(response, "lookup")
        if body.get("OrderId") not in {None, str(order.id)}:
            response.malformed(f"CheckOrder answered for OrderId {body.get('OrderId')!r}")
        payments = body.get("Payments")
        if not isinstance(payments, list):
            response.malformed("CheckOrder answer without a Payments list")
        if not payments:
            return None
        found = []
        for payment in payments:
            if not isinstance(payment, Mapping):
                response.malformed("a CheckOrder payment is not an object")
            found.append(
                (_payment_id(payment.get("PaymentId"), response), _status(payment, response))
            )
        # Several payments for one OrderId (a terminal that allows it): the one that took or
        # holds money, else one the buyer may still pay, else the last one.
        for wanted in ({"CONFIRMED", "AUTHORIZED"}, PENDING):
            for psp_id, status in found:
                if status in wanted:
                    return Invoice(psp_id=psp_id, pay_url=None)
        return Invoice(psp_id=found[-1][0], pay_url=None)

    # -- refunds (issue #14) -------------------------------------------------------------------

    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        if refund.money.currency != CURRENCY:
            raise InvalidInput("currency", "T-Bank refunds roubles only")
        params = {
            "PaymentId": self._payment(refund.order),
            "Amount": refund.money.amount,
            # T-Bank answers a repeated ExternalRequestId with the payment's state instead of
            # cancelling again (the Cancel method's reference).
            "ExternalRequestId": str(refund.id),
        }
        return self._request(settings, "Cancel", "refund", params)

    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        body = _answer(response, "refund")
        self._check_payment(refund.order, body, response)
        external = body.get("ExternalRequestId")
        if external not in {None, "", str(refund.id)}:
            response.malformed(f"answer is about ExternalRequestId {external!r}, not {refund.id}")
        status = _status(body, response)
        if status not in REFUND_STATES:
            response.malformed(f"a refund answered with payment status {status!r}")
        money: Money | None = None
        if "OriginalAmount" in body and "NewAmount" in body:
            before = parse_amount(body["OriginalAmount"], response, "OriginalAmount")
            after = parse_amount(body["NewAmount"], response, "NewAmount")
            money = Money(before.amount - after.amount, CURRENCY)
        return RefundReport(
            state=REFUND_STATES[status],
            psp_refund_id=str(refund.id),
            money=money,
            raw_status=status,
        )

    def build_refund_status(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        # T-Bank has no refund object: the payment's state tells how its refunds stand. Never
        # a second Cancel, which would refund again where ExternalRequestId is not honoured (SBP).
        return self._request(
            settings, "GetState", "refund_status", {"PaymentId": self._payment(refund.order)}
        )

    def parse_refund_status(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        """The payment's state as the state of a refund T-Bank accepted: refunded or partly
        refunded is done, still refunding pending, and CONFIRMED again (an asynchronous SBP
        refund that did not go through) failed."""
        body = _answer(response, "refund_status")
        self._check_payment(refund.order, body, response)
        status = _status(body, response)
        if status == "CONFIRMED":
            return RefundReport(
                RefundState.FAILED,
                psp_refund_id=refund.psp_refund_id,
                raw_status=status,
                reason="the payment is confirmed again: the refund did not go through",
            )
        if status not in REFUND_STATES:
            response.malformed(f"payment status {status!r} says nothing about a refund")
        state = REFUND_STATES[status]
        # A Cancel refunds exactly its Amount or nothing: a refund done is the one asked for.
        money = refund.money if state is RefundState.SUCCEEDED else None
        return RefundReport(
            state, psp_refund_id=refund.psp_refund_id, money=money, raw_status=status
        )

    @staticmethod
    def _check_payment(order: Order, body: Mapping[str, Any], response: PspResponse) -> None:
        psp_id = _payment_id(body.get("PaymentId"), response)
        if order.psp_id is not None and psp_id != order.psp_id:
            response.malformed(f"answer is about payment {psp_id}, not {order.psp_id}")
        if body.get("OrderId") not in {None, str(order.id)}:
            response.malformed(f"answer is about OrderId {body.get('OrderId')!r}")

    def can_cancel(self, order: Order, report: StatusReport | None) -> bool:
        """Only a two-stage hold waiting for capture: any other cancel may refund a payment.

        NEW and FORM_SHOWED lapse by themselves at ``RedirectDueDate``; a cancel there would
        race a buyer paying at that moment, and T-Bank's Cancel of CONFIRMED is a refund.
        """
        return (
            report is not None
            and report.state is CanonicalState.PENDING
            and report.follow_up is FollowUp.CAPTURE
        )

    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        refused = NotificationResult(ref=OrderRef(), verified=False, reply=Reply(403, b""))
        if not notification_token_valid(notification.body, settings.get("PASSWORD")):
            return refused
        response = PspResponse(status_code=200, content=notification.body)
        body = _body(response)
        if body.get("TerminalKey") != settings.get("TERMINAL_KEY"):
            return refused
        ok = Reply(200, b"OK", "text/plain")
        order_id = body.get("OrderId")
        payment = body.get("PaymentId")
        ref = OrderRef(
            order_id=order_id if isinstance(order_id, str) and order_id else None,
            psp_id=_payment_id(payment, response) if payment is not None else None,
        )
        status = body.get("Status")
        try:
            money = parse_amount(body.get("Amount"), response)
            state = report(str(status), ref.psp_id, money, self.two_stage(settings), response)
        except MalformedResponse:
            # Genuine but not a payment status we read (card binding, receipt, a new status):
            # acknowledged so T-Bank stops resending; the dispatcher polls the order it names.
            return NotificationResult(ref=ref, verified=True, reply=ok)
        # REFUNDED / PARTIAL_REFUNDED: a refund went through. T-Bank's notification does not
        # say which one (no ExternalRequestId), so the refund report carries none of ours.
        refund = (
            RefundReport(RefundState.SUCCEEDED, raw_status=state.raw_status)
            if state.raw_status in ("REFUNDED", "PARTIAL_REFUNDED")
            else None
        )
        return NotificationResult(ref=ref, verified=True, report=state, reply=ok, refund=refund)


def report(
    status: str, psp_id: str | None, money: Money | None, two_stage: bool, response: PspResponse
) -> StatusReport:
    """One T-Bank status as a canonical reading (the table in the module docstring)."""
    follow_up: FollowUp | None = None
    reason = ""
    if status in PENDING:
        state = CanonicalState.PENDING
    elif status == "AUTHORIZED":
        state = CanonicalState.PENDING
        follow_up = FollowUp.CAPTURE if two_stage else None
    elif status == "PARTIAL_REVERSED":
        state, follow_up = CanonicalState.PENDING, FollowUp.CAPTURE
        reason = "part of the hold was released"
    elif status == "CONFIRMED":
        state = CanonicalState.PAID
    elif status in REFUNDING:
        state, reason = CanonicalState.PAID, REFUNDING[status]
    elif status == "REFUNDED":
        state, reason = CanonicalState.REFUNDED, "refunded"
    elif status in REJECTED:
        state, reason = CanonicalState.REJECTED, REJECTED[status]
    elif status == "DEADLINE_EXPIRED":
        state, reason = CanonicalState.EXPIRED, "the pay link or 3-D Secure ran out of time"
    else:
        response.malformed(f"unknown T-Bank payment status {status!r}")
    return StatusReport(
        state=state,
        psp_id=psp_id,
        money=money,
        follow_up=follow_up,
        raw_status=status,
        reason=reason,
        # GetState shows how much of a PARTIAL_REFUNDED payment went back nowhere; all of it
        # once REFUNDED.
        refunded=money if status == "REFUNDED" else None,
    )


adapter = TBank()

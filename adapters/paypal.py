"""PayPal Orders v2: OAuth2 client credentials, redirect approval, capture, webhooks as hints.

Built from PayPal's public REST reference: the Orders v2 API
(https://developer.paypal.com/docs/api/orders/v2/, the OpenAPI document
``openapi/checkout_orders_v2.json`` of github.com/paypal/paypal-rest-api-specifications),
authentication (https://developer.paypal.com/api/rest/authentication/, ``POST /v1/oauth2/token``
as the official github.com/paypal/PayPal-Python-Server-SDK sends it), idempotency
(https://developer.paypal.com/api/rest/reference/idempotency/), the currency codes page
(https://developer.paypal.com/api/rest/reference/currency-codes/) and webhooks
(https://developer.paypal.com/api/rest/webhooks/, ``notifications_webhooks_v1.json``).

**Token.** ``build_token`` asks ``POST /v1/oauth2/token`` with HTTP Basic auth (``CLIENT_ID``,
``CLIENT_SECRET``) and the form ``grant_type=client_credentials``; ``parse_token`` reads
``access_token`` and ``expires_in``. The transport caches the token until shortly before it
expires, puts it on every call as ``Authorization: Bearer`` (the default ``apply_token``) and
fetches a new one once when a call is answered 401.

**Create.** ``POST /v2/checkout/orders`` with intent ``CAPTURE``, one purchase unit whose
``custom_id`` and ``invoice_id`` are our order id (``invoice_id`` is shown to the buyer, and a
PayPal account that blocks duplicate invoice ids then refuses a second payment for the order),
the amount as a decimal string with PayPal's number of decimals for the currency (none for HUF,
JPY and TWD, whose decimal amounts PayPal refuses: such an order is refused before any call),
and ``payment_source.paypal.experience_context`` with the order's ``return_url`` as both return
and cancel URL (``application_context`` is deprecated). Headers: ``PayPal-Request-Id:
pd-<order id>`` (PayPal keeps keys for 6 hours and answers a replay with the same order) and
``Prefer: return=representation``. The pay URL is the ``payer-action`` link (or ``approve``, the
link of orders created without ``payment_source``). PayPal has no call to cancel an order that
was never approved: it expires by itself (3 hours by default), so ``capabilities.cancel`` is
False and ``default_expiry`` is those 3 hours.

**Statuses** (``GET /v2/checkout/orders/{id}``), to :class:`CanonicalState`:

- ``CREATED``, ``SAVED``, ``PAYER_ACTION_REQUIRED``: pending (the buyer has not approved);
- ``APPROVED``: pending with ``FollowUp.CAPTURE``: the buyer agreed, nothing is taken until the
  dispatcher captures (an approved order left uncaptured would lapse: the dispatcher captures it
  on its next poll, also in the late-payment watch);
- ``VOIDED``: rejected;
- ``COMPLETED``: the state of ``purchase_units[0].payments.captures[0]``: ``COMPLETED`` paid,
  ``PENDING`` pending (``status_details.reason`` says why), ``DECLINED`` and ``FAILED``
  rejected, ``REFUNDED`` refunded, ``PARTIALLY_REFUNDED`` paid;
- HTTP 404 ``RESOURCE_NOT_FOUND`` (PayPal's error object): expired, since PayPal forgets an
  order that expired without a capture (a 404 without that object is malformed);
- any other status: :class:`MalformedResponse` (retried, never final).

The reported money is the capture's amount once there is a capture, else the purchase unit's
amount, so an approved order of another amount is caught before it is captured.

**Capture.** ``POST /v2/checkout/orders/{id}/capture`` with ``Prefer: return=representation``
and a ``PayPal-Request-Id`` of its own per attempt (``pd-<order id>-capture-<status>-<polls>``):
the transport's retries of one attempt reuse it, a later poll's attempt does not, because PayPal
answers a reused id with the first answer, and a capture refused before the buyer approved
again with another funding source must not keep answering for the new approval. An order takes
one capture only (intent ``CAPTURE``), so a fresh id can never take the money twice. Its answer
is an order read like a status (``parse_status(..., operation="capture")``). HTTP 422 answers to
a capture: ``ORDER_NOT_APPROVED`` and ``PAYER_ACTION_REQUIRED`` are pending;
``INSTRUMENT_DECLINED`` and ``REDIRECT_PAYER_FOR_ALTERNATE_FUNDING`` are pending too (PayPal's
"handle funding failures": the buyer goes back to the approve link and picks another funding
source, so the payment may still be made; the order keeps its pay link until its deadline); the
other refusals of the payment in ``_CAPTURE_REFUSALS`` are rejected (the late-payment watch
still looks); ``ORDER_ALREADY_CAPTURED`` and ``ORDER_COMPLETION_IN_PROGRESS`` are transient: the
next poll reads the order.

**Errors** (``{"name", "message", "details": [{"issue", "description"}], "debug_id"}``; the
token endpoint answers OAuth's ``{"error", "error_description"}``): 429 and 5xx are transient
everywhere, and so is 409 ``RESOURCE_CONFLICT`` (a create with the same request id still in
progress). 401 and 403 are :class:`CredentialsRejected` (on an API call the transport has already
fetched a new token once, so it is the credentials or the app's permissions): the breaker opens,
no order fails. On a create, 400 ``INVALID_REQUEST`` and 422 ``UNPROCESSABLE_ENTITY`` are
:class:`PspRejected`, except 422 ``DUPLICATE_INVOICE_ID`` (an earlier order for our invoice id
exists that we cannot look up): :class:`OutcomeUnknown`. Any other well-formed refusal of a
status or capture call (400, 404 on a capture, other 422 issues) is a transient
:class:`PayPalRefusedError`: a refused call says nothing about the payment.

**Webhooks** are hints. PayPal signs them with RSA (``PAYPAL-TRANSMISSION-SIG`` over
``transmission_id|transmission_time|webhook_id|crc32(body)``, checked with the certificate at
``PAYPAL-CERT-URL``, or with the ``POST /v1/notifications/verify-webhook-signature`` call); both
need I/O an adapter must not do, so nothing is believed: a ``CHECKOUT.ORDER.*`` event names the
PayPal order (``resource.id``), a ``PAYMENT.CAPTURE.*`` event names it through
``resource.supplementary_data.related_ids.order_id``, our id comes from ``custom_id`` when it is
one of ours, and the dispatcher polls that order at once. Other events are acknowledged and name
nothing.

**Refunds** (issue #14; ``openapi/payments_payment_v2.json`` of the same repository):
``POST /v2/payments/captures/{capture_id}/refund`` with ``PayPal-Request-Id: pd-refund-<refund
id>`` (PayPal keeps refund request ids 45 days), ``Prefer: return=representation``, the amount,
our order id as ``custom_id`` and the reason as ``note_to_payer``; ``GET
/v2/payments/refunds/{id}``. The capture id is ``RefundRequest.psp_payment_id``, which a status
read of the completed order reports, with ``refunded`` (its completed ``payments.refunds``).
``PENDING`` is pending, ``COMPLETED`` succeeded, ``FAILED`` and ``CANCELLED`` failed; a 400 or
422 refusal (``REFUND_AMOUNT_EXCEEDED``, ``CAPTURE_FULLY_REFUNDED``, ...) is final, any other
error follows the rules above. ``PAYMENT.CAPTURE.REFUNDED``/``REVERSED`` webhooks, hints like the
rest, carry the refund they are about and name the capture it refunds (the refund's ``up`` link),
which the dispatcher stores as a paid order's ``psp_payment_id``: a refund made in PayPal's
dashboard, without our ``custom_id``, still names its order.

**Settings:** ``CLIENT_ID``, ``CLIENT_SECRET`` (the REST app's credentials) and ``API_URL``
(default ``https://api-m.paypal.com``; the sandbox is ``https://api-m.sandbox.paypal.com``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any, ClassVar, NoReturn
from uuid import UUID

from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    CredentialsRejected,
    FollowUp,
    Invoice,
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
    Secret,
    SettingSpec,
    StatusReport,
    Token,
    money_object,
)
from orders.errors import InvalidInput, OutcomeUnknown, TransientError
from orders.model import Order
from orders.money import Money

DEFAULT_API_URL = "https://api-m.paypal.com"
SANDBOX_API_URL = "https://api-m.sandbox.paypal.com"

# PayPal's currency codes page: the currencies PayPal takes payments in (BRL, MYR and CNY for
# in-country accounts only). HUF, JPY and TWD take no decimals: a decimal amount is an error.
CURRENCIES = frozenset(
    {
        *("AUD", "BRL", "CAD", "CNY", "CZK", "DKK", "EUR", "HKD", "HUF", "ILS", "JPY", "MYR"),
        *("MXN", "TWD", "NZD", "NOK", "PHP", "PLN", "GBP", "SGD", "SEK", "CHF", "THB", "USD"),
    }
)
NO_DECIMALS = frozenset({"HUF", "JPY", "TWD"})

# purchase_unit.description, custom_id and invoice_id are limited to 127 characters.
TEXT_LIMIT = 127
# Order ids (the path parameter) match ^[A-Z0-9]+$, at most 36 characters.
ORDER_ID = re.compile(r"[A-Z0-9]{1,36}")

PENDING_STATUSES = frozenset({"CREATED", "SAVED", "PAYER_ACTION_REQUIRED"})
PAY_LINKS = ("payer-action", "approve")

# HTTP 422 issues of a capture: the buyer has not approved yet (pending) ...
_CAPTURE_NOT_YET = frozenset({"ORDER_NOT_APPROVED", "PAYER_ACTION_REQUIRED"})
# ... the funding source failed: the buyer may approve again with another (pending) ...
_CAPTURE_RETRY_FUNDING = frozenset({"INSTRUMENT_DECLINED", "REDIRECT_PAYER_FOR_ALTERNATE_FUNDING"})
# ... the payment itself was refused (rejected) ...
_CAPTURE_REFUSALS = frozenset(
    {
        "TRANSACTION_REFUSED",
        "PAYER_CANNOT_PAY",
        "PAYER_ACCOUNT_LOCKED_OR_CLOSED",
        "PAYER_ACCOUNT_RESTRICTED",
        "MAX_NUMBER_OF_PAYMENT_ATTEMPTS_EXCEEDED",
        "TRANSACTION_LIMIT_EXCEEDED",
        "COMPLIANCE_VIOLATION",
        "DECLINED_DUE_TO_RELATED_TXN",
    }
)
# ... or the order is captured already, or being captured: read it on the next poll.
_CAPTURE_DONE = frozenset({"ORDER_ALREADY_CAPTURED", "ORDER_COMPLETION_IN_PROGRESS"})

_CREDENTIALS_HINT = (
    "check PAYDISPATCH_PAYPAL_CLIENT_ID and PAYDISPATCH_PAYPAL_CLIENT_SECRET (live and sandbox "
    "apps have different credentials: PAYDISPATCH_PAYPAL_API_URL must match them)"
)


class PayPalUnavailableError(TransientError):
    """PayPal is overloaded or failing (429, 5xx) or busy with the same request (409)."""


class PayPalRefusedError(TransientError):
    """PayPal refused a status or capture call in a way that says nothing about the payment.

    Never final: the order keeps its status and the next poll decides.
    """


def _decimals(currency: str) -> int:
    return 0 if currency in NO_DECIMALS else Money(0, currency).exponent


def format_amount(money: Money) -> dict[str, str]:
    """PayPal's money object: the value with PayPal's number of decimals for the currency.

    Raises :class:`InvalidInput` for an amount PayPal cannot take (a fraction of a forint).
    """
    decimals = _decimals(money.currency)
    value = money.to_decimal()
    if value != round(value, decimals):
        raise InvalidInput(
            "amount", f"PayPal takes {money.currency} in whole units only, got {money}"
        )
    return {"currency_code": money.currency, "value": f"{value:.{decimals}f}"}


def parse_amount(value: Any, response: PspResponse, field: str = "amount") -> Money:
    """Our Money from PayPal's money object; exact, never through a float."""
    return money_object(value, response, field, "currency_code")


def _issues(body: Mapping[str, Any]) -> list[str]:
    details = body.get("details")
    if not isinstance(details, list):
        return []
    return [str(d["issue"]) for d in details if isinstance(d, Mapping) and d.get("issue")]


def _error_text(body: Mapping[str, Any]) -> str:
    parts = [str(body.get("name")), str(body.get("message") or "").strip()]
    details = body.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, Mapping):
            where = f" at {detail['field']}" if detail.get("field") else ""
            text = str(detail.get("description") or "").strip()
            parts.append(f"[{detail.get('issue')}{where}: {text}]" if text else "")
    if body.get("debug_id"):
        parts.append(f"(debug_id {body['debug_id']})")
    return " ".join(p for p in parts if p)


def _raise_error(response: PspResponse, *, create: bool) -> NoReturn:
    """Translate an error answer (HTTP 4xx/5xx) into our error tree."""
    code = response.status_code
    if code == 429 or code >= 500:
        raise PayPalUnavailableError(f"PayPal HTTP {code}: {response.text[:200]!r}")
    body = response.json_object()
    name = body.get("name")
    if not isinstance(name, str) or not name:
        response.malformed("error answer without a PayPal error name")
    text = f"PayPal HTTP {code}: {_error_text(body)}"
    if code in {401, 403}:
        raise CredentialsRejected(f"{text}; {_CREDENTIALS_HINT}")
    if code == 409:
        raise PayPalUnavailableError(text)
    if create and code == 422 and "DUPLICATE_INVOICE_ID" in _issues(body):
        # An order with our invoice id exists (a create whose answer was lost, after PayPal
        # forgot the request id): it may be paid, and PayPal cannot find it for us.
        raise OutcomeUnknown(f"{text}; an earlier PayPal order for this order may exist")
    if create and code in {400, 422}:
        raise PspRejected(text)
    if code == 404:
        text += "; check PAYDISPATCH_PAYPAL_API_URL (live or sandbox)"
    raise PayPalRefusedError(text)


def _order(response: PspResponse, order: Order, *, create: bool) -> Mapping[str, Any]:
    """The order object of a 200/201 answer; errors translated, anything else malformed."""
    if response.status_code >= 400:
        _raise_error(response, create=create)
    body = response.json_object()
    if response.status_code not in {200, 201}:
        response.malformed("unexpected HTTP status for an order")
    order_id, status = body.get("id"), body.get("status")
    if not isinstance(order_id, str) or not ORDER_ID.fullmatch(order_id):
        response.malformed(f"order without a PayPal order id: {order_id!r}")
    if not isinstance(status, str) or not status:
        response.malformed("order without a status")
    if order.psp_id is not None and order_id != order.psp_id:
        response.malformed(f"answer is about PayPal order {order_id}, not {order.psp_id}")
    unit = _purchase_unit(body, response)
    if unit is not None and "custom_id" in unit and unit["custom_id"] != str(order.id):
        response.malformed(f"answer is about custom_id {unit['custom_id']!r}, not {order.id}")
    return body


def _purchase_unit(body: Mapping[str, Any], response: PspResponse) -> Mapping[str, Any] | None:
    """purchase_units[0], or None in a minimal answer that carries none."""
    units = body.get("purchase_units")
    if units is None:
        return None
    if not isinstance(units, list) or not units or not isinstance(units[0], Mapping):
        response.malformed("purchase_units is not a list of objects")
    unit: Mapping[str, Any] = units[0]
    return unit


def _capture(unit: Mapping[str, Any] | None, response: PspResponse) -> Mapping[str, Any] | None:
    """purchase_units[0].payments.captures[0], or None before any capture."""
    payments = unit.get("payments") if unit is not None else None
    if payments is None:
        return None
    if not isinstance(payments, Mapping):
        response.malformed("payments is not an object")
    captures = payments.get("captures")
    if captures is None:
        return None
    if not isinstance(captures, list) or not all(isinstance(c, Mapping) for c in captures):
        response.malformed("payments.captures is not a list of objects")
    return captures[0] if captures else None


def _pay_url(body: Mapping[str, Any], response: PspResponse) -> str | None:
    links = body.get("links")
    if links is None:
        return None
    if not isinstance(links, list):
        response.malformed("links is not a list")
    by_rel = {
        link.get("rel"): link.get("href")
        for link in links
        if isinstance(link, Mapping) and isinstance(link.get("href"), str)
    }
    for rel in PAY_LINKS:
        href = by_rel.get(rel)
        if isinstance(href, str) and href.startswith(("https://", "http://")):
            return href
    return None


def _report(body: Mapping[str, Any], response: PspResponse) -> StatusReport:
    status = body["status"]
    unit = _purchase_unit(body, response)
    money = parse_amount(unit["amount"], response) if unit and "amount" in unit else None
    capture = _capture(unit, response)
    follow_up: FollowUp | None = None
    reason = ""
    raw_status = status
    if status in PENDING_STATUSES:
        state = CanonicalState.PENDING
    elif status == "APPROVED":
        state, follow_up = CanonicalState.PENDING, FollowUp.CAPTURE
    elif status == "VOIDED":
        state, reason = CanonicalState.REJECTED, "the order was voided"
    elif status == "COMPLETED":
        if capture is None:
            response.malformed("COMPLETED order without a capture")
        state, reason, capture_status = _capture_state(capture, response)
        raw_status = f"COMPLETED/{capture_status}"
        money = parse_amount(capture.get("amount"), response, "captures[0].amount")
    else:
        response.malformed(f"unknown order status {status!r}")
    capture_id = capture.get("id") if capture is not None else None
    return StatusReport(
        state=state,
        psp_id=body["id"],
        money=money,
        follow_up=follow_up,
        raw_status=raw_status,
        reason=reason,
        refunded=_refunded(unit, capture, money, response),
        psp_payment_id=capture_id if isinstance(capture_id, str) and capture_id else None,
    )


def _refunded(
    unit: Mapping[str, Any] | None,
    capture: Mapping[str, Any] | None,
    money: Money | None,
    response: PspResponse,
) -> Money | None:
    """What the order shows refunded: the completed ``payments.refunds``, or the whole capture
    when it reads REFUNDED without them; None before a capture."""
    if capture is None or money is None:
        return None
    payments = unit.get("payments") if unit is not None else None
    refunds = payments.get("refunds") if isinstance(payments, Mapping) else None
    if isinstance(refunds, list) and refunds:
        total = 0
        for item in refunds:
            if not isinstance(item, Mapping):
                response.malformed("payments.refunds holds a non-object")
            if item.get("status") == "COMPLETED":
                amount = parse_amount(item.get("amount"), response, "refunds[].amount")
                if amount.currency != money.currency:
                    response.malformed(
                        f"a refund in {amount.currency} of a {money.currency} capture"
                    )
                total += amount.amount
        return Money(total, money.currency)
    if capture.get("status") == "REFUNDED":
        return money
    return Money(0, money.currency)


def _capture_state(  # noqa: RET503 (ends in response.malformed, which raises)
    capture: Mapping[str, Any], response: PspResponse
) -> tuple[CanonicalState, str, str]:
    status = capture.get("status")
    details = capture.get("status_details")
    why = str(details.get("reason") or "") if isinstance(details, Mapping) else ""
    if status == "COMPLETED":
        return CanonicalState.PAID, "", status
    if status == "PARTIALLY_REFUNDED":
        return CanonicalState.PAID, "partly refunded", status
    if status == "REFUNDED":
        return CanonicalState.REFUNDED, "refunded", status
    if status == "PENDING":
        return CanonicalState.PENDING, why or "capture pending", status
    if status in {"DECLINED", "FAILED"}:
        return (
            CanonicalState.REJECTED,
            f"capture {status.lower()}" + (f": {why}" if why else ""),
            status,
        )
    response.malformed(f"unknown capture status {status!r}")


def _capture_refused(order: Order, response: PspResponse) -> StatusReport | None:
    """A report for a 422 answer to a capture that tells the payment's state, else None."""
    if response.status_code != 422:
        return None
    body = response.json_object()
    issues = _issues(body)
    issue = issues[0] if issues else ""
    if issue in _CAPTURE_NOT_YET:
        return StatusReport(CanonicalState.PENDING, psp_id=order.psp_id, raw_status=issue)
    if issue in _CAPTURE_RETRY_FUNDING:
        return StatusReport(
            CanonicalState.PENDING,
            psp_id=order.psp_id,
            raw_status=issue,
            reason=f"the buyer may approve again with another funding source: {_error_text(body)}",
        )
    if issue in _CAPTURE_REFUSALS:
        return StatusReport(
            CanonicalState.REJECTED,
            psp_id=order.psp_id,
            raw_status=issue,
            reason=_error_text(body),
        )
    if issue in _CAPTURE_DONE:
        raise PayPalRefusedError(
            f"PayPal HTTP 422: {_error_text(body)}; the next poll reads the order"
        )
    return None


# -- refunds (issue #14) -------------------------------------------------------------------------
# payments_payment_v2.json: the refund's ``status``.
REFUND_STATES = {
    "PENDING": RefundState.PENDING,
    "COMPLETED": RefundState.SUCCEEDED,
    "FAILED": RefundState.FAILED,
    "CANCELLED": RefundState.FAILED,
}
# note_to_payer takes 255 characters.
NOTE_LIMIT = 255
REFUND_EVENTS = frozenset({"PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.REVERSED"})


def refund_report(refund: Mapping[str, Any], response: PspResponse) -> RefundReport:
    """One reading of a PayPal refund object (``/v2/payments/refunds/{id}``)."""
    refund_id, status = refund.get("id"), refund.get("status")
    if not isinstance(refund_id, str) or not ORDER_ID.fullmatch(refund_id):
        response.malformed(f"refund without a PayPal refund id: {refund_id!r}")
    if status not in REFUND_STATES:
        response.malformed(f"unknown refund status {status!r}")
    details = refund.get("status_details")
    why = str(details.get("reason") or "") if isinstance(details, Mapping) else ""
    money = parse_amount(refund.get("amount"), response) if "amount" in refund else None
    return RefundReport(
        state=REFUND_STATES[status],
        psp_refund_id=refund_id,
        money=money,
        raw_status=status,
        reason=why,
    )


def _refund_answer(request: RefundRequest, response: PspResponse, *, create: bool) -> RefundReport:
    """The refund of a 200/201 answer; errors translated (a refusal of a refund is final)."""
    if response.status_code >= 400:
        _raise_error(response, create=create)
    if response.status_code not in {200, 201}:
        response.malformed("unexpected HTTP status for a refund")
    body = response.json_object()
    report = refund_report(body, response)
    if request.psp_refund_id is not None and report.psp_refund_id != request.psp_refund_id:
        response.malformed(
            f"answer is about refund {report.psp_refund_id}, not {request.psp_refund_id}"
        )
    if "custom_id" in body and body["custom_id"] != str(request.order.id):
        response.malformed(f"refund {report.psp_refund_id} belongs to another order")
    return report


_CAPTURE_LINK = re.compile(r"/v2/payments/captures/([A-Z0-9]{1,36})")


def _capture_of(refund: Mapping[str, Any]) -> str | None:
    """The capture id a refund's ``up`` link names (payments_payment_v2.json: a refund links
    ``up`` to ``/v2/payments/captures/{capture_id}``); None when it names none."""
    links = refund.get("links")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, Mapping) and link.get("rel") == "up":
            found = _CAPTURE_LINK.search(str(link.get("href") or ""))
            if found is not None:
                return found.group(1)
    return None


def _uuid_text(value: Any) -> str | None:
    """``value`` when it is one of our order ids (a UUID), else None (another system's)."""
    if not isinstance(value, str):
        return None
    try:
        return str(UUID(value))
    except ValueError:
        return None


class PayPal(Adapter):
    """PayPal Orders v2, intent CAPTURE, buyer approval by redirect, captured by the dispatcher."""

    name: ClassVar[str] = "paypal"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=True,  # PayPal-Request-Id
        lookup_by_reference=False,  # Orders v2 cannot search by custom_id
        cancel=False,  # an unapproved order cannot be cancelled: it expires by itself
        notifications=True,
        signed_notifications=False,  # verifying needs a certificate download or an API call
        currencies=CURRENCIES,
        # PayPal's default: 3 hours from creation to send the buyer to the approve link.
        default_expiry=timedelta(hours=3),
        poll=PollPolicy(first=timedelta(seconds=10), factor=2.0, cap=timedelta(minutes=5)),
        refunds=True,  # POST /v2/payments/captures/{capture_id}/refund (issue #14)
        partial_refunds=True,
        idempotent_refund=True,  # PayPal-Request-Id, kept 45 days for refunds
        refund_lookup=False,  # a refund is read by PayPal's id only
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec(
            "API_URL",
            default=DEFAULT_API_URL,
            help=f"PayPal REST API base URL; the sandbox is {SANDBOX_API_URL}",
        ),
        SettingSpec("CLIENT_ID", help="client id of the PayPal REST app"),
        SettingSpec("CLIENT_SECRET", secret=True, help="secret of the PayPal REST app"),
    )

    # -- token -------------------------------------------------------------------------------

    def build_token(self, settings: AdapterSettings) -> PspRequest:
        pair = f"{settings.get('CLIENT_ID')}:{settings.get('CLIENT_SECRET')}".encode()
        return PspRequest(
            method="POST",
            url=f"{settings.api_url}/v1/oauth2/token",
            operation="token",
            headers={
                "Authorization": "Basic " + base64.b64encode(pair).decode("ascii"),
                "Accept": "application/json",
            },
            form=[("grant_type", "client_credentials")],
        )

    def parse_token(self, response: PspResponse, settings: AdapterSettings) -> Token:
        code = response.status_code
        if code == 429 or code >= 500:
            raise PayPalUnavailableError(f"PayPal token endpoint HTTP {code}")
        # Parsed here rather than with response.json(), whose error quotes the body: a cut
        # token answer would put part of the token in the logs.
        try:
            body = json.loads(response.content)
        except (ValueError, UnicodeDecodeError, RecursionError):
            response.malformed("token answer is not JSON")
        if not isinstance(body, Mapping):
            response.malformed("token answer is not a JSON object")
        if code in {400, 401, 403}:
            error = body.get("error") or body.get("name")
            if not isinstance(error, str):
                response.malformed("token refusal without an OAuth error code")
            described = str(body.get("error_description") or body.get("message") or "")
            raise CredentialsRejected(
                f"PayPal token endpoint HTTP {code}: {error} {described}".strip()
                + f"; {_CREDENTIALS_HINT}"
            )
        if code != 200:
            response.malformed("unexpected HTTP status for a token")
        value, token_type, expires_in = (
            body.get("access_token"),
            body.get("token_type"),
            body.get("expires_in"),
        )
        if not isinstance(value, str) or not value:
            response.malformed("token answer without access_token")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            response.malformed(f"token type {token_type!r} is not Bearer")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
            response.malformed(f"expires_in is not a positive integer: {expires_in!r}")
        return Token(value=Secret(value), expires_in=timedelta(seconds=expires_in))

    # -- create ------------------------------------------------------------------------------

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        if not order.return_url:
            # The buyer comes back to return_url after approving; without one PayPal shows an
            # error page once the buyer has approved.
            raise InvalidInput("return_url", "PayPal needs a return_url to send the buyer back")
        description = order.description.strip() or f"Order {order.number}"
        body = {
            "intent": "CAPTURE",
            "purchase_units": [
                {
                    "custom_id": str(order.id),
                    "invoice_id": str(order.id),
                    "description": description[:TEXT_LIMIT],
                    "amount": format_amount(order.money),
                }
            ],
            "payment_source": {
                "paypal": {
                    "experience_context": {
                        "return_url": order.return_url,
                        "cancel_url": order.return_url,
                        "user_action": "PAY_NOW",
                        "shipping_preference": "NO_SHIPPING",
                    }
                }
            },
        }
        return PspRequest(
            method="POST",
            url=f"{settings.api_url}/v2/checkout/orders",
            operation="create",
            headers={
                "PayPal-Request-Id": order.psp_idempotency_key,
                "Prefer": "return=representation",
            },
            json=body,
        )

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        body = _order(response, order, create=True)
        # Read the whole answer: an order we cannot read now we could not poll later either.
        _report(body, response)
        pay_url = _pay_url(body, response)
        if pay_url is None and body["status"] in PENDING_STATUSES:
            response.malformed("order awaiting the buyer without a payer-action/approve link")
        return Invoice(psp_id=body["id"], pay_url=pay_url)

    # -- status and capture -----------------------------------------------------------------

    def _order_url(self, order: Order, settings: AdapterSettings, action: str = "") -> str:
        if not order.psp_id or not ORDER_ID.fullmatch(order.psp_id):
            raise InvalidInput("psp_id", f"order {order.id} has no PayPal order id")
        return f"{settings.api_url}/v2/checkout/orders/{order.psp_id}{action}"

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(method="GET", url=self._order_url(order, settings), operation="status")

    def build_capture(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            method="POST",
            url=self._order_url(order, settings, "/capture"),
            operation="capture",
            headers={
                # One key per attempt (module docstring, "Capture"): the transport's retries
                # of this request reuse it; the next poll's attempt gets another.
                "PayPal-Request-Id": (
                    f"{order.psp_idempotency_key}-capture-{order.status}-{order.polls}"
                ),
                "Prefer": "return=representation",
            },
            # PayPal's capture takes an optional payment_source only; an empty JSON object,
            # because a POST without a JSON content type is refused.
            json={},
        )

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        if operation == "capture":
            refused = _capture_refused(order, response)
            if refused is not None:
                return refused
        elif response.status_code == 404:
            body = response.json_object()
            if body.get("name") == "RESOURCE_NOT_FOUND":
                return StatusReport(
                    CanonicalState.EXPIRED,
                    psp_id=order.psp_id,
                    raw_status="RESOURCE_NOT_FOUND",
                    reason="PayPal no longer knows the order: it expired without a capture",
                )
        return _report(_order(response, order, create=False), response)

    # -- notifications -----------------------------------------------------------------------

    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        response = PspResponse(status_code=200, content=notification.body)
        body = response.json_object()
        event, resource = body.get("event_type"), body.get("resource")
        if not isinstance(event, str) or not event or not isinstance(resource, Mapping):
            response.malformed("not a PayPal webhook event (event_type/resource missing)")
        psp_id: Any = None
        custom_id: Any = None
        if event.startswith("CHECKOUT.ORDER."):
            psp_id = resource.get("id")
            units = resource.get("purchase_units")
            if isinstance(units, list) and units and isinstance(units[0], Mapping):
                custom_id = units[0].get("custom_id")
        elif event.startswith("PAYMENT.CAPTURE."):
            supplementary = resource.get("supplementary_data")
            related = (
                supplementary.get("related_ids") if isinstance(supplementary, Mapping) else None
            )
            psp_id = related.get("order_id") if isinstance(related, Mapping) else None
            custom_id = resource.get("custom_id")
        psp_id = psp_id if isinstance(psp_id, str) and ORDER_ID.fullmatch(psp_id) else None
        # A refund names the capture it refunds by its "up" link: the order's psp_payment_id
        # (stored when it was paid), so a refund made in PayPal's dashboard finds its order too.
        capture = _capture_of(resource) if event in REFUND_EVENTS else None
        ref = OrderRef(order_id=_uuid_text(custom_id), psp_id=psp_id, psp_payment_id=capture)
        # A refund or reversal event carries the refund: unverified too, so it only names the
        # refund (psp_refund_id) for the dispatcher to read with build_refund_status.
        refund: RefundReport | None = None
        if event in REFUND_EVENTS:
            with contextlib.suppress(MalformedResponse):  # a hint: an odd one names no refund
                refund = refund_report(resource, response)
        if refund is not None and event == "PAYMENT.CAPTURE.REVERSED":
            refund = replace(refund, reason="reversed by PayPal (a dispute or chargeback)")
        # Unverified, so no report: the dispatcher polls the order and trusts only that answer.
        return NotificationResult(ref=ref, verified=False, reply=Reply(200, b""), refund=refund)

    # -- refunds (issue #14) -------------------------------------------------------------------
    # payments_payment_v2.json: POST /v2/payments/captures/{capture_id}/refund (201, the refund
    # with Prefer: return=representation) and GET /v2/payments/refunds/{refund_id}. The capture
    # id is what the paid order's status read reports as psp_payment_id.

    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        capture = refund.psp_payment_id
        if not capture or not ORDER_ID.fullmatch(capture):
            raise InvalidInput(
                "psp_payment_id", f"a PayPal refund needs the capture id, got {capture!r}"
            )
        body: dict[str, Any] = {
            "amount": format_amount(refund.money),
            "custom_id": str(refund.order.id),
        }
        if refund.reason.strip():
            body["note_to_payer"] = refund.reason.strip()[:NOTE_LIMIT]
        return PspRequest(
            method="POST",
            url=f"{settings.api_url}/v2/payments/captures/{capture}/refund",
            operation="refund",
            headers={
                "PayPal-Request-Id": f"pd-refund-{refund.id}",
                "Prefer": "return=representation",
            },
            json=body,
        )

    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        return _refund_answer(refund, response, create=True)

    def build_refund_status(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        psp_refund_id = refund.psp_refund_id
        if not psp_refund_id or not ORDER_ID.fullmatch(psp_refund_id):
            raise InvalidInput("psp_refund_id", f"refund {refund.id} has no PayPal id yet")
        return PspRequest(
            method="GET",
            url=f"{settings.api_url}/v2/payments/refunds/{psp_refund_id}",
            operation="refund_status",
        )

    def parse_refund_status(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        return _refund_answer(refund, response, create=False)


adapter = PayPal()

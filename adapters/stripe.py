"""Stripe Checkout: hosted Checkout Sessions, status polls, expiry and signed webhooks.

Built from Stripe's public API reference and guides, never from a live call:

- Checkout Sessions: create, retrieve, expire and the session object
  (https://docs.stripe.com/api/checkout/sessions), the ``expires_at`` window
  (https://docs.stripe.com/payments/checkout/managing-limited-inventory) and delayed payment
  methods (https://docs.stripe.com/payments/checkout/how-checkout-works, the
  ``checkout.session.async_payment_*`` events);
- errors and idempotency (https://docs.stripe.com/api/errors,
  https://docs.stripe.com/api/idempotent_requests), versioning
  (https://docs.stripe.com/api/versioning);
- amounts (https://docs.stripe.com/currencies: zero-decimal, three-decimal and special cases);
- webhook signatures (https://docs.stripe.com/webhooks#verify-manually);
- the official Python SDK (github.com/stripe/stripe-python: ``_encode.py`` for nested form
  keys, ``_webhook.py`` for the signature, ``_api_requestor.py`` for HTTP status -> error class).

Requests are form-encoded with nested keys (``line_items[0][price_data][unit_amount]``), carry
``Authorization: Bearer <SECRET_KEY>``, ``Stripe-Version: <API_VERSION>`` and, on the create,
``Idempotency-Key: pd-<order id>``. ``client_reference_id`` and ``metadata[order_id]`` are our
order id.

**Session lifetime.** Stripe takes ``expires_at`` only between 30 minutes and 24 hours after it
receives the create. The request must be the same on every retry (Stripe compares a replayed
request with the first one under the same key), so the window is reckoned from the order's
``created_at``, not from the clock: the order's deadline is clamped to between 60 minutes
(Stripe's 30 plus 30 for a late submission) and 23 h 50 min (10 minutes for clock skew) after
creation. A deadline sooner than that still holds: the dispatcher expires the session itself at
the deadline (``POST /v1/checkout/sessions/{id}/expire``). A later deadline is cut: the session,
and so the order (the dispatcher takes the earlier of the two), ends after about a day. Should a
submission come more than 30 minutes late, Stripe refuses ``expires_at`` and the order fails
(:class:`PspRejected`, ``param expires_at``).

**States** (``status`` / ``payment_status`` of the session, with the expanded PaymentIntent and
its latest charge):

======================================  ============================================
``open`` / any but ``paid``             pending (the buyer has not finished)
``complete`` / ``paid``                 paid; refunded when the charge is fully refunded
``complete`` / ``unpaid``               pending (a delayed method is processing), or
                                        rejected once its PaymentIntent is back at
                                        ``requires_payment_method`` or ``canceled``
``complete`` / ``no_payment_required``  paid with zero money collected, so the amount
                                        check sends the order to ``needs_review``
``expired`` / ``unpaid``                expired
``paid`` with any status                paid (the money is Stripe's to hand over)
anything else                           :class:`MalformedResponse` (never final)
======================================  ============================================

The money reported is ``amount_total`` in ``currency``, converted from Stripe's minor units to
ours (they differ for MGA, ISK and UGX).

**Errors** (``{"error": {"type", "code", "message", "param"}}``): HTTP 401, 403 or an
``authentication_error`` -> :class:`CredentialsRejected`; HTTP 429, ``rate_limit``, 409,
``api_error``, 5xx or ``Stripe-Should-Retry: true`` -> transient; ``idempotency_error`` on the
create -> :class:`OutcomeUnknown` (a session may exist under our key with other terms: a person
decides); ``invalid_request_error`` (or ``card_error``) on the create -> :class:`PspRejected`,
except HTTP 404 (a wrong ``API_URL``: transient); any error on a status or expire call ->
transient (a refused poll says nothing about the payment); anything unreadable ->
:class:`MalformedResponse`.

**Webhooks**: ``Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...]``, HMAC-SHA256 of
``"{t}.{raw body}"`` with any of ``WEBHOOK_SECRETS`` (comma-separated, for rotation), compared in
constant time, ``t`` within 300 s of receipt either way. A notification that fails is answered
400 and names no order. A verified ``checkout.session.completed``, ``.async_payment_succeeded``,
``.async_payment_failed`` or ``.expired`` carries a report; other event types are acknowledged
(200) with none.

**Refunds** (issue #14; https://docs.stripe.com/api/refunds, create and retrieve, and the
``refund.*``, ``charge.refunded`` and ``charge.dispute.*`` event types): a refund names the
session's PaymentIntent (``RefundRequest.psp_payment_id``, which a status read reports), never the
session; ``POST /v1/refunds`` form-encoded with ``payment_intent``, ``amount`` in Stripe's minor
units, our refund and order ids (and reason) in ``metadata``, and ``Idempotency-Key:
pd-refund-<refund id>``; ``GET /v1/refunds/{id}`` reads it. ``pending`` and ``requires_action``
are pending, ``succeeded`` succeeded, ``failed`` and ``canceled`` failed. Refusals follow the
create's rules (``invalid_request_error`` final, ``idempotency_error`` unknown). A status read
reports ``refunded`` (the charge's ``amount_refunded``) and ``chargeback`` (``disputed``).
Refunds cannot be looked up by our id (no ``refund_lookup``). Refund, Charge and Dispute events
name their order by the PaymentIntent (``OrderRef.psp_payment_id``: the dispatcher stores it when
the order is paid, or when it reads the payment), so a refund or dispute made in Stripe's
Dashboard finds its order too. ``charge.refunded`` reports the refunded total;
``charge.dispute.created`` and ``.funds_withdrawn`` a chargeback of the dispute's ``amount``
(which may be part of the payment), keyed by the dispute's id (``dp_...``, ``du_...``), except
for an inquiry (a ``warning_*`` status: no funds are withdrawn); ``charge.dispute.closed`` and
``.funds_reinstated`` with status ``won`` that chargeback given back (a refund report of state
``reversed``). A lost dispute's ``funds_reinstated`` (the part a refund had given back already,
https://support.stripe.com/questions/dispute-for-full-charge-amount-after-a-partial-refund-was-issued)
and the other ``charge.dispute.*`` events change nothing.

Settings: ``SECRET_KEY``, ``WEBHOOK_SECRETS``, ``API_URL`` (default ``https://api.stripe.com``),
``API_VERSION`` (the ``Stripe-Version`` header; default the version the official SDK pins).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote

from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    CredentialsRejected,
    InvalidSettings,
    Invoice,
    ListedPayment,
    MalformedResponse,
    Notification,
    NotificationResult,
    OrderRef,
    PaymentPage,
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
from orders import signing
from orders.errors import InvalidInput, OutcomeUnknown, TransientError
from orders.model import Order
from orders.money import Money, currency_exponent

DEFAULT_API_URL = "https://api.stripe.com"
# The version stripe-python pins (stripe/_api_version.py) when this adapter was written.
DEFAULT_API_VERSION = "2026-06-24.dahlia"

# https://docs.stripe.com/currencies#zero-decimal (UGX is listed there but is a special case).
ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF VND VUV XAF XOF XPF".split())  # noqa: SIM905 - as the page lists them
# Special cases: whole units only, yet sent as two-decimal amounts ending in 00 (5 ISK -> 500).
WHOLE_UNITS_AS_TWO_DECIMALS = frozenset({"ISK", "UGX"})
# Three-decimal currencies: the last digit of the amount must be 0.
THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})

# Stripe's window for expires_at, and our margins (see the module docstring).
SESSION_EARLIEST = timedelta(minutes=60)
SESSION_LATEST = timedelta(hours=24) - timedelta(minutes=10)
SIGNATURE_TOLERANCE = timedelta(seconds=300)

SESSION_STATUSES = frozenset({"open", "complete", "expired"})
PAYMENT_STATUSES = frozenset({"paid", "unpaid", "no_payment_required"})
# PaymentIntent statuses after which a completed session's delayed payment has failed.
FAILED_INTENT = frozenset({"requires_payment_method", "canceled"})
SESSION_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
    }
)
_ERROR_TYPES = frozenset(
    {
        "api_error",
        "card_error",
        "idempotency_error",
        "invalid_request_error",
        "authentication_error",
        "rate_limit_error",
    }
)


class StripeUnavailableError(TransientError):
    """Stripe is overloaded or failed (429, 409, 5xx, ``api_error``): retry with the same key."""


class StripeRefusedError(TransientError):
    """Stripe refused a status or expire call. Never final: the next poll decides."""


def _malformed(response: PspResponse, what: str) -> NoReturn:
    raise MalformedResponse(f"Stripe HTTP {response.status_code}: {what}")


# -- amounts -------------------------------------------------------------------------------------


def stripe_exponent(currency: str) -> int:
    """The number of decimals of ``currency`` in Stripe's amounts (not always ISO 4217's)."""
    if currency in ZERO_DECIMAL:
        return 0
    if currency in WHOLE_UNITS_AS_TWO_DECIMALS:
        return 2
    return currency_exponent(currency)


def to_stripe_amount(money: Money) -> int:
    """Stripe's integer amount for ``money``; InvalidInput where Stripe cannot charge it exactly."""
    shift = stripe_exponent(money.currency) - money.exponent
    factor: int = 10 ** abs(shift)
    if shift >= 0:
        amount = money.amount * factor
    else:
        amount, rest = divmod(money.amount, factor)
        if rest:
            raise InvalidInput(
                "amount", f"Stripe charges {money.currency} in whole units only, not {money}"
            )
    if money.currency in THREE_DECIMAL and amount % 10:
        raise InvalidInput(
            "amount", f"Stripe needs {money.currency} amounts rounded to 0.01, not {money}"
        )
    return amount


def from_stripe_amount(amount: Any, currency: Any, response: PspResponse) -> Money:
    """Our Money from Stripe's ``amount_total`` and lower-case ``currency``; exact or malformed."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(currency, str):
        _malformed(response, f"no integer amount_total and currency: {amount!r} {currency!r}")
    code = currency.upper()
    try:
        shift = stripe_exponent(code) - currency_exponent(code)
        factor: int = 10 ** abs(shift)
        if shift < 0:
            return Money(amount * factor, code)
        minor, rest = divmod(amount, factor)
        if rest:
            _malformed(response, f"{amount} is not a whole amount of {code}")
        return Money(minor, code)
    except InvalidInput as exc:
        raise MalformedResponse(f"Stripe HTTP {response.status_code}: {exc}") from None


# -- expiry and signatures -----------------------------------------------------------------------


def session_expiry(order: Order) -> datetime:
    """The ``expires_at`` we send: the order's deadline clamped into Stripe's window."""
    earliest = order.created_at + SESSION_EARLIEST
    latest = order.created_at + SESSION_LATEST
    return min(max(order.expires_at, earliest), latest)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``v1`` signature Stripe computes: hex HMAC-SHA256 of ``"{t}." + body``, the same as
    our own webhooks' (:func:`orders.signing.signature`)."""
    return signing.signature(secret, timestamp, body)


def signature_valid(header: str, body: bytes, secrets: list[str], now: datetime) -> bool:
    """Whether ``Stripe-Signature`` proves one of ``secrets`` signed ``body`` around ``now``:
    Stripe's header is our own ``t=…,v1=…`` (:class:`orders.signing.SignatureHeader`)."""
    parsed = signing.SignatureHeader.parse(header)
    if parsed is None or not secrets:
        return False
    if abs(now.timestamp() - parsed.timestamp) > SIGNATURE_TOLERANCE.total_seconds():
        return False
    return parsed.matches(secrets, body)


def webhook_secrets(settings: AdapterSettings) -> list[str]:
    """The configured signing secrets (``whsec_...``), comma-separated for rotation."""
    secrets = [s.strip() for s in settings.get("WEBHOOK_SECRETS").split(",") if s.strip()]
    if not secrets:
        raise InvalidSettings("PAYDISPATCH_STRIPE_WEBHOOK_SECRETS names no secret")
    return secrets


# -- reading answers -----------------------------------------------------------------------------


def _object(response: PspResponse) -> Mapping[str, Any]:
    body = response.json()
    if not isinstance(body, Mapping):
        _malformed(response, f"expected a JSON object, got {type(body).__name__}")
    return body


def _header(response: PspResponse, name: str) -> str:
    for key, value in response.headers.items():
        if key.lower() == name:
            return value
    return ""


def _raise_error(response: PspResponse, *, create: bool, subject: str = "a session") -> NoReturn:
    """Translate an error answer (HTTP 4xx/5xx) into the error tree; see the module docstring.

    ``create`` is true for the calls that make something (a session, a refund: ``subject``),
    whose refusals are final; any other call's refusal is transient."""
    try:
        body = _object(response)
    except MalformedResponse:
        if response.status_code >= 500 or response.status_code == 429:
            raise StripeUnavailableError(f"Stripe HTTP {response.status_code}") from None
        raise
    error = body.get("error")
    if not isinstance(error, Mapping) or error.get("type") not in _ERROR_TYPES:
        _malformed(response, "an error answer without a known error object")
    kind, code, status = error["type"], error.get("code"), response.status_code
    text = " ".join(
        str(part)
        for part in (
            kind,
            code or "",
            str(error.get("message") or "").strip(),
            f"(param {error['param']})" if error.get("param") else "",
        )
        if part
    )
    message = f"Stripe HTTP {status}: {text}"
    if status in (401, 403) or kind == "authentication_error":
        raise CredentialsRejected(f"{message}; check PAYDISPATCH_STRIPE_SECRET_KEY")
    retry = _header(response, "stripe-should-retry")
    if (
        status in (409, 429)
        or status >= 500
        or kind in ("api_error", "rate_limit_error")
        or code in ("rate_limit", "lock_timeout")
        or retry == "true"
    ):
        raise StripeUnavailableError(message)
    if not create:
        raise StripeRefusedError(message)
    if kind == "idempotency_error":
        raise OutcomeUnknown(f"{message}; {subject} may exist under our Idempotency-Key")
    if status == 404:
        raise StripeRefusedError(f"{message}; check PAYDISPATCH_STRIPE_API_URL")
    raise PspRejected(message)


def _session(response: PspResponse, *, create: bool) -> Mapping[str, Any]:
    """The Checkout Session of a 200 answer; errors translated, anything else malformed."""
    if response.status_code != 200:
        _raise_error(response, create=create)
    session = _object(response)
    if session.get("object") != "checkout.session":
        _malformed(response, "not a checkout.session object")
    if not isinstance(session.get("id"), str) or not session["id"]:
        _malformed(response, "checkout session without an id")
    return session


def _intent(session: Mapping[str, Any]) -> Mapping[str, Any]:
    """The expanded PaymentIntent, or an empty mapping when it is absent or only an id."""
    intent = session.get("payment_intent")
    return intent if isinstance(intent, Mapping) else {}


def _refund_state(
    session: Mapping[str, Any], money: Money, response: PspResponse
) -> tuple[CanonicalState, str, Money | None]:
    """Paid, refunded or partly refunded, from the expanded PaymentIntent's latest charge, with
    the amount refunded so far (None when the charge is not expanded)."""
    charge = _intent(session).get("latest_charge")
    if not isinstance(charge, Mapping):
        return CanonicalState.PAID, "", None
    if not charge.get("amount_refunded"):
        return CanonicalState.PAID, "", Money(0, money.currency)
    refunded = from_stripe_amount(charge["amount_refunded"], session.get("currency"), response)
    if charge.get("refunded") is True or refunded == money:
        return CanonicalState.REFUNDED, f"refunded {refunded}", refunded
    return CanonicalState.PAID, f"partly refunded {refunded}", refunded


def _intent_id(session: Mapping[str, Any]) -> str | None:
    """The session's PaymentIntent id (``pi_...``), expanded or not; None before there is one."""
    intent = session.get("payment_intent")
    if isinstance(intent, Mapping):
        intent = intent.get("id")
    return intent if isinstance(intent, str) and intent else None


def _disputed(session: Mapping[str, Any]) -> bool:
    charge = _intent(session).get("latest_charge")
    return isinstance(charge, Mapping) and charge.get("disputed") is True


def _failure(session: Mapping[str, Any]) -> str:
    intent = _intent(session)
    error = intent.get("last_payment_error")
    if isinstance(error, Mapping):
        parts = (error.get("code"), error.get("decline_code"), error.get("message"))
        return ": ".join(str(p) for p in parts if p) or "payment failed"
    return f"payment intent {intent.get('status')}" if intent else "payment failed"


def session_report(
    session: Mapping[str, Any], response: PspResponse, *, failed: bool = False
) -> StatusReport:
    """One canonical state for a Checkout Session (see the table in the module docstring).

    ``failed`` is set for a ``checkout.session.async_payment_failed`` event, whose session looks
    like one still processing.
    """
    status, paid = session.get("status"), session.get("payment_status")
    if status not in SESSION_STATUSES or paid not in PAYMENT_STATUSES:
        _malformed(response, f"unknown session status {status!r} / {paid!r}")
    money = from_stripe_amount(session.get("amount_total"), session.get("currency"), response)
    raw, reason = f"{status}/{paid}", ""
    refunded: Money | None = None
    intent_status = _intent(session).get("status")
    if paid == "paid":
        state, reason, refunded = _refund_state(session, money, response)
    elif status == "expired":
        state = CanonicalState.EXPIRED
    elif status == "open":
        state = CanonicalState.PENDING
    elif paid == "no_payment_required":
        # Nothing was collected for an order that has a price: a person must look at it.
        state, money, reason = CanonicalState.PAID, Money(0, money.currency), "no payment required"
    elif failed or intent_status in FAILED_INTENT:
        state, reason = CanonicalState.REJECTED, _failure(session)
    else:
        state = CanonicalState.PENDING
    return StatusReport(
        state=state,
        psp_id=session["id"],
        money=money,
        raw_status=raw,
        reason=reason,
        refunded=refunded,
        chargeback=_disputed(session),
        psp_payment_id=_intent_id(session),
    )


# -- refunds (issue #14) -------------------------------------------------------------------------

# https://docs.stripe.com/api/refunds/object: ``status`` of a Refund.
REFUND_STATES = {
    "pending": RefundState.PENDING,
    "requires_action": RefundState.PENDING,  # the customer must give details (some methods)
    "succeeded": RefundState.SUCCEEDED,
    "failed": RefundState.FAILED,
    "canceled": RefundState.FAILED,
}
REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed"})
# Events that report money taken back from a paid payment (https://docs.stripe.com/api/events/types):
# the charge's refunded total, and a dispute's chargeback, reported when it is opened and when
# its funds are withdrawn (one dispute id for both: recorded once).
CHARGE_EVENTS = frozenset(
    {"charge.refunded", "charge.dispute.created", "charge.dispute.funds_withdrawn"}
)
# Events that may end a dispute in the merchant's favour: "closed" (status lost, warning_closed
# or won) and "funds_reinstated" (funds back after a dispute closed, also the refunded part of
# a partly refunded payment when the dispute is lost). Only status ``won`` gives the chargeback
# back; the other charge.dispute.* events (updated, closed lost) name the order, change nothing.
DISPUTE_END_EVENTS = frozenset({"charge.dispute.closed", "charge.dispute.funds_reinstated"})
# Stripe keeps 500 characters of a metadata value.
METADATA_LIMIT = 500


def refund_report(refund: Mapping[str, Any], response: PspResponse) -> RefundReport:
    """One reading of a Stripe Refund object."""
    if refund.get("object") != "refund":
        _malformed(response, "not a refund object")
    refund_id, status = refund.get("id"), refund.get("status")
    if not isinstance(refund_id, str) or not refund_id:
        _malformed(response, "refund without an id")
    if status not in REFUND_STATES:
        _malformed(response, f"unknown refund status {status!r}")
    money = from_stripe_amount(refund.get("amount"), refund.get("currency"), response)
    reason = refund.get("failure_reason") if status in ("failed", "canceled") else None
    return RefundReport(
        state=REFUND_STATES[status],
        psp_refund_id=refund_id,
        money=money,
        raw_status=status,
        reason=str(reason or ""),
    )


def _metadata(item: Mapping[str, Any], key: str) -> str | None:
    metadata = item.get("metadata")
    value = metadata.get(key) if isinstance(metadata, Mapping) else None
    return value if isinstance(value, str) and value else None


def _check_refund(request: RefundRequest, refund: Mapping[str, Any], response: PspResponse) -> None:
    """The answer is about our refund: its id once known, else our id in its metadata."""
    if request.psp_refund_id is not None and refund.get("id") != request.psp_refund_id:
        _malformed(
            response, f"answer is about refund {refund.get('id')}, not {request.psp_refund_id}"
        )
    ours = _metadata(refund, "refund_id")
    if ours is not None and ours != str(request.id):
        _malformed(response, f"refund {refund.get('id')} is another refund's ({ours})")


def _refund_answer(request: RefundRequest, response: PspResponse, *, create: bool) -> RefundReport:
    if response.status_code != 200:
        _raise_error(response, create=create, subject="a refund")
    refund = _object(response)
    report = refund_report(refund, response)
    _check_refund(request, refund, response)
    return report


def _intent_of(item: Mapping[str, Any]) -> str | None:
    """The PaymentIntent id a Refund, Charge or Dispute names (``payment_intent``, an id or,
    expanded, an object); None when it names none."""
    intent = item.get("payment_intent")
    if isinstance(intent, Mapping):
        intent = intent.get("id")
    return intent if isinstance(intent, str) and intent.startswith("pi_") else None


def _inquiry(item: Mapping[str, Any]) -> bool:
    """A dispute that is an inquiry (``warning_needs_response``, ``warning_under_review``,
    ``warning_closed``; https://docs.stripe.com/disputes/how-disputes-work): the issuer asks
    questions and no funds are withdrawn, so nothing is taken back."""
    status = item.get("status")
    return (
        item.get("object") == "dispute"
        and isinstance(status, str)
        and status.startswith("warning_")
    )


def dispute_report(
    kind: str, item: Mapping[str, Any], response: PspResponse
) -> tuple[RefundReport, StatusReport] | None:
    """What a ``charge.dispute.*`` event (a Dispute, https://docs.stripe.com/api/disputes/object)
    says: a chargeback of the dispute's ``amount`` (created, funds_withdrawn), keyed by the
    dispute's id, or that chargeback given back (closed or funds_reinstated with status
    ``won``, :attr:`RefundState.REVERSED`); None for an inquiry and the other events."""
    if item.get("object") != "dispute":
        _malformed(response, f"{kind} without a dispute")
    dispute_id, status = item.get("id"), item.get("status")
    # Stripe's dispute ids start with dp_, du_ or pdp_: any non-empty id is the dispute's.
    if not isinstance(dispute_id, str) or not dispute_id.strip():
        _malformed(response, f"{kind} without a dispute id")
    if kind in CHARGE_EVENTS and not _inquiry(item):
        state = RefundState.SUCCEEDED
    elif kind in DISPUTE_END_EVENTS and status == "won":
        state = RefundState.REVERSED
    else:
        return None
    disputed = from_stripe_amount(item.get("amount"), item.get("currency"), response)
    reason = f"dispute of {disputed}: {item.get('reason') or 'no reason given'}"
    refund = RefundReport(
        state=state,
        psp_refund_id=dispute_id,
        money=disputed,
        raw_status=f"dispute {status}",
        reason=reason,
    )
    report = StatusReport(
        state=CanonicalState.PAID,
        raw_status=f"dispute {status}",
        reason=reason,
        chargeback=True,
        psp_payment_id=_intent_of(item),
    )
    return refund, report


def _charge_report(kind: str, item: Mapping[str, Any], response: PspResponse) -> StatusReport:
    """What a ``charge.refunded`` event (a Charge) says about the payment: paid or refunded, the
    amount refunded so far, whether it is disputed."""
    intent_id = _intent_of(item)
    if item.get("object") != "charge":
        _malformed(response, f"{kind} without a charge")
    money = from_stripe_amount(item.get("amount"), item.get("currency"), response)
    refunded = from_stripe_amount(item.get("amount_refunded"), item.get("currency"), response)
    whole = item.get("refunded") is True or refunded == money
    return StatusReport(
        state=CanonicalState.REFUNDED if whole else CanonicalState.PAID,
        money=money,
        raw_status="charge refunded" if whole else "charge partly refunded",
        reason=f"refunded {refunded}",
        refunded=refunded,
        chargeback=item.get("disputed") is True,
        psp_payment_id=intent_id,
    )


def _money_back(
    kind: str, item: Mapping[str, Any], ref: OrderRef, response: PspResponse
) -> NotificationResult:
    """The verified result of a Refund, Charge or Dispute event about ``ref``'s payment."""
    if kind in REFUND_EVENTS:
        return NotificationResult(ref=ref, verified=True, refund=refund_report(item, response))
    if kind.startswith("charge.dispute."):
        dispute = dispute_report(kind, item, response)
        refund, report = dispute if dispute is not None else (None, None)
        return NotificationResult(ref=ref, verified=True, refund=refund, report=report)
    return NotificationResult(ref=ref, verified=True, report=_charge_report(kind, item, response))


def _check_ours(order: Order, session: Mapping[str, Any], response: PspResponse) -> None:
    if order.psp_id is not None and session["id"] != order.psp_id:
        _malformed(response, f"answer is about session {session['id']}, not {order.psp_id}")
    reference = session.get("client_reference_id")
    if reference is not None and reference != str(order.id):
        _malformed(response, f"session {session['id']} belongs to another order")


class Stripe(Adapter):
    """Stripe Checkout Sessions in ``payment`` mode on Stripe's hosted page."""

    name: ClassVar[str] = "stripe"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=True,
        cancel=True,
        notifications=True,
        signed_notifications=True,
        # Any: which of Stripe's 135+ presentment currencies an account may use depends on its
        # country and payment methods; Stripe refuses the others (PspRejected).
        currencies=frozenset(),
        default_expiry=timedelta(hours=1),
        poll=PollPolicy(first=timedelta(seconds=15), factor=2.0, cap=timedelta(minutes=5)),
        list_payments=True,  # GET /v1/checkout/sessions (reconciliation, issue #16)
        refunds=True,  # POST /v1/refunds of the session's PaymentIntent (issue #14)
        partial_refunds=True,
        idempotent_refund=True,  # Idempotency-Key: pd-refund-<our refund id>
        refund_lookup=False,  # refunds are read by Stripe's id only (no search by metadata)
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default=DEFAULT_API_URL, help="Stripe API base URL"),
        SettingSpec("SECRET_KEY", secret=True, help="secret (sk_...) or restricted (rk_...) key"),
        SettingSpec(
            "WEBHOOK_SECRETS",
            secret=True,
            help="webhook signing secrets (whsec_...), comma-separated: two during a rotation",
        ),
        SettingSpec(
            "API_VERSION",
            default=DEFAULT_API_VERSION,
            help="sent as Stripe-Version; the adapter reads fields stable across versions",
        ),
    )

    def _headers(self, settings: AdapterSettings, key: str | None = None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {settings.get('SECRET_KEY')}",
            "Stripe-Version": settings.get("API_VERSION"),
        }
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    @staticmethod
    def _session_url(order: Order, settings: AdapterSettings, action: str = "") -> str:
        if not order.psp_id:
            raise InvalidInput("psp_id", f"order {order.id} has no Stripe Checkout Session yet")
        return f"{settings.api_url}/v1/checkout/sessions/{quote(order.psp_id, safe='')}{action}"

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        if not order.return_url:
            # Hosted Checkout sends the buyer to success_url: without one, nowhere to go back to.
            raise InvalidInput("return_url", "Stripe Checkout needs a return_url")
        item = "line_items[0]"
        form = {
            "mode": "payment",
            "client_reference_id": str(order.id),
            f"{item}[quantity]": "1",
            f"{item}[price_data][currency]": order.money.currency.lower(),
            f"{item}[price_data][unit_amount]": str(to_stripe_amount(order.money)),
            f"{item}[price_data][product_data][name]": order.description.strip()
            or f"Order {order.number}",
            "metadata[order_id]": str(order.id),
            "metadata[order_number]": str(order.number),
            "success_url": order.return_url,
            "cancel_url": order.return_url,
            "expires_at": str(int(session_expiry(order).timestamp())),
        }
        return PspRequest(
            method="POST",
            url=f"{settings.api_url}/v1/checkout/sessions",
            operation="create",
            headers=self._headers(settings, order.psp_idempotency_key),
            form=form,
        )

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        session = _session(response, create=True)
        _check_ours(order, session, response)
        report = session_report(session, response)  # unreadable now, unreadable on every poll
        url = session.get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith("http")):
            _malformed(response, f"session url is not an http(s) URL: {url!r}")
        if url is None and report.raw_status.startswith("open/"):
            _malformed(response, "open session without a url")
        expires = session.get("expires_at")
        if isinstance(expires, bool) or not isinstance(expires, int):
            _malformed(response, f"expires_at is not a Unix time: {expires!r}")
        return Invoice(
            psp_id=session["id"], pay_url=url, expires_at=datetime.fromtimestamp(expires, UTC)
        )

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            method="GET",
            url=self._session_url(order, settings),
            operation="status",
            headers=self._headers(settings),
            # Expanding the charge expands the PaymentIntent too: failed delayed payments and
            # refunds show only there.
            params={"expand[]": "payment_intent.latest_charge"},
        )

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings | None = None,
        operation: str = "status",
    ) -> StatusReport:
        """Reads the session a retrieve or an expire answers with (the same object)."""
        session = _session(response, create=False)
        _check_ours(order, session, response)
        return session_report(session, response)

    def build_cancel(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            method="POST",
            url=self._session_url(order, settings, "/expire"),
            operation="cancel",
            headers=self._headers(settings, f"{order.psp_idempotency_key}-expire"),
            form={},
        )

    def can_cancel(self, order: Order, report: StatusReport | None) -> bool:
        """Only an open session can be expired; a completed one may be paying already."""
        return report is not None and report.raw_status.startswith("open/")

    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        now = notification.received_at or datetime.now(UTC)
        header = notification.headers.get("stripe-signature", "")
        if not signature_valid(header, notification.body, webhook_secrets(settings), now):
            # Not provably Stripe's: name nothing, so a forger cannot even trigger a poll.
            return NotificationResult(
                ref=OrderRef(), verified=False, reply=Reply(400, b"invalid signature")
            )
        response = PspResponse(status_code=200, content=notification.body)
        event = _object(response)
        kind, data = event.get("type"), event.get("data")
        if event.get("object") != "event" or not isinstance(kind, str):
            _malformed(response, "not a Stripe event")
        item = data.get("object") if isinstance(data, Mapping) else None
        if kind in REFUND_EVENTS or kind == "charge.refunded" or kind.startswith("charge.dispute."):
            if not isinstance(item, Mapping):
                _malformed(response, f"{kind} without an object")
            # Our refunds carry our order id in their metadata; charges, disputes and refunds
            # made in Stripe's Dashboard do not: they name the order by its PaymentIntent (its
            # psp_payment_id, stored when it was paid), which every Refund, Charge and Dispute
            # object carries.
            ref = OrderRef(order_id=_metadata(item, "order_id"), psp_payment_id=_intent_of(item))
            return _money_back(kind, item, ref, response)
        if kind not in SESSION_EVENTS:
            return NotificationResult(ref=OrderRef(), verified=True)
        session = item
        if not isinstance(session, Mapping) or session.get("object") != "checkout.session":
            _malformed(response, f"{kind} without a checkout.session")
        if not isinstance(session.get("id"), str):
            _malformed(response, "checkout session without an id")
        report = session_report(
            session, response, failed=kind == "checkout.session.async_payment_failed"
        )
        reference = session.get("client_reference_id")
        ref = OrderRef(
            order_id=reference if isinstance(reference, str) else None, psp_id=session["id"]
        )
        return NotificationResult(ref=ref, verified=True, report=report)

    # -- Refunds (issue #14) -------------------------------------------------------------------
    # https://docs.stripe.com/api/refunds/create and .../retrieve: a refund names the
    # PaymentIntent (a Checkout Session cannot be refunded as such), form-encoded, with an
    # Idempotency-Key; Stripe's ``reason`` takes only its own three words, so ours travels in
    # the metadata with our refund and order ids (they come back in refund.* events).

    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        intent = refund.psp_payment_id
        if not intent or not intent.startswith("pi_"):
            raise InvalidInput(
                "psp_payment_id", f"a Stripe refund needs the PaymentIntent id, got {intent!r}"
            )
        form = [
            ("payment_intent", intent),
            ("amount", str(to_stripe_amount(refund.money))),
            ("metadata[refund_id]", str(refund.id)),
            ("metadata[order_id]", str(refund.order.id)),
        ]
        if refund.reason.strip():
            form.append(("metadata[reason]", refund.reason.strip()[:METADATA_LIMIT]))
        return PspRequest(
            method="POST",
            url=f"{settings.api_url}/v1/refunds",
            operation="refund",
            headers=self._headers(settings, f"pd-refund-{refund.id}"),
            form=form,
        )

    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        return _refund_answer(refund, response, create=True)

    def build_refund_status(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        if not refund.psp_refund_id:
            raise InvalidInput("psp_refund_id", f"refund {refund.id} has no Stripe id yet")
        return PspRequest(
            method="GET",
            url=f"{settings.api_url}/v1/refunds/{quote(refund.psp_refund_id, safe='')}",
            operation="refund_status",
            headers=self._headers(settings),
        )

    def parse_refund_status(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        return _refund_answer(refund, response, create=False)

    # -- Reconciliation (issue #16): the session list -----------------------------------------
    # https://docs.stripe.com/api/checkout/sessions/list and https://docs.stripe.com/api/pagination:
    # created[gte] / created[lt] in Unix seconds, limit 1-100 (default 10), newest first,
    # starting_after = the last session's id while has_more; expansions of listed objects are
    # prefixed with data. (https://docs.stripe.com/api/expanding_objects).

    def build_list(
        self, settings: AdapterSettings, since: datetime, until: datetime, cursor: str | None
    ) -> PspRequest:
        params = [
            ("created[gte]", str(int(since.timestamp()))),
            ("created[lt]", str(int(until.timestamp()))),
            ("limit", str(LIST_LIMIT)),
            # The charge shows refunds, as on a status poll (build_status).
            ("expand[]", "data.payment_intent.latest_charge"),
        ]
        if cursor is not None:
            params.append(("starting_after", cursor))
        return PspRequest(
            method="GET",
            url=f"{settings.api_url}/v1/checkout/sessions",
            operation="list",
            headers=self._headers(settings),
            params=params,
        )

    def parse_list(self, response: PspResponse, settings: AdapterSettings) -> PaymentPage:
        if response.status_code != 200:
            _raise_error(response, create=False)
        body = _object(response)
        data, more = body.get("data"), body.get("has_more")
        if body.get("object") != "list" or not isinstance(data, list) or not isinstance(more, bool):
            _malformed(response, "not a list object with data and has_more")
        payments = []
        for session in data:
            if not isinstance(session, Mapping) or session.get("object") != "checkout.session":
                _malformed(response, "list item is not a checkout.session")
            if not isinstance(session.get("id"), str) or not session["id"]:
                _malformed(response, "listed checkout session without an id")
            if session.get("mode") != "payment":
                continue  # setup and subscription sessions: not payments paydispatch makes
            reference = session.get("client_reference_id")
            ref = OrderRef(order_id=reference if isinstance(reference, str) else None)
            payments.append(ListedPayment(session_report(session, response), ref))
        if more and not data:
            _malformed(response, "has_more with no session to continue after")
        # The cursor is the last session listed, whatever its mode.
        return PaymentPage(tuple(payments), data[-1]["id"] if more else None)


# Reconciliation (issue #16): sessions a list page asks for, Stripe's most.
LIST_LIMIT = 100


adapter = Stripe()

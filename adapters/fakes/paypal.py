"""A local fake of PayPal's REST API (Orders v2), written from the public reference.

Serves what paydispatch's PayPal adapter uses, as developer.paypal.com documents it:

    POST /v1/oauth2/token          client credentials (HTTP Basic), tokens with expires_in
    POST /v2/checkout/orders       create, PayPal-Request-Id idempotency, Prefer header
    GET  /v2/checkout/orders/{id}  the order
    POST /v2/checkout/orders/{id}/capture   capture an APPROVED order (its own request ids)
    POST /v2/payments/captures/{id}/refund  refund (part of) a capture, PayPal-Request-Id
    GET  /v2/payments/refunds/{id}          a refund
    POST /v1/notifications/verify-webhook-signature   is this transmission one we sent?
    GET  /checkoutnow?token={id}   the buyer's page (the payer-action / approve link)

plus the control API of :mod:`adapters.fakes.common`. Every ``/v2`` call needs a bearer token
from the token endpoint that has not expired (else HTTP 401 ``AUTHENTICATION_FAILURE``); errors
use PayPal's error object (``name``, ``message``, ``details[].issue``, ``debug_id``).

The buyer's side: control ``pay`` is the buyer approving (``APPROVED``; the capture the
dispatcher then makes is ``COMPLETED``), control ``decline`` is the buyer approving with a
funding source that will fail (the capture is ``DECLINED``). A ``pay`` after a decline or after
the deadline approves the order again with a good funding source (a late payment), as a buyer
sent back to the approve link would. A capture request id is answered, as PayPal documents,
with the answer it first had, also after the buyer approved again: a new attempt needs a new id.
Orders never expire here by themselves: the dispatcher's deadline decides.

Refunds (payments_payment_v2.json) complete at once, as card refunds at PayPal usually do;
never past what is left of the capture (422 ``REFUND_AMOUNT_EXCEEDED``,
``CAPTURE_FULLY_REFUNDED``), in the capture's currency; the capture turns
``PARTIALLY_REFUNDED`` or ``REFUNDED`` and the order lists its refunds. A PayPal-Request-Id
replay answers the first refund (PayPal keeps refund keys 45 days); the control stats count
refunds per request id, and the refund faults of :mod:`adapters.fakes.common` apply.

Webhooks (``CHECKOUT.ORDER.APPROVED``, ``PAYMENT.CAPTURE.COMPLETED``/``DECLINED``/``REFUNDED``)
go to ``notify_url`` with PayPal's transmission headers. PayPal signs with RSA and a certificate
at ``PAYPAL-CERT-URL``; without a cryptography library this fake signs each transmission with a
random value it remembers, so its verify-webhook-signature endpoint answers ``SUCCESS`` exactly
for what it sent (unaltered) and ``FAILURE`` for anything else, as PayPal's does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import secrets
import string
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from html import escape
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from adapters.fakes.common import FakeState, PaymentRef, control_routes
from adapters.paypal import CURRENCIES, NO_DECIMALS, format_amount
from orders.model import Order
from orders.money import CURRENCY_EXPONENTS

NAME = "paypal"
# The fake's fixed REST app credentials, long like PayPal's.
CLIENT_ID = "AfakePayPalClientIdForPaydispatchTests-0123456789abcdefghijklmnopqrstuvwxyzABCDE"
CLIENT_SECRET = "EfakePayPalClientSecretForPaydispatchTests-9876543210zyxwvutsrqponmlkjihgfed"  # noqa: S105
WEBHOOK_ID = "8PT597110X687430LKGECATA"
TOKEN_LIFETIME = 32400  # seconds, PayPal's usual expires_in
DEBUG_ID = "f4a2c0d1e3b57"
CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-fake"
PAYEE = {"email_address": "merchant@example.com", "merchant_id": "7KNGBPH2U58GQ"}
PAYER_ID = "QYR5Z8XDVJNXQ"

_ID_ALPHABET = string.ascii_uppercase + string.digits
_MESSAGES = {
    "INVALID_REQUEST": "Request is not well-formed, syntactically incorrect, or violates schema.",
    "AUTHENTICATION_FAILURE": (
        "Authentication failed due to invalid authentication credentials or a missing "
        "Authorization header."
    ),
    "RESOURCE_NOT_FOUND": "The specified resource does not exist.",
    "UNPROCESSABLE_ENTITY": (
        "The requested action could not be performed, semantically incorrect, or failed "
        "business validation."
    ),
}
_STATUS_OF = {
    "INVALID_REQUEST": 400,
    "AUTHENTICATION_FAILURE": 401,
    "RESOURCE_NOT_FOUND": 404,
    "UNPROCESSABLE_ENTITY": 422,
}


def _paypal_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(17))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(name: str, issue: str | None = None, description: str = "", field: str = "") -> Response:
    body: dict[str, Any] = {"name": name, "message": _MESSAGES[name], "debug_id": DEBUG_ID}
    if issue is not None:
        detail = {"issue": issue, "description": description}
        if field:
            detail = {"field": field, "location": "body", **detail}
        body["details"] = [detail]
        body["links"] = [
            {
                "href": f"https://developer.paypal.com/docs/api/orders/v2/#error-{issue}",
                "rel": "information_link",
                "method": "GET",
            }
        ]
    return JSONResponse(body, _STATUS_OF[name])


class _Refusal(Exception):
    """A request the fake refuses, with PayPal's error answer."""

    def __init__(self, response: Response) -> None:
        self.response = response


@dataclass
class FakeOrder:
    """One PayPal order as the fake keeps it."""

    id: str
    amount: dict[str, str]
    custom_id: str | None
    invoice_id: str | None
    description: str | None
    return_url: str | None
    cancel_url: str | None
    paypal_source: bool  # created with payment_source.paypal (payer-action link)
    status: str
    create_time: str
    update_time: str
    captures: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    will_decline: bool = False

    def links(self, base: str) -> list[dict[str, str]]:
        own = f"{base}/v2/checkout/orders/{self.id}"
        links = [{"href": own, "rel": "self", "method": "GET"}]
        if self.status in {"CREATED", "PAYER_ACTION_REQUIRED"}:
            rel = "payer-action" if self.paypal_source else "approve"
            links.append(
                {"href": f"{base}/checkoutnow?token={self.id}", "rel": rel, "method": "GET"}
            )
        if self.status in {"CREATED", "APPROVED"}:
            links.append({"href": own, "rel": "update", "method": "PATCH"})
            links.append({"href": f"{own}/capture", "rel": "capture", "method": "POST"})
        return links

    def unit(self) -> dict[str, Any]:
        unit: dict[str, Any] = {"reference_id": "default", "amount": dict(self.amount)}
        unit["payee"] = dict(PAYEE)
        for key in ("description", "custom_id", "invoice_id"):
            if getattr(self, key) is not None:
                unit[key] = getattr(self, key)
        if self.captures:
            unit["payments"] = {"captures": [dict(c) for c in self.captures]}
            if self.refunds:
                unit["payments"]["refunds"] = [dict(r) for r in self.refunds]
        return unit

    def representation(self, base: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "intent": "CAPTURE",
            "status": self.status,
            "purchase_units": [self.unit()],
            "create_time": self.create_time,
            "update_time": self.update_time,
            "links": self.links(base),
        }
        approved = self.status in {"APPROVED", "COMPLETED"}
        if self.paypal_source or approved:
            body["payment_source"] = {
                "paypal": (
                    {"email_address": "customer@example.com", "account_id": PAYER_ID}
                    if approved
                    else {}
                )
            }
        if approved:
            body["payer"] = {
                "name": {"given_name": "John", "surname": "Doe"},
                "email_address": "customer@example.com",
                "payer_id": PAYER_ID,
            }
        return body

    def minimal(self, base: str) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "links": self.links(base)}


def _amount(unit: dict[str, Any]) -> dict[str, str]:
    """The purchase unit's amount, checked as PayPal checks it; refusals raise _Refusal."""
    amount = unit.get("amount")
    where = "/purchase_units/@reference_id=='default'/amount"
    if not isinstance(amount, dict):
        raise _Refusal(
            _error(
                "INVALID_REQUEST",
                "MISSING_REQUIRED_PARAMETER",
                "A required field is missing.",
                where,
            )
        )
    currency, value = amount.get("currency_code"), amount.get("value")
    if not isinstance(currency, str) or not isinstance(value, str):
        raise _Refusal(
            _error(
                "INVALID_REQUEST",
                "INVALID_PARAMETER_SYNTAX",
                "The value of a field does not conform to the expected format.",
                where,
            )
        )
    if currency not in CURRENCIES:
        raise _Refusal(
            _error(
                "UNPROCESSABLE_ENTITY",
                "INVALID_CURRENCY_CODE",
                "Currency code is invalid or is not currently supported.",
                f"{where}/currency_code",
            )
        )
    try:
        major = Decimal(value)
    except InvalidOperation:
        major = Decimal("NaN")
    if not major.is_finite():
        raise _Refusal(
            _error(
                "INVALID_REQUEST",
                "INVALID_PARAMETER_SYNTAX",
                "The value of a field does not conform to the expected format.",
                f"{where}/value",
            )
        )
    decimals = 0 if currency in NO_DECIMALS else CURRENCY_EXPONENTS[currency]
    if "." in value and (decimals == 0 or len(value.split(".")[1]) > decimals):
        raise _Refusal(
            _error(
                "UNPROCESSABLE_ENTITY",
                "DECIMAL_PRECISION",
                "If the currency supports decimals, only two decimal place precision is supported.",
                f"{where}/value",
            )
        )
    if major <= 0:
        raise _Refusal(
            _error(
                "UNPROCESSABLE_ENTITY",
                "CANNOT_BE_ZERO_OR_NEGATIVE",
                "Must be greater than zero.",
                f"{where}/value",
            )
        )
    return {"currency_code": currency, "value": value}


def _text(unit: dict[str, Any], key: str) -> str | None:
    value = unit.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 127:
        raise _Refusal(
            _error(
                "INVALID_REQUEST",
                "INVALID_STRING_LENGTH",
                "The value of a field is either too short or too long.",
                f"/purchase_units/@reference_id=='default'/{key}",
            )
        )
    return value


class PayPalFake:
    """The fake's store and handlers; one per app."""

    def __init__(self, notify_url: str | None, token_lifetime: int) -> None:
        self.state = FakeState()
        self.notify_url = notify_url
        self.token_lifetime = token_lifetime
        self.orders: dict[str, FakeOrder] = {}
        self.by_request_id: dict[str, str] = {}  # create's PayPal-Request-Id -> order id
        self.captures_by_key: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self.refunds_by_key: dict[str, dict[str, Any]] = {}  # PayPal-Request-Id -> refund
        self.refunds: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self.transmissions: dict[str, tuple[str, bytes]] = {}  # id -> (signature, body)
        self.lock = threading.Lock()
        self.deliveries: set[asyncio.Task[None]] = set()
        # The fake's own URL as its clients see it, learnt from the first create: the links
        # in webhooks sent from the control API.
        self.base = "https://api-m.paypal.com"

    # -- auth --------------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        self.state.count("token")
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            given = base64.b64decode(encoded, validate=True) if scheme == "Basic" else b""
        except (binascii.Error, ValueError):
            given = b""
        expected = f"{CLIENT_ID}:{CLIENT_SECRET}".encode()
        if not hmac.compare_digest(given, expected):
            body = {"error": "invalid_client", "error_description": "Client Authentication failed"}
            return JSONResponse(body, 401)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        if form.get("grant_type") != ["client_credentials"]:
            body = {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"}
            return JSONResponse(body, 400)
        value = "A21AA" + secrets.token_urlsafe(64)
        with self.lock:
            self.tokens[value] = time.monotonic() + self.token_lifetime
        return JSONResponse(
            {
                "scope": "https://uri.paypal.com/services/payments/payment/authcapture openid",
                "access_token": value,
                "token_type": "Bearer",
                "app_id": "APP-80W284485P519543T",
                "expires_in": self.token_lifetime,
                "nonce": f"{_now()}{secrets.token_urlsafe(16)}",
            }
        )

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (tests of the transport's refresh)."""
        with self.lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    def _authorized(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        with self.lock:
            expiry = self.tokens.get(value) if scheme == "Bearer" else None
        return expiry is not None and expiry > time.monotonic()

    # -- orders ------------------------------------------------------------------------------

    def _base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def _answer(self, order: FakeOrder, request: Request, status_code: int) -> Response:
        base = self._base(request)
        full = request.headers.get("prefer", "").strip().lower() == "return=representation"
        body = order.representation(base) if full else order.minimal(base)
        return JSONResponse(body, status_code)

    async def create_order(self, request: Request) -> Response:
        self.state.count("create")
        if not self._authorized(request):
            return _error("AUTHENTICATION_FAILURE")
        self.base = self._base(request)
        key = request.headers.get("paypal-request-id")
        if key is not None and not 1 <= len(key) <= 108:
            return _error("INVALID_REQUEST", "INVALID_STRING_LENGTH", "PayPal-Request-Id length")
        with self.lock:
            known = self.orders.get(self.by_request_id.get(key or "", ""))
        if known is not None:
            return self._answer(known, request, 200)  # a replay: the same order, no new one
        try:
            order = self._new_order(await request.body())
        except _Refusal as refusal:
            return refusal.response
        with self.lock:
            if key is not None and key in self.by_request_id:  # a concurrent replay won
                return self._answer(self.orders[self.by_request_id[key]], request, 200)
            self.orders[order.id] = order
            if key is not None:
                self.by_request_id[key] = order.id
        self.state.invoice_made(order.custom_id or order.id)
        if self.state.take_timeout_fault():
            await self.state.hang()
        return self._answer(order, request, 201)

    def _new_order(self, raw: bytes) -> FakeOrder:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise _Refusal(
                _error(
                    "INVALID_REQUEST",
                    "MALFORMED_REQUEST_JSON",
                    "The request JSON is not well formed.",
                )
            )
        if body.get("intent") != "CAPTURE":
            raise _Refusal(
                _error(
                    "UNPROCESSABLE_ENTITY",
                    "UNSUPPORTED_INTENT",
                    "this fake takes intent CAPTURE only",
                    "/intent",
                )
            )
        units = body.get("purchase_units")
        if not isinstance(units, list) or len(units) != 1 or not isinstance(units[0], dict):
            raise _Refusal(
                _error(
                    "INVALID_REQUEST",
                    "INVALID_ARRAY_MAX_ITEMS",
                    "this fake takes exactly one purchase unit",
                    "/purchase_units",
                )
            )
        unit = units[0]
        source = body.get("payment_source")
        paypal = source.get("paypal") if isinstance(source, dict) else None
        context = paypal.get("experience_context") if isinstance(paypal, dict) else None
        if not isinstance(context, dict):
            legacy = body.get("application_context")
            context = legacy if isinstance(legacy, dict) else {}
        now = _now()
        return FakeOrder(
            id=_paypal_id(),
            amount=_amount(unit),
            custom_id=_text(unit, "custom_id"),
            invoice_id=_text(unit, "invoice_id"),
            description=_text(unit, "description"),
            return_url=context.get("return_url"),
            cancel_url=context.get("cancel_url"),
            paypal_source=isinstance(paypal, dict),
            status="PAYER_ACTION_REQUIRED" if isinstance(paypal, dict) else "CREATED",
            create_time=now,
            update_time=now,
        )

    def _find(self, order_id: str) -> FakeOrder | None:
        with self.lock:
            return self.orders.get(order_id)

    async def get_order(self, request: Request) -> Response:
        self.state.count("status")
        if not self._authorized(request):
            return _error("AUTHENTICATION_FAILURE")
        order = self._find(request.path_params["order_id"])
        if order is None:
            return _not_found()
        return JSONResponse(order.representation(self._base(request)))

    async def capture(self, request: Request) -> Response:
        self.state.count("capture")
        if not self._authorized(request):
            return _error("AUTHENTICATION_FAILURE")
        order = self._find(request.path_params["order_id"])
        if order is None:
            return _not_found()
        key = request.headers.get("paypal-request-id")
        with self.lock:
            replay = self.captures_by_key.get(key or "")
        if replay is not None and replay[0] == order.id:
            return JSONResponse(replay[2], replay[1])
        if order.status == "COMPLETED":
            return _error(
                "UNPROCESSABLE_ENTITY",
                "ORDER_ALREADY_CAPTURED",
                "Order already captured.If 'intent=CAPTURE' only one capture per order is allowed.",
            )
        if order.status != "APPROVED":
            return _error(
                "UNPROCESSABLE_ENTITY",
                "ORDER_NOT_APPROVED",
                "Payer has not yet approved the Order for payment.",
            )
        now = _now()
        capture_status = "DECLINED" if order.will_decline else "COMPLETED"
        base = self._base(request)
        capture_id = _paypal_id()
        capture = {
            "id": capture_id,
            "status": capture_status,
            "amount": dict(order.amount),
            "final_capture": True,
            "seller_protection": {"status": "ELIGIBLE"},
            "create_time": now,
            "update_time": now,
            "links": [
                {
                    "href": f"{base}/v2/payments/captures/{capture_id}",
                    "rel": "self",
                    "method": "GET",
                },
                {"href": f"{base}/v2/checkout/orders/{order.id}", "rel": "up", "method": "GET"},
            ],
        }
        for name in ("custom_id", "invoice_id"):
            if getattr(order, name) is not None:
                capture[name] = getattr(order, name)
        with self.lock:
            order.captures = [capture]
            order.status = "COMPLETED"
            order.update_time = now
        answer = self._answer(order, request, 201)
        if key is not None:
            with self.lock:
                self.captures_by_key[key] = (order.id, 201, json.loads(bytes(answer.body)))
        resource = {**capture, "supplementary_data": {"related_ids": {"order_id": order.id}}}
        if capture_status == "COMPLETED":
            summary = (
                f"Payment completed for {order.amount['value']} {order.amount['currency_code']}"
            )
            self._notify("PAYMENT.CAPTURE.COMPLETED", "capture", summary, resource, base)
        else:
            summary = "A payment capture was declined."
            self._notify("PAYMENT.CAPTURE.DECLINED", "capture", summary, resource, base)
        return answer

    # -- refunds -----------------------------------------------------------------------------

    def _captured(self, capture_id: str) -> tuple[FakeOrder, dict[str, Any]] | None:
        with self.lock:
            for order in self.orders.values():
                for capture in order.captures:
                    if capture["id"] == capture_id:
                        return order, capture
        return None

    async def refund(self, request: Request) -> Response:  # noqa: PLR0911 - one per refusal
        self.state.count("refund")
        if not self._authorized(request):
            return _error("AUTHENTICATION_FAILURE")
        found = self._captured(request.path_params["capture_id"])
        if found is None:
            return _not_found()
        order, capture = found
        key = request.headers.get("paypal-request-id")
        with self.lock:
            replay = self.refunds_by_key.get(key or "")
        if replay is not None:
            return JSONResponse(replay, 201)  # the first answer; no second refund
        try:
            body = json.loads(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return _error("INVALID_REQUEST", "MALFORMED_REQUEST_JSON", "not JSON")
        if self.state.take_refusal_fault():
            return _refused("REFUND_NOT_ALLOWED", "Full refund refused (a fault of the fake).")
        with self.lock:
            refused, refund = self._make_refund(order, capture, body, self._base(request))
            if refund is not None and key is not None:
                self.refunds_by_key[key] = refund
        if refused is not None:
            return refused
        assert refund is not None
        self.state.refund_made(key or refund["id"])
        summary = f"A {refund['amount']['value']} {refund['amount']['currency_code']} capture "
        self._notify(
            "PAYMENT.CAPTURE.REFUNDED",
            "refund",
            summary + "payment was refunded",
            refund,
            self.base,
        )
        if self.state.take_refund_timeout_fault():
            await self.state.hang()  # made and stored: only the answer is lost
        return JSONResponse(refund, 201)

    def _make_refund(
        self, order: FakeOrder, capture: dict[str, Any], body: dict[str, Any], base: str
    ) -> tuple[Response | None, dict[str, Any] | None]:
        """The refund of ``capture`` the body asks for (under the lock), or PayPal's refusal."""
        if capture["status"] not in {"COMPLETED", "PARTIALLY_REFUNDED"}:
            if capture["status"] == "REFUNDED":
                why = "The capture has already been fully refunded."
                return _refused("CAPTURE_FULLY_REFUNDED", why), None
            return _refused("REFUND_NOT_ALLOWED", "Refund is not allowed for this capture."), None
        currency = capture["amount"]["currency_code"]
        refunded = sum(
            (Decimal(r["amount"]["value"]) for r in order.refunds if r["status"] == "COMPLETED"),
            Decimal(0),
        )
        left = Decimal(capture["amount"]["value"]) - refunded
        try:
            rest = {"currency_code": currency, "value": str(left)}
            amount = _amount(body) if "amount" in body else rest
        except _Refusal as refusal:
            return refusal.response, None
        if amount["currency_code"] != currency:
            why = "The refund must be in the capture's currency."
            return _refused("REFUND_CAPTURE_CURRENCY_MISMATCH", why), None
        if Decimal(amount["value"]) > left:
            return _refused(
                "REFUND_AMOUNT_EXCEEDED",
                "The refund amount must be less than or equal to the capture amount that has "
                "not yet been refunded.",
            ), None
        refund_id = _paypal_id()
        now = _now()
        refund: dict[str, Any] = {
            "id": refund_id,
            "amount": amount,
            "status": "COMPLETED",
            "create_time": now,
            "update_time": now,
            "links": [
                {"href": f"{base}/v2/payments/refunds/{refund_id}", "rel": "self", "method": "GET"},
                {
                    "href": f"{base}/v2/payments/captures/{capture['id']}",
                    "rel": "up",
                    "method": "GET",
                },
            ],
        }
        for name in ("custom_id", "invoice_id", "note_to_payer"):
            if isinstance(body.get(name), str):
                refund[name] = body[name]
        order.refunds.append(refund)
        self.refunds[refund_id] = refund
        whole = Decimal(amount["value"]) == left
        capture["status"] = "REFUNDED" if whole else "PARTIALLY_REFUNDED"
        capture["update_time"] = order.update_time = now
        return None, refund

    async def get_refund(self, request: Request) -> Response:
        self.state.count("refund_status")
        if not self._authorized(request):
            return _error("AUTHENTICATION_FAILURE")
        with self.lock:
            refund = self.refunds.get(request.path_params["refund_id"])
        if refund is None:
            return _not_found()
        return JSONResponse(refund)

    # -- the buyer ---------------------------------------------------------------------------

    def _approve(self, order: FakeOrder, *, will_decline: bool, base: str) -> None:
        with self.lock:
            paid = order.status == "COMPLETED" and any(
                c.get("status") == "COMPLETED" for c in order.captures
            )
            if paid:
                return  # paid already: nothing for the buyer to approve
            order.captures = []
            order.status = "APPROVED"
            order.will_decline = will_decline
            order.update_time = _now()
        resource = order.representation(base)
        self._notify(
            "CHECKOUT.ORDER.APPROVED",
            "checkout-order",
            "An order has been approved by buyer",
            resource,
            base,
        )

    def _order_for(self, ref: PaymentRef) -> FakeOrder:
        with self.lock:
            if ref.psp_id and ref.psp_id in self.orders:
                return self.orders[ref.psp_id]
            if ref.order_id:
                for order in self.orders.values():
                    if order.custom_id == ref.order_id:
                        return order
            if ref.pay_url:
                token = parse_qs(urlsplit(ref.pay_url).query).get("token", [""])[0]
                if token in self.orders:
                    return self.orders[token]
        raise LookupError(ref.psp_id or ref.order_id or ref.pay_url or "no identifier given")

    async def control_pay(self, ref: PaymentRef) -> None:
        self._approve(self._order_for(ref), will_decline=False, base=self.base)

    async def control_decline(self, ref: PaymentRef) -> None:
        self._approve(self._order_for(ref), will_decline=True, base=self.base)

    async def checkout_page(self, request: Request) -> Response:
        order = self._find(request.query_params.get("token", ""))
        if order is None:
            return HTMLResponse("<h1>This order is no longer available</h1>", 404)
        token = escape(order.id, quote=True)
        cancel = escape(order.cancel_url or "", quote=True)
        amount = escape(f"{order.amount['value']} {order.amount['currency_code']}")
        page = (
            "<!doctype html><html><head><title>PayPal (local fake)</title></head><body>"
            f"<h1>Pay {amount}</h1><p>{escape(order.description or '')}</p>"
            f"<p>Order {token}: {escape(order.status)}</p>"
            f'<form method="post" action="/checkoutnow/approve"><input type="hidden" '
            f'name="token" value="{token}"><button id="approve">Pay Now</button></form>'
            + (f'<p><a id="cancel" href="{cancel}">Cancel and return</a></p>' if cancel else "")
            + "</body></html>"
        )
        return HTMLResponse(page)

    async def checkout_approve(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        order = self._find(form.get("token", [""])[0])
        if order is None:
            return HTMLResponse("<h1>This order is no longer available</h1>", 404)
        self._approve(order, will_decline=False, base=self._base(request))
        if order.return_url:
            query = urlencode({"token": order.id, "PayerID": PAYER_ID})
            joiner = "&" if urlsplit(order.return_url).query else "?"
            return RedirectResponse(f"{order.return_url}{joiner}{query}", 303)
        return HTMLResponse("<h1>Approved</h1>")

    # -- webhooks ----------------------------------------------------------------------------

    def _notify(
        self, event_type: str, resource_type: str, summary: str, resource: Any, base: str
    ) -> None:
        if not self.notify_url or not self.state.notifications:
            return
        event_id = "WH-" + _paypal_id() + "-" + _paypal_id()
        event = {
            "id": event_id,
            "event_version": "1.0",
            "create_time": _now(),
            "resource_type": resource_type,
            "resource_version": "2.0",
            "event_type": event_type,
            "summary": summary,
            "resource": resource,
            "links": [
                {
                    "href": f"{base}/v1/notifications/webhooks-events/{event_id}",
                    "rel": "self",
                    "method": "GET",
                },
            ],
        }
        body = json.dumps(event).encode()
        transmission_id = str(uuid.uuid4())
        signature = base64.b64encode(secrets.token_bytes(256)).decode("ascii")
        with self.lock:
            self.transmissions[transmission_id] = (signature, body)
        headers = {
            "Content-Type": "application/json",
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-TIME": _now(),
            "PAYPAL-TRANSMISSION-SIG": signature,
            "PAYPAL-CERT-URL": CERT_URL,
            "PAYPAL-AUTH-ALGO": "SHA256withRSA",
        }
        task = asyncio.get_running_loop().create_task(self._deliver(self.notify_url, headers, body))
        self.deliveries.add(task)
        task.add_done_callback(self.deliveries.discard)

    async def _deliver(self, url: str, headers: dict[str, str], body: bytes) -> None:
        """POST one event; PayPal retries a failed delivery, here three times, a second apart."""
        async with httpx.AsyncClient(timeout=10.0) as client:
            for attempt in range(3):
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.post(url, content=body, headers=headers)
                    if response.is_success:
                        return
                if attempt < 2:
                    await asyncio.sleep(1.0)

    async def verify_signature(self, request: Request) -> Response:
        self.state.count("verify")
        if not self._authorized(request):
            return _error("AUTHENTICATION_FAILURE")
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return _error("INVALID_REQUEST", "MALFORMED_REQUEST_JSON", "not JSON")
        with self.lock:
            sent = self.transmissions.get(str(body.get("transmission_id")))
        genuine = (
            sent is not None
            and body.get("webhook_id") == WEBHOOK_ID
            and hmac.compare_digest(str(body.get("transmission_sig", "")), sent[0])
            and body.get("webhook_event") == json.loads(sent[1])
        )
        return JSONResponse({"verification_status": "SUCCESS" if genuine else "FAILURE"})

    async def stop_deliveries(self) -> None:
        tasks = list(self.deliveries)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _refused(issue: str, description: str) -> Response:
    """PayPal's 422 for a refund it will not make (payments_payment_v2.json's issues)."""
    return _error("UNPROCESSABLE_ENTITY", issue, description)


def _not_found() -> Response:
    return _error(
        "RESOURCE_NOT_FOUND",
        "INVALID_RESOURCE_ID",
        "Specified resource ID does not exist. Please check the resource ID and try again.",
    )


def create_app(notify_url: str | None = None, *, token_lifetime: int = TOKEN_LIFETIME) -> Starlette:
    """The fake, with the control API of adapters/fakes/common.py (control_routes, fake_app).
    Sends PayPal's webhooks (with PayPal's transmission headers) to notify_url when
    notifications are enabled and notify_url is set. ``token_lifetime`` is the ``expires_in``
    of the tokens it issues, in seconds."""
    fake = PayPalFake(notify_url, token_lifetime)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await fake.stop_deliveries()

    routes = [
        Route("/v1/oauth2/token", fake.token, methods=["POST"]),
        Route("/v2/checkout/orders", fake.create_order, methods=["POST"]),
        Route("/v2/checkout/orders/{order_id}", fake.get_order, methods=["GET"]),
        Route("/v2/checkout/orders/{order_id}/capture", fake.capture, methods=["POST"]),
        Route("/v2/payments/captures/{capture_id}/refund", fake.refund, methods=["POST"]),
        Route("/v2/payments/refunds/{refund_id}", fake.get_refund, methods=["GET"]),
        Route(
            "/v1/notifications/verify-webhook-signature", fake.verify_signature, methods=["POST"]
        ),
        Route("/checkoutnow", fake.checkout_page, methods=["GET"]),
        Route("/checkoutnow/approve", fake.checkout_approve, methods=["POST"]),
        *control_routes(fake.state, fake.control_pay, fake.control_decline),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.fake = fake.state  # the runner releases held requests through it
    app.state.paypal = fake
    return app


def adapter_settings(api_url: str) -> dict[str, str]:
    """The PayPal adapter's settings pointing at this fake, with its fixed app credentials."""
    return {"API_URL": api_url, "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET}


def forged_callback(order: Order) -> tuple[dict[str, str], bytes]:
    """A PAYMENT.CAPTURE.COMPLETED event claiming ``order`` was paid, with a made-up signature
    (PayPal's verification would answer FAILURE); the daemon must only poll on it."""
    event_id = "WH-" + _paypal_id() + "-" + _paypal_id()
    resource = {
        "id": _paypal_id(),
        "status": "COMPLETED",
        "amount": format_amount(order.money),
        "final_capture": True,
        "custom_id": str(order.id),
        "invoice_id": str(order.id),
        "supplementary_data": {"related_ids": {"order_id": order.psp_id or _paypal_id()}},
        "create_time": _now(),
        "update_time": _now(),
    }
    event = {
        "id": event_id,
        "event_version": "1.0",
        "create_time": _now(),
        "resource_type": "capture",
        "resource_version": "2.0",
        "event_type": "PAYMENT.CAPTURE.COMPLETED",
        "summary": "Payment completed",
        "resource": resource,
    }
    headers = {
        "Content-Type": "application/json",
        "PAYPAL-TRANSMISSION-ID": str(uuid.uuid4()),
        "PAYPAL-TRANSMISSION-TIME": _now(),
        "PAYPAL-TRANSMISSION-SIG": base64.b64encode(secrets.token_bytes(256)).decode("ascii"),
        "PAYPAL-CERT-URL": CERT_URL,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
    }
    return headers, json.dumps(event).encode()

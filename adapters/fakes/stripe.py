"""A local fake of Stripe Checkout, written from Stripe's public API reference.

Serves what paydispatch's ``stripe`` adapter calls, as https://docs.stripe.com/api describes it:

    POST /v1/checkout/sessions               create (form-encoded, nested keys; Idempotency-Key)
    GET  /v1/checkout/sessions/{id}          retrieve (``expand[]=payment_intent[.latest_charge]``)
    POST /v1/checkout/sessions/{id}/expire   expire an open session
    POST /v1/refunds                         refund (part of) a paid session's PaymentIntent
    GET  /v1/refunds/{id}                    retrieve a refund
    GET  /c/pay/{id}                         the hosted page, with Pay and Decline buttons

and the control API of :mod:`adapters.fakes.common`. It checks the secret key (401 otherwise),
keeps Stripe's idempotency (a replay with the same key and parameters answers the first result
and makes no new session; other parameters answer 400 ``idempotency_error``; a refused request
stores nothing), refuses ``expires_at`` outside 30 minutes to 24 hours from now, amounts Stripe
cannot charge (three-decimal amounts not ending in 0, ISK and UGX not in whole units) and a
missing ``success_url``, all in Stripe's error format. Events go to ``notify_url`` signed as
Stripe signs them (``Stripe-Signature: t=...,v1=HMAC-SHA256("{t}.{body}")``), retried a few
times: ``checkout.session.completed`` when paid, ``.completed`` then ``.async_payment_failed``
when declined (a delayed method that failed), ``.expired`` on expiry.

Control ``pay`` completes the session as paid even when it had expired (a late payment racing
the expiry); ``decline`` fails an open session's payment.

Refunds (https://docs.stripe.com/api/refunds): a refund names the PaymentIntent of a paid
session, never more than is left of the charge (``amount_refunded`` counts pending refunds too),
and is ``pending`` until it is first retrieved, then ``succeeded`` (``refund.updated`` and
``charge.refunded`` events). The Idempotency-Key makes a replay answer the first refund; the
control stats count refunds made per key; the faults ``refund_accept_then_timeout`` and
``refuse_refunds`` of :mod:`adapters.fakes.common` hang or refuse the next refunds.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from adapters import stripe as adapter_module
from adapters.fakes.common import FakeState, PaymentRef, control_routes, fake_app
from orders import model as orders_model
from orders.errors import InvalidInput
from orders.money import CURRENCY_EXPONENTS

NAME = "stripe"
# The fake's fixed test credentials, long like real ones; nothing else accepts them.
SECRET_KEY = "sk_test_51FakeLocalStripeKeyOnlyForPaydispatchTests0000000042"  # noqa: S105
WEBHOOK_SECRET = "whsec_fakeLocalStripeSigningSecret7f3a9c1e5b2d4f6a"  # noqa: S105
_FORGER_SECRET = "whsec_forgedByATestNotTheFakesSecret00000000000"  # noqa: S105
MIN_EXPIRY, MAX_EXPIRY = 30 * 60, 24 * 60 * 60
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
_DELIVERY_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0)  # Stripe retries failed deliveries for days


class StripeError(Exception):
    """An answer in Stripe's error format: ``{"error": {"type", "code", "message", "param"}}``."""

    def __init__(self, status: int, kind: str, message: str, code: str = "", param: str = ""):
        super().__init__(message)
        body: dict[str, str] = {"type": kind, "message": message}
        if code:
            body["code"] = code
        if param:
            body["param"] = param
        self.status, self.body = status, {"error": body}


def _missing(param: str) -> StripeError:
    return StripeError(
        400,
        "invalid_request_error",
        f"Missing required param: {param}.",
        "parameter_missing",
        param,
    )


def _integer(form: dict[str, str], key: str, minimum: int = 1) -> int:
    if key not in form:
        raise _missing(key)
    value = form[key]
    if not (value.isascii() and value.isdigit()) or int(value) < minimum:
        raise StripeError(
            400,
            "invalid_request_error",
            f"Invalid integer: {value}",
            "parameter_invalid_integer",
            key,
        )
    return int(value)


@dataclass
class Session:
    id: str
    order_id: str | None
    amount: int
    currency: str
    created: int
    expires_at: int
    success_url: str
    cancel_url: str | None
    metadata: dict[str, str]
    url: str
    status: str = "open"
    payment_status: str = "unpaid"
    intent: dict[str, Any] | None = None

    def to_json(self, expand: frozenset[str] = frozenset()) -> dict[str, Any]:
        intent: Any = None
        if self.intent is not None:
            intent = self.intent["id"]
            if expand & {"payment_intent", "payment_intent.latest_charge"}:
                intent = dict(self.intent)
                if "payment_intent.latest_charge" not in expand and intent["latest_charge"]:
                    intent["latest_charge"] = intent["latest_charge"]["id"]
        return {
            "id": self.id,
            "object": "checkout.session",
            "amount_subtotal": self.amount,
            "amount_total": self.amount,
            "cancel_url": self.cancel_url,
            "client_reference_id": self.order_id,
            "created": self.created,
            "currency": self.currency,
            "expires_at": self.expires_at,
            "livemode": False,
            "metadata": self.metadata,
            "mode": "payment",
            "payment_intent": intent,
            "payment_status": self.payment_status,
            "status": self.status,
            "success_url": self.success_url,
            "ui_mode": "hosted",
            "url": self.url if self.status == "open" else None,
        }


def _intent(session: Session, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
    charge = None
    intent_id = f"pi_{secrets.token_hex(12)}"
    if status == "succeeded":
        charge = {
            "id": f"ch_{secrets.token_hex(12)}",
            "object": "charge",
            "amount": session.amount,
            "amount_refunded": 0,
            "currency": session.currency,
            "disputed": False,
            "metadata": {},
            "paid": True,
            "payment_intent": intent_id,
            "refunded": False,
            "status": "succeeded",
        }
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": session.amount,
        "amount_received": session.amount if status == "succeeded" else 0,
        "currency": session.currency,
        "last_payment_error": error,
        "latest_charge": charge,
        "status": status,
    }


@dataclass
class Refund:
    """A refund of a session's charge."""

    id: str
    session: Session
    amount: int
    metadata: dict[str, str]
    created: int
    status: str = "pending"

    def to_json(self) -> dict[str, Any]:
        intent = self.session.intent or {}
        charge = intent.get("latest_charge") or {}
        return {
            "id": self.id,
            "object": "refund",
            "amount": self.amount,
            "charge": charge.get("id"),
            "created": self.created,
            "currency": self.session.currency,
            "metadata": self.metadata,
            "payment_intent": intent.get("id"),
            "reason": None,
            "status": self.status,
        }


def signed_headers(body: bytes, secret: str, at: int | None = None) -> dict[str, str]:
    t = int(time.time()) if at is None else at
    signature = adapter_module.sign(secret, t, body)
    return {"Stripe-Signature": f"t={t},v1={signature}", "Content-Type": "application/json"}


def event_body(kind: str, item: dict[str, Any]) -> bytes:
    event = {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": adapter_module.DEFAULT_API_VERSION,
        "created": int(time.time()),
        "data": {"object": item},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }
    return json.dumps(event, indent=2).encode()


@dataclass
class StripeFake:
    """Sessions, idempotency keys and the event sender of one fake."""

    notify_url: str | None
    state: FakeState = field(default_factory=FakeState)
    sessions: dict[str, Session] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    keys: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sending: set[asyncio.Task[None]] = field(default_factory=set)

    # -- merchant API ----------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise StripeError(401, "invalid_request_error", "You did not provide an API key.")
        if key != SECRET_KEY:
            shown = f"{key[:8]}{'*' * max(len(key) - 12, 0)}{key[-4:]}"
            raise StripeError(401, "invalid_request_error", f"Invalid API Key provided: {shown}")
        version = request.headers.get("stripe-version")
        if version is not None and not _VERSION.match(version):
            raise StripeError(
                400, "invalid_request_error", f"Invalid Stripe API version: {version}"
            )

    async def _api(self, request: Request, operation: str, handle: Any) -> Response:
        self.state.count(operation)
        try:
            self._authorize(request)
            form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), True))
            key = request.headers.get("idempotency-key")
            fingerprint = json.dumps([request.url.path, sorted(form.items())])
            if request.method == "POST" and key:
                with self.lock:
                    earlier = self.keys.get(key)
                if earlier is not None:
                    if earlier[0] != fingerprint:
                        raise StripeError(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            f"parameters they were first used with. Try using a key other than "
                            f"'{key}' if you meant to execute a different request.",
                        )
                    headers = {"Idempotent-Replayed": "true"}
                    return JSONResponse(earlier[2], earlier[1], headers=headers)
            status, body = await handle(request, form, key, fingerprint)
        except StripeError as exc:
            return JSONResponse(exc.body, exc.status)
        return JSONResponse(body, status)

    async def create(self, request: Request) -> Response:
        async def handle(
            request: Request, form: dict[str, str], key: str | None, fingerprint: str
        ) -> tuple[int, dict[str, Any]]:
            session = self._new_session(form, str(request.base_url).rstrip("/"))
            body = session.to_json()
            with self.lock:
                self.sessions[session.id] = session
                if key:
                    self.keys[key] = (fingerprint, 200, body)
            if session.order_id is not None:
                self.state.invoice_made(session.order_id)
            if self.state.take_timeout_fault():
                await self.state.hang()  # made and stored: only the answer is lost
            return 200, body

        return await self._api(request, "create", handle)

    def _new_session(self, form: dict[str, str], base: str) -> Session:
        if form.get("mode", "payment") != "payment":
            raise StripeError(400, "invalid_request_error", "This fake serves payment mode only.")
        item = "line_items[0]"
        currency = form.get(f"{item}[price_data][currency]", "")
        if currency.upper() not in CURRENCY_EXPONENTS or currency != currency.lower():
            raise StripeError(
                400, "invalid_request_error", f"Invalid currency: {currency}.", "",
                f"{item}[price_data][currency]",
            )  # fmt: skip
        unit = _integer(form, f"{item}[price_data][unit_amount]", 0)
        amount = unit * _integer(form, f"{item}[quantity]")
        _check_amount(amount, currency.upper())
        if not form.get(f"{item}[price_data][product_data][name]"):
            raise _missing(f"{item}[price_data][product_data][name]")
        if not form.get("success_url"):
            raise _missing("success_url")
        now = int(time.time())
        expires_at = _integer(form, "expires_at") if "expires_at" in form else now + MAX_EXPIRY
        if not now + MIN_EXPIRY <= expires_at <= now + MAX_EXPIRY:
            raise StripeError(
                400,
                "invalid_request_error",
                "The `expires_at` timestamp must be between 30 minutes and 24 hours from "
                "Checkout Session creation.",
                "parameter_invalid_integer",
                "expires_at",
            )
        session_id = f"cs_test_{secrets.token_urlsafe(42).replace('-', 'a').replace('_', 'b')}"
        metadata = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
        return Session(
            id=session_id,
            order_id=form.get("client_reference_id") or metadata.get("order_id"),
            amount=amount,
            currency=currency,
            created=now,
            expires_at=expires_at,
            success_url=form["success_url"],
            cancel_url=form.get("cancel_url"),
            metadata=metadata,
            url=f"{base}/c/pay/{session_id}",
        )

    async def retrieve(self, request: Request) -> Response:
        async def handle(
            request: Request, form: dict[str, str], key: str | None, fingerprint: str
        ) -> tuple[int, dict[str, Any]]:
            session = self._session(request.path_params["session_id"])
            self._lapse(session)
            expand = frozenset(request.query_params.getlist("expand[]"))
            return 200, session.to_json(expand)

        return await self._api(request, "status", handle)

    async def expire(self, request: Request) -> Response:
        async def handle(
            request: Request, form: dict[str, str], key: str | None, fingerprint: str
        ) -> tuple[int, dict[str, Any]]:
            session = self._session(request.path_params["session_id"])
            self._lapse(session)
            with self.lock:
                if session.status != "open":
                    raise StripeError(
                        400,
                        "invalid_request_error",
                        'Only Checkout Sessions with a status in ["open"] can be expired. This '
                        f"Checkout Session has a status of {session.status}.",
                    )
                session.status = "expired"
                body = session.to_json()
                if key:
                    self.keys[key] = (fingerprint, 200, body)
            self._send("checkout.session.expired", session)
            return 200, body

        return await self._api(request, "cancel", handle)

    async def refund(self, request: Request) -> Response:
        async def handle(
            request: Request, form: dict[str, str], key: str | None, fingerprint: str
        ) -> tuple[int, dict[str, Any]]:
            if self.state.take_refusal_fault():
                raise StripeError(
                    400, "invalid_request_error", "This refund was refused (a fault of the fake).",
                    "charge_disputed",
                )  # fmt: skip
            session = self._paid_session(form.get("payment_intent") or "")
            metadata = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
            with self.lock:
                assert session.intent is not None
                charge = session.intent["latest_charge"]
                left = charge["amount"] - charge["amount_refunded"]
                amount = _integer(form, "amount") if "amount" in form else left
                if amount > left:
                    raise StripeError(
                        400, "invalid_request_error",
                        f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                        f"({left})", "", "amount",
                    )  # fmt: skip
                charge["amount_refunded"] += amount
                charge["refunded"] = charge["amount_refunded"] == charge["amount"]
                refund = Refund(
                    id=f"re_{secrets.token_hex(12)}",
                    session=session,
                    amount=amount,
                    metadata=metadata,
                    created=int(time.time()),
                )
                self.refunds[refund.id] = refund
                body = refund.to_json()
                if key:
                    self.keys[key] = (fingerprint, 200, body)
            self.state.refund_made(key or refund.id)
            self._send_item("refund.created", refund.to_json)
            if self.state.take_refund_timeout_fault():
                await self.state.hang()  # made and stored: only the answer is lost
            return 200, body

        return await self._api(request, "refund", handle)

    async def retrieve_refund(self, request: Request) -> Response:
        async def handle(
            request: Request, form: dict[str, str], key: str | None, fingerprint: str
        ) -> tuple[int, dict[str, Any]]:
            refund_id = request.path_params["refund_id"]
            with self.lock:
                refund = self.refunds.get(refund_id)
                if refund is None:
                    raise StripeError(
                        404, "invalid_request_error", f"No such refund: '{refund_id}'",
                        "resource_missing", "id",
                    )  # fmt: skip
                # The bank takes a moment: the first read finds the refund done.
                done = refund.status == "pending"
                refund.status = "succeeded"
                body = refund.to_json()
            if done:
                self._send_item("refund.updated", refund.to_json)
                intent = refund.session.intent or {}
                self._send_item("charge.refunded", lambda: dict(intent.get("latest_charge") or {}))
            return 200, body

        return await self._api(request, "refund_status", handle)

    def _paid_session(self, intent_id: str) -> Session:
        with self.lock:
            for session in self.sessions.values():
                if session.intent is not None and session.intent["id"] == intent_id:
                    if session.payment_status != "paid":
                        break
                    return session
        raise StripeError(
            400, "invalid_request_error",
            f"No such payment_intent with a succeeded charge: '{intent_id}'",
            "resource_missing", "payment_intent",
        )  # fmt: skip

    def _session(self, session_id: str) -> Session:
        with self.lock:
            found = self.sessions.get(session_id)
        if found is None:
            raise StripeError(
                404, "invalid_request_error", f"No such checkout.session: '{session_id}'",
                "resource_missing", "session",
            )  # fmt: skip
        return found

    def _lapse(self, session: Session) -> None:
        """An open session past its expires_at is expired, as Stripe expires it by itself."""
        with self.lock:
            if session.status != "open" or time.time() < session.expires_at:
                return
            session.status = "expired"
        self._send("checkout.session.expired", session)

    # -- the buyer -------------------------------------------------------------------------

    def find(self, ref: PaymentRef) -> Session:
        with self.lock:
            if ref.psp_id in self.sessions:
                return self.sessions[ref.psp_id]
            for session in reversed(self.sessions.values()):
                if ref.order_id is not None and session.order_id == ref.order_id:
                    return session
                if ref.pay_url is not None and session.url == ref.pay_url:
                    return session
        raise LookupError(ref.psp_id or ref.order_id or ref.pay_url)

    async def pay(self, ref: PaymentRef) -> None:
        session = self.find(ref)
        with self.lock:
            if session.payment_status == "paid":
                return
            session.status, session.payment_status = "complete", "paid"
            session.intent = _intent(session, "succeeded")
        self._send("checkout.session.completed", session)

    async def decline(self, ref: PaymentRef) -> None:
        """A delayed method the buyer chose fails: completed unpaid, then the failure."""
        session = self.find(ref)
        with self.lock:
            if session.status != "open":
                return
            session.status = "complete"
            error = {
                "type": "card_error",
                "code": "insufficient_funds",
                "message": "The customer's account has insufficient funds to cover this payment.",
            }
            session.intent = _intent(session, "requires_payment_method", error)
        self._send("checkout.session.completed", session)
        self._send("checkout.session.async_payment_failed", session)

    async def page(self, request: Request) -> Response:
        try:
            session = self._session(request.path_params["session_id"])
        except StripeError:
            return HTMLResponse("<h1>Something went wrong</h1>", 404)
        action = request.path_params.get("action")
        if action not in (None, "pay", "decline"):
            return HTMLResponse("<h1>Something went wrong</h1>", 404)
        if action is not None:
            await (self.pay if action == "pay" else self.decline)(PaymentRef(psp_id=session.id))
            return RedirectResponse(session.success_url, 303)
        self._lapse(session)
        money = f"{session.amount} {session.currency.upper()} (Stripe minor units)"
        buttons = "".join(
            f'<form method=post action="/c/pay/{session.id}/{a}"><button id={a}>{a.title()}'
            "</button></form>"
            for a in ("pay", "decline")
        )
        return HTMLResponse(
            f"<!doctype html><title>Fake Stripe Checkout</title><h1>Pay {escape(money)}</h1>"
            f"<p id=status>{escape(session.status)}</p>"
            + (buttons if session.status == "open" else "")
        )

    # -- events ----------------------------------------------------------------------------

    def _send(self, kind: str, session: Session) -> None:
        self._send_item(kind, session.to_json)

    def _send_item(self, kind: str, item: Any) -> None:
        """Send the event ``kind`` about ``item()`` (read under the lock)."""
        if not self.state.notifications or not self.notify_url:
            return
        with self.lock:
            body = event_body(kind, item())
        task = asyncio.get_running_loop().create_task(self._deliver(body))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _deliver(self, body: bytes) -> None:
        assert self.notify_url is not None
        async with httpx.AsyncClient(timeout=5.0) as client:
            for delay in _DELIVERY_DELAYS:
                await asyncio.sleep(delay)
                try:
                    headers = signed_headers(body, WEBHOOK_SECRET)  # signed anew each attempt
                    answer = await client.post(self.notify_url, content=body, headers=headers)
                except httpx.HTTPError:
                    continue
                if answer.is_success:
                    return


def _check_amount(amount: int, currency: str) -> None:
    """Stripe's special cases (https://docs.stripe.com/currencies)."""
    whole = currency in adapter_module.WHOLE_UNITS_AS_TWO_DECIMALS and amount % 100
    three = currency in adapter_module.THREE_DECIMAL and amount % 10
    if whole or three:
        raise StripeError(
            400, "invalid_request_error", f"Invalid amount for {currency}: {amount}.",
            "invalid_charge_amount_no_decimal_compatible" if whole else "amount_invalid",
        )  # fmt: skip


def create_app(notify_url: str | None = None) -> Starlette:
    """The fake, with the control API of adapters/fakes/common.py (control_routes, fake_app).
    Sends Stripe's events (signed as Stripe signs them) to notify_url when notifications are
    enabled and notify_url is set."""
    fake = StripeFake(notify_url)
    routes = [
        Route("/v1/checkout/sessions", fake.create, methods=["POST"]),
        Route("/v1/checkout/sessions/{session_id}", fake.retrieve, methods=["GET"]),
        Route("/v1/checkout/sessions/{session_id}/expire", fake.expire, methods=["POST"]),
        Route("/v1/refunds", fake.refund, methods=["POST"]),
        Route("/v1/refunds/{refund_id}", fake.retrieve_refund, methods=["GET"]),
        Route("/c/pay/{session_id}", fake.page, methods=["GET"]),
        Route("/c/pay/{session_id}/{action:str}", fake.page, methods=["POST"]),
        *control_routes(fake.state, fake.pay, fake.decline),
    ]
    app = fake_app(fake.state, routes)
    app.state.stripe = fake
    return app


def adapter_settings(api_url: str) -> dict[str, str]:
    """The adapter's settings that point it at this fake, with the fake's test credentials."""
    return {"API_URL": api_url, "SECRET_KEY": SECRET_KEY, "WEBHOOK_SECRETS": WEBHOOK_SECRET}


def forged_callback(order: orders_model.Order) -> tuple[dict[str, str], bytes]:
    """A ``checkout.session.completed`` claiming ``order`` paid, signed with the wrong secret."""
    try:
        amount = adapter_module.to_stripe_amount(order.money)
    except InvalidInput:
        amount = order.money.amount
    session = Session(
        id=order.psp_id or f"cs_test_{secrets.token_hex(16)}",
        order_id=str(order.id),
        amount=amount,
        currency=order.money.currency.lower(),
        created=int(time.time()),
        expires_at=int(time.time()) + MIN_EXPIRY,
        success_url=order.return_url or "https://shop.example/",
        cancel_url=None,
        metadata={"order_id": str(order.id)},
        url=order.pay_url or "",
        status="complete",
        payment_status="paid",
    )
    body = event_body("checkout.session.completed", session.to_json())
    return signed_headers(body, _FORGER_SECRET), body

"""A local fake of Robokassa: the pay page, OpStateExt and the Result URL callback.

Written from the same public pages as :mod:`adapters.robokassa`
(https://docs.robokassa.ru/ru/pay-interface, https://docs.robokassa.ru/ru/notifications-and-redirects,
https://docs.robokassa.ru/ru/xml-interfaces) and the official SDK (github.com/robokassa/sdk-php)::

    GET|POST /Merchant/Index.aspx       the pay page: checks MerchantLogin and the Password #1
                                        SignatureValue; the first visit of an InvId makes the
                                        operation (state 5)
    POST /Merchant/_buyer/{InvId}/pay   the pay page's buttons (the buyer pays or gives up)
    POST /Merchant/_buyer/{InvId}/decline
    GET|POST /Merchant/WebService/Service.asmx/OpStateExt
                                        the operation's state, signed with Password #2
    POST /RefundService/Refund/Create   a refund of a paid operation: a JWT (HS256, Password #3)
                                        over {OpKey, RefundSum}; {success, message, requestId}
    GET  /RefundService/Refund/GetState?id=  {requestId, amount, label}
    /_control/...                       the control API of :mod:`adapters.fakes.common`

Robokassa has no create call: nothing exists there until the buyer opens the pay URL, so an
invoice is counted (``invoice_made``) when the pay page or the control API first sees an InvId,
and OpStateExt answers result 3 ("no such operation") before that. The accept-then-time-out
fault has nothing to act on (there is no create request to hold); it can be set and is never
taken. Control ``pay`` moves the operation to state 100 (also after a decline: a late payment)
and, with notifications on and a ``notify_url``, POSTs the Result URL form signed with
Password #2 before it answers; ``decline`` moves it to state 10 (cancelled, no money taken).
A pay reference the fake has not seen is registered from its ``pay_url``, whose signature is
checked like the pay page would. The fee is the shop's: OpStateExt's ``IncSum`` is what the
buyer paid (the invoice's ``OutSum``), its ``OutSum`` what the shop was credited, less the fee.

Refunds (https://docs.robokassa.ru/ru/refund-api) are ``processing`` until first read, then
``finished``; never more than is left of the operation (``success: false``,
``NotEnoughOperationFunds``); a JWT with another signature is refused with HTTP 401 (the
fake's choice: the reference does not say). Robokassa takes no key of ours, so the control stats
count refunds per OpKey; the refund faults of :mod:`adapters.fakes.common` hang (after
refunding) or refuse the next refunds. OpStateExt does not show refunds, as Robokassa's does not.

Errors take Robokassa's forms: OpStateExt answers HTTP 200 with its ``Result/Code`` (1 bad
signature, 2 unknown shop, 3 no operation); a request missing a parameter gets ASP.NET's HTTP
500 text; a pay URL with a wrong signature or shop gets an HTML error page (HTTP 400 here).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from html import escape
from urllib.parse import parse_qsl, urlencode, urlsplit
from xml.sax.saxutils import escape as xml_escape

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from adapters.fakes.common import FakeState, PaymentRef, control_routes, fake_app
from orders.model import Order

NAME = "robokassa"
LOGIN = "paydispatch-fake-shop"
PASSWORD1 = "fake-robokassa-password-1-3b9f0c2e71d4a6"
PASSWORD2 = "fake-robokassa-password-2-a84d6e1f05c79b"
PASSWORD3 = "fake-robokassa-password-3-5c7e9a1b3d2f48"
REFUNDS = "/RefundService/Refund"
HASH = "sha256"
PREFIX = "/Merchant"
NAMESPACE = "http://merchant.roboxchange.com/WebService/"
MOSCOW = timezone(timedelta(hours=3))
PAID, CANCELLED, INITIATED = 100, 10, 5
NOTIFY_TIMEOUT = 10.0
# Robokassa's fee on a card payment (tariffs vary), charged to the shop as by default: the
# Result URL's Fee, and the difference between OpStateExt's IncSum and OutSum.
FEE_RATE = Decimal("0.039")


def _sign(base: str) -> str:
    return hashlib.new(HASH, base.encode("utf-8")).hexdigest()


def _shp(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k.lower().startswith("shp_")}


def _shp_suffix(shp: dict[str, str]) -> str:
    return "".join(f":{k}={v}" for k, v in sorted(shp.items()))


def _matches(expected: str, received: str) -> bool:
    return hmac.compare_digest(expected.lower().encode(), received.strip().lower().encode())


def _robokassa_time(moment: datetime) -> str:
    return moment.astimezone(MOSCOW).isoformat(timespec="microseconds")


@dataclass
class Operation:
    """One InvId at the fake: what the pay URL asked for and where the payment stands."""

    inv_id: str
    out_sum: Decimal
    description: str
    shp: dict[str, str]
    state: int = INITIATED
    state_date: datetime = field(default_factory=lambda: datetime.now(UTC))
    refunded: Decimal = Decimal(0)

    @property
    def op_key(self) -> str:
        return f"fake-op-{self.inv_id}"

    @property
    def order_id(self) -> str | None:
        return next((v for k, v in self.shp.items() if k.lower() == "shp_order_id"), None)


@dataclass
class RobokassaState(FakeState):
    """The shared counters plus the operations by InvId and the callbacks sent."""

    notify_url: str | None = None
    operations: dict[str, Operation] = field(default_factory=dict)
    # (InvId, HTTP status, body) of every Result URL callback sent, for tests.
    deliveries: list[tuple[str, int, str]] = field(default_factory=list)
    # requestId -> [OpKey, amount, label]
    refund_requests: dict[str, list[str]] = field(default_factory=dict)


class PayUrlError(ValueError):
    """A pay request Robokassa would refuse; the message is what its error page says."""


def _operation_from(params: dict[str, str]) -> Operation:
    """The operation a pay request describes, after the checks Robokassa's pay page makes."""
    if params.get("MerchantLogin") != LOGIN:
        raise PayUrlError("the shop is not found or not active (MerchantLogin)")
    inv_id, out_sum = params.get("InvId", ""), params.get("OutSum", "")
    if not inv_id.isascii() or not inv_id.isdigit() or int(inv_id) <= 0:
        raise PayUrlError(f"InvId must be a positive whole number, got {inv_id!r}")
    try:
        amount = Decimal(out_sum)
    except InvalidOperation:
        raise PayUrlError(f"OutSum is not a number: {out_sum!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise PayUrlError(f"OutSum must be positive, got {out_sum!r}")
    shp = _shp(params)
    expected = _sign(f"{LOGIN}:{out_sum}:{inv_id}:{PASSWORD1}{_shp_suffix(shp)}")
    if not _matches(expected, params.get("SignatureValue", "")):
        raise PayUrlError("SignatureValue is wrong (Password #1, hash algorithm, parameters)")
    return Operation(inv_id, amount, params.get("Description", ""), shp)


def _error_page(message: str) -> Response:
    body = (
        "<!DOCTYPE html><html><head><title>Robokassa: error</title></head><body>"
        f"<h1>Payment cannot be made</h1><p>{escape(message)}</p></body></html>"
    )
    return HTMLResponse(body, 400)


def _pay_page(operation: Operation) -> Response:
    base = f"{PREFIX}/_buyer/{operation.inv_id}"
    body = (
        "<!DOCTYPE html><html><head><title>Robokassa (fake): pay</title></head><body>"
        f"<h1>Invoice {escape(operation.inv_id)}</h1>"
        f"<p>{escape(operation.description)}</p><p>{operation.out_sum:.2f} RUB</p>"
        f'<form method="post" action="{base}/pay"><button id="pay">Pay</button></form>'
        f'<form method="post" action="{base}/decline"><button id="decline">Cancel</button>'
        "</form></body></html>"
    )
    return HTMLResponse(body)


def _fee(operation: Operation) -> Decimal:
    """Robokassa's fee, here on the shop (the default tariff): withheld from what it credits."""
    return (operation.out_sum * FEE_RATE).quantize(Decimal("0.01"))


def _opstate_xml(result: int, description: str, operation: Operation | None = None) -> Response:
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<OperationStateResponse xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="{NAMESPACE}">',
        f"<Result><Code>{result}</Code><Description>{xml_escape(description)}</Description>"
        "</Result>",
    ]
    if operation is not None:
        now = _robokassa_time(datetime.now(UTC))
        # IncSum is what the buyer paid, OutSum what the shop was credited after the fee.
        inc_sum = f"{operation.out_sum:.6f}"
        out_sum = f"{operation.out_sum - _fee(operation):.6f}"
        parts += [
            f"<State><Code>{operation.state}</Code><RequestDate>{now}</RequestDate>"
            f"<StateDate>{_robokassa_time(operation.state_date)}</StateDate></State>",
            "<Info><IncCurrLabel>BankCardPSR</IncCurrLabel>"
            f"<IncSum>{inc_sum}</IncSum><IncAccount>553691******1234</IncAccount>"
            "<PaymentMethod><Code>BankCard</Code><Description>Bank card</Description>"
            f"</PaymentMethod><OutCurrLabel>RUB</OutCurrLabel><OutSum>{out_sum}</OutSum>"
            f"<OpKey>{operation.op_key}</OpKey></Info>",
            "<UserField>"
            + "".join(
                f"<Field><Name>{xml_escape(k)}</Name><Value>{xml_escape(v)}</Value></Field>"
                for k, v in sorted(operation.shp.items())
            )
            + "</UserField>",
        ]
    parts.append("</OperationStateResponse>")
    return Response("".join(parts), media_type="text/xml; charset=utf-8")


def result_form(operation: Operation, password2: str = PASSWORD2) -> dict[str, str]:
    """The Result URL form Robokassa sends for a paid operation (signed with ``password2``)."""
    out_sum = f"{operation.out_sum:.6f}"
    base = f"{out_sum}:{operation.inv_id}:{password2}{_shp_suffix(operation.shp)}"
    return {
        "OutSum": out_sum,
        "InvId": operation.inv_id,
        "Fee": f"{_fee(operation):.6f}",
        "EMail": "buyer@example.com",
        "SignatureValue": hashlib.new(HASH, base.encode()).hexdigest().upper(),
        "PaymentMethod": "BankCard",
        "IncCurrLabel": "BankCardPSR",
        **operation.shp,
    }


class _Fake:
    def __init__(self, state: RobokassaState) -> None:
        self.state = state

    async def _params(self, request: Request) -> dict[str, str]:
        params = dict(request.query_params)
        if request.method == "POST":
            body = (await request.body()).decode("utf-8", "replace")
            params.update(parse_qsl(body, keep_blank_values=True))
        return params

    def _register(self, operation: Operation) -> Operation:
        """The known operation for this InvId, or ``operation`` made new (and counted)."""
        with self.state.lock:
            known = self.state.operations.get(operation.inv_id)
            if known is not None:
                return known
            self.state.operations[operation.inv_id] = operation
        if operation.order_id is not None:
            self.state.invoice_made(operation.order_id)
        return operation

    def _find(self, ref: PaymentRef) -> Operation:
        with self.state.lock:
            for inv_id in (ref.psp_id, None if ref.number is None else str(ref.number)):
                if inv_id is not None and inv_id in self.state.operations:
                    return self.state.operations[inv_id]
            for operation in self.state.operations.values():
                if ref.order_id is not None and operation.order_id == ref.order_id:
                    return operation
        if ref.pay_url:
            params = dict(parse_qsl(urlsplit(ref.pay_url).query, keep_blank_values=True))
            try:
                return self._register(_operation_from(params))
            except PayUrlError as exc:
                raise LookupError(f"the pay URL would be refused: {exc}") from None
        raise LookupError(f"no operation for {ref}")

    def _move(self, operation: Operation, code: int) -> None:
        with self.state.lock:
            operation.state = code
            operation.state_date = datetime.now(UTC)

    async def _notify(self, operation: Operation) -> None:
        """POST the Result URL form, as Robokassa does once the payment is through."""
        url = self.state.notify_url
        if not self.state.notifications or url is None:
            return
        try:
            async with httpx.AsyncClient(timeout=NOTIFY_TIMEOUT) as client:
                answer = await client.post(url, data=result_form(operation))
            delivery = (operation.inv_id, answer.status_code, answer.text)
        except httpx.HTTPError as exc:
            delivery = (operation.inv_id, 0, f"{type(exc).__name__}: {exc}")
        with self.state.lock:
            self.state.deliveries.append(delivery)

    async def pay(self, ref: PaymentRef) -> None:
        operation = self._find(ref)
        self._move(operation, PAID)
        await self._notify(operation)

    async def decline(self, ref: PaymentRef) -> None:
        self._move(self._find(ref), CANCELLED)

    async def index(self, request: Request) -> Response:
        self.state.count("pay_page")
        try:
            operation = _operation_from(await self._params(request))
        except PayUrlError as exc:
            return _error_page(str(exc))
        return _pay_page(self._register(operation))

    async def buyer_pays(self, request: Request) -> Response:
        return await self._click(request, self.pay)

    async def buyer_declines(self, request: Request) -> Response:
        return await self._click(request, self.decline)

    async def _click(
        self, request: Request, action: Callable[[PaymentRef], Awaitable[None]]
    ) -> Response:
        ref = PaymentRef(psp_id=request.path_params["inv_id"])
        try:
            await action(ref)
        except LookupError as exc:
            return _error_page(str(exc))
        return RedirectResponse(f"{PREFIX}/_buyer/{ref.psp_id}/done", 303)

    async def done(self, request: Request) -> Response:
        inv_id = request.path_params["inv_id"]
        operation = self.state.operations.get(inv_id)
        state = "unknown" if operation is None else str(operation.state)
        return HTMLResponse(f"<html><body><p>Operation {escape(inv_id)}: {state}</p></body></html>")

    async def opstate(self, request: Request) -> Response:
        self.state.count("status")
        params = await self._params(request)
        for name in ("MerchantLogin", "InvoiceID", "Signature"):
            if name not in params:
                return PlainTextResponse(f"Missing parameter: {name}.", 500)
        if params["MerchantLogin"] != LOGIN:
            return _opstate_xml(2, "the shop is not found or not active")
        invoice_id = params["InvoiceID"]
        expected = _sign(f"{LOGIN}:{invoice_id}:{PASSWORD2}")
        if not _matches(expected, params["Signature"]):
            return _opstate_xml(1, "wrong request signature")
        operation = self.state.operations.get(invoice_id)
        if operation is None:
            return _opstate_xml(3, "no operation with this InvoiceID")
        return _opstate_xml(0, "", operation)


def _jwt_payload(token: str) -> dict[str, object] | None:
    """The payload of an HS256 JWT signed with Password #3; None when it is not one."""
    try:
        header, payload, signature = token.strip().split(".")
        mac = hmac.new(PASSWORD3.encode(), f"{header}.{payload}".encode("ascii"), "sha256")
        expected = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")
        if not hmac.compare_digest(expected, signature):
            return None
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error, UnicodeError):
        return None
    return decoded if isinstance(decoded, dict) else None


class _Refunds:
    """Robokassa's refund API over the fake's operations."""

    def __init__(self, state: RobokassaState) -> None:
        self.state = state

    async def create(self, request: Request) -> Response:
        self.state.count("refund")
        payload = _jwt_payload((await request.body()).decode("utf-8", "replace"))
        if payload is None:
            return PlainTextResponse("Unauthorized: the JWT is not signed with Password #3", 401)
        if self.state.take_refusal_fault():
            return _refund_answer(False, "RefundIsRestricted")
        op_key, wanted = payload.get("OpKey"), payload.get("RefundSum")
        with self.state.lock:
            operation = next(
                (o for o in self.state.operations.values() if o.op_key == op_key), None
            )
            if operation is None or operation.state != PAID:
                return _refund_answer(False, "OperationNotFound")
            left = operation.out_sum - operation.refunded
            try:
                amount = left if wanted is None else Decimal(str(wanted))
            except InvalidOperation:
                return _refund_answer(False, "InvalidRefundSum")
            if not amount.is_finite() or amount <= 0 or amount > left:
                return _refund_answer(False, "NotEnoughOperationFunds")
            operation.refunded += amount
            request_id = str(uuid.uuid4())
            self.state.refund_requests[request_id] = [operation.op_key, str(amount), "processing"]
        self.state.refund_made(operation.op_key)
        if self.state.take_refund_timeout_fault():
            await self.state.hang()  # refunded and recorded; the answer comes too late
        return _refund_answer(True, None, request_id)

    async def get_state(self, request: Request) -> Response:
        self.state.count("refund_status")
        request_id = request.query_params.get("id", "")
        with self.state.lock:
            found = self.state.refund_requests.get(request_id)
            if found is None:
                return JSONResponse({"message": "RequestNotFound"})
            answer = {"requestId": request_id, "amount": found[1], "label": found[2]}
            found[2] = "finished"  # the bank takes a moment: done by the next read
        # The amount as Robokassa writes it: a JSON number.
        body = json.dumps(answer).replace(f'"{answer["amount"]}"', answer["amount"])
        return Response(body, media_type="application/json")


def _refund_answer(success: bool, message: str | None, request_id: str | None = None) -> Response:
    return JSONResponse({"success": success, "message": message, "requestId": request_id})


def create_app(notify_url: str | None = None) -> Starlette:
    """The fake, with the control API of adapters/fakes/common.py (control_routes, fake_app).

    Sends the Result URL callback (signed as Robokassa signs it) to ``notify_url`` when
    notifications are enabled and ``notify_url`` is set.
    """
    state = RobokassaState(notify_url=notify_url)
    fake = _Fake(state)
    refunds = _Refunds(state)
    routes = [
        Route(f"{REFUNDS}/Create", refunds.create, methods=["POST"]),
        Route(f"{REFUNDS}/GetState", refunds.get_state, methods=["GET"]),
        Route(f"{PREFIX}/Index.aspx", fake.index, methods=["GET", "POST"]),
        Route(f"{PREFIX}/_buyer/{{inv_id}}/done", fake.done, methods=["GET"]),
        Route(f"{PREFIX}/_buyer/{{inv_id}}/pay", fake.buyer_pays, methods=["POST"]),
        Route(f"{PREFIX}/_buyer/{{inv_id}}/decline", fake.buyer_declines, methods=["POST"]),
        Route(
            f"{PREFIX}/WebService/Service.asmx/OpStateExt", fake.opstate, methods=["GET", "POST"]
        ),
        *control_routes(state, fake.pay, fake.decline),
    ]
    return fake_app(state, routes)


def adapter_settings(api_url: str) -> dict[str, str]:
    """The adapter's settings pointing at this fake (served at ``api_url``) with its credentials."""
    base = api_url.rstrip("/").removesuffix(PREFIX)
    return {
        "API_URL": base + PREFIX,
        "REFUND_API_URL": base + "/RefundService",
        "PASSWORD3": PASSWORD3,
        "MERCHANT_LOGIN": LOGIN,
        "PASSWORD1": PASSWORD1,
        "PASSWORD2": PASSWORD2,
        "HASH": HASH,
        "TEST": "false",
    }


def forged_callback(order: Order) -> tuple[dict[str, str], bytes]:
    """A Result URL callback claiming ``order`` was paid, signed with a Password #2 that is not
    the shop's: the daemon must answer it 400 and change nothing."""
    operation = Operation(
        inv_id=str(order.number),
        out_sum=order.money.to_decimal(),
        description=order.description,
        shp={"Shp_order_id": str(order.id)},
    )
    fields = result_form(operation, password2="forged-password-2-" + PASSWORD2[::-1])
    return {"content-type": "application/x-www-form-urlencoded"}, urlencode(fields).encode()

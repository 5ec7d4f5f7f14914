"""A local fake of T-Bank Internet Acquiring (MAPI v2): Init, GetState, Confirm, Cancel, CheckOrder.

Written from the same public reference as :mod:`adapters.tbank` (https://www.tbank.ru/kassa/dev/payments/,
OpenAPI document version 1.80: the methods, the token section, the payment status model, the
error codes and the operation notifications), with its own signing code::

    POST /v2/Init          a payment for OrderId: NEW, PaymentId and PaymentURL (a second Init
                           for the same OrderId is refused with error 20)
    POST /v2/GetState      the payment's Status and Amount
    POST /v2/Confirm       AUTHORIZED -> CONFIRMED (two-stage payments), at most the held amount
    POST /v2/Cancel        NEW/FORM_SHOWED -> CANCELED, AUTHORIZED -> REVERSED,
                           CONFIRMED -> REFUNDED (T-Bank's Cancel of a paid payment is a refund);
                           with ``Amount`` less than what is left CONFIRMED/PARTIAL_REFUNDED ->
                           PARTIAL_REFUNDED; never more than is left (330); a repeated
                           ``ExternalRequestId`` answers the payment's state and refunds nothing
    POST /v2/CheckOrder    the payments of an OrderId (error 335 when there is none)
    GET  /new/{code}       the PaymentURL: a pay page (FORM_SHOWED) with Pay and Decline buttons
    /_control/...          the control API of :mod:`adapters.fakes.common`

Every merchant call is checked like T-Bank checks it: the terminal (205 when unknown) and the
``Token`` (204 when wrong: SHA-256 over the root values plus the password, sorted by key, nested
objects left out). Errors take T-Bank's form: HTTP 200 with ``Success: false``, ``ErrorCode``,
``Message`` and ``Details``. A payment still NEW or FORM_SHOWED after its ``RedirectDueDate`` is
DEADLINE_EXPIRED (T-Bank sends no notification for that). ``RedirectDueDate`` in the past or more
than 90 days ahead is refused (3017); unlike T-Bank, a deadline under a minute ahead is accepted,
so tests can let orders expire in seconds.

Control ``pay`` does what the buyer paying on the form does, also after an expiry, a decline or
a cancel (a late payment): one-stage payments go AUTHORIZED then CONFIRMED, two-stage ones
(``PayType`` T) stop at AUTHORIZED for the merchant's Confirm. ``decline`` makes it REJECTED.
Each change is notified as T-Bank does (a signed JSON POST expecting the body ``OK``) to the
NotificationURL of the Init, else to ``notify_url`` (the terminal's setting), when notifications
are on; control actions deliver before they answer, Confirm and Cancel right after.

Refunds (issue #14) are counted in the control stats per ``ExternalRequestId`` (per PaymentId
without one); the refund faults of :mod:`adapters.fakes.common` hang (after refunding) or refuse
(error 100) the next refunds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from adapters.fakes.common import FakeState, PaymentRef, control_routes, fake_app
from orders.model import Order

NAME = "tbank"
TERMINAL_KEY = "PaydispatchFakeDEMO"
PASSWORD = "fake-tbank-terminal-password-5e1c0a9b7d3f28"  # noqa: S105 - the fake terminal's
PREFIX = "/v2"
MAX_DUE = timedelta(days=90)
NOTIFY_TIMEOUT = 10.0
LIVE = frozenset({"NEW", "FORM_SHOWED"})
REFUNDS = frozenset({"REFUNDED", "PARTIAL_REFUNDED"})

ERRORS = {
    "1": "Параметры не сопоставлены",
    "2": "Отсутствуют обязательные параметры",
    "8": "Неверный статус транзакции",
    "100": "Не получилось отменить платеж. Укажите сумму не больше, чем зарезервировано",  # noqa: RUF001 - T-Bank's own words
    "12": "Неверный параметр RedirectDueDate",
    "20": "Ошибка повторного идентификатора заказа",
    "204": "Неверный токен. Проверьте пару TerminalKey/SecretKey",
    "205": "Неверный токен. Проверьте пару TerminalKey/SecretKey",
    "212": "Размер поля OrderId должен быть от 1 до 36",
    "213": "Размер поля Description должен быть от 0 до 140",
    "251": "Неверная сумма. Сумма должна быть больше или равна 100 копеек",
    "255": "Платеж не найден",
    "330": "Сумма в запросе больше чем в оригинальной транзакции",
    "335": "OrderId не найден для TerminalKey",
    "3017": "Переданное значение RedirectDueDate вне допустимого диапазона",
}


def sign(params: dict[str, Any], password: str) -> str:
    """T-Bank's Token, written here apart from the adapter's so each checks the other."""
    pairs = [
        (key, "true" if value is True else "false" if value is False else str(value))
        for key, value in params.items()
        if key != "Token" and value is not None and not isinstance(value, dict | list)
    ]
    pairs.append(("Password", password))
    return hashlib.sha256("".join(v for _, v in sorted(pairs)).encode("utf-8")).hexdigest()


@dataclass
class Payment:
    payment_id: str
    order_id: str
    amount: int
    two_stage: bool
    code: str
    due: datetime | None
    notification_url: str | None
    status: str = "NEW"
    refunded: int = 0  # kopecks given back by refunds

    def expire(self, now: datetime) -> None:
        if self.status in LIVE and self.due is not None and now >= self.due:
            self.status = "DEADLINE_EXPIRED"


@dataclass
class TBankState(FakeState):
    """The terminal's payments by PaymentId and OrderId, and the notifications delivered."""

    notify_url: str | None = None
    payments: dict[str, Payment] = field(default_factory=dict)
    by_order: dict[str, list[str]] = field(default_factory=dict)
    # T-Bank's PaymentIds are unique for good: a fake started again on the same database (the
    # demo, run twice) must not hand out the ids of its earlier run.
    ids: itertools.count[int] = field(
        default_factory=lambda: itertools.count(4_000_000_001 + secrets.randbelow(10**9) * 1000)
    )
    # (PaymentId, Status, HTTP status or 0, answer body or error)
    deliveries: list[tuple[str, str, int, str]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # ExternalRequestId of a Cancel -> the PaymentId it cancelled (a repeat changes nothing).
    external_ids: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    """A T-Bank error answer: ``Success: false`` with this code."""

    def __init__(self, code: str, details: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.details = details


def _error(code: str, details: str = "") -> Response:
    body = {
        "Success": False,
        "ErrorCode": code,
        "TerminalKey": TERMINAL_KEY,
        "Message": ERRORS.get(code, "Ошибка"),
        "Details": details,
    }
    return JSONResponse(body)


def _ok(body: dict[str, Any]) -> Response:
    return JSONResponse({"Success": True, "ErrorCode": "0", "TerminalKey": TERMINAL_KEY, **body})


def _due(value: Any, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        due = datetime.fromisoformat(str(value))
    except ValueError:
        raise Refused("12", f"RedirectDueDate {value!r}") from None
    if due.tzinfo is None:
        raise Refused("12", "RedirectDueDate without a UTC offset")
    if due <= now or due > now + MAX_DUE:
        raise Refused("3017", f"RedirectDueDate {value} is not within 90 days from now")
    return due


def notification(payment: Payment, status: str, password: str = PASSWORD) -> dict[str, Any]:
    """The notification T-Bank POSTs for ``payment`` in ``status``, signed with ``password``."""
    declined = status == "REJECTED"
    body: dict[str, Any] = {
        "TerminalKey": TERMINAL_KEY,
        "OrderId": payment.order_id,
        "Success": not declined,
        "Status": status,
        "PaymentId": int(payment.payment_id),
        "ErrorCode": "1051" if declined else "0",
        "Amount": payment.amount,
        "CardId": 322264,
        "Pan": "430000******0777",
        "ExpDate": "1130",
        "DATA": {"Route": "ACQ", "Source": "cards"},
    }
    if declined:
        body["Message"] = "Недостаточно средств на карте"
    body["Token"] = sign(body, password)
    return body


class _Fake:
    def __init__(self, state: TBankState) -> None:
        self.state = state

    # -- merchant API -----------------------------------------------------------------------

    async def _call(self, request: Request, operation: str) -> dict[str, Any]:
        """The signed body of a merchant call, counted; Refused when T-Bank would refuse it."""
        self.state.count(operation)
        raw = await request.body()
        try:
            # Numbers as written: T-Bank signs the values it received.
            as_written = json.loads(raw, parse_int=str, parse_float=str)
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise Refused("1", "the body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(as_written, dict):
            raise Refused("1", "the body is not a JSON object")
        if not body.get("TerminalKey") or not isinstance(body.get("Token"), str):
            raise Refused("2", "TerminalKey and Token are required")
        if body["TerminalKey"] != TERMINAL_KEY:
            raise Refused("205", "Указанный терминал не найден")
        expected = sign(as_written, PASSWORD)
        if not hmac.compare_digest(expected.encode(), body["Token"].encode()):
            raise Refused("204")
        return body

    def _payment(self, body: dict[str, Any]) -> Payment:
        payment = self.state.payments.get(str(body.get("PaymentId", "")))
        if payment is None:
            raise Refused("255")
        payment.expire(datetime.now(UTC))
        return payment

    async def init(self, request: Request) -> Response:
        try:
            body = await self._call(request, "create")
            payment = self._create(body, str(request.base_url).rstrip("/"))
        except Refused as exc:
            return _error(exc.code, exc.details)
        if self.state.take_timeout_fault():
            await self.state.hang()  # made and recorded; the answer comes too late
        return _ok(
            {
                "Status": payment.status,
                "PaymentId": payment.payment_id,
                "OrderId": payment.order_id,
                "Amount": payment.amount,
                "PaymentURL": f"{str(request.base_url).rstrip('/')}/new/{payment.code}",
            }
        )

    def _create(self, body: dict[str, Any], base: str) -> Payment:
        amount, order_id = body.get("Amount"), body.get("OrderId")
        if amount is None or order_id is None:
            raise Refused("2", "Amount and OrderId are required")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 100:
            raise Refused("251")
        if not isinstance(order_id, str) or not 0 < len(order_id) <= 36:
            raise Refused("212")
        if len(str(body.get("Description", ""))) > 140:
            raise Refused("213")
        if body.get("PayType", "O") not in {"O", "T"}:
            raise Refused("1", "PayType must be O or T")
        due = _due(body.get("RedirectDueDate"), datetime.now(UTC))
        url = body.get("NotificationURL")
        with self.state.lock:
            if order_id in self.state.by_order:
                raise Refused("20")
            payment = Payment(
                payment_id=str(next(self.state.ids)),
                order_id=order_id,
                amount=amount,
                two_stage=body.get("PayType") == "T",
                code=secrets.token_urlsafe(6),
                due=due,
                notification_url=url if isinstance(url, str) and url else None,
            )
            self.state.payments[payment.payment_id] = payment
            self.state.by_order[order_id] = [payment.payment_id]
        self.state.invoice_made(order_id)
        return payment

    async def get_state(self, request: Request) -> Response:
        try:
            payment = self._payment(await self._call(request, "status"))
        except Refused as exc:
            return _error(exc.code, exc.details)
        return _ok(
            {
                "Message": "OK",
                "Status": payment.status,
                "PaymentId": payment.payment_id,
                "OrderId": payment.order_id,
                "Amount": payment.amount,
                "Params": [{"Key": "Route", "Value": "ACQ"}, {"Key": "Source", "Value": "cards"}],
            }
        )

    async def confirm(self, request: Request) -> Response:
        try:
            body = await self._call(request, "capture")
            payment = self._payment(body)
            amount = body.get("Amount", payment.amount)
            if payment.status != "AUTHORIZED":
                raise Refused("8", f"the payment is {payment.status}")
            if not isinstance(amount, int) or amount > payment.amount:
                raise Refused("330")
        except Refused as exc:
            return _error(exc.code, exc.details)
        payment.amount, payment.status = amount, "CONFIRMED"
        self._later(payment, "CONFIRMED")
        return _ok(
            {
                "OrderId": payment.order_id,
                "Status": payment.status,
                "PaymentId": payment.payment_id,
                "Message": "OK",
                "Details": "None",
            }
        )

    async def cancel(self, request: Request) -> Response:
        try:
            body = await self._call(request, "cancel")
            payment = self._payment(body)
            external = body.get("ExternalRequestId") or None
            with self.state.lock:
                repeat = external is not None and external in self.state.external_ids
            refunding = not repeat and payment.status in {"CONFIRMED", "PARTIAL_REFUNDED"}
            if refunding and self.state.take_refusal_fault():
                raise Refused("100", "refused (a fault of the fake)")
            with self.state.lock:
                original = payment.amount - payment.refunded
                if not repeat:
                    self._cancel(payment, body)
                    if external is not None:
                        self.state.external_ids[external] = payment.payment_id
        except Refused as exc:
            return _error(exc.code, exc.details)
        if refunding:
            self.state.refund_made(str(external or payment.payment_id))
        answer = {
            "OrderId": payment.order_id,
            "Status": payment.status,
            "OriginalAmount": original,
            "NewAmount": payment.amount - payment.refunded,
            "PaymentId": payment.payment_id,
            "Message": "OK",
            "Details": "None",
        }
        if external is not None:
            answer["ExternalRequestId"] = external
        if repeat:
            # "the current state of the payment operation", nothing cancelled again
            return _ok({**answer, "OriginalAmount": answer["NewAmount"]})
        self._later(payment, payment.status)
        if payment.status in REFUNDS and self.state.take_refund_timeout_fault():
            await self.state.hang()  # refunded and recorded; the answer comes too late
        return _ok(answer)

    def _cancel(self, payment: Payment, body: dict[str, Any]) -> None:
        """Move ``payment`` as the Cancel in ``body`` asks (under the state's lock, so it calls
        nothing that takes it)."""
        moves = {"NEW": "CANCELED", "FORM_SHOWED": "CANCELED", "AUTHORIZED": "REVERSED"}
        if payment.status in moves:  # nothing taken yet: the whole payment, Amount ignored
            payment.status = moves[payment.status]
            return
        if payment.status not in {"CONFIRMED", "PARTIAL_REFUNDED"}:
            raise Refused("8", f"the payment is {payment.status}")
        left = payment.amount - payment.refunded
        amount = body.get("Amount", left)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise Refused("251")
        if amount > left:
            raise Refused("330", f"{amount} asked, {left} left")
        payment.refunded += amount
        payment.status = "REFUNDED" if payment.refunded == payment.amount else "PARTIAL_REFUNDED"

    async def check_order(self, request: Request) -> Response:
        try:
            body = await self._call(request, "lookup")
            order_id = str(body.get("OrderId", ""))
            ids = self.state.by_order.get(order_id)
            if not ids:
                raise Refused("335", f"OrderId {order_id} не найден для TerminalKey {TERMINAL_KEY}")
        except Refused as exc:
            return _error(exc.code, exc.details)
        now, payments = datetime.now(UTC), []
        for payment_id in ids:
            payment = self.state.payments[payment_id]
            payment.expire(now)
            payments.append(
                {
                    "PaymentId": payment.payment_id,
                    "Amount": payment.amount,
                    "Status": payment.status,
                    "RRN": payment.payment_id[-8:],
                    "Success": "true",
                    "ErrorCode": 0,
                    "Message": "None",
                }
            )
        return _ok({"OrderId": order_id, "Message": "OK", "Details": "None", "Payments": payments})

    # -- the buyer --------------------------------------------------------------------------

    def _find(self, ref: PaymentRef) -> Payment:
        with self.state.lock:
            if ref.psp_id is not None and ref.psp_id in self.state.payments:
                return self.state.payments[ref.psp_id]
            if ref.order_id is not None and ref.order_id in self.state.by_order:
                return self.state.payments[self.state.by_order[ref.order_id][-1]]
            code = (ref.pay_url or "").rstrip("/").rsplit("/", 1)[-1]
            for payment in self.state.payments.values():
                if code and payment.code == code:
                    return payment
        raise LookupError(ref.psp_id or ref.order_id or ref.pay_url or "no reference given")

    async def pay(self, ref: PaymentRef) -> None:
        payment = self._find(ref)
        payment.status = "AUTHORIZED"
        await self._notify(payment, "AUTHORIZED")
        if not payment.two_stage:
            payment.status = "CONFIRMED"
            await self._notify(payment, "CONFIRMED")

    async def decline(self, ref: PaymentRef) -> None:
        payment = self._find(ref)
        payment.status = "REJECTED"
        await self._notify(payment, "REJECTED")

    def _by_code(self, request: Request) -> Payment | None:
        code = request.path_params["code"]
        return next((p for p in self.state.payments.values() if p.code == code), None)

    async def pay_page(self, request: Request) -> Response:
        payment = self._by_code(request)
        if payment is None:
            return HTMLResponse("<h1>Платеж не найден</h1>", 404)
        payment.expire(datetime.now(UTC))
        if payment.status == "NEW":
            payment.status = "FORM_SHOWED"  # T-Bank's Authorize, run when the form loads
        code, rub = escape(payment.code), f"{payment.amount / 100:.2f}"
        buttons = (
            f'<form method=post action="/new/{code}/pay"><button id=pay>Pay</button></form>'
            f'<form method=post action="/new/{code}/decline"><button id=decline>Decline</button>'
            "</form>"
            if payment.status == "FORM_SHOWED"
            else ""
        )
        return HTMLResponse(
            f"<!doctype html><title>T-Bank fake</title><h1>{rub} RUB</h1>"
            f"<p id=status>{escape(payment.status)}</p>{buttons}"
        )

    async def buyer_pays(self, request: Request) -> Response:
        return await self._click(request, self.pay)

    async def buyer_declines(self, request: Request) -> Response:
        return await self._click(request, self.decline)

    async def _click(self, request: Request, action: Any) -> Response:
        payment = self._by_code(request)
        if payment is None:
            return HTMLResponse("<h1>Платеж не найден</h1>", 404)
        await action(PaymentRef(psp_id=payment.payment_id))
        return HTMLResponse(f"<p id=status>{escape(payment.status)}</p>")

    # -- notifications ----------------------------------------------------------------------

    async def _notify(self, payment: Payment, status: str) -> None:
        """POST the signed notification and record what came back (T-Bank wants ``OK``)."""
        url = payment.notification_url or self.state.notify_url
        if not self.state.notifications or url is None:
            return
        try:
            async with httpx.AsyncClient(timeout=NOTIFY_TIMEOUT) as client:
                answer = await client.post(url, json=notification(payment, status))
            delivery = (payment.payment_id, status, answer.status_code, answer.text)
        except httpx.HTTPError as exc:
            delivery = (payment.payment_id, status, 0, f"{type(exc).__name__}: {exc}")
        with self.state.lock:
            self.state.deliveries.append(delivery)

    def _later(self, payment: Payment, status: str) -> None:
        """Notify after answering: T-Bank reports Confirm and Cancel on its own time."""
        task = asyncio.get_running_loop().create_task(self._notify(payment, status))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)


def create_app(notify_url: str | None = None) -> Starlette:
    """The fake, with the control API of adapters/fakes/common.py (control_routes, fake_app).

    Sends T-Bank's notifications (signed with the terminal's password, as T-Bank signs them) to
    the NotificationURL of each Init, else to ``notify_url``, when notifications are enabled.
    """
    state = TBankState(notify_url=notify_url)
    fake = _Fake(state)
    routes = [
        Route(f"{PREFIX}/Init", fake.init, methods=["POST"]),
        Route(f"{PREFIX}/GetState", fake.get_state, methods=["POST"]),
        Route(f"{PREFIX}/Confirm", fake.confirm, methods=["POST"]),
        Route(f"{PREFIX}/Cancel", fake.cancel, methods=["POST"]),
        Route(f"{PREFIX}/CheckOrder", fake.check_order, methods=["POST"]),
        Route("/new/{code}", fake.pay_page, methods=["GET"]),
        Route("/new/{code}/pay", fake.buyer_pays, methods=["POST"]),
        Route("/new/{code}/decline", fake.buyer_declines, methods=["POST"]),
        *control_routes(state, fake.pay, fake.decline),
    ]
    return fake_app(state, routes)


def adapter_settings(api_url: str) -> dict[str, str]:
    """The adapter's settings pointing at this fake (served at ``api_url``) with its terminal."""
    base = api_url.rstrip("/")
    return {
        "API_URL": base if base.endswith(PREFIX) else base + PREFIX,
        "TERMINAL_KEY": TERMINAL_KEY,
        "PASSWORD": PASSWORD,
        "TWO_STAGE": "false",
    }


def forged_callback(order: Order) -> tuple[dict[str, str], bytes]:
    """A CONFIRMED notification for ``order`` signed with a password that is not the terminal's:
    the daemon must answer it without ``OK`` and change nothing."""
    psp_id = order.psp_id if order.psp_id and order.psp_id.isdigit() else "4000000000"
    payment = Payment(
        payment_id=psp_id,
        order_id=str(order.id),
        amount=order.money.amount,
        two_stage=False,
        code="forged",
        due=None,
        notification_url=None,
        status="CONFIRMED",
    )
    body = notification(payment, "CONFIRMED", password="forged-" + PASSWORD[::-1])
    return {"content-type": "application/json"}, json.dumps(body, ensure_ascii=False).encode()

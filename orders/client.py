"""A small client for the paydispatch HTTP API: :class:`Client` (sync), :class:`AsyncClient`.

    with Client("https://pay.example", api_key) as pd:
        money = Money.parse("19.99", "USD")
        created = pd.create_order(user_id="42", money=money, adapter="sandbox")
        redirect(created.order.status_url)

Retries (tenacity, exponential backoff with jitter, honouring ``Retry-After``) cover connection
errors, timeouts, 429 and 5xx. Every retry of one ``create_order`` call carries the same
idempotency key, so a create whose answer was lost is never made twice. Error answers become
exceptions of the one error tree (:mod:`orders.errors`), each also an :class:`ApiError` with the
API's stable ``code``:

    ApiError
    ├── InvalidRequest      422 (also orders.InvalidInput): ``field`` names the culprit
    ├── Unauthorized        401: missing, unknown or revoked key
    ├── NotFound            404 (also orders.OrderNotFound)
    ├── Conflict            409: not_cancellable, insufficient_funds, ...
    │   └── KeyConflict     409 idempotency_conflict (also orders.IdempotencyConflict)
    ├── BadRequest          400, 413 and other refusals
    └── Unavailable         503, other 5xx, network errors after the last retry (TransientError)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Self
from uuid import UUID

import httpx
import tenacity

from orders.backoff import retry_after_wait
from orders.errors import (
    DispatchError,
    IdempotencyConflict,
    InvalidInput,
    OrderNotFound,
    PermanentError,
    TransientError,
)
from orders.model import TransferStatus
from orders.money import Money
from orders.status import OrderStatus

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
USER_AGENT: Final = "paydispatch-client/1"


# -- errors ---------------------------------------------------------------------------------


class ApiError(DispatchError):
    """An error answer of the API; ``code`` is its stable code (see docs/api.md)."""

    def __init__(self, status_code: int, code: str, message: str, field: str | None = None) -> None:
        DispatchError.__init__(self, f"{code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field or ""  # "" when the error names no field


class InvalidRequest(ApiError, InvalidInput):
    """422: the API refused the input; nothing was written."""


class Unauthorized(ApiError, PermanentError):
    """401: the API key is missing, unknown or revoked."""


class NotFound(ApiError, OrderNotFound):
    """404: no such order (or wallet, or not this site's)."""


class Conflict(ApiError, PermanentError):
    """409: the request conflicts with the resource's state."""


class KeyConflict(Conflict, IdempotencyConflict):
    """409: the idempotency key or site_ref was used with another body."""


class BadRequest(ApiError, PermanentError):
    """400, 413 or another refusal: the request cannot succeed as sent."""


class Unavailable(ApiError, TransientError):
    """The API or its database could not be reached, even after retries: try again later."""


def error_from(response: httpx.Response) -> ApiError:
    """The exception for an error answer."""
    code, message, culprit = "http_error", response.reason_phrase, None
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
        culprit = body.get("field")
    except (ValueError, KeyError, TypeError):
        pass
    status = response.status_code
    kind: type[ApiError]
    if status == 422:
        kind = InvalidRequest
    elif status == 401:
        kind = Unauthorized
    elif status == 404:
        kind = NotFound
    elif status == 409:
        kind = KeyConflict if code == "idempotency_conflict" else Conflict
    elif status >= 500:
        kind = Unavailable
    else:
        kind = BadRequest
    return kind(status, code, message, culprit)


# -- results --------------------------------------------------------------------------------


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def _maybe_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


@dataclass(frozen=True, slots=True)
class OrderEventInfo:
    from_status: OrderStatus | None
    to_status: OrderStatus
    at: datetime
    actor: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class OrderInfo:
    """An order as the API shows it to its site."""

    id: UUID
    number: int
    site_ref: str | None
    user_id: str
    money: Money
    adapter: str
    description: str
    return_url: str | None
    metadata: Mapping[str, Any]
    status: OrderStatus
    psp_id: str | None
    pay_url: str | None
    status_url: str  # send the buyer here
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None
    last_error: str | None
    events: tuple[OrderEventInfo, ...] = ()
    # What its succeeded refunds gave back (minor units), and so "none", "partially_refunded"
    # or "refunded": derived from the refunds, the order's status stays "paid".
    refunded_amount: int = 0
    refund_status: str = "none"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OrderInfo:
        events = tuple(
            OrderEventInfo(
                from_status=None if e["from_status"] is None else OrderStatus(e["from_status"]),
                to_status=OrderStatus(e["to_status"]),
                at=_time(e["at"]),
                actor=e["actor"],
                detail=e["detail"],
            )
            for e in data.get("events") or ()
        )
        return cls(
            id=UUID(data["id"]),
            number=data["number"],
            site_ref=data["site_ref"],
            user_id=data["user_id"],
            money=Money(data["amount"], data["currency"]),
            adapter=data["adapter"],
            description=data["description"],
            return_url=data["return_url"],
            metadata=data["metadata"],
            status=OrderStatus(data["status"]),
            psp_id=data["psp_id"],
            pay_url=data["pay_url"],
            status_url=data["status_url"],
            expires_at=_time(data["expires_at"]),
            created_at=_time(data["created_at"]),
            updated_at=_time(data["updated_at"]),
            paid_at=_maybe_time(data["paid_at"]),
            last_error=data["last_error"],
            events=events,
            refunded_amount=data.get("refunded_amount", 0),
            refund_status=data.get("refund_status", "none"),
        )


@dataclass(frozen=True, slots=True)
class CreatedOrder:
    order: OrderInfo
    created: bool  # False: an earlier request with the same key or site_ref made it
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RefundInfo:
    """A refund of (part of) an order, as the API shows it to its site."""

    id: UUID
    order_id: UUID
    money: Money
    status: TransferStatus  # requested, submitting, pending; succeeded, failed; needs_review
    origin: str  # site, operator or psp
    reason: str
    requested_by: str
    psp_refund_id: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    settled_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RefundInfo:
        return cls(
            id=UUID(data["id"]),
            order_id=UUID(data["order_id"]),
            money=Money(data["amount"], data["currency"]),
            status=TransferStatus(data["status"]),
            origin=data["origin"],
            reason=data["reason"],
            requested_by=data["requested_by"],
            psp_refund_id=data["psp_refund_id"],
            last_error=data["last_error"],
            created_at=_time(data["created_at"]),
            updated_at=_time(data["updated_at"]),
            settled_at=_maybe_time(data["settled_at"]),
        )


@dataclass(frozen=True, slots=True)
class CreatedRefund:
    refund: RefundInfo
    created: bool  # False: an earlier request with the same key made it
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class OrderList:
    items: list[OrderInfo]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class WithdrawalInfo:
    """A wallet withdrawal (issue #14): ``money`` goes to the user, ``fee`` is kept; both were
    held from the balance when it was requested."""

    id: UUID
    user_id: str
    money: Money
    fee: Money
    # awaiting_approval, approved, sent; succeeded, failed, cancelled
    status: str
    adapter: str
    destination: dict[str, Any]
    transfer_id: UUID | None
    reason: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WithdrawalInfo:
        return cls(
            id=UUID(data["id"]),
            user_id=data["user_id"],
            money=Money(data["amount"], data["currency"]),
            fee=Money(data["fee"], data["currency"]),
            status=data["status"],
            adapter=data["adapter"],
            destination=dict(data["destination"]),
            transfer_id=UUID(data["transfer_id"]) if data["transfer_id"] else None,
            reason=data["reason"],
            created_at=_time(data["created_at"]),
            updated_at=_time(data["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class CreatedWithdrawal:
    withdrawal: WithdrawalInfo
    created: bool  # False: an earlier request with the same key made it
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class WithdrawalList:
    items: list[WithdrawalInfo]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    name: str
    currencies: frozenset[str]  # empty: any
    cancel: bool
    notifications: bool
    signed_notifications: bool
    default_expiry: timedelta


@dataclass(frozen=True, slots=True)
class WalletBalance:
    currency: str  # ISO 4217, or "points"
    amount: int  # minor units (whole points): the balance, below zero only when overdrawn
    formatted: str
    updated_at: datetime
    available: int = 0  # what can be spent or withdrawn now: the balance, or 0 below zero
    held: int = 0  # set aside by holds (withdrawals not yet paid out, refunds being sent)
    overdrawn: bool = False  # a refund left the balance below zero


@dataclass(frozen=True, slots=True)
class WalletEntry:
    id: int
    amount: int  # signed minor units: negative for debits and refunds
    currency: str
    balance_after: int
    kind: str
    order_id: UUID | None
    key: str | None
    description: str
    created_at: datetime
    replayed: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, replayed: bool = False) -> WalletEntry:
        return cls(
            id=data["id"],
            amount=data["amount"],
            currency=data["currency"],
            balance_after=data["balance_after"],
            kind=data["kind"],
            order_id=None if data["order_id"] is None else UUID(data["order_id"]),
            key=data["key"],
            description=data["description"],
            created_at=_time(data["created_at"]),
            replayed=replayed,
        )


@dataclass(frozen=True, slots=True)
class EntryList:
    items: list[WalletEntry]
    next_cursor: str | None


# -- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


def _params(**values: Any) -> dict[str, Any]:
    return {k: str(v) for k, v in values.items() if v is not None}


def _withdrawal_call(user_id: str, money: Money, destination: Mapping[str, str], key: str) -> _Call:
    body = {"amount": money.amount, "currency": money.currency, "destination": dict(destination)}
    return _Call("POST", f"/v1/wallets/{user_id}/withdrawals", json=body,
                 headers={"Idempotency-Key": key})  # fmt: skip


def _withdrawals(data: Mapping[str, Any]) -> WithdrawalList:
    return WithdrawalList([WithdrawalInfo.from_json(w) for w in data["items"]], data["next_cursor"])


def _create_call(
    *,
    user_id: str,
    money: Money,
    adapter: str,
    site_ref: str | None,
    description: str,
    return_url: str | None,
    metadata: Mapping[str, Any] | None,
    expires_in: timedelta | None,
    key: str,
) -> _Call:
    body: dict[str, Any] = {
        "user_id": user_id,
        "amount": money.amount,
        "currency": money.currency,
        "adapter": adapter,
        "description": description,
        "metadata": dict(metadata or {}),
    }
    if site_ref is not None:
        body["site_ref"] = site_ref
    if return_url is not None:
        body["return_url"] = return_url
    if expires_in is not None:
        body["expires_in"] = int(expires_in.total_seconds())
    return _Call("POST", "/v1/orders", json=body, headers={"Idempotency-Key": key})


def _refund_call(order_id: UUID | str, money: Money | None, reason: str, key: str) -> _Call:
    body: dict[str, Any] = {"reason": reason}
    if money is not None:
        # Major units with the currency's decimals, as the API takes them ("12.50").
        body["amount"] = f"{money.to_decimal():.{money.exponent}f}"
    return _Call("POST", f"/v1/orders/{order_id}/refunds", json=body,
                 headers={"Idempotency-Key": key})  # fmt: skip


def _refunds(data: Mapping[str, Any]) -> list[RefundInfo]:
    return [RefundInfo.from_json(r) for r in data["items"]]


def _adapters(data: Mapping[str, Any]) -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name=a["name"],
            currencies=frozenset(a["currencies"]),
            cancel=a["cancel"],
            notifications=a["notifications"],
            signed_notifications=a["signed_notifications"],
            default_expiry=timedelta(seconds=a["default_expiry_seconds"]),
        )
        for a in data["items"]
    ]


def _balances(data: Mapping[str, Any]) -> list[WalletBalance]:
    return [
        WalletBalance(
            b["currency"],
            b["amount"],
            b["formatted"],
            _time(b["updated_at"]),
            # A server before these fields: the balance is all there is, nothing held.
            available=b.get("available", max(b["amount"], 0)),
            held=b.get("held", 0),
            overdrawn=b.get("overdrawn", False),
        )
        for b in data["balances"]
    ]


class _Retryable(Exception):
    """A transient answer worth another try; carries the response (or the network error)."""

    def __init__(self, response: httpx.Response | None, error: Exception | None = None) -> None:
        super().__init__(str(error) if error else f"HTTP {response and response.status_code}")
        self.response = response
        self.error = error


class _WaitRetryAfter(tenacity.wait.wait_base):
    """Exponential backoff with full jitter, but never less than the server's ``Retry-After``."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        after: float | None = None
        if isinstance(error, _Retryable) and error.response is not None:
            value = error.response.headers.get("retry-after", "")
            if value.replace(".", "", 1).isdigit():
                after = float(value)
        return retry_after_wait(
            self.initial, retry_state.attempt_number - 1, cap=self.cap, retry_after=after
        )


def _unavailable(exc: _Retryable) -> ApiError:
    if exc.response is not None:
        return error_from(exc.response)
    return Unavailable(0, "network_error", str(exc.error))


class _Base:
    def __init__(self, api_key: str, retries: int, backoff: float, max_backoff: float) -> None:
        if not api_key:
            raise ValueError("api_key is required")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self.retries = retries
        self._wait = _WaitRetryAfter(backoff, max_backoff)

    def _retrying(self) -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(self.retries + 1),
            "wait": self._wait,
            "retry": tenacity.retry_if_exception_type(_Retryable),
            "reraise": True,
        }

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(response)
        if response.status_code >= 400:
            raise error_from(response)
        return response

    @staticmethod
    def _money(money: Money | None, amount: int | None, currency: str | None) -> Money:
        if money is not None:
            return money
        if amount is None or currency is None:
            raise TypeError("give money=Money(...) or amount= (minor units) and currency=")
        return Money(amount, currency)


class Client(_Base):
    """The synchronous client. Thread-safe; reuse one per process."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, retries, backoff, max_backoff)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        def attempt() -> httpx.Response:
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    params=call.params,
                    headers=self._headers | dict(call.headers),
                )
            except httpx.TransportError as exc:
                raise _Retryable(None, exc) from exc
            return self._check(response)

        try:
            return tenacity.Retrying(**self._retrying())(attempt)
        except _Retryable as exc:
            raise _unavailable(exc) from exc

    def create_order(
        self,
        *,
        user_id: str,
        adapter: str,
        money: Money | None = None,
        amount: int | None = None,
        currency: str | None = None,
        site_ref: str | None = None,
        description: str = "",
        return_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        expires_in: timedelta | None = None,
        idempotency_key: str | None = None,
    ) -> CreatedOrder:
        """Create an order (or get the one an earlier identical request made).

        Every retry of this call sends the same ``idempotency_key`` (a new random one unless
        given), so an answer lost on the way back never makes a second order.
        """
        key = idempotency_key or f"pdc-{uuid.uuid4()}"
        call = _create_call(
            user_id=user_id, money=self._money(money, amount, currency), adapter=adapter,
            site_ref=site_ref, description=description, return_url=return_url,
            metadata=metadata, expires_in=expires_in, key=key,
        )  # fmt: skip
        response = self._send(call)
        return CreatedOrder(OrderInfo.from_json(response.json()), response.status_code == 201, key)

    def get_order(self, order_id: UUID | str) -> OrderInfo:
        return OrderInfo.from_json(self._send(_Call("GET", f"/v1/orders/{order_id}")).json())

    def list_orders(
        self,
        *,
        status: OrderStatus | str | None = None,
        user_id: str | None = None,
        adapter: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> OrderList:
        params = _params(status=status, user_id=user_id, adapter=adapter, limit=limit,
                         cursor=cursor)  # fmt: skip
        data = self._send(_Call("GET", "/v1/orders", params=params)).json()
        return OrderList([OrderInfo.from_json(o) for o in data["items"]], data["next_cursor"])

    def iter_orders(self, **filters: Any) -> Iterator[OrderInfo]:
        """Every order matching ``filters`` (as :meth:`list_orders`), page after page."""
        cursor = None
        while True:
            page = self.list_orders(cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel_order(self, order_id: UUID | str) -> OrderInfo:
        return OrderInfo.from_json(self._send(_Call("DELETE", f"/v1/orders/{order_id}")).json())

    def create_refund(
        self,
        order_id: UUID | str,
        *,
        reason: str,
        money: Money | None = None,
        idempotency_key: str | None = None,
    ) -> CreatedRefund:
        """Refund ``money`` of a paid order (None: all that is left); the worker sends it.

        Every retry of this call sends the same ``idempotency_key`` (a new random one unless
        given), so an answer lost on the way back never makes a second refund. Raises
        :class:`Conflict` ``refund_refused`` (not paid, nothing left, or its payment system
        cannot refund: ``message`` says which).
        """
        key = idempotency_key or f"pdc-{uuid.uuid4()}"
        response = self._send(_refund_call(order_id, money, reason, key))
        refund = RefundInfo.from_json(response.json())
        return CreatedRefund(refund, response.status_code == 201, key)

    def list_refunds(self, order_id: UUID | str) -> list[RefundInfo]:
        """The order's refunds, oldest first."""
        return _refunds(self._send(_Call("GET", f"/v1/orders/{order_id}/refunds")).json())

    def adapters(self) -> list[AdapterInfo]:
        return _adapters(self._send(_Call("GET", "/v1/adapters")).json())

    def wallet(self, user_id: str) -> list[WalletBalance]:
        return _balances(self._send(_Call("GET", f"/v1/wallets/{user_id}")).json())

    def wallet_entries(
        self,
        user_id: str,
        *,
        currency: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> EntryList:
        params = _params(currency=currency, limit=limit, cursor=cursor)
        data = self._send(_Call("GET", f"/v1/wallets/{user_id}/entries", params=params)).json()
        return EntryList([WalletEntry.from_json(e) for e in data["items"]], data["next_cursor"])

    def debit(self, user_id: str, money: Money, *, key: str, description: str = "") -> WalletEntry:
        """Take ``money`` from the balance; :class:`Conflict` ``insufficient_funds`` rather
        than overdraw. The same ``key`` and body return the first entry."""
        body = {"amount": money.amount, "currency": money.currency, "description": description}
        call = _Call("POST", f"/v1/wallets/{user_id}/debit", json=body,
                     headers={"Idempotency-Key": key})  # fmt: skip
        response = self._send(call)
        return WalletEntry.from_json(response.json(), replayed=response.status_code == 200)

    def create_withdrawal(
        self,
        user_id: str,
        money: Money,
        *,
        destination: Mapping[str, str],
        idempotency_key: str | None = None,
    ) -> CreatedWithdrawal:
        """Withdraw ``money`` from the user's balance to ``destination`` (in the payment
        system's terms); it and the fee are held at once and paid out.

        Every retry of this call sends the same ``idempotency_key`` (a new random one unless
        given), so a lost answer never makes a second withdrawal. Raises :class:`Conflict`
        ``withdrawal_refused`` (below the minimum, over the daily limit, insufficient funds, no
        payout adapter: ``message`` says which)."""
        key = idempotency_key or f"pdc-{uuid.uuid4()}"
        response = self._send(_withdrawal_call(user_id, money, destination, key))
        withdrawal = WithdrawalInfo.from_json(response.json())
        return CreatedWithdrawal(withdrawal, response.status_code == 201, key)

    def list_withdrawals(
        self, user_id: str, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> WithdrawalList:
        """The user's withdrawals, newest first."""
        params = _params(status=status, limit=limit, cursor=cursor)
        call = _Call("GET", f"/v1/wallets/{user_id}/withdrawals", params=params)
        return _withdrawals(self._send(call).json())

    def get_withdrawal(self, user_id: str, withdrawal_id: UUID | str) -> WithdrawalInfo:
        call = _Call("GET", f"/v1/wallets/{user_id}/withdrawals/{withdrawal_id}")
        return WithdrawalInfo.from_json(self._send(call).json())

    def cancel_withdrawal(self, user_id: str, withdrawal_id: UUID | str) -> WithdrawalInfo:
        """Cancel a withdrawal whose payout was not sent (its hold goes back to the balance);
        :class:`Conflict` ``withdrawal_conflict`` once it was sent."""
        call = _Call("POST", f"/v1/wallets/{user_id}/withdrawals/{withdrawal_id}/cancel")
        return WithdrawalInfo.from_json(self._send(call).json())


class AsyncClient(_Base):
    """The asyncio client; the same methods as :class:`Client`, awaited."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, retries, backoff, max_backoff)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        async def attempt() -> httpx.Response:
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    params=call.params,
                    headers=self._headers | dict(call.headers),
                )
            except httpx.TransportError as exc:
                raise _Retryable(None, exc) from exc
            return self._check(response)

        try:
            return await tenacity.AsyncRetrying(**self._retrying())(attempt)
        except _Retryable as exc:
            raise _unavailable(exc) from exc

    async def create_order(
        self,
        *,
        user_id: str,
        adapter: str,
        money: Money | None = None,
        amount: int | None = None,
        currency: str | None = None,
        site_ref: str | None = None,
        description: str = "",
        return_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        expires_in: timedelta | None = None,
        idempotency_key: str | None = None,
    ) -> CreatedOrder:
        """As :meth:`Client.create_order`: one idempotency key for every retry of this call."""
        key = idempotency_key or f"pdc-{uuid.uuid4()}"
        call = _create_call(
            user_id=user_id, money=self._money(money, amount, currency), adapter=adapter,
            site_ref=site_ref, description=description, return_url=return_url,
            metadata=metadata, expires_in=expires_in, key=key,
        )  # fmt: skip
        response = await self._send(call)
        return CreatedOrder(OrderInfo.from_json(response.json()), response.status_code == 201, key)

    async def get_order(self, order_id: UUID | str) -> OrderInfo:
        response = await self._send(_Call("GET", f"/v1/orders/{order_id}"))
        return OrderInfo.from_json(response.json())

    async def list_orders(
        self,
        *,
        status: OrderStatus | str | None = None,
        user_id: str | None = None,
        adapter: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> OrderList:
        params = _params(status=status, user_id=user_id, adapter=adapter, limit=limit,
                         cursor=cursor)  # fmt: skip
        data = (await self._send(_Call("GET", "/v1/orders", params=params))).json()
        return OrderList([OrderInfo.from_json(o) for o in data["items"]], data["next_cursor"])

    async def iter_orders(self, **filters: Any) -> AsyncIterator[OrderInfo]:
        cursor = None
        while True:
            page = await self.list_orders(cursor=cursor, **filters)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel_order(self, order_id: UUID | str) -> OrderInfo:
        response = await self._send(_Call("DELETE", f"/v1/orders/{order_id}"))
        return OrderInfo.from_json(response.json())

    async def create_refund(
        self,
        order_id: UUID | str,
        *,
        reason: str,
        money: Money | None = None,
        idempotency_key: str | None = None,
    ) -> CreatedRefund:
        """As :meth:`Client.create_refund`: one idempotency key for every retry of this call."""
        key = idempotency_key or f"pdc-{uuid.uuid4()}"
        response = await self._send(_refund_call(order_id, money, reason, key))
        refund = RefundInfo.from_json(response.json())
        return CreatedRefund(refund, response.status_code == 201, key)

    async def list_refunds(self, order_id: UUID | str) -> list[RefundInfo]:
        response = await self._send(_Call("GET", f"/v1/orders/{order_id}/refunds"))
        return _refunds(response.json())

    async def adapters(self) -> list[AdapterInfo]:
        return _adapters((await self._send(_Call("GET", "/v1/adapters"))).json())

    async def wallet(self, user_id: str) -> list[WalletBalance]:
        return _balances((await self._send(_Call("GET", f"/v1/wallets/{user_id}"))).json())

    async def wallet_entries(
        self,
        user_id: str,
        *,
        currency: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> EntryList:
        params = _params(currency=currency, limit=limit, cursor=cursor)
        call = _Call("GET", f"/v1/wallets/{user_id}/entries", params=params)
        data = (await self._send(call)).json()
        return EntryList([WalletEntry.from_json(e) for e in data["items"]], data["next_cursor"])

    async def debit(
        self, user_id: str, money: Money, *, key: str, description: str = ""
    ) -> WalletEntry:
        body = {"amount": money.amount, "currency": money.currency, "description": description}
        call = _Call("POST", f"/v1/wallets/{user_id}/debit", json=body,
                     headers={"Idempotency-Key": key})  # fmt: skip
        response = await self._send(call)
        return WalletEntry.from_json(response.json(), replayed=response.status_code == 200)

    async def create_withdrawal(
        self,
        user_id: str,
        money: Money,
        *,
        destination: Mapping[str, str],
        idempotency_key: str | None = None,
    ) -> CreatedWithdrawal:
        """As :meth:`Client.create_withdrawal`: one idempotency key for every retry."""
        key = idempotency_key or f"pdc-{uuid.uuid4()}"
        response = await self._send(_withdrawal_call(user_id, money, destination, key))
        withdrawal = WithdrawalInfo.from_json(response.json())
        return CreatedWithdrawal(withdrawal, response.status_code == 201, key)

    async def list_withdrawals(
        self, user_id: str, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> WithdrawalList:
        params = _params(status=status, limit=limit, cursor=cursor)
        call = _Call("GET", f"/v1/wallets/{user_id}/withdrawals", params=params)
        return _withdrawals((await self._send(call)).json())

    async def get_withdrawal(self, user_id: str, withdrawal_id: UUID | str) -> WithdrawalInfo:
        call = _Call("GET", f"/v1/wallets/{user_id}/withdrawals/{withdrawal_id}")
        return WithdrawalInfo.from_json((await self._send(call)).json())

    async def cancel_withdrawal(self, user_id: str, withdrawal_id: UUID | str) -> WithdrawalInfo:
        call = _Call("POST", f"/v1/wallets/{user_id}/withdrawals/{withdrawal_id}/cancel")
        return WithdrawalInfo.from_json((await self._send(call)).json())


__all__ = [
    "AdapterInfo",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "CreatedOrder",
    "CreatedRefund",
    "CreatedWithdrawal",
    "EntryList",
    "InvalidRequest",
    "KeyConflict",
    "NotFound",
    "OrderEventInfo",
    "OrderInfo",
    "OrderList",
    "RefundInfo",
    "Unauthorized",
    "Unavailable",
    "WalletBalance",
    "WalletEntry",
    "WithdrawalInfo",
    "WithdrawalList",
    "error_from",
]

"""The paydispatch adapter for the sandbox payment system: pure build/parse functions.

Automatic outcomes: an order whose ``metadata["sandbox_scenario"]`` is set (``"pay_after:2"``,
``"decline_after:1"``, ``"never"``, ``"pay_late:3"``) sends it as the create body's ``scenario``.

Refunds and payouts (issue #14) carry our id twice: in the ``Idempotency-Key`` (a re-send makes
nothing new) and as the body's ``reference`` (a status read can find them by it alone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    InvalidSettings,
    Invoice,
    ListedPayment,
    MalformedResponse,
    Notification,
    NotificationResult,
    OrderRef,
    PaymentPage,
    PayoutReport,
    PayoutRequest,
    PollPolicy,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    Reply,
    SettingSpec,
    StatusReport,
)
from adapters.registry import env_name
from adapters.sandbox.protocol import (
    API_PREFIX,
    CURRENCIES,
    DEFAULT_API_KEY,
    DEFAULT_API_URL,
    DEFAULT_WEBHOOK_SECRET,
    IDEMPOTENCY_HEADER,
    PAYOUT_EVENT_TYPE,
    REFUND_EVENT_TYPE,
    WEBHOOK_EVENT_TYPE,
    InvoiceStatus,
    SignatureHeader,
)
from adapters.sandbox.transfers import created, payout_report, refund_report, status_read
from orders.errors import InvalidInput, OutcomeUnknown
from orders.model import Order
from orders.money import Money

SCENARIO_METADATA_KEY = "sandbox_scenario"
NO_NOTIFY_URL = "none"
# A signed notification older (or further in the future) than this is stale: only a hint.
SIGNATURE_TOLERANCE = timedelta(minutes=5)
LIST_PAGE = 100  # invoices a list page asks for: the sandbox's most

_STATES: Mapping[InvoiceStatus, CanonicalState] = {
    InvoiceStatus.PENDING: CanonicalState.PENDING,
    InvoiceStatus.PAID: CanonicalState.PAID,
    InvoiceStatus.DECLINED: CanonicalState.REJECTED,
    InvoiceStatus.CANCELLED: CanonicalState.REJECTED,
    InvoiceStatus.EXPIRED: CanonicalState.EXPIRED,
    InvoiceStatus.REFUNDED: CanonicalState.REFUNDED,
}
# Definite answers to a create request: the same request can never succeed.
_REJECTIONS = frozenset(
    {
        "invalid_body",
        "invalid_field",
        "invalid_json",
        "unsupported_currency",
        "already_expired",
        "refused",  # the refuse fault
    }
)


def _json_object(response: PspResponse) -> Mapping[str, Any]:
    body = response.json()
    if not isinstance(body, Mapping):
        raise MalformedResponse(f"HTTP {response.status_code}: body is not a JSON object")
    return body


def _error_code(body: Mapping[str, Any]) -> str | None:
    error = body.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("code"), str):
        return str(error["code"])
    return None


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise MalformedResponse(f"invoice field {name!r} is missing or not a string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedResponse(f"invoice field {name!r} is not ISO 8601: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise MalformedResponse(f"invoice field {name!r} has no UTC offset")
    return parsed


def _invoice(body: Mapping[str, Any]) -> Invoice:
    invoice_id, pay_url = body.get("id"), body.get("pay_url")
    if not isinstance(invoice_id, str) or not invoice_id:
        raise MalformedResponse("invoice has no 'id'")
    if not isinstance(pay_url, str) or not pay_url.startswith(("http://", "https://")):
        raise MalformedResponse("invoice has no http(s) 'pay_url'")
    return Invoice(invoice_id, pay_url, _parse_time(body.get("expires_at"), "expires_at"))


def _report(body: Mapping[str, Any]) -> StatusReport:
    raw = body.get("status")
    try:
        status = InvoiceStatus(str(raw))
    except ValueError:
        raise MalformedResponse(f"unknown invoice status {str(raw)[:40]!r}") from None
    invoice_id, amount, currency = body.get("id"), body.get("amount"), body.get("currency")
    if not isinstance(invoice_id, str) or not invoice_id:
        raise MalformedResponse("invoice has no 'id'")
    if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(currency, str):
        raise MalformedResponse("invoice has no integer 'amount' and string 'currency'")
    try:
        money = Money(amount, currency)
    except InvalidInput as exc:
        raise MalformedResponse(f"invoice reports unusable money: {exc}") from None
    refunded = body.get("refunded")
    if refunded is not None and (
        isinstance(refunded, bool) or not isinstance(refunded, int) or refunded < 0
    ):
        raise MalformedResponse("invoice's 'refunded' is not a whole number of minor units")
    return StatusReport(
        state=_STATES[status],
        psp_id=invoice_id,
        money=money,
        raw_status=status.value,
        refunded=None if refunded is None else Money(refunded, currency),
    )


class Sandbox(Adapter):
    """The built-in sandbox payment system (``paydispatch sandbox``)."""

    name: ClassVar[str] = "sandbox"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=True,
        lookup_by_reference=True,
        cancel=True,
        notifications=True,
        signed_notifications=True,
        currencies=CURRENCIES,
        default_expiry=timedelta(minutes=15),
        poll=PollPolicy(first=timedelta(seconds=1), factor=2.0, cap=timedelta(seconds=10)),
        list_payments=True,  # GET /api/v1/invoices (reconciliation, issue #16)
        # Refunds and payouts (issue #14): keyed by our id, found by it as their reference.
        refunds=True,
        partial_refunds=True,
        idempotent_refund=True,
        refund_lookup=True,
        payouts=True,
        idempotent_payout=True,
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default=DEFAULT_API_URL, help="base URL of the sandbox server"),
        SettingSpec("API_KEY", secret=True, default=DEFAULT_API_KEY, help="merchant API key"),
        SettingSpec(
            "WEBHOOK_SECRET",
            secret=True,
            default=DEFAULT_WEBHOOK_SECRET,
            help="HMAC key of the Sandbox-Signature webhook header",
        ),
        SettingSpec(
            "NOTIFY_URL",
            default=NO_NOTIFY_URL,
            help="where the sandbox posts webhooks (paydispatch's /v1/callbacks/sandbox); "
            f"{NO_NOTIFY_URL!r}: no webhooks, polling only",
        ),
    )

    @staticmethod
    def _url_setting(settings: AdapterSettings, key: str) -> str:
        value = settings.api_url if key == "API_URL" else settings.get(key)
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise InvalidSettings(
                f"{env_name(settings.adapter, key)} must be an absolute http(s) URL, got {value!r}"
            )
        return value

    @classmethod
    def _invoices_url(cls, settings: AdapterSettings, *path: str) -> str:
        return cls._api_url(settings, "invoices", *path)

    @classmethod
    def _api_url(cls, settings: AdapterSettings, collection: str, *path: str) -> str:
        base = f"{cls._url_setting(settings, 'API_URL')}{API_PREFIX}/{collection}"
        return "/".join((base, *(quote(part, safe="") for part in path)))

    @staticmethod
    def _headers(settings: AdapterSettings) -> dict[str, str]:
        return {"Authorization": f"Bearer {settings.get('API_KEY')}", "Accept": "application/json"}

    @staticmethod
    def _psp_id(order: Order) -> str:
        if not order.psp_id:
            raise ValueError(f"order {order.id} has no sandbox invoice id yet")
        return order.psp_id

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        body: dict[str, Any] = {
            "order_id": str(order.id),
            "number": order.number,
            "amount": order.money.amount,
            "currency": order.money.currency,
            "description": order.description,
            "return_url": order.return_url,
            "expires_at": order.expires_at.isoformat(),
        }
        if settings.get("NOTIFY_URL") != NO_NOTIFY_URL:
            body["notify_url"] = self._url_setting(settings, "NOTIFY_URL")
        scenario = order.metadata.get(SCENARIO_METADATA_KEY)
        if isinstance(scenario, str) and scenario:
            body["scenario"] = scenario
        headers = self._headers(settings) | {IDEMPOTENCY_HEADER: order.psp_idempotency_key}
        return PspRequest(
            method="POST",
            url=self._invoices_url(settings),
            operation="create",
            headers=headers,
            json=body,
        )

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        if response.status_code in (200, 201):
            return _invoice(_json_object(response))
        if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 408, 429):
            try:
                code = _error_code(_json_object(response))
            except MalformedResponse:
                code = None
            if code in _REJECTIONS:
                raise PspRejected(
                    f"sandbox refused the invoice: HTTP {response.status_code} {code}"
                )
            if code == "idempotency_key_reused":
                # An invoice exists under our key with other terms: only a person can untangle it.
                raise OutcomeUnknown(
                    f"sandbox holds another request under key {order.psp_idempotency_key}"
                )
        raise MalformedResponse(f"sandbox create answered HTTP {response.status_code}")

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            method="GET",
            url=self._invoices_url(settings, self._psp_id(order)),
            operation="status",
            headers=self._headers(settings),
        )

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        """Reads status and cancel answers; a 409 to a cancel carries the (paid) invoice."""
        if response.status_code == 200:
            body = _json_object(response)
        elif response.status_code == 409:
            invoice = _json_object(response).get("invoice")
            if not isinstance(invoice, Mapping):
                raise MalformedResponse("sandbox answered 409 without the invoice")
            body = invoice
        else:
            raise MalformedResponse(f"sandbox status answered HTTP {response.status_code}")
        report = _report(body)
        if order.psp_id and report.psp_id != order.psp_id:
            raise MalformedResponse(f"sandbox answered for invoice {report.psp_id!r}")
        return report

    def build_cancel(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            method="POST",
            url=self._invoices_url(settings, self._psp_id(order), "cancel"),
            operation="cancel",
            headers=self._headers(settings),
        )

    def build_lookup(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            method="GET",
            url=self._invoices_url(settings),
            operation="lookup",
            headers=self._headers(settings),
            params={"number": str(order.number)},
        )

    def parse_lookup(
        self, order: Order, response: PspResponse, settings: AdapterSettings
    ) -> Invoice | None:
        """Our order's invoice among those created for its number; None when there is none."""
        if response.status_code != 200:
            raise MalformedResponse(f"sandbox lookup answered HTTP {response.status_code}")
        items = _json_object(response).get("items")
        if not isinstance(items, list):
            raise MalformedResponse("sandbox lookup answered without 'items'")
        for item in items:
            if isinstance(item, Mapping) and item.get("order_id") == str(order.id):
                return _invoice(item)
        return None

    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        """Verified only with a fresh, valid ``Sandbox-Signature``; otherwise a hint to poll."""
        try:
            payload = json.loads(notification.body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # Recursion: nested too deep
            raise MalformedResponse("sandbox notification body is not JSON") from None
        if isinstance(payload, Mapping) and payload.get("type") == PAYOUT_EVENT_TYPE:
            return self._payout_notification(notification, payload, settings)
        invoice = payload.get("invoice") if isinstance(payload, Mapping) else None
        if not isinstance(invoice, Mapping):
            raise MalformedResponse("sandbox notification has no 'invoice' object")
        order_id, number, psp_id = invoice.get("order_id"), invoice.get("number"), invoice.get("id")
        ref = OrderRef(
            order_id=order_id if isinstance(order_id, str) else None,
            number=number if isinstance(number, int) and not isinstance(number, bool) else None,
            psp_id=psp_id if isinstance(psp_id, str) else None,
        )
        if ref == OrderRef():
            raise MalformedResponse("sandbox notification names no invoice or order")
        reply = Reply(200, b"ok")
        if not self._signature_valid(notification, settings) or (
            payload.get("type") not in {WEBHOOK_EVENT_TYPE, REFUND_EVENT_TYPE}
        ):
            return NotificationResult(ref=ref, verified=False, reply=reply)
        try:
            report = _report(invoice)
            refund: RefundReport | None = None
            if payload.get("type") == REFUND_EVENT_TYPE:
                record = payload.get("refund")
                if not isinstance(record, Mapping):
                    raise MalformedResponse("refund notification without its 'refund'")
                refund = refund_report(record, None)
        except MalformedResponse:
            return NotificationResult(ref=ref, verified=False, reply=reply)
        return NotificationResult(ref=ref, verified=True, report=report, reply=reply, refund=refund)

    def _payout_notification(
        self, notification: Notification, payload: Mapping[str, Any], settings: AdapterSettings
    ) -> NotificationResult:
        """A payout names no order: its report alone, trusted only with a valid signature."""
        record = payload.get("payout")
        if not isinstance(record, Mapping):
            raise MalformedResponse("sandbox payout notification has no 'payout' object")
        payout = payout_report(record, None)
        verified = self._signature_valid(notification, settings)
        return NotificationResult(
            ref=OrderRef(), verified=verified, reply=Reply(200, b"ok"), payout=payout
        )

    @staticmethod
    def _signature_valid(notification: Notification, settings: AdapterSettings) -> bool:
        header = SignatureHeader.parse(notification.headers.get("sandbox-signature", ""))
        if header is None:
            return False
        received = notification.received_at or datetime.now(UTC)
        if received.tzinfo is None:
            received = received.replace(tzinfo=UTC)
        try:
            signed = datetime.fromtimestamp(header.timestamp, UTC)
        except (OverflowError, OSError, ValueError):
            return False
        if abs(received - signed) > SIGNATURE_TOLERANCE:
            return False
        return header.matches(settings.get("WEBHOOK_SECRET"), notification.body)

    # -- Reconciliation (issue #16): the invoice list -----------------------------------------

    def build_list(
        self, settings: AdapterSettings, since: datetime, until: datetime, cursor: str | None
    ) -> PspRequest:
        params = {
            "created_gte": since.isoformat(),
            "created_lt": until.isoformat(),
            "limit": str(LIST_PAGE),
        }
        if cursor is not None:
            params["starting_after"] = cursor
        return PspRequest(
            method="GET",
            url=self._invoices_url(settings),
            operation="list",
            headers=self._headers(settings),
            params=params,
        )

    def parse_list(self, response: PspResponse, settings: AdapterSettings) -> PaymentPage:
        if response.status_code != 200:
            raise MalformedResponse(f"sandbox list answered HTTP {response.status_code}")
        body = _json_object(response)
        items, cursor = body.get("items"), body.get("next_cursor")
        if not isinstance(items, list):
            raise MalformedResponse("sandbox list answered without 'items'")
        if cursor is not None and (not isinstance(cursor, str) or not cursor):
            raise MalformedResponse("sandbox list's 'next_cursor' is not a string")
        payments = []
        for item in items:
            if not isinstance(item, Mapping):
                raise MalformedResponse("sandbox list item is not an object")
            order_id = item.get("order_id")
            ref = OrderRef(order_id=order_id if isinstance(order_id, str) else None)
            payments.append(ListedPayment(_report(item), ref))
        return PaymentPage(tuple(payments), cursor)

    # -- Refunds and payouts (issue #14) ------------------------------------------------------

    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        invoice_id = refund.psp_payment_id or self._psp_id(refund.order)
        headers = self._headers(settings) | {IDEMPOTENCY_HEADER: f"pd-refund-{refund.id}"}
        return PspRequest(
            method="POST",
            url=self._api_url(settings, "refunds"),
            operation="refund",
            headers=headers,
            json={
                "invoice_id": invoice_id,
                "amount": refund.money.amount,
                "currency": refund.money.currency,
                "reference": str(refund.id),
                "reason": refund.reason,
            },
        )

    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        record = created(response, "refund", f"pd-refund-{refund.id}")
        return refund_report(record, str(refund.id))

    def build_refund_status(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        """By the sandbox's id once known, else by our id (the refund's ``reference``)."""
        if refund.psp_refund_id:
            url, params = self._api_url(settings, "refunds", refund.psp_refund_id), {}
        else:
            url, params = self._api_url(settings, "refunds"), {"reference": str(refund.id)}
        return PspRequest(
            method="GET",
            url=url,
            operation="refund_status",
            headers=self._headers(settings),
            params=params,
        )

    def parse_refund_status(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        report = refund_report(status_read(response, "refund", str(refund.id)), str(refund.id))
        if refund.psp_refund_id and report.psp_refund_id != refund.psp_refund_id:
            raise MalformedResponse(f"sandbox answered for refund {report.psp_refund_id!r}")
        return report

    def build_payout(self, payout: PayoutRequest, settings: AdapterSettings) -> PspRequest:
        account = payout.destination.get("account")
        if not account:
            raise InvalidInput("destination", "the sandbox pays out to {'account': ...}")
        body: dict[str, Any] = {
            "amount": payout.money.amount,
            "currency": payout.money.currency,
            "account": account,
            "reference": str(payout.id),
            "description": payout.description,
        }
        if settings.get("NOTIFY_URL") != NO_NOTIFY_URL:
            body["notify_url"] = self._url_setting(settings, "NOTIFY_URL")
        headers = self._headers(settings) | {IDEMPOTENCY_HEADER: f"pd-payout-{payout.id}"}
        return PspRequest(
            method="POST",
            url=self._api_url(settings, "payouts"),
            operation="payout",
            headers=headers,
            json=body,
        )

    def parse_payout(
        self, payout: PayoutRequest, response: PspResponse, settings: AdapterSettings
    ) -> PayoutReport:
        record = created(response, "payout", f"pd-payout-{payout.id}")
        return payout_report(record, str(payout.id))

    def build_payout_status(self, payout: PayoutRequest, settings: AdapterSettings) -> PspRequest:
        if payout.psp_payout_id:
            url, params = self._api_url(settings, "payouts", payout.psp_payout_id), {}
        else:
            url, params = self._api_url(settings, "payouts"), {"reference": str(payout.id)}
        return PspRequest(
            method="GET",
            url=url,
            operation="payout_status",
            headers=self._headers(settings),
            params=params,
        )

    def parse_payout_status(
        self, payout: PayoutRequest, response: PspResponse, settings: AdapterSettings
    ) -> PayoutReport:
        report = payout_report(status_read(response, "payout", str(payout.id)), str(payout.id))
        if payout.psp_payout_id and report.psp_payout_id != payout.psp_payout_id:
            raise MalformedResponse(f"sandbox answered for payout {report.psp_payout_id!r}")
        return report

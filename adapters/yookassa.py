"""YooKassa (API v3): redirect payments, status polls, capture, cancel, refunds, payouts and
unsigned notifications.

Built from the public API reference (https://yookassa.ru/developers/api) and the official Python
SDK (github.com/yoomoney/yookassa-sdk-python). Requests use HTTP Basic auth (shop id, secret key)
and an ``Idempotence-Key`` header; amounts travel as decimal strings in major units
(``{"value": "100.00", "currency": "RUB"}``).

YooKassa does not sign its notifications, so every notification is a hint the dispatcher
confirms with a status request. With ``NOTIFY_IP_CHECK`` on (the default), a notification from
outside YooKassa's published sender networks is answered 403 and names no order, so a forger
cannot even trigger a poll.

Refunds (``POST /v3/refunds``) use the shop's credentials; payouts (``POST /v3/payouts``) go
through a separate payout gateway with its own agentId and secret key (``PAYOUT_AGENT_ID``,
``PAYOUT_SECRET_KEY``, optional: without them the adapter refuses payouts by name).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NoReturn

from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    CredentialsRejected,
    FollowUp,
    InvalidSettings,
    Invoice,
    ListedPayment,
    Notification,
    NotificationResult,
    OrderRef,
    PaymentPage,
    PayoutReport,
    PayoutRequest,
    PayoutState,
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
    money_object,
)
from orders.errors import InvalidInput, TransientError
from orders.model import Order
from orders.money import Money
from orders.settings import flag

DEFAULT_API_URL = "https://api.yookassa.ru/v3"

# https://yookassa.ru/developers/using-api/webhooks#ip, as listed by the official SDK
# (yookassa/domain/common/security_helper.py) and the documentation's IPv6 block.
NOTIFY_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "185.71.76.0/27",
        "185.71.77.0/27",
        "77.75.153.0/25",
        "77.75.154.128/25",
        "77.75.156.11/32",
        "77.75.156.35/32",
        "2a02:5180::/32",
    )
)

# The payment object's description is limited to 128 characters.
DESCRIPTION_LIMIT = 128

# Metadata keys we write; YooKassa returns metadata unchanged in payments and notifications.
META_ORDER_ID = "paydispatch_order_id"
META_NUMBER = "paydispatch_number"

_STATUS_ERROR_HINTS = {
    "invalid_credentials": "check PAYDISPATCH_YOOKASSA_SHOP_ID and PAYDISPATCH_YOOKASSA_SECRET_KEY",
    "forbidden": (
        "the shop may not use this operation: check PAYDISPATCH_YOOKASSA_SHOP_ID, "
        "PAYDISPATCH_YOOKASSA_SECRET_KEY and the shop's settings in YooKassa"
    ),
    "not_found": "no such payment for this shop: check PAYDISPATCH_YOOKASSA_API_URL and SHOP_ID",
}


# Errors about our own credentials (HTTP 401 and 403), on every operation.
_CREDENTIAL_ERRORS = frozenset({"invalid_credentials", "forbidden"})


class YooKassaUnavailableError(TransientError):
    """YooKassa answered with a well-formed error that a later retry may not get (429, 500)."""


class YooKassaRefusedError(TransientError):
    """YooKassa refused a status, capture or cancel call.

    Never final: a refused poll says nothing about the payment, so the order keeps its status
    and the next poll decides. The message names the settings to check where that helps.
    """


def format_amount(money: Money) -> dict[str, str]:
    """YooKassa's amount object: the value as a decimal string with the currency's decimals."""
    return {"value": f"{money.to_decimal():.{money.exponent}f}", "currency": money.currency}


def parse_amount(value: Any, response: PspResponse, field: str = "amount") -> Money:
    """Our Money from YooKassa's amount object; exact, never through a float."""
    return money_object(value, response, field, "currency")


def _parse_time(value: Any, response: PspResponse) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        response.malformed(f"expires_at is not a string: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        response.malformed(f"expires_at is not an ISO 8601 time: {value!r}")
    if parsed.tzinfo is None:
        response.malformed(f"expires_at has no time zone: {value!r}")
    return parsed


def _error_text(body: Mapping[str, Any]) -> str:
    parts = [str(body.get("code")), str(body.get("description") or "").strip()]
    if body.get("parameter"):
        parts.append(f"(parameter {body['parameter']})")
    if body.get("id"):
        parts.append(f"[error id {body['id']}]")
    return " ".join(p for p in parts if p)


def _raise_error(response: PspResponse, body: Mapping[str, Any], *, create: bool) -> NoReturn:
    """Translate YooKassa's error object (HTTP 4xx/5xx, ``type: error``) into our error tree."""
    code = body.get("code")
    text = _error_text(body)
    if code in {"too_many_requests", "internal_server_error"} or response.status_code >= 500:
        # HTTP 500 means "result unknown"; a retry with the same Idempotence-Key is safe.
        raise YooKassaUnavailableError(f"YooKassa HTTP {response.status_code}: {text}")
    if code not in {"invalid_request", "invalid_credentials", "forbidden", "not_found"}:
        response.malformed(f"unknown YooKassa error: {text}")
    hint = _STATUS_ERROR_HINTS.get(str(code))
    message = f"YooKassa HTTP {response.status_code}: {text}" + (f"; {hint}" if hint else "")
    if code in _CREDENTIAL_ERRORS:
        # Our shop id or key, not the order: no order may fail for it (the breaker opens).
        raise CredentialsRejected(message)
    if create:
        raise PspRejected(message)
    raise YooKassaRefusedError(message)


def _payment(response: PspResponse, *, create: bool) -> Mapping[str, Any]:
    """The payment object of a 200 response; errors translated, anything else malformed."""
    body = response.json_object()
    if body.get("type") == "error":
        _raise_error(response, body, create=create)
    if response.status_code != 200:
        response.malformed("non-200 answer that is not a YooKassa error object")
    payment_id, status = body.get("id"), body.get("status")
    if not isinstance(payment_id, str) or not payment_id:
        response.malformed("payment object without an id")
    if not isinstance(status, str) or not status:
        response.malformed("payment object without a status")
    return body


def _sender_allowed(remote_addr: str | None) -> bool:
    if remote_addr is None:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in network for network in NOTIFY_NETWORKS)


class YooKassa(Adapter):
    """YooKassa API v3 with redirect confirmation."""

    name: ClassVar[str] = "yookassa"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=True,
        # YooKassa can cancel only a payment in waiting_for_capture; a pending one lapses by
        # itself (cancellation reason expired_on_confirmation).
        cancel=True,
        notifications=True,
        signed_notifications=False,
        # The currencies of the official SDK's Currency enum; a shop accepts its own currency.
        currencies=frozenset({"RUB", "USD", "EUR", "BYN", "CNY", "KZT", "UAH"}),
        # A buyer has about an hour to pay a card payment after opening the link
        # (github.com/yoomoney/yookassa-github-docs/issues/12); afterwards YooKassa cancels it.
        default_expiry=timedelta(hours=1),
        poll=PollPolicy(first=timedelta(seconds=10), factor=2.0, cap=timedelta(minutes=5)),
        list_payments=True,  # GET /v3/payments (reconciliation, issue #16)
        # POST /v3/refunds with Idempotence-Key; several partial refunds of one payment. A
        # refund is read back by YooKassa's id only (refund_lookup False): an unsure send is
        # re-sent with the same key, which answers the refund it made.
        refunds=True,
        partial_refunds=True,
        idempotent_refund=True,
        payouts=True,  # POST /v3/payouts through the payout gateway (PAYOUT_AGENT_ID)
        idempotent_payout=True,
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default=DEFAULT_API_URL, help="YooKassa API base URL"),
        SettingSpec("SHOP_ID", help="shop id (shopId) from the YooKassa merchant profile"),
        SettingSpec("SECRET_KEY", secret=True, help="secret key from the merchant profile"),
        SettingSpec(
            "NOTIFY_IP_CHECK",
            default="true",
            help="answer 403 to notifications from outside YooKassa's sender networks; turn "
            "off only behind a proxy that cannot pass the client address",
        ),
        SettingSpec(
            "CAPTURE",
            default="auto",
            help="auto: YooKassa takes the money at once; manual: two-stage payments, the "
            "dispatcher captures after checking the amount (card-like methods only)",
        ),
        SettingSpec(
            "PAYOUT_AGENT_ID",
            default="",
            help="agentId of the payout gateway (payouts only; empty: no payouts)",
        ),
        SettingSpec(
            "PAYOUT_SECRET_KEY",
            secret=True,
            default="",
            help="secret key of the payout gateway (payouts only)",
        ),
    )

    def _headers(self, settings: AdapterSettings, idempotence_key: str | None) -> dict[str, str]:
        pair = f"{settings.get('SHOP_ID')}:{settings.get('SECRET_KEY')}".encode()
        headers = {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        if idempotence_key is not None:
            headers["Idempotence-Key"] = idempotence_key
        return headers

    def _payment_url(self, order: Order, settings: AdapterSettings, action: str = "") -> str:
        if not order.psp_id:
            raise InvalidInput("psp_id", f"order {order.id} has no YooKassa payment yet")
        return f"{settings.api_url}/payments/{order.psp_id}{action}"

    def _capture_manually(self, settings: AdapterSettings) -> bool:
        mode = settings.get("CAPTURE").strip().lower()
        if mode not in {"auto", "manual"}:
            raise InvalidSettings(
                f"PAYDISPATCH_YOOKASSA_CAPTURE must be auto or manual, got {mode!r}"
            )
        return mode == "manual"

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest:
        if not order.return_url:
            # Redirect confirmation requires return_url; YooKassa would answer invalid_request.
            raise InvalidInput("return_url", "YooKassa needs a return_url to send the buyer back")
        description = order.description.strip() or f"Order {order.number}"
        body = {
            "amount": format_amount(order.money),
            "capture": not self._capture_manually(settings),
            "confirmation": {"type": "redirect", "return_url": order.return_url},
            "description": description[:DESCRIPTION_LIMIT],
            # Only our own identifiers: site metadata may break YooKassa's limits on metadata
            # (16 keys, string values), which would reject the order for no fault of the buyer.
            "metadata": {META_ORDER_ID: str(order.id), META_NUMBER: str(order.number)},
        }
        return PspRequest(
            method="POST",
            url=f"{settings.api_url}/payments",
            operation="create",
            headers=self._headers(settings, order.psp_idempotency_key),
            json=body,
        )

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        payment = _payment(response, create=True)
        # Read the whole answer: a payment we cannot read now we could not poll later either.
        _report(payment, response)
        confirmation = payment.get("confirmation")
        pay_url = (
            confirmation.get("confirmation_url") if isinstance(confirmation, Mapping) else None
        )
        if pay_url is not None and not isinstance(pay_url, str):
            response.malformed("confirmation_url is not a string")
        if pay_url is None and payment["status"] == "pending":
            response.malformed("pending payment without confirmation.confirmation_url")
        # expires_at is YooKassa's capture deadline for waiting_for_capture, not the buyer's,
        # so a freshly created (pending) payment carries no deadline of its own.
        expires_at = None
        if payment["status"] == "waiting_for_capture":
            expires_at = _parse_time(payment.get("expires_at"), response)
        return Invoice(psp_id=payment["id"], pay_url=pay_url, expires_at=expires_at)

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            method="GET",
            url=self._payment_url(order, settings),
            operation="status",
            headers=self._headers(settings, None),
        )

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        """Status, capture and cancel calls all answer with the payment object."""
        payment = _payment(response, create=False)
        if order.psp_id is not None and payment["id"] != order.psp_id:
            response.malformed(f"answer is about payment {payment['id']}, not {order.psp_id}")
        return _report(payment, response)

    def build_capture(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            method="POST",
            url=self._payment_url(order, settings, "/capture"),
            operation="capture",
            # A key of its own: YooKassa answers a reused key with the first request's result.
            headers=self._headers(settings, f"{order.psp_idempotency_key}-capture"),
            # Capture exactly our amount, so a different authorised amount can never be taken.
            json={"amount": format_amount(order.money)},
        )

    def can_cancel(self, order: Order, report: StatusReport | None) -> bool:
        """Only a payment in ``waiting_for_capture`` can be cancelled: YooKassa refuses to
        cancel a ``pending`` one (it lapses by itself, ``expired_on_confirmation``), and a
        ``succeeded`` one would need a refund."""
        return report is not None and report.raw_status == "waiting_for_capture"

    def build_cancel(self, order: Order, settings: AdapterSettings) -> PspRequest:
        return PspRequest(
            method="POST",
            url=self._payment_url(order, settings, "/cancel"),
            operation="cancel",
            headers=self._headers(settings, f"{order.psp_idempotency_key}-cancel"),
            # An empty JSON object: POST without a JSON content type is answered 415.
            json={},
        )

    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        ip_check = flag(
            "PAYDISPATCH_YOOKASSA_NOTIFY_IP_CHECK",
            settings.get("NOTIFY_IP_CHECK"),
            error=InvalidSettings,
        )
        if ip_check and not _sender_allowed(notification.remote_addr):
            return NotificationResult(ref=OrderRef(), verified=False, reply=Reply(403))
        response = PspResponse(status_code=200, content=notification.body)
        body = response.json_object()
        if body.get("type") != "notification" or not isinstance(body.get("event"), str):
            response.malformed("not a YooKassa notification (type/event missing)")
        obj = body.get("object")
        if not isinstance(obj, Mapping):
            response.malformed("notification without an object")
        event = body["event"]
        refund: RefundReport | None = None
        if event.startswith("payment."):
            payment_id = obj.get("id")
        elif event.startswith("refund."):
            # The refund object: its payment_id names the order, the rest the refund.
            payment_id = obj.get("payment_id")
            refund = _refund_report(_checked_object(obj, response, "refund"), response)
        elif event.startswith("payout."):
            payout = _payout_report(_checked_object(obj, response, "payout"), response)
            return NotificationResult(ref=OrderRef(), verified=False, payout=payout)
        else:
            # Deals and the like: nothing of ours. Acknowledge so YooKassa stops re-sending.
            return NotificationResult(ref=OrderRef(), verified=False)
        if not isinstance(payment_id, str) or not payment_id:
            response.malformed(f"{event} notification names no payment")
        metadata = obj.get("metadata")
        order_id = metadata.get(META_ORDER_ID) if isinstance(metadata, Mapping) else None
        ref = OrderRef(order_id=order_id if isinstance(order_id, str) else None, psp_id=payment_id)
        # Unsigned, so no report: the dispatcher polls the order and trusts only that answer.
        # The refund report is a hint in the same way: it says which refund to read.
        return NotificationResult(ref=ref, verified=False, refund=refund)

    # -- Reconciliation (issue #16): the payment list -----------------------------------------
    # https://yookassa.ru/developers/api#get_payments_list and
    # https://yookassa.ru/developers/using-api/lists: created_at.gte / created_at.lt filters,
    # limit 1-100 (default 10), cursor = the previous answer's next_cursor, absent on the last.

    def build_list(
        self, settings: AdapterSettings, since: datetime, until: datetime, cursor: str | None
    ) -> PspRequest:
        params = {
            "created_at.gte": list_time(since),
            "created_at.lt": list_time(until),
            "limit": str(LIST_LIMIT),
        }
        if cursor is not None:
            params["cursor"] = cursor
        return PspRequest(
            method="GET",
            url=f"{settings.api_url}/payments",
            operation="list",
            headers=self._headers(settings, None),
            params=params,
        )

    def parse_list(self, response: PspResponse, settings: AdapterSettings) -> PaymentPage:
        body = response.json_object()
        if body.get("type") == "error":
            _raise_error(response, body, create=False)
        if response.status_code != 200 or body.get("type") != "list":
            response.malformed("not a YooKassa list (type list expected)")
        items, cursor = body.get("items"), body.get("next_cursor")
        if not isinstance(items, list):
            response.malformed("list without items")
        if cursor is not None and (not isinstance(cursor, str) or not cursor):
            response.malformed(f"next_cursor is not a string: {cursor!r}")
        payments = []
        for item in items:
            if not isinstance(item, Mapping):
                response.malformed("list item is not a payment object")
            payment = _payment_object(item, response)
            metadata = payment.get("metadata")
            order_id = metadata.get(META_ORDER_ID) if isinstance(metadata, Mapping) else None
            ref = OrderRef(order_id=order_id if isinstance(order_id, str) else None)
            payments.append(ListedPayment(_report(payment, response), ref))
        return PaymentPage(tuple(payments), cursor)

    # -- Refunds (issue #14): https://yookassa.ru/developers/api#create_refund, #get_refund ----

    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        payment_id = refund.psp_payment_id or refund.order.psp_id
        if not payment_id:
            raise InvalidInput("psp_id", f"order {refund.order.id} has no YooKassa payment")
        description = refund.reason.strip() or f"Refund of order {refund.order.number}"
        return PspRequest(
            method="POST",
            url=f"{settings.api_url}/refunds",
            operation="refund",
            headers=self._headers(settings, refund_key(refund)),
            json={
                "payment_id": payment_id,
                "amount": format_amount(refund.money),
                "description": description[:REFUND_DESCRIPTION_LIMIT],
            },
        )

    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        """The refund object; an ``invalid_request`` (amount exceeds what is left, a payment
        that cannot be refunded) is a definite refusal: the money did not move."""
        obj = _object(response, "refund", create=True)
        _same_payment(obj, refund, response)
        return _refund_report(obj, response)

    def build_refund_status(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        if not refund.psp_refund_id:
            # refund_lookup is False: the dispatcher re-sends with the same key instead.
            raise InvalidInput("psp_refund_id", f"refund {refund.id} has no YooKassa id yet")
        return PspRequest(
            method="GET",
            url=f"{settings.api_url}/refunds/{refund.psp_refund_id}",
            operation="refund_status",
            headers=self._headers(settings, None),
        )

    def parse_refund_status(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        obj = _object(response, "refund", create=False)
        if refund.psp_refund_id is not None and obj["id"] != refund.psp_refund_id:
            response.malformed(f"answer is about refund {obj['id']}, not {refund.psp_refund_id}")
        _same_payment(obj, refund, response)
        return _refund_report(obj, response)

    # -- Payouts (issue #14): https://yookassa.ru/developers/api#create_payout, #get_payout ----

    def _payout_headers(
        self, settings: AdapterSettings, idempotence_key: str | None
    ) -> dict[str, str]:
        agent, key = settings.get("PAYOUT_AGENT_ID"), settings.get("PAYOUT_SECRET_KEY")
        if not agent or not key:
            raise InvalidSettings(
                "YooKassa payouts need the payout gateway's credentials: set "
                "PAYDISPATCH_YOOKASSA_PAYOUT_AGENT_ID and PAYDISPATCH_YOOKASSA_PAYOUT_SECRET_KEY"
            )
        pair = f"{agent}:{key}".encode()
        headers = {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        if idempotence_key is not None:
            headers["Idempotence-Key"] = idempotence_key
        return headers

    def build_payout(self, payout: PayoutRequest, settings: AdapterSettings) -> PspRequest:
        body: dict[str, Any] = {"amount": format_amount(payout.money)}
        destination = dict(payout.destination)
        if "payout_token" in destination:
            # A card saved by YooKassa's payout widget; nothing else may go with it.
            if len(destination) != 1:
                raise InvalidInput("destination", "payout_token goes alone")
            body["payout_token"] = destination["payout_token"]
        elif destination.get("type"):
            # payout_destination_data: {"type": "yoo_money", "account_number": ...},
            # {"type": "bank_card", "card": ...} is not a flat mapping and goes by token.
            body["payout_destination_data"] = destination
        else:
            raise InvalidInput(
                "destination", "YooKassa pays out to a payout_token or a typed destination"
            )
        description = payout.description.strip() or f"Payout {payout.id}"
        body["description"] = description[:DESCRIPTION_LIMIT]
        body["metadata"] = {META_PAYOUT_ID: str(payout.id)}
        return PspRequest(
            method="POST",
            url=f"{settings.api_url}/payouts",
            operation="payout",
            headers=self._payout_headers(settings, payout_key(payout)),
            json=body,
        )

    def parse_payout(
        self, payout: PayoutRequest, response: PspResponse, settings: AdapterSettings
    ) -> PayoutReport:
        return _payout_report(_object(response, "payout", create=True), response)

    def build_payout_status(self, payout: PayoutRequest, settings: AdapterSettings) -> PspRequest:
        if not payout.psp_payout_id:
            raise InvalidInput("psp_payout_id", f"payout {payout.id} has no YooKassa id yet")
        return PspRequest(
            method="GET",
            url=f"{settings.api_url}/payouts/{payout.psp_payout_id}",
            operation="payout_status",
            headers=self._payout_headers(settings, None),
        )

    def parse_payout_status(
        self, payout: PayoutRequest, response: PspResponse, settings: AdapterSettings
    ) -> PayoutReport:
        obj = _object(response, "payout", create=False)
        if payout.psp_payout_id is not None and obj["id"] != payout.psp_payout_id:
            response.malformed(f"answer is about payout {obj['id']}, not {payout.psp_payout_id}")
        return _payout_report(obj, response)


# A refund's description is limited to 250 characters (the refund object's reference).
REFUND_DESCRIPTION_LIMIT = 250
# Our payout id in the payout's metadata, for the merchant profile and notifications.
META_PAYOUT_ID = "paydispatch_payout_id"
# Refund and payout objects: pending, then succeeded or canceled (with cancellation_details).
_MONEY_OUT_STATUSES = {"pending": "pending", "succeeded": "succeeded", "canceled": "failed"}


def refund_key(refund: RefundRequest) -> str:
    """The Idempotence-Key of a refund: ours, so a re-send makes no second refund (64 chars
    at most)."""
    return f"pd-refund-{refund.id}"


def payout_key(payout: PayoutRequest) -> str:
    return f"pd-payout-{payout.id}"


def _object(response: PspResponse, kind: str, *, create: bool) -> Mapping[str, Any]:
    """A refund or payout object of a 200 answer; errors translated as for payments."""
    body = response.json_object()
    if body.get("type") == "error":
        _raise_error(response, body, create=create)
    if response.status_code != 200:
        response.malformed(f"non-200 answer that is not a YooKassa error object ({kind})")
    return _checked_object(body, response, kind)


def _checked_object(obj: Mapping[str, Any], response: PspResponse, kind: str) -> Mapping[str, Any]:
    obj_id, status = obj.get("id"), obj.get("status")
    if not isinstance(obj_id, str) or not obj_id:
        response.malformed(f"{kind} object without an id")
    if status not in _MONEY_OUT_STATUSES:
        response.malformed(f"unknown {kind} status {status!r}")
    return obj


def _same_payment(obj: Mapping[str, Any], refund: RefundRequest, response: PspResponse) -> None:
    expected = refund.psp_payment_id or refund.order.psp_id
    if obj.get("payment_id") != expected:
        response.malformed(
            f"refund {obj['id']} is of payment {obj.get('payment_id')!r}, not {expected}"
        )


def _cancellation(obj: Mapping[str, Any]) -> str:
    details = obj.get("cancellation_details")
    if not isinstance(details, Mapping):
        return "canceled, no details given"
    party, reason = str(details.get("party") or ""), str(details.get("reason") or "")
    return ": ".join(p for p in (party, reason) if p) or "canceled, no details given"


def _refund_report(obj: Mapping[str, Any], response: PspResponse) -> RefundReport:
    status = obj["status"]
    return RefundReport(
        state=RefundState(_MONEY_OUT_STATUSES[status]),
        psp_refund_id=obj["id"],
        money=parse_amount(obj.get("amount"), response),
        raw_status=status,
        reason=_cancellation(obj) if status == "canceled" else "",
    )


def _payout_report(obj: Mapping[str, Any], response: PspResponse) -> PayoutReport:
    status = obj["status"]
    return PayoutReport(
        state=PayoutState(_MONEY_OUT_STATUSES[status]),
        psp_payout_id=obj["id"],
        money=parse_amount(obj.get("amount"), response),
        raw_status=status,
        reason=_cancellation(obj) if status == "canceled" else "",
    )


# Reconciliation (issue #16): payments a list page asks for, YooKassa's most.
LIST_LIMIT = 100


def list_time(moment: datetime) -> str:
    """A list filter's time as the reference writes it: UTC, milliseconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _payment_object(payment: Mapping[str, Any], response: PspResponse) -> Mapping[str, Any]:
    """A payment object of a list, with the id and status every reading needs."""
    payment_id, status = payment.get("id"), payment.get("status")
    if not isinstance(payment_id, str) or not payment_id:
        response.malformed("listed payment without an id")
    if not isinstance(status, str) or not status:
        response.malformed(f"listed payment {payment_id} without a status")
    return payment


def _report(payment: Mapping[str, Any], response: PspResponse) -> StatusReport:
    status = payment["status"]
    money = parse_amount(payment.get("amount"), response)
    follow_up: FollowUp | None = None
    reason = ""
    refunded: Money | None = None
    if status == "pending":
        state = CanonicalState.PENDING
    elif status == "waiting_for_capture":
        state, follow_up = CanonicalState.PENDING, FollowUp.CAPTURE
    elif status == "succeeded":
        state, reason, refunded = _refund_state(payment, money, response)
    elif status == "canceled":
        state, reason = _cancel_state(payment)
    else:
        response.malformed(f"unknown payment status {status!r}")
    return StatusReport(
        state=state,
        psp_id=payment["id"],
        money=money,
        follow_up=follow_up,
        raw_status=status,
        reason=reason,
        refunded=refunded,
    )


def _refund_state(
    payment: Mapping[str, Any], money: Money, response: PspResponse
) -> tuple[CanonicalState, str, Money | None]:
    """A succeeded payment is refunded once refunded_amount reaches the whole amount; the
    refunded amount itself travels in ``StatusReport.refunded``."""
    if payment.get("refunded_amount") is None:
        return CanonicalState.PAID, "", None
    refunded = parse_amount(payment["refunded_amount"], response, "refunded_amount")
    if refunded.amount == 0:
        return CanonicalState.PAID, "", refunded
    if refunded == money:
        return CanonicalState.REFUNDED, f"refunded {refunded}", refunded
    return CanonicalState.PAID, f"partly refunded {refunded}", refunded


def _cancel_state(payment: Mapping[str, Any]) -> tuple[CanonicalState, str]:
    details = payment.get("cancellation_details")
    party = reason = ""
    if isinstance(details, Mapping):
        party, reason = str(details.get("party") or ""), str(details.get("reason") or "")
    text = ": ".join(p for p in (party, reason) if p) or "canceled, no details given"
    # Only the buyer's silence is an expiry; every other cancellation is a refusal by someone
    # (the bank, YooKassa, or us: canceled_by_merchant, expired_on_capture).
    if reason == "expired_on_confirmation":
        return CanonicalState.EXPIRED, text
    return CanonicalState.REJECTED, text


adapter = YooKassa()
